import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { Tensor, PeftkitError, ops, f32ToBf16, runtimeInfo } from '../src/index';
import type { Device } from '../src/index';
import type { Llama3RopeScaling } from '../src/ops/transformer';
import { assertClose, devices, makeRng, poisoned, randInts, randn, roundBf16, centralDifferences } from './helpers/check';
import type { Rng } from './helpers/check';
import { CHILD_DROPOUT, pointwiseInputs } from './helpers/pointwise_child';

const f32 = Math.fround;
const prod = (s: number[]): number => s.reduce((a, b) => a * b, 1);

function expectCode(t: ExecutionContext, fn: () => unknown, code: string, message?: RegExp): void {
  const e = t.throws(fn, { instanceOf: PeftkitError });
  t.is(e?.code, code, e?.message);
  if (message && e) t.regex(e.message, message);
}

// ---- float64 references ------------------------------------------------------------------------

function refRmsnorm(x: Float32Array, w: Float32Array, N: number, C: number, eps: number) {
  const out = new Float64Array(N * C), rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let j = 0; j < C; j++) ss += x[n * C + j] ** 2;
    rstd[n] = 1 / Math.sqrt(ss / C + eps);
    for (let j = 0; j < C; j++) out[n * C + j] = x[n * C + j] * rstd[n] * w[j];
  }
  return { out, rstd };
}

/** dx and Σ_n dout·x̂ of RMSNorm, from the analytic derivative. */
function refRmsnormBackward(dout: Float32Array, x: Float32Array, w: Float32Array, N: number, C: number, eps: number) {
  const { rstd } = refRmsnorm(x, w, N, C, eps);
  const dx = new Float64Array(N * C), dw = new Float64Array(C), term = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    const r = rstd[n];
    let dot = 0;
    for (let j = 0; j < C; j++) dot += dout[n * C + j] * w[j] * x[n * C + j];
    for (let j = 0; j < C; j++) {
      term[n * C + j] = r * w[j] * dout[n * C + j];
      dx[n * C + j] = term[n * C + j] - ((r * r * r) / C) * dot * x[n * C + j];
      dw[j] += dout[n * C + j] * x[n * C + j] * r;
    }
  }
  return { dx, dw, term };
}

/**
 * dx of RMSNorm within 1e-5 relative. For C = 1 the two terms of dx cancel to
 * r·w·dout·eps/(x² + eps), which no f32 kernel (holding an f32 rstd) gets to 1e-5 relative;
 * there the error is measured against the size of the first term r·w·dout instead.
 */
function checkRmsnormDx(
  t: ExecutionContext, actual: Float32Array, ref: { dx: Float64Array; term: Float64Array }, C: number, what: string,
): void {
  if (C > 1) return assertClose(t, actual, ref.dx, 1e-5, what);
  let num = 0, den = 0;
  for (let i = 0; i < actual.length; i++) {
    num += Number.isFinite(actual[i]) ? (actual[i] - ref.dx[i]) ** 2 : Infinity;
    den += ref.term[i] ** 2;
  }
  const e = Math.sqrt(num / den);
  t.true(e <= 1e-5, `${what}: error ${e.toExponential(3)} relative to ‖r·w·dout‖ > 1e-5`);
}

function refLayernorm(x: Float32Array, w: Float32Array, b: Float32Array | null, N: number, C: number, eps: number) {
  const out = new Float64Array(N * C), mean = new Float64Array(N), rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let s = 0;
    for (let j = 0; j < C; j++) s += x[n * C + j];
    const mu = s / C;
    let v = 0;
    for (let j = 0; j < C; j++) v += (x[n * C + j] - mu) ** 2;
    mean[n] = mu;
    rstd[n] = 1 / Math.sqrt(v / C + eps);
    for (let j = 0; j < C; j++) out[n * C + j] = (x[n * C + j] - mu) * rstd[n] * w[j] + (b ? b[j] : 0);
  }
  return { out, mean, rstd };
}

function refLayernormBackward(dout: Float32Array, x: Float32Array, w: Float32Array, N: number, C: number, eps: number) {
  const { mean, rstd } = refLayernorm(x, w, null, N, C, eps);
  const dx = new Float64Array(N * C), dw = new Float64Array(C), db = new Float64Array(C);
  for (let n = 0; n < N; n++) {
    const xhat = (j: number) => (x[n * C + j] - mean[n]) * rstd[n];
    let mg = 0, mgx = 0;
    for (let j = 0; j < C; j++) {
      const g = dout[n * C + j] * w[j];
      mg += g / C;
      mgx += (g * xhat(j)) / C;
    }
    for (let j = 0; j < C; j++) {
      dx[n * C + j] = rstd[n] * (dout[n * C + j] * w[j] - mg - xhat(j) * mgx);
      dw[j] += dout[n * C + j] * xhat(j);
      db[j] += dout[n * C + j];
    }
  }
  return { dx, dw, db };
}

/**
 * inv_freq as transformers computes it: `1.0 / (base ** (arange(0, D, 2).float() / D))` in f32
 * (each step rounded to f32), then `_compute_llama3_parameters`, here in float64.
 */
function refInvFreq(D: number, theta: number, s: Llama3RopeScaling | null): number[] {
  const inv: number[] = [];
  for (let i = 0; i < D / 2; i++) {
    let v = f32(1 / f32(theta ** f32((2 * i) / D)));
    if (s) {
      const low = s.lowFreqFactor ?? 1, high = s.highFreqFactor ?? 4, orig = s.originalMaxPositionEmbeddings ?? 8192;
      const wavelen = (2 * Math.PI) / v;
      if (wavelen < orig / high) {
        // unchanged
      } else if (wavelen > orig / low) {
        v = v / s.factor;
      } else {
        const smooth = (orig / wavelen - low) / (high - low);
        v = ((1 - smooth) * v) / s.factor + smooth * v;
      }
    }
    inv.push(f32(v));
  }
  return inv;
}

