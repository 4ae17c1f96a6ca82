/**
 * The GEMM case table on whatever ISA this process dispatches to. test/gemm.test.ts runs it in
 * child processes with PEFTKIT_ISA=portable and =avx2 (the ISA is read once per process).
 * Prints one JSON line; exits 1 when a case misses its tolerance.
 */
import { Tensor, ops, runtimeInfo } from '../../src/index';
import { makeRng, randn, relErr, roundBf16 } from './check';
import {
  describe, describeSum, isaCases, refGemmSum, roundingCases, runCase, runRoundingCase, runSumCase, sumCases,
} from './gemm_cases';
import { disposeWeight, quantWeight } from './quant_weight';

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
// bf16 compute with a quantized W: decoded values rounded into the f32 panels (no bf16 kernel) or
// into bf16 pairs; against float64 on the rounded X and dequantized W.
const quant: Array<['nf4' | 'int8', number, number, number, boolean]> = [];
for (const transB of [true, false]) quant.push(['nf4', 37, 45, 601, transB], ['int8', 3, 70, 300, transB], ['nf4', 1, 33, 77, transB]);
for (const [format, M, rows, cols, transB] of quant) {
  const { q, deq } = quantWeight(rng, format, rows, cols, 64, 'cpu');
  const K = transB ? cols : rows, N = transB ? rows : cols;
  const x = randn(rng, M * K);
  const X = Tensor.from(x, [M, K]), C = Tensor.empty([M, N]);
  ops.gemmQuant(C, X, q, { transB, compute: 'bf16' });
  const want = refGemmSum([{ a: roundBf16(x), b: roundBf16(deq.toFloat32Array()), K, transA: false, transB, alpha: 1 }], null, M, N, 0);
  const e = relErr(C.toFloat32Array(), want);
  if (!(e <= 1e-5)) failures.push(`gemmQuant ${format} bf16 compute M=${M} W=[${rows},${cols}] transB=${transB}: ${e}`);
  for (const t of [X, C, deq]) t.dispose();
  disposeWeight(q);
}
const total = cases.length + sums.length + rounding.length + quant.length;
console.log(JSON.stringify({ isa: runtimeInfo().cpuIsa, seed: rng.seed, cases: total, failures }));
process.exit(failures.length ? 1 : 0);
