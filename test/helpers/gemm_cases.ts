/**
 * GEMM cases checked against float64, shared by test/gemm.test.ts and the per-ISA subprocess
 * check (gemm_isa_check.ts), so every micro-kernel path runs the same table.
 */
import { Tensor, ops } from '../../src/index';
import type { Device } from '../../src/index';
import { Rng, poisoned, randn, relErr, roundBf16 } from './check';

type DT = 'f32' | 'bf16';

export interface GemmCase {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  a?: DT;
  b?: DT;
  c?: DT;
  alpha?: number;
  beta?: number;
  /** 'bf16': f32 operands are read rounded to bf16 (bf16 compute). Defaults to 'f32'. */
  compute?: 'f32' | 'bf16';
}

export const TRANS: ReadonlyArray<readonly [boolean, boolean]> = [
  [false, true], // X·Wᵀ
  [false, false], // dY·W
  [true, false], // dYᵀ·X
  [true, true],
];

/** float64 C = Σ alpha·op(A)·op(B) + beta·C0, for A [M,K] (or [K,M] when transA) and B [K,N] (or [N,K]). */
export function refGemmSum(
  terms: Array<{ a: Float32Array; b: Float32Array; K: number; transA: boolean; transB: boolean; alpha: number }>,
  C0: Float32Array | null, M: number, N: number, beta: number,
): Float64Array {
  const C = new Float64Array(M * N);
  if (C0 && beta !== 0) for (let i = 0; i < M * N; i++) C[i] = beta * C0[i];
  for (const { a, b, K, transA, transB, alpha } of terms) {
    // op(A) rows and op(B) columns copied out contiguous, so the inner loop is a plain dot.
    const at = new Float64Array(M * K), bt = new Float64Array(N * K);
    for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) at[i * K + k] = a[transA ? k * M + i : i * K + k];
    for (let j = 0; j < N; j++) for (let k = 0; k < K; k++) bt[j * K + k] = b[transB ? j * K + k : k * N + j];
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s0 = 0, s1 = 0;
        const ro = i * K, co = j * K;
        let k = 0;
        for (; k + 1 < K; k += 2) {
          s0 += at[ro + k] * bt[co + k];
          s1 += at[ro + k + 1] * bt[co + k + 1];
        }
        if (k < K) s0 += at[ro + k] * bt[co + k];
        C[i * N + j] += alpha * (s0 + s1);
      }
  }
  return C;
}

/** Random values exactly representable in `dtype` (all positive with `positive`), and their tensor. */
export function operand(
  rng: Rng, n: number, shape: number[], dtype: DT, device: Device, positive = false,
): { x: Float32Array; t: Tensor } {
  const raw = randn(rng, n);
  if (positive) for (let i = 0; i < n; i++) raw[i] = Math.abs(raw[i]);
  const x = dtype === 'bf16' ? roundBf16(raw) : raw;
  return { x, t: Tensor.from(x, shape, { device, dtype }) };
}

/**
 * Runs one case into a NaN-poisoned C (with beta, a random C); returns a failure message or null.
 * An output of a few elements gets positive inputs (and the tables give it alpha, beta >= 0):
 * with signs, a single element can cancel to near zero (say 2·(a·b) + 0.5·c = 0.02 from terms
 * near 10), where correct f32 round-off is a large relative error of that small result.
 */
export function runCase(rng: Rng, device: Device, g: GemmCase): string | null {
  const { M, N, K, transA, transB } = g;
  const alpha = g.alpha ?? 1, beta = g.beta ?? 0;
  const tiny = M * N < 8;
  const A = operand(rng, M * K, transA ? [K, M] : [M, K], g.a ?? 'f32', device, tiny);
  const B = operand(rng, K * N, transB ? [N, K] : [K, N], g.b ?? 'f32', device, tiny);
  let C: Tensor, c0: Float32Array | null = null;
  if (beta === 0) C = poisoned([M, N], device, g.c ?? 'f32');
  else ({ x: c0, t: C } = operand(rng, M * N, [M, N], g.c ?? 'f32', device, tiny));
  const compute = g.compute ?? 'f32';
  ops.gemm(C, A.t, B.t, { transA, transB, alpha, beta, compute });
  // bf16 compute: the reference multiplies the operands' bf16 roundings (exact in float64).
  const seen = (x: Float32Array) => (compute === 'bf16' ? roundBf16(x) : x);
  const want = refGemmSum([{ a: seen(A.x), b: seen(B.x), K, transA, transB, alpha }], c0, M, N, beta);
  let fail = compare(C, want, g);
  const anyF32 = (g.a ?? 'f32') === 'f32' || (g.b ?? 'f32') === 'f32';
  if (!fail && compute === 'bf16' && anyF32 && (g.c ?? 'f32') === 'f32' && K >= 16 && M * N >= 8) {
    // The rounding must really happen: against the unrounded operands the error is ~1e-3.
    const unrounded = refGemmSum([{ a: A.x, b: B.x, K, transA, transB, alpha }], c0, M, N, beta);
    const e = relErr(C.toFloat32Array(), unrounded);
    if (!(e > 1e-4)) fail = `bf16 compute matches the unrounded product (relative error ${e.toExponential(3)}): not rounded`;
  }
  for (const t of [A.t, B.t, C]) t.dispose();
  return fail;
}

