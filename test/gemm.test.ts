import test from 'ava';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { Tensor, PeftkitError, ops, runtimeInfo } from '../src/index';
import { assertClose, devices, makeRng, poisoned, randn } from './helpers/check';
import {
  GemmCase, TRANS, describe, describeSum, isaCases, refGemmSum, roundingCases, runCase, runRoundingCase, runSumCase,
  sumCases,
} from './helpers/gemm_cases';

const SHAPES: Array<[number, number, number]> = [
  [1, 1, 1], [1, 37, 19], [7, 1, 33], [17, 23, 1], [33, 65, 129], [64, 48, 96], [100, 75, 211], [130, 257, 67],
];

function checkCases(t: import('ava').ExecutionContext, device: 'cpu' | 'cuda', cases: GemmCase[]): void {
  const rng = makeRng(t);
  for (const g of cases) {
    const fail = runCase(rng, device, g);
    t.is(fail, null, describe(g));
  }
}

for (const device of devices()) {
  for (const [transA, transB] of TRANS) {
    test(`${device}: f32 gemm matches float64 (transA=${transA}, transB=${transB})`, (t) => {
      const cases: GemmCase[] = [];
      for (const [M, N, K] of SHAPES) {
        cases.push({ M, N, K, transA, transB }); // beta 0 into NaN: C is not read
        cases.push({ M, N, K, transA, transB, alpha: 0.5, beta: 1 });
      }
      // Crosses every block boundary: M tiles with a remainder (71 = 5·14 + 1 = 11·6 + 5), N past
      // nc (672 where the L2 holds 2 MiB, 2048 elsewhere) into a narrow last panel, K past 2 kc
      // (384 or 512) and odd; once at a larger size too.
      cases.push({ M: 71, N: 2085, K: 1031, transA, transB, alpha: -0.75, beta: 0.5 });
      if (!transA && transB) cases.push({ M: 300, N: 517, K: 1031, transA, transB });
      checkCases(t, device, cases);
    });
  }

  test(`${device}: bf16 operands (f32 accumulation) and bf16 C, every layout`, (t) => {
    const cases: GemmCase[] = [];
    for (const [transA, transB] of TRANS) {
      for (const [M, N, K] of SHAPES) {
        cases.push({ M, N, K, transA, transB, a: 'bf16', b: 'bf16' });
        cases.push({ M, N, K, transA, transB, a: 'bf16', b: 'bf16', c: 'bf16' });
      }
      // K > 2 kc of the bf16-pair kernel (and odd); bf16 C keeps f32 sums between slices.
      cases.push({ M: 37, N: 517, K: 1031, transA, transB, a: 'bf16', b: 'bf16', alpha: 1.5, beta: -1 });
      cases.push({ M: 37, N: 517, K: 1031, transA, transB, a: 'bf16', b: 'bf16', c: 'bf16', alpha: 1.5, beta: -1 });
    }
    checkCases(t, device, cases);
  });

  test(`${device}: mixed f32 and bf16 operands`, (t) => {
    const cases: GemmCase[] = [];
    for (const [transA, transB] of TRANS)
      for (const [a, b] of [['f32', 'bf16'], ['bf16', 'f32']] as const) {
        cases.push({ M: 33, N: 65, K: 129, transA, transB, a, b });
        cases.push({ M: 37, N: 517, K: 601, transA, transB, a, b, alpha: 2, beta: 0.5 });
        cases.push({ M: 70, N: 33, K: 300, transA, transB, a, b, c: 'bf16', beta: 1 });
      }
    checkCases(t, device, cases);
  });

  test(`${device}: bf16 compute matches float64 on the bf16-rounded operands, every layout`, (t) => {
    const cases: GemmCase[] = [];
    const compute = 'bf16' as const;
    for (const [transA, transB] of TRANS) {
      for (const [M, N, K] of SHAPES) {
        cases.push({ M, N, K, transA, transB, compute });
        cases.push({ M, N, K, transA, transB, compute, alpha: 0.5, beta: 1 });
      }
      // K past two kc slices of the pair kernel and odd, N past nc into a narrow panel, bf16 C.
      cases.push({ M: 71, N: 517, K: 1031, transA, transB, compute, alpha: -0.75, beta: 0.5 });
      cases.push({ M: 37, N: 517, K: 601, transA, transB, compute, c: 'bf16' });
      // One operand stored bf16, the other rounded; the skinny LoRA shapes.
      cases.push({ M: 33, N: 65, K: 129, transA, transB, compute, a: 'bf16' });
      cases.push({ M: 33, N: 65, K: 129, transA, transB, compute, b: 'bf16', beta: 1 });
      for (const [M, N, K] of [[300, 16, 600], [16, 530, 300], [530, 1, 600]]) cases.push({ M, N, K, transA, transB, compute });
    }
    checkCases(t, device, cases);
  });

  test(`${device}: bf16 compute rounds to nearest even (ties, near-ties), both operands`, (t) => {
    const rng = makeRng(t);
    for (const r of roundingCases()) t.is(runRoundingCase(rng, device, r.M, r.K, r.transA, r.transB, r.swap), null, JSON.stringify(r));
  });

  test(`${device}: skinny LoRA shapes (rank 16 as N, M or K; one row; one column)`, (t) => {
    const cases: GemmCase[] = [];
    for (const [transA, transB] of TRANS)
      for (const [M, N, K] of [[300, 16, 600], [16, 530, 300], [530, 16, 300], [300, 530, 16], [1, 530, 600], [530, 1, 600]])
        for (const dt of ['f32', 'bf16'] as const) cases.push({ M, N, K, transA, transB, a: dt, b: dt, beta: 0.5 });
    checkCases(t, device, cases);
  });

  test(`${device}: gemmSum concatenates the terms' K ranges in one pass`, (t) => {
    const rng = makeRng(t);
    for (const g of sumCases()) t.is(runSumCase(rng, device, g), null, describeSum(g));
  });
}