/** cos/sin [T, D/2] of the angle position·inv_freq, rounded to f32 as HF's f32 product forms it. */
function refRopeTable(positions: Int32Array, D: number, theta: number, s: Llama3RopeScaling | null) {
  const inv = refInvFreq(D, theta, s), half = D / 2, T = positions.length;
  const cos = new Float64Array(T * half), sin = new Float64Array(T * half);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < half; i++) {
      const angle = f32(positions[t] * inv[i]);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  return { cos, sin };
}

/** Rotate-half rotation of every [D] head of x [rows, D]; sign -1 rotates backwards. */
function refRope(x: ArrayLike<number>, cos: ArrayLike<number>, sin: ArrayLike<number>, shape: number[], sign: 1 | -1) {
  const [T, H, D] = shape.slice(-3), half = D / 2, rows = prod(shape) / D;
  const out = new Float64Array(prod(shape));
  for (let r = 0; r < rows; r++) {
    const t = Math.floor(r / H) % T;
    for (let i = 0; i < half; i++) {
      const c = cos[t * half + i], s = sign * sin[t * half + i];
      const x1 = x[r * D + i], x2 = x[r * D + i + half];
      out[r * D + i] = x1 * c - x2 * s;
      out[r * D + i + half] = x2 * c + x1 * s;
    }
  }
  return out;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/** erf to ~1e-16 (Taylor series near 0, continued fraction of erfc further out). */
function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let term = ax, sum = ax;
    for (let k = 1; k < 200 && Math.abs(term) > 1e-17 * sum; k++) {
      term *= (-ax * ax) / k;
      sum += term / (2 * k + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x²)/sqrt(π) · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))), evaluated bottom-up.
  let f = ax;
  for (let k = 60; k >= 1; k--) f = ax + k / 2 / f;
  return Math.sign(x) * (1 - Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f);
}

const K_TANH = Math.sqrt(2 / Math.PI);
const geluTanh = (x: number) => 0.5 * x * (1 + Math.tanh(K_TANH * (x + 0.044715 * x ** 3)));
const geluTanhGrad = (x: number) => {
  const th = Math.tanh(K_TANH * (x + 0.044715 * x ** 3));
  return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * K_TANH * (1 + 3 * 0.044715 * x * x);
};
const geluErf = (x: number) => 0.5 * x * (1 + erf(x / Math.SQRT2));
const geluErfGrad = (x: number) => 0.5 * (1 + erf(x / Math.SQRT2)) + (x * Math.exp(-0.5 * x * x)) / Math.sqrt(2 * Math.PI);
const silu = (x: number) => x * sigmoid(x);
const siluGrad = (x: number) => sigmoid(x) * (1 + x * (1 - sigmoid(x)));

/** Normal values with a few extremes mixed in (saturated sigmoid / tanh / erf). */
function activationInputs(rng: Rng, n: number): Float32Array {
  const x = randn(rng, n, 3);
  const extremes = [0, -0, 30, -30, 100, -100, 1e-7, -1e-7];
  for (let k = 0; k < extremes.length && k < n; k++) x[rng.int(0, n)] = extremes[k];
  return x;
}

const map64 = (x: ArrayLike<number>, f: (v: number, i: number) => number) => Float64Array.from({ length: x.length }, (_, i) => f(x[i], i));

// ---- the hash of peftkit/dropout_rng.h, in BigInt, to pin the mask bit for bit -----------------

const M64 = (1n << 64n) - 1n;
function splitmix64Mix(z: bigint): bigint {
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}
function refKeep(seed: bigint, index: bigint, p: number): boolean {
  const bits = splitmix64Mix((splitmix64Mix(seed) + index * 0x9e3779b97f4a7c15n) & M64);
  return Number(bits >> 40n) / 16777216 >= f32(p);
}