export function describe(g: GemmCase): string {
  return `M=${g.M} N=${g.N} K=${g.K} transA=${g.transA} transB=${g.transB} A=${g.a ?? 'f32'} B=${g.b ?? 'f32'} ` +
    `C=${g.c ?? 'f32'} alpha=${g.alpha ?? 1} beta=${g.beta ?? 0} compute=${g.compute ?? 'f32'}`;
}

/**
 * bf16 compute must round to nearest EVEN, as torch's `.to(torch.bfloat16)`: op(A) holds values
 * exactly halfway between two bf16 neighbours (both parities), values just off a tie, and random
 * values, and op(B) is the identity, so C must equal the bf16 rounding of op(A) bit for bit (and
 * the same with the roles swapped, so both operands' packers are checked). Returns a failure
 * message or null.
 */
export function runRoundingCase(rng: Rng, device: Device, M: number, K: number, transA: boolean, transB: boolean,
  swap: boolean): string | null {
  const x = new Float32Array(M * K);
  const u = new Uint32Array(x.buffer);
  for (let i = 0; i < x.length; i++) {
    const top = (0x3f00 + rng.int(0, 0x200)) | (rng.next() < 0.5 ? 0x8000 : 0); // ±[0.5, 4)
    const kind = i % 4; // 0: tie, 1: just below a tie, 2: just above, 3: random low bits
    const low = kind === 0 ? 0x8000 : kind === 1 ? 0x7fff : kind === 2 ? 0x8001 : rng.int(0, 0x10000);
    u[i] = ((top << 16) | low) >>> 0;
  }
  const eye = new Float32Array(K * K);
  for (let k = 0; k < K; k++) eye[k * K + k] = 1;
  // op(X) is [M, K] (swap: op(X)ᵀ, the B side [K, M]); the identity is the other operand.
  const xt = new Float32Array(M * K);
  for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) xt[k * M + i] = x[i * K + k];
  const C = poisoned(swap ? [K, M] : [M, K], device);
  const I = Tensor.from(eye, [K, K], { device });
  let X: Tensor;
  if (!swap) {
    X = Tensor.from(transA ? xt : x, transA ? [K, M] : [M, K], { device });
    ops.gemm(C, X, I, { transA, transB, compute: 'bf16' });
  } else {
    // C [K, M] = I · op(B) with op(B) = xᵀ [K, M]: stored [K, M] (xt), or [M, K] (x) when transB.
    X = Tensor.from(transB ? x : xt, transB ? [M, K] : [K, M], { device });
    ops.gemm(C, I, X, { transA, transB, compute: 'bf16' });
  }
  const got = C.toFloat32Array();
  for (const t of [C, I, X]) t.dispose();
  const want = roundBf16(swap ? xt : x);
  for (let i = 0; i < got.length; i++) {
    if (!Object.is(got[i], want[i])) return `element ${i}: got ${got[i]}, expected bf16 round-to-nearest-even ${want[i]}`;
  }
  return null;
}

/** The project's bounds: f32 1e-5, bf16 1e-2 (relative, Frobenius). */
export function tolerance(g: { c?: DT }): number {
  return (g.c ?? 'f32') === 'bf16' ? 1e-2 : 1e-5;
}

/**
 * Compares C with the float64 result: the relative error within tolerance and, for bf16 C, the
 * elements equal to the correctly rounded value, bar the few that f32 accumulation error pushes
 * across a rounding boundary. bf16 C must be rounded once, from f32 sums: rounding partial sums
 * (between K slices) would miss about half of them. Returns a message on failure, else null.
 */