// The ISA is read once per process, so the lower paths run in child processes; the native ISA
// runs there too on one thread, where one thread's columns exceed nc on any machine. The AMX
// kernel runs on the tile model (amx-emulated) wherever the CPU has the AVX512-BF16 it builds
// on; on a CPU with AMX the native child runs it on the tiles, and an avx512 child keeps the
// VDPBF16PS kernel tested.
type Child = { isa?: 'portable' | 'avx2' | 'avx512' | 'amx-emulated'; threads: number };
const CHILDREN: Child[] = [
  { isa: 'portable', threads: 1 },
  { isa: 'avx2', threads: 2 },
  { threads: 1 },
  { isa: 'amx-emulated', threads: 2 },
  { isa: 'avx512', threads: 2 },
];
function childRuns(isa: Child['isa']): string | null {
  const info = runtimeInfo();
  if (isa === 'avx2' && !info.avx2) return 'this CPU has no AVX2';
  if (isa === 'amx-emulated' && !info.avx512bf16) return 'the AMX kernel builds on AVX512-BF16, which this CPU lacks';
  if (isa === 'avx512' && !info.amxBf16) return 'the native child runs AVX-512 here';
  return null;
}
for (const { isa, threads } of CHILDREN) {
  const name = isa ?? 'native';
  const title = `the ${name} GEMM path passes the case table (child process, ${threads} thread${threads > 1 ? 's' : ''})`;
  const skip = childRuns(isa);
  if (skip) {
    test.skip(`${title}: ${skip}`, () => {});
    continue;
  }
  test(title, (t) => {
    const info = runtimeInfo();
    const env: NodeJS.ProcessEnv = { ...process.env, PEFTKIT_NUM_THREADS: String(threads) };
    if (isa) env.PEFTKIT_ISA = isa;
    else delete env.PEFTKIT_ISA;
    const script = path.join(__dirname, 'helpers', 'gemm_isa_check.js');
    const r = spawnSync(process.execPath, [script], { env, encoding: 'utf8' });
    t.log(r.stdout.trim());
    t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { isa?: string; cases?: number };
    // The native child runs uncapped: its ISA is this process's unless a PEFTKIT_ISA caps this one.
    if (isa || !process.env.PEFTKIT_ISA) t.is(out.isa, isa === 'amx-emulated' ? 'avx512+amx-bf16-emulated' : isa ?? info.cpuIsa);
    t.true((out.cases ?? 0) >= isaCases().length);
  });
}