for (const device of devices()) {
  const from = (data: Float32Array | Int32Array, shape: number[]) => Tensor.from(data, shape, { device });
  const zerosLike = (shape: number[]) => Tensor.zeros(shape, { device });

  // ---- Embedding -------------------------------------------------------------------------------

  test(`${device}: embedding forward gathers rows; backward scatter-adds repeated ids`, (t) => {
    const rng = makeRng(t);
    const cases: Array<[number, number, number[]]> = [[1, 1, [1]], [5, 7, [3]], [3, 129, [2, 9]], [17, 1, [4]], [11, 300, [7, 40]]];
    for (const [V, C, idShape] of cases) {
      const table = randn(rng, V * C), ids = randInts(rng, prod(idShape), 0, V);
      const what = `V=${V} C=${C} ids ${JSON.stringify(idShape)}`;
      const out = poisoned([...idShape, C], device);
      ops.embeddingForward(out, from(ids, idShape), from(table, [V, C]));
      const expected = new Float64Array(ids.length * C);
      ids.forEach((id, n) => { for (let j = 0; j < C; j++) expected[n * C + j] = table[id * C + j]; });
      t.deepEqual(Array.from(out.toFloat32Array()), Array.from(expected), `forward ${what}`);

      // small V makes ids repeat; dtable starts non-zero to check accumulation
      const dtable0 = randn(rng, V * C), dout = randn(rng, ids.length * C);
      const dtable = from(dtable0, [V, C]);
      ops.embeddingBackward(dtable, from(dout, [...idShape, C]), from(ids, idShape));
      const ref = Float64Array.from(dtable0);
      ids.forEach((id, n) => { for (let j = 0; j < C; j++) ref[id * C + j] += dout[n * C + j]; });
      assertClose(t, dtable.toFloat32Array(), ref, 1e-6, `backward ${what}`);
    }
  });

  test(`${device}: embedding forward from a bf16 table widens each row exactly`, (t) => {
    const rng = makeRng(t);
    for (const [V, C, idShape] of [[1, 1, [1]], [5, 7, [3]], [3, 129, [2, 9]], [17, 1, [4]], [31, 300, [7, 40]]] as Array<[number, number, number[]]>) {
      const bits = f32ToBf16(randn(rng, V * C)), ids = randInts(rng, prod(idShape), 0, V);
      const out = poisoned([...idShape, C], device);
      ops.embeddingForward(out, from(ids, idShape), Tensor.from(bits, [V, C], { device, dtype: 'bf16' }));
      // Reference: the bf16 bits widened in float64 by hand (sign, exponent, mantissa).
      const widen = (h: number) => {
        const e = (h >> 7) & 0xff, m = h & 0x7f, s = h & 0x8000 ? -1 : 1;
        return e === 0 ? s * m * 2 ** -133 : s * (1 + m / 128) * 2 ** (e - 127);
      };
      const expected = new Float64Array(ids.length * C);
      ids.forEach((id, n) => { for (let j = 0; j < C; j++) expected[n * C + j] = widen(bits[id * C + j]); });
      t.deepEqual(Array.from(out.toFloat32Array()), Array.from(expected), `V=${V} C=${C} ids ${JSON.stringify(idShape)}`);
    }
    const ids = from(new Int32Array([0, 1]), [2]);
    for (const dtype of ['f16', 'i32', 'u8'] as const) {
      expectCode(t, () => ops.embeddingForward(zerosLike([2, 4]), ids, Tensor.zeros([3, 4], { device, dtype })), 'E_DTYPE', /embedding_forward table: expected dtype f32 or bf16/);
    }
    expectCode(t, () => ops.embeddingForward(Tensor.zeros([2, 4], { device, dtype: 'bf16' }), ids, Tensor.zeros([3, 4], { device, dtype: 'bf16' })), 'E_DTYPE', /out/);
  });

  // ---- Normalization ---------------------------------------------------------------------------

  const NORM_SHAPES: number[][] = [[1, 1], [1, 7], [3, 1], [4, 129], [2, 3, 64], [64, 1000], [5]];

  test(`${device}: rmsnorm forward and backward match float64`, (t) => {
    const rng = makeRng(t);
    for (const shape of NORM_SHAPES) {
      const C = shape[shape.length - 1], N = prod(shape) / C, lead = shape.slice(0, -1), eps = 1e-5;
      const what = `shape ${JSON.stringify(shape)}`;
      const x = randn(rng, N * C), w = randn(rng, C), dout = randn(rng, N * C), dw0 = randn(rng, C);
      const X = from(x, shape), W = from(w, [C]);
      const out = poisoned(shape, device), rstd = poisoned(lead, device);
      ops.rmsnormForward(out, rstd, X, W, { eps });
      const ref = refRmsnorm(x, w, N, C, eps);
      assertClose(t, out.toFloat32Array(), ref.out, 1e-5, `out ${what}`);
      assertClose(t, rstd.toFloat32Array(), ref.rstd, 1e-6, `rstd ${what}`);

      const dx = poisoned(shape, device), dw = from(dw0, [C]);
      ops.rmsnormBackward(dx, dw, from(dout, shape), X, W, rstd);
      const g = refRmsnormBackward(dout, x, w, N, C, eps);
      checkRmsnormDx(t, dx.toFloat32Array(), g, C, `dx ${what}`);
      assertClose(t, dw.toFloat32Array(), map64(g.dw, (v, j) => v + dw0[j]), 1e-5, `dw (accumulated) ${what}`);

      // frozen weight, and dx written over dout in place
      const D = from(dout, shape);
      ops.rmsnormBackward(D, null, D, X, W, rstd);
      checkRmsnormDx(t, D.toFloat32Array(), g, C, `dx in place, no dw ${what}`);
    }
  });

  test(`${device}: layernorm forward and backward match float64`, (t) => {
    const rng = makeRng(t);
    for (const shape of NORM_SHAPES) {
      const C = shape[shape.length - 1], N = prod(shape) / C, lead = shape.slice(0, -1), eps = 1e-5;
      const what = `shape ${JSON.stringify(shape)}`;
      // an offset mean checks the variance is not taken as E[x²] - mean²
      const x = randn(rng, N * C).map((v) => v + 3), w = randn(rng, C), b = randn(rng, C), dout = randn(rng, N * C);
      const X = from(x, shape), W = from(w, [C]);
      for (const withBias of [true, false]) {
        const out = poisoned(shape, device), mean = poisoned(lead, device), rstd = poisoned(lead, device);
        ops.layernormForward(out, mean, rstd, X, W, withBias ? from(b, [C]) : null, { eps });
        const ref = refLayernorm(x, w, withBias ? b : null, N, C, eps);
        assertClose(t, out.toFloat32Array(), ref.out, 1e-5, `out ${what} bias=${withBias}`);
        assertClose(t, mean.toFloat32Array(), ref.mean, 1e-6, `mean ${what}`);
        assertClose(t, rstd.toFloat32Array(), ref.rstd, 1e-5, `rstd ${what}`);

        const g = refLayernormBackward(dout, x, w, N, C, eps);
        const dw0 = randn(rng, C), db0 = randn(rng, C);
        const dx = poisoned(shape, device), dw = from(dw0, [C]), db = from(db0, [C]);
        ops.layernormBackward(dx, dw, withBias ? db : null, from(dout, shape), X, W, mean, rstd);
        // C = 1 makes dx exactly 0 in exact arithmetic: compare absolutely there
        assertClose(t, dx.toFloat32Array(), g.dx, C === 1 ? 1e-6 : 1e-5, `dx ${what}`);
        assertClose(t, dw.toFloat32Array(), map64(g.dw, (v, j) => v + dw0[j]), 1e-5, `dw ${what}`);
        assertClose(t, db.toFloat32Array(), withBias ? map64(g.db, (v, j) => v + db0[j]) : db0, 1e-5, `db ${what}`);
      }
    }
  });

  // ---- Rotary position embedding ---------------------------------------------------------------

  const LLAMA31: Llama3RopeScaling = { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };

  test(`${device}: rope tables match the Hugging Face formulas, with and without llama3 scaling`, (t) => {
    const rng = makeRng(t);
    const cases: Array<[number, number, Llama3RopeScaling | null]> = [
      [2, 10000, null], [8, 10000, null], [128, 500000, null], [128, 500000, LLAMA31], [64, 10000, LLAMA31],
      [64, 500000, { factor: 32, lowFreqFactor: 2, highFreqFactor: 16, originalMaxPositionEmbeddings: 4096 }],
    ];
    for (const [D, theta, scaling] of cases) {
      const T = 37;
      const positions = randInts(rng, T, 0, 8192);
      positions[0] = 0;
      positions[1] = 1; // cos/sin at position 1 are those of inv_freq itself
      const cos = poisoned([T, D / 2], device), sin = poisoned([T, D / 2], device);
      ops.ropeTable(cos, sin, from(positions, [T]), { theta, scaling });
      const ref = refRopeTable(positions, D, theta, scaling);
      const what = `D=${D} theta=${theta} scaling=${JSON.stringify(scaling)}`;
      assertClose(t, cos.toFloat32Array(), ref.cos, 1e-6, `cos ${what}`);
      assertClose(t, sin.toFloat32Array(), ref.sin, 1e-6, `sin ${what}`);
    }
    // Llama 3.1's scaling leaves the fastest frequencies alone and divides the slowest by 8.
    const D = 128, half = D / 2;
    const one = from(new Int32Array([1]), [1]);
    const read = (scaling: Llama3RopeScaling | null) => {
      const c = poisoned([1, half], device), s = poisoned([1, half], device);
      ops.ropeTable(c, s, one, { theta: 500000, scaling });
      return Array.from(s.toFloat32Array(), (v, i) => Math.atan2(v, c.toFloat32Array()[i]));
    };
    const plain = read(null), scaled = read(LLAMA31);
    t.is(scaled[0], plain[0]);
    t.true(Math.abs(scaled[half - 1] - plain[half - 1] / 8) < 1e-9, `slowest: ${scaled[half - 1]} vs ${plain[half - 1]} / 8`);
    const medium = plain.filter((f, i) => scaled[i] < f && scaled[i] > f / 8 * (1 + 1e-6)).length;
    t.true(medium > 0, 'some frequencies fall in the blended band');
  });

  test(`${device}: rope forward/backward match float64; backward inverts forward; in place works`, (t) => {
    const rng = makeRng(t);
    const shapes = [[1, 1, 1, 2], [2, 3, 5, 8], [1, 7, 3, 6], [2, 1, 4, 128], [9, 2, 16], [2, 2, 17, 3, 64]];
    for (const shape of shapes) {
      const [T, , D] = shape.slice(-3), half = D / 2;
      const what = `shape ${JSON.stringify(shape)}`;
      const positions = randInts(rng, T, 0, 4096);
      const ref = refRopeTable(positions, D, 10000, null);
      const cos = poisoned([T, half], device), sin = poisoned([T, half], device);
      ops.ropeTable(cos, sin, from(positions, [T]), {});
      const x = randn(rng, prod(shape)), dout = randn(rng, prod(shape));
      const X = from(x, shape);

      const out = poisoned(shape, device);
      ops.ropeForward(out, X, cos, sin);
      assertClose(t, out.toFloat32Array(), refRope(x, ref.cos, ref.sin, shape, 1), 1e-5, `forward ${what}`);

      const dx = poisoned(shape, device);
      ops.ropeBackward(dx, from(dout, shape), cos, sin);
      assertClose(t, dx.toFloat32Array(), refRope(dout, ref.cos, ref.sin, shape, -1), 1e-5, `backward ${what}`);

      // backward is the transpose of forward: <rope(x), dout> == <x, rope_backward(dout)>
      const o = out.toFloat32Array(), g = dx.toFloat32Array();
      let lhs = 0, rhs = 0;
      for (let i = 0; i < x.length; i++) { lhs += o[i] * dout[i]; rhs += x[i] * g[i]; }
      t.true(Math.abs(lhs - rhs) <= 1e-5 * (Math.abs(lhs) + Math.sqrt(x.length)), `adjoint ${what}: ${lhs} vs ${rhs}`);

      // rotating back in place recovers x
      ops.ropeBackward(out, out, cos, sin);
      assertClose(t, out.toFloat32Array(), x, 1e-6, `backward(forward(x)) ${what}`);
      ops.ropeForward(X, X, cos, sin);
      assertClose(t, X.toFloat32Array(), refRope(x, ref.cos, ref.sin, shape, 1), 1e-5, `forward in place ${what}`);
    }
  });

  // ---- Activations and elementwise ---------------------------------------------------------------

  const SIZES = [1, 7, 129, 100003];

  test(`${device}: relu forward/backward: exact, in place, NaN kept`, (t) => {
    const rng = makeRng(t);
    for (const n of SIZES) {
      const x = activationInputs(rng, n), dout = randn(rng, n);
      x[0] = 0; // the kink: relu(0) = 0 and its gradient 0, as PyTorch
      const X = from(x, [n]), G = from(dout, [n]);
      const out = poisoned([n], device), dx = poisoned([n], device);
      ops.reluForward(out, X);
      ops.reluBackward(dx, G, X);
      t.deepEqual(Array.from(out.toFloat32Array()), Array.from(x, (v) => (v > 0 ? v : 0)), `relu n=${n}`);
      t.deepEqual(Array.from(dx.toFloat32Array()), Array.from(x, (v, i) => (v > 0 ? dout[i] : 0)), `drelu n=${n}`);
      ops.reluForward(X, X);
      t.deepEqual(Array.from(X.toFloat32Array()), Array.from(x, (v) => (v > 0 ? v : 0)), `relu in place n=${n}`);
    }
    const nan = from(new Float32Array([NaN, -1, 2]), [3]);
    ops.reluForward(nan, nan);
    t.true(Number.isNaN(nan.toFloat32Array()[0]), 'a NaN input stays NaN (max(NaN, 0) would hide it)');
  });

  test(`${device}: tanh forward/backward: float64 rounded once, in place`, (t) => {
    const rng = makeRng(t);
    for (const n of SIZES) {
      const x = activationInputs(rng, n), dout = randn(rng, n);
      const X = from(x, [n]), out = poisoned([n], device), dx = poisoned([n], device);
      ops.tanhForward(out, X);
      const y = out.toFloat32Array();
      // Math.tanh and the C library's may differ in a double's last bit; rounded to f32 that shows
      // only on a tie, so the bar is one f32 ulp.
      y.forEach((v, i) => t.true(Math.abs(v - Math.fround(Math.tanh(x[i]))) <= 2 ** -23 * Math.abs(v), `tanh n=${n} i=${i}: ${v}`));
      ops.tanhBackward(dx, from(dout, [n]), out);
      t.deepEqual(dx.toFloat32Array(), Float32Array.from(dout, (d, i) => d * (1 - y[i] * y[i])), `dtanh n=${n}`);
      ops.tanhForward(X, X);
      t.deepEqual(X.toFloat32Array(), y, `tanh in place n=${n}`);
    }
  });

  test(`${device}: copyCols copies a block of columns between matrices, and refuses one that does not fit`, (t) => {
    const rng = makeRng(t);
    const rows = 5, src = randn(rng, rows * 37), dst0 = randn(rng, rows * 11);
    const S = from(src, [rows, 37]), D = from(dst0, [rows, 11]);
    ops.copyCols(D, 3, S, 29, 8);
    const want = Float32Array.from(dst0);
    for (let r = 0; r < rows; r++) for (let c = 0; c < 8; c++) want[r * 11 + 3 + c] = src[r * 37 + 29 + c];
    t.deepEqual(D.toFloat32Array(), want);
    t.throws(() => ops.copyCols(D, 4, S, 29, 8), { message: /copy_cols dst: columns \[4, 12\) are outside its 11/ });
    t.throws(() => ops.copyCols(D, 0, S, 30, 8), { message: /copy_cols src: columns \[30, 38\) are outside its 37/ });
    t.throws(() => ops.copyCols(from(dst0.subarray(0, 44), [4, 11]), 0, S, 0, 8), { message: /copy_cols dst: expected 5 rows/ });
  });

  test(`${device}: silu, gelu (tanh and erf) and swiglu forward/backward match float64`, (t) => {
    const rng = makeRng(t);
    // The project's f32 bar. Typical CPU errors are ~1e-7, but with a handful of elements one value
    // in the tail of tanh (1 - tanh² cancels in f32) can carry the whole norm: 1.4e-6 at n = 7 was
    // seen (seed 743861632). CUDA builds with --use_fast_math (approximate exp/tanh).
    const tol = 1e-5;
    for (const n of SIZES) {
      const x = activationInputs(rng, n), up = randn(rng, n), dout = randn(rng, n);
      const X = from(x, [n]), U = from(up, [n]), G = from(dout, [n]);
      const run = (what: string, fn: (out: Tensor) => void, expected: Float64Array) => {
        const out = poisoned([n], device);
        fn(out);
        assertClose(t, out.toFloat32Array(), expected, tol, `${what} n=${n}`);
      };
      run('silu', (o) => ops.siluForward(o, X), map64(x, silu));
      run('dsilu', (o) => ops.siluBackward(o, G, X), map64(x, (v, i) => dout[i] * siluGrad(v)));
      run('gelu tanh', (o) => ops.geluForward(o, X, { approximate: 'tanh' }), map64(x, geluTanh));
      run('dgelu tanh', (o) => ops.geluBackward(o, G, X, { approximate: 'tanh' }), map64(x, (v, i) => dout[i] * geluTanhGrad(v)));
      run('gelu erf', (o) => ops.geluForward(o, X), map64(x, geluErf));
      run('dgelu erf', (o) => ops.geluBackward(o, G, X, { approximate: 'none' }), map64(x, (v, i) => dout[i] * geluErfGrad(v)));
      run('swiglu', (o) => ops.swigluForward(o, X, U), map64(x, (v, i) => silu(v) * up[i]));
      const dgate = poisoned([n], device), dup = poisoned([n], device);
      ops.swigluBackward(dgate, dup, G, X, U);
      assertClose(t, dgate.toFloat32Array(), map64(x, (v, i) => dout[i] * up[i] * siluGrad(v)), tol, `dgate n=${n}`);
      assertClose(t, dup.toFloat32Array(), map64(x, (v, i) => dout[i] * silu(v)), tol, `dup n=${n}`);

      // outputs over inputs: dgate over gate, dup over up
      const Xi = from(x, [n]), Ui = from(up, [n]);
      ops.swigluBackward(Xi, Ui, G, Xi, Ui);
      assertClose(t, Xi.toFloat32Array(), map64(x, (v, i) => dout[i] * up[i] * siluGrad(v)), 1e-5, `dgate in place n=${n}`);
      assertClose(t, Ui.toFloat32Array(), map64(x, (v, i) => dout[i] * silu(v)), 1e-5, `dup in place n=${n}`);
      const Y = from(x, [n]);
      ops.siluForward(Y, Y);
      assertClose(t, Y.toFloat32Array(), map64(x, silu), 1e-5, `silu in place n=${n}`);
    }
  });

  test(`${device}: add, axpy and casts`, (t) => {
    const rng = makeRng(t);
    for (const n of SIZES) {
      const a = randn(rng, n), b = randn(rng, n), alpha = rng.normal();
      const out = poisoned([n], device);
      ops.add(out, from(a, [n]), from(b, [n]));
      assertClose(t, out.toFloat32Array(), map64(a, (v, i) => v + b[i]), 1e-7, `add n=${n}`);
      const A = from(a, [n]);
      ops.add(A, A, from(b, [n]));
      assertClose(t, A.toFloat32Array(), map64(a, (v, i) => v + b[i]), 1e-7, `add in place n=${n}`);
      const y = from(b, [n]);
      ops.axpy(y, from(a, [n]), alpha);
      // Judged per element against the operands' magnitudes: α·a + b may cancel, so a norm-relative
      // bound fails on one element (n = 1, seed 3113359563) while f32 rounding is all there is.
      const got = y.toFloat32Array();
      let worst = 0;
      got.forEach((g, i) => { worst = Math.max(worst, Math.abs(g - (f32(alpha) * a[i] + b[i])) / (Math.abs(f32(alpha) * a[i]) + Math.abs(b[i]) + 1e-30)); });
      t.true(worst <= 2 ** -22, `axpy n=${n}: error ${worst.toExponential(2)} of |α·a| + |b| (bound 2^-22: two f32 roundings)`);

      // keepMasked: exact zeros where keep is 0 (also for inf and NaN), the rest untouched
      const m = randn(rng, n);
      if (n > 2) m[0] = Infinity, m[1] = NaN;
      const keep = Uint8Array.from({ length: n }, () => (rng.next() < 0.5 ? 1 : 0));
      if (n > 2) keep[0] = 0, keep[1] = 0;
      const M = from(m, [n]);
      ops.keepMasked(M, Tensor.from(keep, [n], { dtype: 'u8', device }));
      t.deepEqual(M.toFloat32Array(), Float32Array.from(m, (v, i) => (keep[i] ? v : 0)), `keepMasked n=${n}`);

      // f32 -> bf16 rounds to nearest even (ties and specials included); bf16 -> f32 is exact
      const x = randn(rng, n, 100);
      const specials = [0, -0, Infinity, -Infinity, NaN, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, 1e-40];
      specials.forEach((v, k) => { if (k < n) x[k] = v; });
      const h = poisoned([n], device, 'bf16');
      ops.cast(h, from(x, [n]));
      t.deepEqual(Array.from(h.toArray() as Uint16Array), Array.from(f32ToBf16(x)), `f32 -> bf16 n=${n}`);
      const back = poisoned([n], device);
      ops.cast(back, h);
      t.deepEqual(Array.from(back.toFloat32Array()), Array.from(roundBf16(x)), `bf16 -> f32 n=${n}`);
    }
  });

  // ---- Dropout ---------------------------------------------------------------------------------

  test(`${device}: dropout masks are reproducible, unbiased, scaled, shared with backward`, (t) => {
    const rng = makeRng(t);
    const n = 100000, p = 0.3;
    const seed = rng.int(0, 2 ** 31), x = randn(rng, n);
    x.forEach((v, i) => { if (v === 0) x[i] = 1; }); // a zero input would hide the mask
    const X = from(x, [n]);
    const drop = (o: { p: number; seed: number | bigint; offset?: number | bigint }, input = X) => {
      const out = poisoned([n], device);
      ops.dropoutForward(out, input, o);
      return out.toFloat32Array();
    };
    const a = drop({ p, seed }), again = drop({ p, seed, offset: 0 });
    t.deepEqual(a, again, 'same seed and offset, same mask');

    const scale = f32(1 / f32(1 - f32(p)));
    let kept = 0, wrong = 0;
    for (let i = 0; i < n; i++) {
      if (a[i] !== 0) {
        kept++;
        if (a[i] !== f32(x[i] * scale)) wrong++;
      }
    }
    t.is(wrong, 0, 'kept values are x·1/(1-p)');
    const sigma = Math.sqrt((p * (1 - p)) / n);
    t.true(Math.abs(kept / n - (1 - p)) < 5 * sigma, `kept fraction ${kept / n} vs ${1 - p} ± ${5 * sigma}`);

    // the mask is the documented hash of (seed, offset + i), bit for bit
    const offset = 123456789;
    const shifted = drop({ p, seed, offset });
    let mismatches = 0;
    for (let i = 0; i < 2000; i++) if ((shifted[i] !== 0) !== refKeep(BigInt(seed), BigInt(offset + i), p)) mismatches++;
    t.is(mismatches, 0, 'mask equals splitmix64(mix(seed) + (offset + i)·γ) >> 40 >= p·2^24');
    let same = 0;
    for (let i = 0; i < n; i++) if ((a[i] !== 0) === (shifted[i] !== 0)) same++;
    t.true(same / n < 0.65, `another offset draws another mask (agreement ${same / n})`);
    const other = drop({ p, seed: seed + 1 });
    same = 0;
    for (let i = 0; i < n; i++) if ((a[i] !== 0) === (other[i] !== 0)) same++;
    t.true(same / n < 0.65, `another seed draws another mask (agreement ${same / n})`);
    // offset k is the stream of offset 0 moved by k elements
    const moved = drop({ p, seed, offset: 1000 });
    t.deepEqual(Array.from(moved.subarray(0, n - 1000), (v) => v !== 0), Array.from(a.subarray(1000), (v) => v !== 0));
    // seeds and offsets beyond 2^53 as BigInts
    const big = drop({ p, seed: (1n << 63n) + 5n, offset: (1n << 60n) + 7n });
    for (let i = 0; i < 50; i++) t.is(big[i] !== 0, refKeep((1n << 63n) + 5n, (1n << 60n) + 7n + BigInt(i), p));

    // backward: the same mask and scale on dout
    const dout = randn(rng, n);
    const dx = poisoned([n], device);
    ops.dropoutBackward(dx, from(dout, [n]), { p, seed });
    const g = dx.toFloat32Array();
    let bad = 0;
    for (let i = 0; i < n; i++) if (g[i] !== (a[i] === 0 ? 0 : f32(dout[i] * scale))) bad++;
    t.is(bad, 0, 'backward uses the forward mask');

    t.deepEqual(drop({ p: 0, seed }), x, 'p = 0 is the identity');
    t.true(drop({ p: 1, seed }).every((v) => v === 0), 'p = 1 drops everything');
  });

  // ---- A composite through the kernels against central differences -------------------------

  test(`${device}: gradients of Σ G·swiglu(rope(rmsnorm(x, w)), u) match finite differences`, (t) => {
    const rng = makeRng(t);
    const shape = [2, 5, 3, 6], [T, , D] = shape.slice(-3), n = prod(shape);
    const x = randn(rng, n), w = randn(rng, D), u = randn(rng, n), G = randn(rng, n);
    const cos = poisoned([T, D / 2], device), sin = poisoned([T, D / 2], device);
    ops.ropeTable(cos, sin, from(randInts(rng, T, 0, 100), [T]), {});
    const lead = shape.slice(0, -1);
    const forward = (xv: Float32Array, wv: Float32Array, uv: Float32Array) => {
      const X = from(xv, shape), W = from(wv, [D]), U = from(uv, shape);
      const h = zerosLike(shape), rstd = zerosLike(lead), a = zerosLike(shape), y = zerosLike(shape);
      ops.rmsnormForward(h, rstd, X, W);
      ops.ropeForward(a, h, cos, sin);
      ops.swigluForward(y, a, U);
      const yv = y.toFloat32Array();
      let loss = 0;
      for (let i = 0; i < n; i++) loss += G[i] * yv[i];
      return { loss, X, W, U, rstd, a };
    };
    const f = forward(x, w, u);
    const da = zerosLike(shape), du = zerosLike(shape), dh = zerosLike(shape), dx = zerosLike(shape), dw = zerosLike([D]);
    ops.swigluBackward(da, du, from(G, shape), f.a, f.U);
    ops.ropeBackward(dh, da, cos, sin);
    ops.rmsnormBackward(dx, dw, dh, f.X, f.W, f.rstd);

    const h = 1e-2;
    const numeric = (which: 0 | 1 | 2) =>
      centralDifferences((a: Float32Array, b: Float32Array, c: Float32Array) => forward(a, b, c).loss, [x, w, u], which, h);
    assertClose(t, dx.toFloat32Array(), numeric(0), 1e-2, 'dx');
    assertClose(t, dw.toFloat32Array(), numeric(1), 1e-2, 'dw');
    assertClose(t, du.toFloat32Array(), numeric(2), 1e-2, 'du');
  });

  test(`${device}: gradients of Σ G·gelu(layernorm(x, w, b)) match finite differences`, (t) => {
    const rng = makeRng(t);
    const [N, C] = [4, 13];
    const x = randn(rng, N * C), w = randn(rng, C), b = randn(rng, C), G = randn(rng, N * C);
    for (const approximate of ['tanh', 'none'] as const) {
      const forward = (xv: Float32Array, wv: Float32Array, bv: Float32Array) => {
        const X = from(xv, [N, C]), W = from(wv, [C]), B = from(bv, [C]);
        const z = zerosLike([N, C]), mean = zerosLike([N]), rstd = zerosLike([N]), y = zerosLike([N, C]);
        ops.layernormForward(z, mean, rstd, X, W, B);
        ops.geluForward(y, z, { approximate });
        const yv = y.toFloat32Array();
        let loss = 0;
        for (let i = 0; i < N * C; i++) loss += G[i] * yv[i];
        return { loss, X, W, z, mean, rstd };
      };
      const f = forward(x, w, b);
      const dz = zerosLike([N, C]), dx = zerosLike([N, C]), dw = zerosLike([C]), db = zerosLike([C]);
      ops.geluBackward(dz, from(G, [N, C]), f.z, { approximate });
      ops.layernormBackward(dx, dw, db, dz, f.X, f.W, f.mean, f.rstd);
      const h = 1e-2;
      const numeric = (which: 0 | 1 | 2) =>
        centralDifferences((a: Float32Array, c: Float32Array, d: Float32Array) => forward(a, c, d).loss, [x, w, b], which, h);
      assertClose(t, dx.toFloat32Array(), numeric(0), 1e-2, `dx (${approximate})`);
      assertClose(t, dw.toFloat32Array(), numeric(1), 1e-2, `dw (${approximate})`);
      assertClose(t, db.toFloat32Array(), numeric(2), 1e-2, `db (${approximate})`);
    }
  });

  // ---- Bad arguments -----------------------------------------------------------------------------

  test(`${device}: bad arguments give PeftkitErrors with the right code`, (t) => {
    const table = zerosLike([10, 4]), out = zerosLike([2, 3, 4]);
    const ids = from(new Int32Array([1, 2, 3, 4, 10, 0]), [2, 3]);
    expectCode(t, () => ops.embeddingForward(out, ids, table), 'E_ARG', /ids\[1, 1\] = 10 is outside \[0, 10\)/);
    expectCode(t, () => ops.embeddingBackward(table, out, from(new Int32Array([0, -1, 0, 0, 0, 0]), [2, 3])), 'E_ARG', /ids\[0, 1\] = -1/);
    expectCode(t, () => ops.embeddingForward(zerosLike([2, 3, 5]), from(new Int32Array(6), [2, 3]), table), 'E_SHAPE', /out/);
    expectCode(t, () => ops.embeddingForward(out, zerosLike([2, 3]), table), 'E_DTYPE', /ids/);

    const x = zerosLike([3, 8]), rstd = zerosLike([3]);
    expectCode(t, () => ops.rmsnormForward(zerosLike([3, 8]), rstd, x, zerosLike([7])), 'E_SHAPE', /rmsnorm_forward w: expected shape \[8\]/);
    expectCode(t, () => ops.rmsnormForward(zerosLike([3, 8]), zerosLike([4]), x, zerosLike([8])), 'E_SHAPE', /rstd/);
    expectCode(t, () => ops.rmsnormForward(zerosLike([3, 8]), rstd, x, zerosLike([8]), { eps: -1 }), 'E_ARG', /eps/);
    expectCode(t, () => ops.rmsnormBackward(zerosLike([3, 8]), zerosLike([9]), x, x, zerosLike([8]), rstd), 'E_SHAPE', /dw/);
    expectCode(t, () => ops.layernormForward(zerosLike([3, 8]), rstd, zerosLike([3]), x, zerosLike([8]), zerosLike([6])), 'E_SHAPE', /layernorm_forward b/);
    expectCode(t, () => ops.layernormForward(zerosLike([3, 8]), rstd, rstd, Tensor.zeros([3, 8], { device, dtype: 'bf16' }), zerosLike([8]), null), 'E_DTYPE');

    const cos = zerosLike([4, 3]), sin = zerosLike([4, 3]);
    expectCode(t, () => ops.ropeForward(zerosLike([4, 2, 5]), zerosLike([4, 2, 5]), cos, sin), 'E_SHAPE', /even/);
    expectCode(t, () => ops.ropeForward(zerosLike([5, 2, 6]), zerosLike([5, 2, 6]), cos, sin), 'E_SHAPE', /cos/);
    expectCode(t, () => ops.ropeForward(zerosLike([2, 6]), zerosLike([2, 6]), cos, sin), 'E_SHAPE', /\[\.\.\., T, H, D\]/);
    const pos = from(new Int32Array(4), [4]);
    expectCode(t, () => ops.ropeTable(cos, sin, pos, { theta: 0 }), 'E_ARG', /theta/);
    expectCode(t, () => ops.ropeTable(cos, sin, pos, { scaling: { factor: 8, lowFreqFactor: 4, highFreqFactor: 1 } }), 'E_ARG', /lowFreqFactor/);
    expectCode(t, () => ops.ropeTable(cos, zerosLike([4, 2]), pos, {}), 'E_SHAPE', /sin/);

    expectCode(t, () => ops.siluForward(zerosLike([5]), zerosLike([6])), 'E_SHAPE', /silu_forward out/);
    expectCode(t, () => ops.add(zerosLike([5]), zerosLike([5]), zerosLike([1, 5])), 'E_SHAPE');
    const g = zerosLike([5]);
    expectCode(t, () => ops.swigluBackward(g, g, g, zerosLike([5]), zerosLike([5])), 'E_ARG', /dup/);
    expectCode(t, () => ops.cast(zerosLike([5]), zerosLike([5])), 'E_DTYPE', /cast/);
    expectCode(t, () => ops.cast(Tensor.zeros([6], { device, dtype: 'bf16' }), zerosLike([5])), 'E_SHAPE');
    expectCode(t, () => ops.dropoutForward(zerosLike([5]), zerosLike([5]), { p: 1.5, seed: 1 }), 'E_ARG', /probability/);
    expectCode(t, () => ops.dropoutForward(zerosLike([5]), zerosLike([5]), { p: 0.5, seed: -1 }), 'E_ARG', /seed/);
    expectCode(t, () => ops.dropoutForward(zerosLike([5]), zerosLike([5]), { p: 0.5, seed: 1, offset: 0.5 }), 'E_ARG', /offset/);
    expectCode(t, () => ops.geluForward(zerosLike([5]), {} as Tensor), 'E_ARG', /x: expected a Tensor/);
  });
}

