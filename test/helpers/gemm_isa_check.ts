/**
 * The GEMM case table on whatever ISA this process dispatches to. test/gemm.test.ts runs it in
 * child processes with PEFTKIT_ISA=portable and =avx2 (the ISA is read once per process).
 * Prints one JSON line; exits 1 when a case misses its tolerance.
 */
import { runtimeInfo } from '../../src/index';
import { makeRng } from './check';
import { describe, describeSum, isaCases, runCase, runSumCase, sumCases } from './gemm_cases';

const rng = makeRng();
const failures: string[] = [];
const cases = isaCases();
for (const g of cases) {
  const fail = runCase(rng, 'cpu', g);
  if (fail) failures.push(`${describe(g)}: ${fail}`);
}
const sums = sumCases();
for (const g of sums) {
  const fail = runSumCase(rng, 'cpu', g);
  if (fail) failures.push(`${describeSum(g)}: ${fail}`);
}
console.log(JSON.stringify({ isa: runtimeInfo().cpuIsa, seed: rng.seed, cases: cases.length + sums.length, failures }));
process.exit(failures.length ? 1 : 0);
