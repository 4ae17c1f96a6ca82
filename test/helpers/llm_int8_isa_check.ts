/**
 * The exact-int32 LLM.int8 case on whatever ISA this process dispatches to (test/llm_int8.test.ts
 * runs it with PEFTKIT_ISA=portable and =avx2: the ISA is read once per process). Prints one
 * JSON line; exits 1 when an output is not the exact value.
 */
import { runtimeInfo } from '../../src/index';
import { exactSumCase } from './llm_int8_exact';

const r = exactSumCase('cpu');
const ok = r.got.every((v) => v === r.expected);
console.log(JSON.stringify({ isa: runtimeInfo().cpuIsa, ok, expected: r.expected, got: r.got }));
process.exit(ok ? 0 : 1);