test('transformer ops have async twins that resolve with the same result and reject bad arguments', async (t) => {
  const rng = makeRng(t);
  const device: Device = devices()[devices().length - 1];
  const [N, C] = [33, 70];
  const x = randn(rng, N * C), w = randn(rng, C);
  const X = Tensor.from(x, [N, C], { device }), W = Tensor.from(w, [C], { device });
  const out = poisoned([N, C], device), rstd = poisoned([N], device);
  const p = ops.rmsnormForwardAsync(out, rstd, X, W, { eps: 1e-6 });
  X.dispose(); // the running op keeps its inputs alive
  await p;
  assertClose(t, out.toFloat32Array(), refRmsnorm(x, w, N, C, 1e-6).out, 1e-5, 'async rmsnorm');
  const d = poisoned([N, C], device);
  await ops.dropoutForwardAsync(d, out, { p: 0, seed: 3n });
  t.deepEqual(d.toFloat32Array(), out.toFloat32Array());
  const ids = Tensor.from(new Int32Array([0, 99]), [2], { device });
  const e = await t.throwsAsync(ops.embeddingForwardAsync(Tensor.zeros([2, 4], { device }), ids, Tensor.zeros([3, 4], { device })), {
    instanceOf: PeftkitError,
  });
  t.is(e?.code, 'E_ARG');
  await t.throwsAsync(ops.siluForwardAsync(out, X), { instanceOf: PeftkitError, code: 'E_DISPOSED' });
});

