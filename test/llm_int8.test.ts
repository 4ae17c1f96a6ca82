/**
 * LLM.int8 matmul (bitsandbytes' MatMul8bitLt forward) against a float64 reference that follows
 * bitsandbytes' algorithm step by step: int8_vectorwise_quant of the activations (outliers are
 * |x| >= threshold, left out of the row absmax, their whole columns zeroed in the codes), the
 * int32 product of the codes, int8_mm_dequant's SCA·SCB/127² scaling, and the outlier columns
 * multiplied by the dequantized weight columns.
 */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { ops, PeftkitError, runtimeInfo, Tensor } from '../src/index';
import type { Device } from '../src/index';
import type { QuantWeight } from '../src/ops/gemm_quant';
import { devices, makeRng, poisoned, randn, relErr } from './helpers/check';
import type { Rng } from './helpers/check';
import { exactSumCase } from './helpers/llm_int8_exact';
import { disposeWeight, quantWeight } from './helpers/quant_weight';

type Int8Weight = Extract<QuantWeight, { format: 'int8' }>;

const f = Math.fround;

/** Round half to even, as torch.round and CUDA's __float2int_rn. */
function roundHalfEven(v: number): number {
  const fl = Math.floor(v), d = v - fl;
  if (d > 0.5) return fl + 1;
  if (d < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

interface RefQuant { ca: Int8Array; sca: Float32Array; outlier: Uint8Array }

/** bitsandbytes' int8_vectorwise_quant on f32 activations (f32 scale 127/absmax, f32 product, rounded). */
function refQuantize(x: Float32Array, M: number, K: number, threshold: number): RefQuant {
  const outlier = new Uint8Array(K);
  if (threshold > 0) {
    for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) if (!(Math.abs(x[i * K + k]) < threshold)) outlier[k] = 1;
  }
  const ca = new Int8Array(M * K), sca = new Float32Array(M);
  for (let i = 0; i < M; i++) {
    let m = 0;
    for (let k = 0; k < K; k++) {
      const a = Math.abs(x[i * K + k]);
      if (threshold > 0 ? a < threshold && a > m : a > m || Number.isNaN(a)) m = a;
    }
    sca[i] = m;
    const scale = f(127 / m);
    for (let k = 0; k < K; k++) {
      const v = f(x[i * K + k] * scale);
      ca[i * K + k] = outlier[k] || Number.isNaN(v) ? 0 : roundHalfEven(v);
    }
  }
  return { ca, sca, outlier };
}

interface Case { x: Float32Array; cb: Int8Array; scb: Float32Array; M: number; N: number; K: number }

/** The LLM.int8 product in float64 (bias and LoRA terms added by the caller). */
function refMatmul({ x, cb, scb, M, N, K }: Case, threshold: number): Float64Array {
  const { ca, sca, outlier } = refQuantize(x, M, K, threshold);
  const cols = [...outlier.keys()].filter((k) => outlier[k]);
  const y = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += ca[i * K + k] * cb[j * K + k];
      let v = (acc * sca[i] * scb[j]) / (127 * 127);
      for (const k of cols) v += x[i * K + k] * ((cb[j * K + k] * scb[j]) / 127);
      y[i * N + j] = v;
    }
  }
  return y;
}

/** Activations with planted outlier columns: a few entries of magnitude ~10-60, and in the same
 * columns large values just under the threshold (they still set their rows' absmax). Outliers
 * are in [lo, lo + 20]. */
function plantedActivations(rng: Rng, M: number, K: number, nOut: number, lo = 10): Float32Array {
  const x = randn(rng, M * K);
  for (let o = 0; o < nOut; o++) {
    const k = rng.int(0, K);
    x[rng.int(0, M) * K + k] = (rng.next() < 0.5 ? -1 : 1) * (lo + 20 * rng.next());
    if (M > 1) x[rng.int(0, M) * K + k] = 5.9;
  }
  return x;
}

function int8Case(rng: Rng, device: Device, M: number, N: number, K: number, nOut: number, lo = 10) {
  const { q, deq } = quantWeight(rng, 'int8', N, K, 64, device);
  const w = q as Int8Weight;
  const x = plantedActivations(rng, M, K, nOut, lo);
  const c: Case = { x, cb: w.cb.toArray() as Int8Array, scb: w.scb.toFloat32Array(), M, N, K };
  return { w, deq, c, X: Tensor.from(x, [M, K], { device }) };
}

// [M, N, K]: M = 1, N = 1, K odd, N prime, K past one exact chunk of 1024 (two int32 chunks).
const SHAPES: Array<[number, number, number]> = [[1, 7, 33], [5, 1, 64], [13, 31, 129], [3, 37, 1031], [17, 11, 2053]];
const THRESHOLDS = [0, 6, 1e6];

