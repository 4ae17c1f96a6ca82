import test from 'ava';
import { Tensor, PeftkitError, ops } from '../src/index';
import type { Device } from '../src/index';
import { assertClose, devices, makeRng, poisoned, randn, roundBf16 } from './helpers/check';
import type { ExecutionContext } from 'ava';
import type { Rng } from './helpers/check';

// ---- float64 references ------------------------------------------------------------------------
// x, xa [M,K]; w [N,K]; a [r,K]; b [N,r]; bias [N] | null.

interface Dims { M: number; N: number; K: number; r: number }

function refForward(
  x: Float32Array, xa: Float32Array, w: Float32Array, a: Float32Array, b: Float32Array, bias: Float32Array | null,
  s: number, { M, N, K, r }: Dims,
): { y: Float64Array; XA: Float64Array } {
  const XA = new Float64Array(M * r);
  for (let i = 0; i < M; i++)
    for (let p = 0; p < r; p++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += xa[i * K + k] * a[p * K + k];
      XA[i * r + p] = acc;
    }
  const y = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let base = 0;
      for (let k = 0; k < K; k++) base += x[i * K + k] * w[j * K + k];
      let low = 0;
      for (let p = 0; p < r; p++) low += XA[i * r + p] * b[j * r + p];
      y[i * N + j] = base + s * low + (bias ? bias[j] : 0);
    }
  return { y, XA };
}

/** base = dY·W; low = s·(dY·B)·A; dA = s·(dY·B)ᵀ·Xa; dB = s·dYᵀ·XA (before accumulation). */
function refBackward(
  dy: Float32Array, xa: Float32Array, XA: Float32Array, w: Float32Array, a: Float32Array, b: Float32Array, s: number,
  { M, N, K, r }: Dims,
): { base: Float64Array; low: Float64Array; dA: Float64Array; dB: Float64Array } {
  const dyb = new Float64Array(M * r);
  for (let i = 0; i < M; i++)
    for (let p = 0; p < r; p++) {
      let acc = 0;
      for (let j = 0; j < N; j++) acc += dy[i * N + j] * b[j * r + p];
      dyb[i * r + p] = acc;
    }
  const base = new Float64Array(M * K), low = new Float64Array(M * K);
  for (let i = 0; i < M; i++)
    for (let k = 0; k < K; k++) {
      let bs = 0, ls = 0;
      for (let j = 0; j < N; j++) bs += dy[i * N + j] * w[j * K + k];
      for (let p = 0; p < r; p++) ls += dyb[i * r + p] * a[p * K + k];
      base[i * K + k] = bs;
      low[i * K + k] = s * ls;
    }
  const dA = new Float64Array(r * K);
  for (let p = 0; p < r; p++)
    for (let k = 0; k < K; k++) {
      let acc = 0;
      for (let i = 0; i < M; i++) acc += dyb[i * r + p] * xa[i * K + k];
      dA[p * K + k] = s * acc;
    }
  const dB = new Float64Array(N * r);
  for (let j = 0; j < N; j++)
    for (let p = 0; p < r; p++) {
      let acc = 0;
      for (let i = 0; i < M; i++) acc += dy[i * N + j] * XA[i * r + p];
      dB[j * r + p] = s * acc;
    }
  return { base, low, dA, dB };
}

/**
 * bf16 keeps 8 significant bits, so rounding to nearest moves each weight by at most 2⁻⁸ of
 * itself, and Y[i,j] by at most 2⁻⁸·Σ_k |X[i,k]·W[j,k]| from Y on the unrounded W (plus f32
 * noise). A per-element bound: a relative norm fails by chance when base and low-rank terms cancel.
 */
function withinBf16Rounding(y: Float32Array, exact: Float64Array, x: Float32Array, w: Float32Array, { M, N, K }: Dims): boolean {
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let mag = 0;
      for (let k = 0; k < K; k++) mag += Math.abs(x[i * K + k] * w[j * K + k]);
      const e = exact[i * N + j];
      if (!(Math.abs(y[i * N + j] - e) <= 2 ** -8 * mag + 1e-5 * (mag + Math.abs(e)))) return false;
    }
  return true;
}