export function compare(c: Tensor, want: Float64Array, g: { c?: DT }): string | null {
  const got = c.toFloat32Array();
  const err = relErr(got, want);
  if (!(err <= tolerance(g))) return `relative error ${err.toExponential(3)} > ${tolerance(g)}`;
  if ((g.c ?? 'f32') === 'bf16') {
    const rounded = roundBf16(Float32Array.from(want));
    let off = 0;
    for (let i = 0; i < got.length; i++) if (got[i] !== rounded[i]) off++;
    if (off > Math.max(1, 0.02 * got.length)) return `${off} of ${got.length} bf16 elements not correctly rounded`;
  }
  return null;
}

/**
 * Cases that cross every block boundary of every micro-kernel: M past the 4/6/14-row tiles with
 * a remainder, N past a 512-column block into a narrow last panel, N past nc = 2048 in one
 * thread (M = 3 keeps the reference cheap), K past kc (256 or 512, in equal slices; bf16 pairs
 * 512) and odd, plus M = 1, N = 1, K = 1 and the skinny LoRA shapes (rank 16 as M, N or K).
 */
export function isaCases(): GemmCase[] {
  const cases: GemmCase[] = [];
  for (const [transA, transB] of TRANS) {
    cases.push({ M: 61, N: 530, K: 601, transA, transB });
    cases.push({ M: 3, N: 4300, K: 601, transA, transB, beta: 1 });
    cases.push({ M: 3, N: 4300, K: 1031, transA, transB, a: 'bf16', b: 'bf16', c: 'bf16' });
    cases.push({ M: 37, N: 45, K: 1031, transA, transB, a: 'bf16', b: 'bf16' });
    cases.push({ M: 37, N: 45, K: 1031, transA, transB, a: 'bf16', b: 'bf16', c: 'bf16', alpha: -1.5, beta: 0.25 });
    cases.push({ M: 29, N: 33, K: 300, transA, transB, a: 'f32', b: 'bf16', alpha: 0.5, beta: 1 });
    cases.push({ M: 29, N: 33, K: 300, transA, transB, a: 'bf16', b: 'f32', c: 'bf16' });
    for (const [M, N, K] of [[1, 37, 300], [37, 1, 300], [23, 29, 1], [1, 1, 7]])
      cases.push({ M, N, K, transA, transB, alpha: 2, beta: 0.5 });
    for (const [M, N, K] of [[200, 16, 300], [16, 300, 257], [300, 16, 257], [257, 300, 16]])
      cases.push({ M, N, K, transA, transB });
    // 2 to 16 rows (a decode step of a batch): X·Wᵀ reads W in place on AVX-512 (GemmFewRows),
    // in blocks of 8 rows and their rest, two W rows at a time (odd N), K off the 16-lane vector.
    for (const [M, N, K] of [[2, 37, 33], [9, 517, 601], [15, 3, 15], [16, 45, 1031]]) {
      cases.push({ M, N, K, transA, transB, alpha: -0.5, beta: 0.5 });
      cases.push({ M, N, K, transA, transB, a: 'bf16', b: 'bf16', c: 'bf16' });
      cases.push({ M, N, K, transA, transB, b: 'bf16', compute: 'bf16', beta: 1 });
    }
    // bf16 compute: f32 operands rounded while packed (bf16 pairs, or widened back into f32
    // panels where there is no bf16 kernel), across kc and nc, beside stored bf16, and M/N = 1.
    const compute = 'bf16' as const;
    cases.push({ M: 37, N: 45, K: 1031, transA, transB, compute });
    cases.push({ M: 3, N: 4300, K: 301, transA, transB, compute, alpha: -0.5, beta: 1 });
    cases.push({ M: 29, N: 33, K: 300, transA, transB, a: 'bf16', compute, c: 'bf16' });
    cases.push({ M: 29, N: 33, K: 301, transA, transB, b: 'bf16', compute, beta: 0.5 });
    for (const [M, N, K] of [[1, 37, 300], [37, 1, 300], [200, 16, 300], [16, 300, 257]])
      cases.push({ M, N, K, transA, transB, compute, alpha: 2, beta: 0.5 });
  }
  return cases;
}

/** The round-to-nearest-even cases (runRoundingCase) for every layout and both operand roles. */
export function roundingCases(): Array<{ M: number; K: number; transA: boolean; transB: boolean; swap: boolean }> {
  const out = [];
  for (const [transA, transB] of TRANS)
    for (const swap of [false, true]) {
      out.push({ M: 37, K: 67, transA, transB, swap });
      out.push({ M: 3, K: 40, transA, transB, swap });
    }
  return out;
}

export interface SumCase {
  M: number;
  N: number;
  terms: Array<{ K: number; transA: boolean; transB: boolean; a?: DT; b?: DT; alpha: number }>;
  c?: DT;
  beta?: number;
}

