/**
 * The GEMM case table on whatever ISA this process dispatches to. test/gemm.test.ts runs it in
 * child processes with PEFTKIT_ISA=portable and =avx2 (the ISA is read once per process).
 * Prints one JSON line; exits 1 when a case misses its tolerance.
 */
import { runtimeInfo } from '../../src/index';
import { makeRng } from './check';
import { describe, describeSum, isaCases, roundingCases, runCase, runRoundingCase, runSumCase, sumCases } from './gemm_cases';

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
const rounding = roundingCases();
for (const r of rounding) {
  const fail = runRoundingCase(rng, 'cpu', r.M, r.K, r.transA, r.transB, r.swap);
  if (fail) failures.push(`bf16 rounding ${JSON.stringify(r)}: ${fail}`);
}
const total = cases.length + sums.length + rounding.length;
console.log(JSON.stringify({ isa: runtimeInfo().cpuIsa, seed: rng.seed, cases: total, failures }));
process.exit(failures.length ? 1 : 0);