const add = (x: ArrayLike<number>, y: ArrayLike<number>): Float64Array => Float64Array.from(x, (v, i) => v + y[i]);
const abs = (x: Float32Array): Float32Array => x.map(Math.abs);

/**
 * ‖actual − expected‖ ≤ tol·‖magnitude‖, where magnitude is the same reference evaluated on
 * |inputs|: Σ|terms| per element, which is what f32 rounding scales with. relErr divides by
 * ‖expected‖ instead, which cancellation can make tiny when the output has one element (M = r = 1).
 */
function assertCloseScaled(
  t: ExecutionContext, actual: Float32Array, expected: ArrayLike<number>, magnitude: ArrayLike<number>, tol: number,
  what: string,
): void {
  let num = 0, den = 0;
  for (let i = 0; i < actual.length; i++) {
    num += (actual[i] - expected[i]) ** 2;
    den += magnitude[i] ** 2;
  }
  const e = Math.sqrt(num / (den || 1));
  t.true(actual.length === expected.length && e <= tol, `${what}: error ${e.toExponential(3)} of the magnitude > ${tol}`);
}

// ---- cases -------------------------------------------------------------------------------------
// Leading dims of X (flattened into M), K, N, r: M=1, r=1, primes, dims not multiples of 16.
interface Case { lead: number[]; K: number; N: number; r: number }
const CASES: Case[] = [
  { lead: [1], K: 1, N: 1, r: 1 },
  { lead: [1], K: 19, N: 33, r: 1 },
  { lead: [5], K: 19, N: 33, r: 4 },
  { lead: [2, 3], K: 19, N: 33, r: 3 },
  { lead: [17], K: 40, N: 23, r: 8 },
  { lead: [33], K: 64, N: 48, r: 16 },
  { lead: [], K: 130, N: 17, r: 5 }, // X is 1-D [K]: one row
  { lead: [2, 0], K: 5, N: 3, r: 2 }, // no rows: Y, XA, dX are empty and dA, dB unchanged
];

const dimsOf = (c: Case): Dims => ({ M: c.lead.reduce((p, d) => p * d, 1), N: c.N, K: c.K, r: c.r });
const caseName = (c: Case) => `X [${[...c.lead, 'K'].join(', ')}] K=${c.K} N=${c.N} r=${c.r}`;

/** Fresh random LoRA inputs for one case; W is rounded to bf16 in `w` when wDtype is bf16. */
function makeInputs(rng: Rng, c: Case, wDtype: 'f32' | 'bf16') {
  const { M, N, K, r } = dimsOf(c);
  const w0 = randn(rng, N * K, 1 / Math.sqrt(K));
  return {
    x: randn(rng, M * K),
    xa: randn(rng, M * K),
    w: wDtype === 'bf16' ? roundBf16(w0) : w0,
    wUnrounded: w0,
    a: randn(rng, r * K, 1 / Math.sqrt(K)),
    b: randn(rng, N * r),
    bias: randn(rng, N),
    s: 0.25 + 2 * rng.next(),
  };
}