for (const device of devices()) {
  test(`${device}: quantizeInt8Vectorwise gives bitsandbytes' codes, row scales and outlier columns exactly`, (t) => {
    const rng = makeRng(t);
    for (const [M, , K] of [...SHAPES, [1, 1, 1] as [number, number, number]]) {
      for (const threshold of [...THRESHOLDS, 0.5]) {
        const x = plantedActivations(rng, M, K, 3);
        if (M > 2) x.fill(0, K, 2 * K);  // an all-zero row (it may wipe the planted outliers out)
        x[rng.int(0, K)] = 6;  // exactly on the threshold, in row 0 (never zeroed): an outlier (>=)
        const X = Tensor.from(x, [M, K], { device });
        const CA = Tensor.from(new Int8Array(M * K).fill(0x55), [M, K], { dtype: 'i8', device });
        const SCA = poisoned([M], device);
        const out = Tensor.from(new Uint8Array(K).fill(0xaa), [K], { dtype: 'u8', device });
        ops.quantizeInt8Vectorwise(CA, SCA, out, X, { threshold });
        const r = refQuantize(x, M, K, threshold);
        const what = `M=${M} K=${K} threshold=${threshold}`;
        t.deepEqual([...(CA.toArray() as Int8Array)], [...r.ca], `${what}: CA`);
        t.deepEqual([...SCA.toFloat32Array()], [...r.sca], `${what}: SCA`);
        t.deepEqual([...(out.toArray() as Uint8Array)], [...r.outlier], `${what}: outlier columns`);
        if (threshold === 6 && K > 1) t.true(r.outlier.some((v) => v === 1), `${what}: planted outliers were found`);
        for (const a of [X, CA, SCA, out]) a.dispose();
      }
    }
  });

  test(`${device}: llmInt8Matmul equals bitsandbytes' LLM.int8 in float64 at thresholds 0, 6 and past every value`, (t) => {
    const rng = makeRng(t);
    for (const [M, N, K] of SHAPES) {
      const { w, deq, c, X } = int8Case(rng, device, M, N, K, 4);
      const bias = Tensor.from(randn(rng, N), [N], { device });
      const b = bias.toFloat32Array();
      const results: Float32Array[] = [];
      for (const threshold of THRESHOLDS) {
        const Y = poisoned([M, N], device);
        ops.llmInt8Matmul(Y, X, w, { threshold, bias });
        const ref = refMatmul(c, threshold).map((v, i) => v + b[i % N]);
        const y = Y.toFloat32Array();
        // f32 roundings: the int32 sum is exact; its scaling (3 products), the bias and the
        // handful of outlier products are f32, each within ~1e-7 of the float64 value.
        const e = relErr(y, ref);
        t.true(e <= 1e-5, `M=${M} N=${N} K=${K} threshold=${threshold}: relative error ${e.toExponential(2)}`);
        results.push(y);
        Y.dispose();
      }
      // No value reaches 1e6: that threshold finds no outliers, which is exactly threshold 0.
      t.deepEqual([...results[2]], [...results[0]], `M=${M} N=${N} K=${K}: threshold 1e6 == threshold 0`);
      for (const a of [X, deq, bias]) a.dispose();
      disposeWeight(w);
    }
  });

  test(`${device}: the int32 sums are exact past 2^24 (K-chunks of 1024 summed as integers)`, (t) => {
    const r = exactSumCase(device);
    t.true(r.f32RunningSumDiffers, 'an f32 running sum must differ from the exact one here');
    t.deepEqual(r.got, new Array(r.got.length).fill(r.expected));
  });

  test(`${device}: the outlier decomposition is what keeps planted outliers from ruining the int8 product`, (t) => {
    const rng = makeRng(t);
    const M = 24, N = 19, K = 96;
    const { w, deq, c, X } = int8Case(rng, device, M, N, K, 6, 40);
    // The exact product with the dequantized weight, in float64.
    const d = deq.toFloat32Array(), exact = new Float64Array(M * N);
    for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += c.x[i * K + k] * d[j * K + k];
      exact[i * N + j] = s;
    }
    const errAt = (threshold: number) => {
      const Y = poisoned([M, N], device);
      ops.llmInt8Matmul(Y, X, w, { threshold });
      const e = relErr(Y.toFloat32Array(), exact);
      Y.dispose();
      return e;
    };
    const e0 = errAt(0), e6 = errAt(6);
    t.log(`relative error vs the dequantized product: threshold 0 ${e0.toExponential(2)}, threshold 6 ${e6.toExponential(2)}`);
    t.true(e6 < e0 / 3, `threshold 6 (${e6}) should beat threshold 0 (${e0}) by far`);
    t.true(e6 < 0.05);
    for (const a of [X, deq]) a.dispose();
    disposeWeight(w);
  });

  test(`${device}: loraForward / gemmQuant with a thresholded int8 weight run LLM.int8; the backward uses the dequantized weight`, async (t) => {
    const rng = makeRng(t);
    for (const [M, N, K, r] of [[1, 7, 33, 2], [13, 31, 129, 4], [6, 11, 1100, 1]] as Array<[number, number, number, number]>) {
      const { w: w0, deq, c, X } = int8Case(rng, device, M, N, K, 3);
      const w: QuantWeight = { ...w0, threshold: 6 };
      const A = Tensor.from(randn(rng, r * K, 0.1), [r, K], { device }), B = Tensor.from(randn(rng, N * r, 0.1), [N, r], { device });
      const xa = randn(rng, M * K), Xa = Tensor.from(xa, [M, K], { device });
      const bias = Tensor.from(randn(rng, N), [N], { device });
      const s = 1.75, a = A.toFloat32Array(), bb = B.toFloat32Array(), bi = bias.toFloat32Array();
      const what = `M=${M} N=${N} K=${K} r=${r}`;

      // Forward: LLM.int8 base + bias + s·(Xa·Aᵀ)·Bᵀ, XA = Xa·Aᵀ.
      const Y = poisoned([M, N], device), XA = poisoned([M, r], device);
      await ops.loraForwardAsync(Y, XA, X, w, A, B, { scale: s, bias, dropoutInput: Xa });
      const xaRef = new Float64Array(M * r);
      for (let i = 0; i < M; i++) for (let q = 0; q < r; q++) {
        let v = 0;
        for (let k = 0; k < K; k++) v += xa[i * K + k] * a[q * K + k];
        xaRef[i * r + q] = v;
      }
      const base = refMatmul(c, 6);
      const yRef = base.map((v, idx) => {
        const i = Math.floor(idx / N), j = idx % N;
        let l = 0;
        for (let q = 0; q < r; q++) l += xaRef[i * r + q] * bb[j * r + q];
        return v + bi[j] + s * l;
      });
      t.true(relErr(Y.toFloat32Array(), yRef) <= 1e-5, `${what}: Y`);
      t.true(relErr(XA.toFloat32Array(), xaRef) <= 1e-5, `${what}: XA`);

      // gemmQuant's forward product with the same weight is llmInt8Matmul.
      const G = poisoned([M, N], device), L = poisoned([M, N], device);
      ops.gemmQuant(G, X, w);
      ops.llmInt8Matmul(L, X, w0, { threshold: 6 });
      t.deepEqual([...G.toFloat32Array()], [...L.toFloat32Array()], `${what}: gemmQuant == llmInt8Matmul`);
      t.true(relErr(G.toFloat32Array(), base) <= 1e-5, `${what}: gemmQuant`);

      // Backward: dX = dY·Wdq + s·(dY·B)·A (bitsandbytes' grad_A uses the dequantized weight).
      const dy = randn(rng, M * N), dY = Tensor.from(dy, [M, N], { device });
      const dX = poisoned([M, K], device), dA = Tensor.zeros([r, K], { device }), dB = Tensor.zeros([N, r], { device });
      ops.loraBackward(dX, dA, dB, dY, X, XA, w, A, B, { scale: s });
      const wd = deq.toFloat32Array(), dxRef = new Float64Array(M * K);
      for (let i = 0; i < M; i++) {
        const dyb = new Float64Array(r);
        for (let q = 0; q < r; q++) for (let j = 0; j < N; j++) dyb[q] += dy[i * N + j] * bb[j * r + q];
        for (let k = 0; k < K; k++) {
          let v = 0;
          for (let j = 0; j < N; j++) v += dy[i * N + j] * wd[j * K + k];
          for (let q = 0; q < r; q++) v += s * dyb[q] * a[q * K + k];
          dxRef[i * K + k] = v;
        }
      }
      t.true(relErr(dX.toFloat32Array(), dxRef) <= 1e-5, `${what}: dX`);
      const dG = poisoned([M, K], device);
      ops.gemmQuant(dG, dY, w, { transB: false });
      const dgRef = new Float64Array(M * K);
      for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) {
        let v = 0;
        for (let j = 0; j < N; j++) v += dy[i * N + j] * wd[j * K + k];
        dgRef[i * K + k] = v;
      }
      t.true(relErr(dG.toFloat32Array(), dgRef) <= 1e-5, `${what}: gemmQuant dY·W`);
      for (const x of [X, deq, A, B, Xa, bias, Y, XA, G, L, dY, dX, dA, dB, dG]) x.dispose();
      disposeWeight(w0);
    }
  });

  test(`${device}: a NaN or an infinity in X poisons its own output row only`, (t) => {
    const rng = makeRng(t);
    const M = 5, N = 7, K = 40;
    for (const threshold of [0, 6]) {
      for (const bad of [NaN, Infinity]) {
        const { w, deq, c, X: X0 } = int8Case(rng, device, M, N, K, 0);
        X0.dispose();
        c.x[2 * K + 9] = bad;
        const X = Tensor.from(c.x, [M, K], { device }), Y = poisoned([M, N], device);
        ops.llmInt8Matmul(Y, X, w, { threshold });
        const y = Y.toFloat32Array();
        for (let i = 0; i < M; i++) {
          const row = [...y.subarray(i * N, (i + 1) * N)];
          if (i === 2) t.true(row.every((v) => Number.isNaN(v) || !Number.isFinite(v)), `threshold ${threshold}, ${bad}: row 2 ${row}`);
          else t.true(row.every(Number.isFinite), `threshold ${threshold}, ${bad}: row ${i} ${row}`);
        }
        for (const a of [X, Y, deq]) a.dispose();
        disposeWeight(w);
      }
    }
  });

  test(`${device}: bad LLM.int8 arguments are PeftkitErrors naming them`, (t) => {
    const rng = makeRng(t);
    const { w, deq, X } = int8Case(rng, device, 3, 6, 10, 0);
    const Y = Tensor.empty([3, 6], { device });
    for (const threshold of [-1, NaN, Infinity]) {
      t.throws(() => ops.llmInt8Matmul(Y, X, w, { threshold }), { instanceOf: PeftkitError, code: 'E_ARG', message: /threshold/ });
      t.throws(() => ops.gemmQuant(Y, X, { ...w, threshold }), { instanceOf: PeftkitError, code: 'E_ARG', message: /threshold/ });
    }
    const { q: nf4, deq: d4 } = quantWeight(rng, 'nf4', 6, 10, 64, device);
    t.throws(() => ops.llmInt8Matmul(Y, X, nf4, { threshold: 6 }), { instanceOf: PeftkitError, code: 'E_UNSUPPORTED' });
    t.throws(() => ops.gemmQuant(Y, X, { ...w, threshold: 6 }, { beta: 1 }), { instanceOf: PeftkitError, code: 'E_UNSUPPORTED' });
    const X9 = Tensor.zeros([3, 9], { device }), Y5 = Tensor.empty([3, 5], { device }), Xb = Tensor.zeros([3, 10], { device, dtype: 'bf16' });
    t.throws(() => ops.llmInt8Matmul(Y, X9, w, { threshold: 6 }), { instanceOf: PeftkitError, code: 'E_SHAPE', message: /W/ });
    t.throws(() => ops.llmInt8Matmul(Y5, X, w, { threshold: 6 }), { instanceOf: PeftkitError, code: 'E_SHAPE', message: /Y/ });
    t.throws(() => ops.llmInt8Matmul(Y, Xb, w, { threshold: 6 }), { instanceOf: PeftkitError, code: 'E_DTYPE', message: /X/ });
    t.throws(() => ops.llmInt8Matmul(X, X, w, { threshold: 6 }), { instanceOf: PeftkitError, code: 'E_SHAPE' });
    const Xs = Tensor.zeros([3, 6], { device });
    const w6: QuantWeight = { ...w, cb: Tensor.zeros([6, 6], { device, dtype: 'i8' }), shape: [6, 6] };
    t.throws(() => ops.llmInt8Matmul(Xs, Xs, w6, { threshold: 6 }), { instanceOf: PeftkitError, code: 'E_ARG', message: /same tensor/ });
    const CA = Tensor.empty([3, 10], { device, dtype: 'i8' }), SCA = Tensor.empty([3], { device }), O = Tensor.empty([9], { device, dtype: 'u8' });
    t.throws(() => ops.quantizeInt8Vectorwise(CA, SCA, O, X, { threshold: 6 }), { instanceOf: PeftkitError, code: 'E_SHAPE', message: /outlierCols/ });
    t.throws(() => ops.quantizeInt8Vectorwise(CA, SCA, O, X, { threshold: -2 }), { instanceOf: PeftkitError, code: 'E_ARG' });
    for (const a of [deq, X, Y, d4, X9, Y5, Xb, Xs, CA, SCA, O]) a.dispose();
    if (w6.format === 'int8') w6.cb.dispose();
    disposeWeight(nf4);
    disposeWeight(w);
  });
}

test('cpu: the exact int32 sums hold on the portable and AVX2 kernels too (child processes)', (t) => {
  const script = path.join(__dirname, 'helpers', 'llm_int8_isa_check.js');
  for (const isa of runtimeInfo().avx2 ? ['portable', 'avx2'] : ['portable']) {
    const r = spawnSync(process.execPath, [script], { encoding: 'utf8', env: { ...process.env, PEFTKIT_ISA: isa } });
    t.is(r.status, 0, `${isa}: ${r.stdout}${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { isa?: string; ok?: boolean };
    t.is(out.isa, isa);
    t.true(out.ok === true);
  }
});