/** ops.gemmSum into a poisoned (beta 0) or random C; returns a failure message or null. */
export function runSumCase(rng: Rng, device: Device, g: SumCase): string | null {
  const { M, N } = g;
  const beta = g.beta ?? 0;
  const terms = g.terms.map((t) => ({
    ...t,
    A: operand(rng, M * t.K, t.transA ? [t.K, M] : [M, t.K], t.a ?? 'f32', device),
    B: operand(rng, t.K * N, t.transB ? [N, t.K] : [t.K, N], t.b ?? 'f32', device),
  }));
  let C: Tensor, c0: Float32Array | null = null;
  if (beta === 0) C = poisoned([M, N], device, g.c ?? 'f32');
  else ({ x: c0, t: C } = operand(rng, M * N, [M, N], g.c ?? 'f32', device));
  ops.gemmSum(C, terms.map((t) => ({ A: t.A.t, B: t.B.t, transA: t.transA, transB: t.transB, alpha: t.alpha })), { beta });
  const want = refGemmSum(terms.map((t) => ({ a: t.A.x, b: t.B.x, K: t.K, transA: t.transA, transB: t.transB, alpha: t.alpha })), c0, M, N, beta);
  const fail = compare(C, want, g);
  for (const t of terms) {
    t.A.t.dispose();
    t.B.t.dispose();
  }
  C.dispose();
  return fail;
}

export function describeSum(g: SumCase): string {
  const ts = g.terms.map((t) => `K=${t.K} tA=${t.transA} tB=${t.transB} ${t.a ?? 'f32'}·${t.b ?? 'f32'} alpha=${t.alpha}`);
  return `sum M=${g.M} N=${g.N} C=${g.c ?? 'f32'} beta=${g.beta ?? 0} [${ts.join('; ')}]`;
}

/**
 * The LoRA fusion and its relatives: K ranges of different lengths, layouts and dtypes in one
 * pass, across kc slices (300 + 16 + 5 > 256), nc blocks (N = 530), the turned-around product
 * (M = 16) and the in-place-A path (N = 16), plus M = 1 and N = 1.
 */
export function sumCases(): SumCase[] {
  const lora = (K: number, r: number) => [
    { K, transA: false, transB: true, alpha: 1 },
    { K: r, transA: false, transB: true, alpha: 2 },
    { K: 5, transA: true, transB: false, a: 'bf16' as DT, b: 'bf16' as DT, alpha: -0.5 },
  ];
  return [
    { M: 61, N: 530, terms: lora(300, 16) },
    { M: 61, N: 530, terms: lora(300, 16), c: 'bf16', beta: 0.5 },
    { M: 200, N: 16, terms: lora(257, 7), beta: 1 },
    { M: 200, N: 16, terms: lora(257, 7).slice(0, 2) }, // all-f32 A: read in place, term by term
    { M: 16, N: 300, terms: lora(257, 7) },
    { M: 16, N: 300, terms: lora(257, 7).slice(0, 2), beta: 1 },
    { M: 1, N: 300, terms: lora(257, 16), beta: 0.5 },
    { M: 300, N: 1, terms: lora(257, 16) },
    { M: 40, N: 50, terms: [{ K: 600, transA: true, transB: true, a: 'bf16', b: 'bf16', alpha: 1 }], c: 'bf16' },
    // A bf16 first term (bf16 compute's base product) with f32 terms after it: on AVX512-BF16 the
    // first runs on the pair kernel over kc slices and the others join each tile after its last
    // slice; bf16 C keeps f32 sums between slices; M = 16 turns the product around; a tail longer
    // than one f32 slice goes through the f32 kernel whole.
    ...[[61, 530], [16, 300], [200, 16], [1, 300]].map(([M, N]) => ({ M, N, terms: bf16Lead(1031, 16), beta: 0.5 })),
    { M: 37, N: 530, terms: bf16Lead(1031, 16), c: 'bf16' as DT, beta: 0.5 },
    { M: 37, N: 70, terms: [{ ...bf16Lead(300, 16)[0] }, { K: 600, transA: true, transB: false, alpha: 0.5 }] },
  ];
}

/** A stored-bf16 first term of K, then two f32 terms (r and 5 long). */
function bf16Lead(K: number, r: number): SumCase['terms'] {
  return [
    { K, transA: false, transB: true, a: 'bf16', b: 'bf16', alpha: 1.5 },
    { K: r, transA: false, transB: true, alpha: 2 },
    { K: 5, transA: true, transB: false, alpha: -0.5 },
  ];
}