for (const device of devices()) {
  const T = (data: Float32Array, shape: number[], dtype: 'f32' | 'bf16' = 'f32') => Tensor.from(data, shape, { device, dtype });

  for (const wDtype of ['f32', 'bf16'] as const) {
    test(`${device}: lora_forward (W ${wDtype}) matches float64, with/without bias and dropout input`, (t) => {
      const rng = makeRng(t);
      for (const c of CASES) {
        const d = dimsOf(c);
        const v = makeInputs(rng, c, wDtype);
        const X = T(v.x, [...c.lead, c.K]), Xa = T(v.xa, [...c.lead, c.K]), W = T(v.w, [c.N, c.K], wDtype);
        const A = T(v.a, [c.r, c.K]), B = T(v.b, [c.N, c.r]), bias = T(v.bias, [c.N]);
        for (const withBias of [false, true]) {
          for (const dropout of [false, true]) {
            const Y = poisoned([...c.lead, c.N], device), XA = poisoned([...c.lead, c.r], device);
            ops.loraForward(Y, XA, X, W, A, B, { scale: v.s, bias: withBias ? bias : undefined, dropoutInput: dropout ? Xa : undefined });
            const xa = dropout ? v.xa : v.x;
            const ref = refForward(v.x, xa, v.w, v.a, v.b, withBias ? v.bias : null, v.s, d);
            const mag = refForward(abs(v.x), abs(xa), abs(v.w), abs(v.a), abs(v.b), withBias ? abs(v.bias) : null, v.s, d);
            const what = `${caseName(c)} bias=${withBias} dropout=${dropout}`;
            // bf16 W is exact in the reference (rounded the same way) and accumulation is f32.
            assertCloseScaled(t, Y.toFloat32Array(), ref.y, mag.y, 1e-5, `Y ${what}`);
            assertCloseScaled(t, XA.toFloat32Array(), ref.XA, mag.XA, 1e-5, `XA ${what}`);
            if (wDtype === 'bf16') {
              const exact = refForward(v.x, dropout ? v.xa : v.x, v.wUnrounded, v.a, v.b, withBias ? v.bias : null, v.s, d);
              t.true(withinBf16Rounding(Y.toFloat32Array(), exact.y, v.x, v.wUnrounded, d), `Y vs the unrounded W ${what}`);
            }
          }
        }
      }
    });

    test(`${device}: lora_backward (W ${wDtype}) matches float64: dX/dXa overwritten or skipped, dA/dB accumulate`, (t) => {
      const rng = makeRng(t);
      for (const c of CASES) {
        const d = dimsOf(c);
        const v = makeInputs(rng, c, wDtype);
        const dy = randn(rng, d.M * c.N), XAv = randn(rng, d.M * c.r);
        const dA0 = randn(rng, c.r * c.K), dB0 = randn(rng, c.N * c.r);
        const dY = T(dy, [...c.lead, c.N]), Xa = T(v.xa, [...c.lead, c.K]), XA = T(XAv, [...c.lead, c.r]);
        const W = T(v.w, [c.N, c.K], wDtype), A = T(v.a, [c.r, c.K]), B = T(v.b, [c.N, c.r]);
        const ref = refBackward(dy, v.xa, XAv, v.w, v.a, v.b, v.s, d);
        const mag = refBackward(abs(dy), abs(v.xa), abs(XAv), abs(v.w), abs(v.a), abs(v.b), v.s, d);
        for (const wantDX of [true, false]) {
          for (const dropout of [false, true]) {
            const what = `${caseName(c)} dX=${wantDX} dropout=${dropout}`;
            const dX = wantDX ? poisoned([...c.lead, c.K], device) : null;
            const dXa = dropout ? poisoned([...c.lead, c.K], device) : undefined;
            const dA = T(dA0, [c.r, c.K]), dB = T(dB0, [c.N, c.r]);
            ops.loraBackward(dX, dA, dB, dY, Xa, XA, W, A, B, { scale: v.s, dDropoutInput: dXa });
            if (dX) {
              const [e, m] = dropout ? [ref.base, mag.base] : [add(ref.base, ref.low), add(mag.base, mag.low)];
              assertCloseScaled(t, dX.toFloat32Array(), e, m, 1e-5, `dX ${what}`);
            }
            if (dXa) assertCloseScaled(t, dXa.toFloat32Array(), ref.low, mag.low, 1e-5, `dXa ${what}`);
            assertCloseScaled(t, dA.toFloat32Array(), add(dA0, ref.dA), add(abs(dA0), mag.dA), 1e-5, `dA += ${what}`);
            assertCloseScaled(t, dB.toFloat32Array(), add(dB0, ref.dB), add(abs(dB0), mag.dB), 1e-5, `dB += ${what}`);
          }
        }
      }
    });
  }

  // bf16 compute: the base products read X (or dY) and W rounded to bf16, summed in f32; the
  // rank-r products stay f32. So the reference is float64 on exactly those operands, and the
  // bound stays f32's. Cases add one past a kc slice of the pair kernel (K = 1031, odd).
  const BF16_CASES: Case[] = [...CASES, { lead: [37], K: 1031, N: 70, r: 16 }];
  for (const wDtype of ['f32', 'bf16'] as const) {
    test(`${device}: bf16 compute lora_forward/backward (W ${wDtype}) match float64 on the bf16-rounded base operands`, (t) => {
      const rng = makeRng(t);
      for (const c of BF16_CASES) {
        const d = dimsOf(c);
        const v = makeInputs(rng, c, wDtype);
        const xr = roundBf16(v.x), wr = roundBf16(v.w);
        const X = T(v.x, [...c.lead, c.K]), Xa = T(v.xa, [...c.lead, c.K]), W = T(v.w, [c.N, c.K], wDtype);
        const A = T(v.a, [c.r, c.K]), B = T(v.b, [c.N, c.r]), bias = T(v.bias, [c.N]);
        for (const dropout of [false, true]) {
          const what = `${caseName(c)} dropout=${dropout}`;
          const xa = dropout ? v.xa : v.x;
          const Y = poisoned([...c.lead, c.N], device), XA = poisoned([...c.lead, c.r], device);
          const opts = { scale: v.s, bias: dropout ? undefined : bias, dropoutInput: dropout ? Xa : undefined };
          ops.loraForward(Y, XA, X, W, A, B, { ...opts, compute: 'bf16' });
          const ref = refForward(xr, xa, wr, v.a, v.b, dropout ? null : v.bias, v.s, d);
          const mag = refForward(abs(xr), abs(xa), abs(wr), abs(v.a), abs(v.b), dropout ? null : abs(v.bias), v.s, d);
          assertCloseScaled(t, Y.toFloat32Array(), ref.y, mag.y, 1e-5, `Y ${what}`);
          assertCloseScaled(t, XA.toFloat32Array(), ref.XA, mag.XA, 1e-5, `XA ${what}`);
          if (c.K >= 16 && wDtype === 'f32') {
            // The rounding really happens: on the unrounded operands Y is off by ~2⁻⁹ of the base term.
            const f32 = refForward(v.x, xa, v.w, v.a, v.b, dropout ? null : v.bias, v.s, d);
            const baseOnly = refForward(v.x, xa, v.w, v.a, new Float32Array(c.N * c.r), null, v.s, d).y;
            let num = 0, den = 0;
            const y = Y.toFloat32Array();
            for (let i = 0; i < y.length; i++) (num += (y[i] - f32.y[i]) ** 2), (den += baseOnly[i] ** 2);
            t.true(Math.sqrt(num / den) > 1e-4, `Y ${what}: equals the f32 product, the operands were not rounded`);
          }

          const dy = randn(rng, d.M * c.N), XAv = XA.toFloat32Array();
          const dA0 = randn(rng, c.r * c.K), dB0 = randn(rng, c.N * c.r);
          const dX = poisoned([...c.lead, c.K], device), dXa = dropout ? poisoned([...c.lead, c.K], device) : undefined;
          const dA = T(dA0, [c.r, c.K]), dB = T(dB0, [c.N, c.r]);
          ops.loraBackward(dX, dA, dB, T(dy, [...c.lead, c.N]), dropout ? Xa : X, XA, W, A, B,
            { scale: v.s, dDropoutInput: dXa, compute: 'bf16' });
          const low = refBackward(dy, xa, XAv, v.w, v.a, v.b, v.s, d);
          const lowMag = refBackward(abs(dy), abs(xa), abs(XAv), abs(v.w), abs(v.a), abs(v.b), v.s, d);
          const dyr = roundBf16(dy);
          const base = refBackward(dyr, xa, XAv, wr, v.a, v.b, v.s, d).base;
          const baseMag = refBackward(abs(dyr), abs(xa), abs(XAv), abs(wr), abs(v.a), abs(v.b), v.s, d).base;
          const [e, m] = dropout ? [base, baseMag] : [add(base, low.low), add(baseMag, lowMag.low)];
          assertCloseScaled(t, dX.toFloat32Array(), e, m, 1e-5, `dX ${what}`);
          if (dXa) assertCloseScaled(t, dXa.toFloat32Array(), low.low, lowMag.low, 1e-5, `dXa ${what}`);
          assertCloseScaled(t, dA.toFloat32Array(), add(dA0, low.dA), add(abs(dA0), lowMag.dA), 1e-5, `dA += ${what}`);
          assertCloseScaled(t, dB.toFloat32Array(), add(dB0, low.dB), add(abs(dB0), lowMag.dB), 1e-5, `dB += ${what}`);
        }
      }
    });
  }

  // loss = Σ G⊙Y. Y is linear in each single coordinate of X, Xa, A and B, so a central
  // difference has no truncation error, only the f32 rounding of the forward (~1e-5 here with a
  // large eps): the tolerance can be tighter than the usual 1e-2 of finite differences.
  for (const dropout of [false, true]) {
    test(`${device}: lora_backward agrees with central differences of lora_forward (dropout=${dropout})`, (t) => {
      const rng = makeRng(t);
      const c: Case = { lead: [2, 3], K: 7, N: 5, r: 3 };
      const d = dimsOf(c);
      const v = makeInputs(rng, c, 'f32');
      const g = randn(rng, d.M * c.N);
      const X = T(v.x, [...c.lead, c.K]), Xa = T(v.xa, [...c.lead, c.K]), W = T(v.w, [c.N, c.K]);
      const A = T(v.a, [c.r, c.K]), B = T(v.b, [c.N, c.r]), bias = T(v.bias, [c.N]);
      const Y = poisoned([...c.lead, c.N], device), XA = poisoned([...c.lead, c.r], device);
      const loss = (): number => {
        ops.loraForward(Y, XA, X, W, A, B, { scale: v.s, bias, dropoutInput: dropout ? Xa : undefined });
        const y = Y.toFloat32Array();
        let l = 0;
        for (let i = 0; i < y.length; i++) l += g[i] * y[i];
        return l;
      };
      const eps = 0.05;
      const numeric = (tensor: Tensor, values: Float32Array): Float64Array => {
        const out = new Float64Array(values.length);
        for (let i = 0; i < values.length; i++) {
          const p = values.slice(), m = values.slice();
          p[i] += eps;
          m[i] -= eps;
          tensor.write(p);
          const lp = loss();
          tensor.write(m);
          const lm = loss();
          out[i] = (lp - lm) / (p[i] - m[i]); // the step f32 actually took
        }
        tensor.write(values);
        return out;
      };
      loss(); // XA for the backward
      const dY = T(g, [...c.lead, c.N]);
      const dX = poisoned([...c.lead, c.K], device), dXa = dropout ? poisoned([...c.lead, c.K], device) : undefined;
      const dA = Tensor.zeros([c.r, c.K], { device }), dB = Tensor.zeros([c.N, c.r], { device });
      ops.loraBackward(dX, dA, dB, dY, dropout ? Xa : X, XA, W, A, B, { scale: v.s, dDropoutInput: dXa });
      assertClose(t, dX.toFloat32Array(), numeric(X, v.x), 1e-3, 'dX');
      if (dXa) assertClose(t, dXa.toFloat32Array(), numeric(Xa, v.xa), 1e-3, 'dXa');
      assertClose(t, dA.toFloat32Array(), numeric(A, v.a), 1e-3, 'dA');
      assertClose(t, dB.toFloat32Array(), numeric(B, v.b), 1e-3, 'dB');
    });
  }

  test(`${device}: with B = 0 (a fresh PEFT adapter) Y is the base layer X·Wᵀ`, (t) => {
    const rng = makeRng(t);
    for (const c of CASES) {
      for (const wDtype of ['f32', 'bf16'] as const) {
        const d = dimsOf(c);
        const v = makeInputs(rng, c, wDtype);
        const X2 = T(v.x, [d.M, c.K]), W = T(v.w, [c.N, c.K], wDtype);
        const base = poisoned([d.M, c.N], device);
        ops.gemm(base, X2, W, { transB: true });
        const Y = poisoned([...c.lead, c.N], device), XA = poisoned([...c.lead, c.r], device);
        const B0 = Tensor.zeros([c.N, c.r], { device });
        ops.loraForward(Y, XA, T(v.x, [...c.lead, c.K]), W, T(v.a, [c.r, c.K]), B0, { scale: v.s });
        const mag = refForward(abs(v.x), abs(v.x), abs(v.w), abs(v.a), new Float32Array(c.N * c.r), null, v.s, d).y;
        assertCloseScaled(t, Y.toFloat32Array(), base.toFloat32Array(), mag, 1e-6, `${caseName(c)} W ${wDtype}`);
      }
    }
  });

  test(`${device}: async twins give the same results and keep disposed inputs alive`, async (t) => {
    const rng = makeRng(t);
    const c: Case = { lead: [4, 5], K: 23, N: 29, r: 6 };
    const d = dimsOf(c);
    const v = makeInputs(rng, c, 'f32');
    const X = T(v.x, [...c.lead, c.K]), W = T(v.w, [c.N, c.K]), A = T(v.a, [c.r, c.K]), B = T(v.b, [c.N, c.r]);
    const Y = poisoned([...c.lead, c.N], device), XA = poisoned([...c.lead, c.r], device);
    const forward = ops.loraForwardAsync(Y, XA, X, W, A, B, { scale: v.s });
    X.dispose();
    await forward;
    const ref = refForward(v.x, v.x, v.w, v.a, v.b, null, v.s, d);
    assertClose(t, Y.toFloat32Array(), ref.y, 1e-5, 'Y');
    const dy = randn(rng, d.M * c.N);
    const dX = poisoned([...c.lead, c.K], device);
    const dA = Tensor.zeros([c.r, c.K], { device }), dB = Tensor.zeros([c.N, c.r], { device });
    const xaSaved = XA.toFloat32Array();
    await ops.loraBackwardAsync(dX, dA, dB, T(dy, [...c.lead, c.N]), T(v.x, [...c.lead, c.K]), XA, W, A, B, { scale: v.s });
    const rb = refBackward(dy, v.x, xaSaved, v.w, v.a, v.b, v.s, d);
    assertClose(t, dX.toFloat32Array(), add(rb.base, rb.low), 1e-5, 'dX');
    assertClose(t, dA.toFloat32Array(), rb.dA, 1e-5, 'dA');
    assertClose(t, dB.toFloat32Array(), rb.dB, 1e-5, 'dB');
    await t.throwsAsync(ops.loraForwardAsync(Y, XA, X, W, A, B), { instanceOf: PeftkitError, code: 'E_DISPOSED' });
    await t.throwsAsync(ops.loraForwardAsync(Y, XA, W, W, A, B), { instanceOf: PeftkitError, code: 'E_SHAPE' });
  });

  test(`${device}: bad arguments give PeftkitErrors that name the argument`, (t) => {
    const [M, K, N, r] = [3, 8, 6, 2];
    const z = (shape: number[], dtype: 'f32' | 'bf16' | 'i32' = 'f32') => Tensor.zeros(shape, { device: device as Device, dtype });
    const X = z([M, K]), W = z([N, K]), A = z([r, K]), B = z([N, r]), Y = z([M, N]), XA = z([M, r]);
    const fwd = (o: Partial<Record<'Y' | 'XA' | 'X' | 'W' | 'A' | 'B', Tensor>>, opts: ops.LoraForwardOptions = {}) => () =>
      ops.loraForward(o.Y ?? Y, o.XA ?? XA, o.X ?? X, o.W ?? W, o.A ?? A, o.B ?? B, opts);
    const expectError = (fn: () => void, code: string, message: RegExp) => {
      const e = t.throws(fn, { instanceOf: PeftkitError });
      t.is(e?.code, code, e?.message);
      t.regex(e?.message ?? '', message);
    };
    expectError(fwd({ W: z([N, K + 1]) }), 'E_SHAPE', /lora_forward W: expected shape \[N, 8\]/);
    expectError(fwd({ A: z([r, K - 1]) }), 'E_SHAPE', /lora_forward A/);
    expectError(fwd({ A: z([0, K]), B: z([N, 0]), XA: z([M, 0]) }), 'E_SHAPE', /rank r >= 1/);
    expectError(fwd({ B: z([N, r + 1]) }), 'E_SHAPE', /lora_forward B: expected shape \[6, 2\]/);
    expectError(fwd({ Y: z([M + 1, N]) }), 'E_SHAPE', /lora_forward Y/);
    expectError(fwd({ XA: z([M, r + 1]) }), 'E_SHAPE', /lora_forward XA/);
    expectError(fwd({ X: z([]) }), 'E_SHAPE', /lora_forward X: expected at least 1 dimension/);
    expectError(fwd({}, { bias: z([N + 1]) }), 'E_SHAPE', /lora_forward bias/);
    expectError(fwd({}, { dropoutInput: z([M, K + 1]) }), 'E_SHAPE', /lora_forward Xa/);
    expectError(fwd({ X: z([M, K], 'i32') }), 'E_DTYPE', /lora_forward X: expected dtype f32/);
    expectError(fwd({ A: z([r, K], 'bf16') }), 'E_DTYPE', /lora_forward A/);
    expectError(fwd({ W: z([N, K], 'i32') }), 'E_DTYPE', /lora_forward W: expected dtype f32 or bf16/);
    expectError(fwd({}, { scale: NaN }), 'E_ARG', /scale/);
    expectError(fwd({}, { compute: 'fp8' as 'bf16' }), 'E_ARG', /compute: expected 'f32' or 'bf16'/);
    expectError(fwd({ B: {} as Tensor }), 'E_ARG', /B: expected a Tensor/);
    const square = z([M, K]);
    expectError(() => ops.loraForward(square, XA, square, z([K, K]), A, z([K, r])), 'E_ARG', /Y and lora_forward X are the same tensor/);

    const dY = z([M, N]), dA = z([r, K]), dB = z([N, r]);
    const bwd = (o: Partial<Record<'dX' | 'dA' | 'dB' | 'dY' | 'Xa' | 'XA' | 'W', Tensor>>, opts: ops.LoraBackwardOptions = {}) => () =>
      ops.loraBackward(o.dX ?? z([M, K]), o.dA ?? dA, o.dB ?? dB, o.dY ?? dY, o.Xa ?? X, o.XA ?? XA, o.W ?? W, A, B, opts);
    t.notThrows(bwd({}));
    expectError(bwd({ dY: z([M, N + 1]) }), 'E_SHAPE', /lora_backward W: expected shape \[7, 8\]/);
    expectError(bwd({ dA: z([r + 1, K]) }), 'E_SHAPE', /lora_backward dA/);
    expectError(bwd({ dB: z([N, r], 'bf16') }), 'E_DTYPE', /lora_backward dB/);
    expectError(bwd({ dX: z([M, K + 1]) }), 'E_SHAPE', /lora_backward dX/);
    expectError(bwd({}, { dDropoutInput: z([M + 1, K]) }), 'E_SHAPE', /lora_backward dXa/);
    expectError(bwd({ Xa: z([M + 1, K]) }), 'E_SHAPE', /lora_backward Xa/);
    expectError(bwd({ XA: z([M, r + 1]) }), 'E_SHAPE', /lora_backward XA/);
    expectError(bwd({ dA: A }), 'E_ARG', /lora_backward dA and lora_backward A are the same tensor/);
  });
}
