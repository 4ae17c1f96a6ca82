/** QLoRA's fused LoRA: loraForward / loraBackward with a quantized W equal them on the dequantized W. */
import test from 'ava';
import { PeftkitError, Tensor, ops } from '../src/index';
import type { Device } from '../src/index';
import type { QuantWeight } from '../src/ops/gemm_quant';
import { devices, makeRng, poisoned, randn, relErr } from './helpers/check';
import type { Rng } from './helpers/check';

import { disposeWeight, quantWeight } from './helpers/quant_weight';
import type { Format } from './helpers/quant_weight';

const from = (rng: Rng, shape: number[], device: Device, scale = 1) =>
  Tensor.from(randn(rng, shape.reduce((a, b) => a * b, 1), scale), shape, { device });

// [M, N (out), K (in), r, blocksize]: M = 1 (the skinny path), N = 1, odd N·K, K not a multiple
// of the block, a large block, a rank of 1.
const SHAPES: Array<[number, number, number, number, number]> = [
  [7, 13, 100, 4, 64],
  [1, 33, 77, 3, 128],
  [19, 1, 129, 2, 64],
  [5, 41, 300, 1, 4096],
  [37, 61, 45, 8, 32],
];
const FORMATS: Format[] = ['nf4', 'fp4', 'int8'];