// The sigmoid-based activations and dropout have AVX2 and AVX-512 builds of the same loops,
// picked once per process; a child per ISA (PEFTKIT_ISA caps it) checks every path this CPU has.
test('cpu: every ISA path of the pointwise kernels matches float64, and all draw the same dropout mask', (t) => {
  const info = runtimeInfo();
  const isas = ['portable', ...(info.avx2 ? ['avx2'] : []), ...(info.avx512 ? ['avx512'] : [])];
  const seed = makeRng(t).int(0, 2 ** 31), n = 20011;
  const { x, up, dout } = pointwiseInputs(seed, n);
  const expected: Record<string, Float64Array> = {
    silu: map64(x, silu),
    dsilu: map64(x, (v, i) => dout[i] * siluGrad(v)),
    gelu: map64(x, geluTanh),
    dgelu: map64(x, (v, i) => dout[i] * geluTanhGrad(v)),
    swiglu: map64(x, (v, i) => silu(v) * up[i]),
    dgate: map64(x, (v, i) => dout[i] * up[i] * siluGrad(v)),
    dup: map64(x, (v, i) => dout[i] * silu(v)),
  };
  const scale = f32(1 / f32(1 - f32(CHILD_DROPOUT.p)));
  const dropout = map64(x, (v, i) => (refKeep(BigInt(seed), BigInt(CHILD_DROPOUT.offset + i), CHILD_DROPOUT.p) ? f32(v * scale) : 0));
  for (const isa of isas) {
    const child = spawnSync(process.execPath, [path.join(__dirname, 'helpers', 'pointwise_child.js'), String(seed), String(n)], {
      env: { ...process.env, PEFTKIT_ISA: isa },
      encoding: 'utf8',
    });
    t.is(child.status, 0, `${isa} child failed: ${child.stderr}`);
    if (child.status !== 0) continue;
    const result = JSON.parse(child.stdout) as { isa: string; outputs: Record<string, string> };
    t.true(result.isa.startsWith(isa), `PEFTKIT_ISA=${isa} ran ${result.isa}`);
    const out = (name: string) => {
      const b = Buffer.from(result.outputs[name], 'base64');
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    };
    for (const [name, ref] of Object.entries(expected)) assertClose(t, out(name), ref, 1e-6, `${isa} ${name}`);
    t.deepEqual(Array.from(out('dropout')), Array.from(dropout), `${isa} dropout`);
  }
});