test('gemm async resolves with the same result', async (t) => {
  const rng = makeRng(t);
  const [M, N, K] = [70, 50, 90];
  const a = randn(rng, M * K), b = randn(rng, N * K);
  const A = Tensor.from(a, [M, K]), B = Tensor.from(b, [N, K]);
  const C = poisoned([M, N]);
  const p = ops.gemmAsync(C, A, B, { transB: true });
  A.dispose(); // the running op keeps its inputs alive
  await p;
  const want = refGemmSum([{ a, b, K, transA: false, transB: true, alpha: 1 }], null, M, N, 0);
  assertClose(t, C.toFloat32Array(), want, 1e-5, 'async');
  await t.throwsAsync(ops.gemmAsync(C, A, B, { transB: true }), { instanceOf: PeftkitError, code: 'E_DISPOSED' });
  const B2 = Tensor.from(b, [N, K]);
  const S = poisoned([M, N]);
  const A2 = Tensor.from(a, [M, K]);
  await ops.gemmSumAsync(S, [{ A: A2, B: B2, transB: true, alpha: 0.5 }, { A: A2, B: B2, transB: true, alpha: 0.5 }]);
  assertClose(t, S.toFloat32Array(), want, 1e-5, 'gemmSumAsync');
});

test('gemm rejects mismatched shapes and dtypes', (t) => {
  const A = Tensor.zeros([4, 5]), B = Tensor.zeros([6, 4]), C = Tensor.zeros([4, 6]);
  const e = t.throws(() => ops.gemm(C, A, B, { transB: true }), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_SHAPE');
  t.regex(e!.message, /inner dimensions/);
  const I = Tensor.zeros([4, 5], { dtype: 'i32' });
  t.is(t.throws(() => ops.gemm(C, I, B, {}), { instanceOf: PeftkitError })?.code, 'E_DTYPE');
  t.is(t.throws(() => ops.gemm(C, A, {} as Tensor, {}), { instanceOf: PeftkitError })?.code, 'E_ARG');
  const ec = t.throws(() => ops.gemm(C, A, B, { transA: true, compute: 'f16' as 'bf16' }), { instanceOf: PeftkitError });
  t.is(ec?.code, 'E_ARG');
  t.regex(ec!.message, /compute: expected 'f32' or 'bf16'/);
});

test('gemmSum rejects terms that do not fit C', (t) => {
  const C = Tensor.zeros([4, 6]);
  const A = Tensor.zeros([4, 5]), W = Tensor.zeros([6, 5]), Xa = Tensor.zeros([4, 3]), Bw = Tensor.zeros([7, 3]);
  const e = t.throws(() => ops.gemmSum(C, [{ A, B: W, transB: true }, { A: Xa, B: Bw, transB: true }]), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_SHAPE');
  t.regex(e!.message, /gemm C/);
  const ek = t.throws(() => ops.gemmSum(C, [{ A, B: W }]), { instanceOf: PeftkitError });
  t.is(ek?.code, 'E_SHAPE');
  t.regex(ek!.message, /term 0.*inner dimensions/);
  t.is(t.throws(() => ops.gemmSum(C, []), { instanceOf: PeftkitError })?.code, 'E_ARG');
  const I = Tensor.zeros([4, 5], { dtype: 'i32' });
  t.is(t.throws(() => ops.gemmSum(C, [{ A: I, B: W, transB: true }]), { instanceOf: PeftkitError })?.code, 'E_DTYPE');
});