for (const device of devices()) {
  test(`${device}: loraForward / loraBackward with a quantized W equal the f32 LoRA on the dequantized W`, (t) => {
    const rng = makeRng(t);
    for (const format of FORMATS) {
      for (const [M, N, K, r, bs] of SHAPES) {
        for (const variant of ['plain', 'bias+dropout', 'no dX'] as const) {
          const what = `${format} M=${M} N=${N} K=${K} r=${r} bs=${bs} ${variant}`;
          const { q, deq } = quantWeight(rng, format, N, K, bs, device);
          const X = from(rng, [M, K], device), A = from(rng, [r, K], device, 0.1), B = from(rng, [N, r], device, 0.1);
          const withDropout = variant === 'bias+dropout';
          const bias = withDropout ? from(rng, [N], device) : undefined;
          const Xa = withDropout ? from(rng, [M, K], device) : undefined;
          const s = 1.75;
          const out = (W: Tensor | QuantWeight) => {
            const Y = poisoned([M, N], device), XA = poisoned([M, r], device);
            ops.loraForward(Y, XA, X, W, A, B, { scale: s, bias, dropoutInput: Xa });
            return { Y, XA };
          };
          const fq = out(q), fr = out(deq);
          t.true(relErr(fq.Y.toFloat32Array(), fr.Y.toFloat32Array()) <= 1e-5, `${what}: Y`);
          t.true(relErr(fq.XA.toFloat32Array(), fr.XA.toFloat32Array()) <= 1e-5, `${what}: XA`);

          const dY = from(rng, [M, N], device);
          const dA0 = randn(rng, r * K), dB0 = randn(rng, N * r);
          const back = (W: Tensor | QuantWeight, XA: Tensor) => {
            const dX = variant === 'no dX' ? null : poisoned([M, K], device);
            const dXa = withDropout ? poisoned([M, K], device) : undefined;
            const dA = Tensor.from(dA0, [r, K], { device }), dB = Tensor.from(dB0, [N, r], { device });
            ops.loraBackward(dX, dA, dB, dY, Xa ?? X, XA, W, A, B, { scale: s, dDropoutInput: dXa });
            return { dX, dXa, dA, dB };
          };
          const bq = back(q, fq.XA), br = back(deq, fr.XA);
          for (const k of ['dX', 'dXa', 'dA', 'dB'] as const) {
            const a = bq[k], b = br[k];
            if (!a || !b) continue;
            t.true(relErr(a.toFloat32Array(), b.toFloat32Array()) <= 1e-5, `${what}: ${k}`);
          }
          for (const x of [fq.Y, fq.XA, fr.Y, fr.XA, X, A, B, dY, deq, bias, Xa, ...Object.values(bq), ...Object.values(br)]) x?.dispose();
          disposeWeight(q);
        }
      }
    }
  });

  // bf16 compute: the quantized W must give what the dense path gives on the same values, i.e.
  // loraForward/loraBackward with compute 'bf16' on the dequantized W (which rounds it the same way).
  test(`${device}: bf16 compute loraForward / loraBackward with a quantized W equal bf16 compute on the dequantized W`, (t) => {
    const rng = makeRng(t);
    for (const format of FORMATS) {
      for (const [M, N, K, r, bs] of SHAPES) {
        for (const withDropout of [false, true]) {
          const what = `${format} M=${M} N=${N} K=${K} r=${r} bs=${bs} dropout=${withDropout}`;
          const { q, deq } = quantWeight(rng, format, N, K, bs, device);
          const X = from(rng, [M, K], device), A = from(rng, [r, K], device, 0.1), B = from(rng, [N, r], device, 0.1);
          const bias = withDropout ? undefined : from(rng, [N], device);
          const Xa = withDropout ? from(rng, [M, K], device) : undefined;
          const s = 1.25, compute = 'bf16' as const;
          const out = (W: Tensor | QuantWeight) => {
            const Y = poisoned([M, N], device), XA = poisoned([M, r], device);
            ops.loraForward(Y, XA, X, W, A, B, { scale: s, bias, dropoutInput: Xa, compute });
            return { Y, XA };
          };
          const fq = out(q), fr = out(deq);
          t.true(relErr(fq.Y.toFloat32Array(), fr.Y.toFloat32Array()) <= 1e-5, `${what}: Y`);
          t.true(relErr(fq.XA.toFloat32Array(), fr.XA.toFloat32Array()) <= 1e-5, `${what}: XA`);
          const dY = from(rng, [M, N], device);
          const back = (W: Tensor | QuantWeight, XA: Tensor) => {
            const dX = poisoned([M, K], device), dXa = withDropout ? poisoned([M, K], device) : undefined;
            const dA = Tensor.zeros([r, K], { device }), dB = Tensor.zeros([N, r], { device });
            ops.loraBackward(dX, dA, dB, dY, Xa ?? X, XA, W, A, B, { scale: s, dDropoutInput: dXa, compute });
            return { dX, dXa, dA, dB };
          };
          const bq = back(q, fq.XA), br = back(deq, fr.XA);
          for (const k of ['dX', 'dXa', 'dA', 'dB'] as const) {
            const a = bq[k], b = br[k];
            if (!a || !b) continue;
            t.true(relErr(a.toFloat32Array(), b.toFloat32Array()) <= 1e-5, `${what}: ${k}`);
          }
          for (const x of [fq.Y, fq.XA, fr.Y, fr.XA, X, A, B, dY, deq, bias, Xa, ...Object.values(bq), ...Object.values(br)]) x?.dispose();
          disposeWeight(q);
        }
      }
    }
  });

  test(`${device}: a quantized W that does not fit is an error naming it`, (t) => {
    const rng = makeRng(t);
    const { q, deq } = quantWeight(rng, 'nf4', 6, 10, 64, device);
    const X = from(rng, [3, 10], device), A = from(rng, [2, 10], device), B = from(rng, [6, 2], device);
    const Y = Tensor.empty([3, 6], { device }), XA = Tensor.empty([3, 2], { device });
    const X9 = from(rng, [3, 9], device);
    const A9 = from(rng, [2, 9], device);
    t.throws(() => ops.loraForward(Y, XA, X9, q, A9, B), { instanceOf: PeftkitError, code: 'E_SHAPE', message: /lora_forward W/ });
    if (q.format !== 'int8') {
      const short = { ...q, absmax: Tensor.empty([5], { device }) };
      t.throws(() => ops.loraForward(Y, XA, X, short, A, B), { instanceOf: PeftkitError, code: 'E_SHAPE', message: /W absmax/ });
      const f32codes = { ...q, packed: Tensor.empty([30], { device }) };
      t.throws(() => ops.loraForward(Y, XA, X, f32codes, A, B), { instanceOf: PeftkitError, code: 'E_DTYPE', message: /W packed/ });
      short.absmax.dispose();
      f32codes.packed.dispose();
    }
    const dY = from(rng, [3, 7], device), dA = Tensor.zeros([2, 10], { device }), dB = Tensor.zeros([7, 2], { device });
    const B7 = from(rng, [7, 2], device);
    t.throws(() => ops.loraBackward(null, dA, dB, dY, X, XA, q, A, B7), { instanceOf: PeftkitError, code: 'E_SHAPE', message: /lora_backward W/ });
    t.throws(() => ops.loraForward(X, XA, X, q, A, B), { instanceOf: PeftkitError, code: 'E_SHAPE' });
    for (const x of [deq, X, A, B, Y, XA, X9, A9, dY, dA, dB, B7]) x.dispose();
    disposeWeight(q);
  });
}
