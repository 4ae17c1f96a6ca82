/**
 * One DoRA layer against float64, with and without LoRA dropout, on every base storage DoRA trains
 * on. The reference is PEFT's formula written out naively (lora/variants.py DoraLinearVariant and
 * lora/dora.py DoraLinearLayer): with dropout p and Xd = X ⊙ keep / (1 − p), keep the mask the
 * engine's seeded dropout draws at this call site,
 *
 *   Y = X·Wᵀ + b + (g − 1) ⊙ Xd·Wᵀ + g ⊙ s·Xd·Aᵀ·Bᵀ,   g = m / ‖W + s·B·A‖ (per output row, detached)
 *
 * and its gradients (dX through both X·Wᵀ and Xd·Wᵀ, dA, dB, dm). p = 0 is the same formula with
 * Xd = X, which is g ⊙ (X·Wᵀ + s·X·Aᵀ·Bᵀ) + b.
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ops, Tensor } from '../src/index';
import type { Device } from '../src/index';
import type { QuantWeight } from '../src/ops/gemm_quant';
import { BaseLinear, baseForward, baseWeightF32, Scratch, SiteCall } from '../src/model/sites';
import { DoraLayer } from '../src/peft/dora/layer';
import { LoraLayer } from '../src/peft/lora/layer';
import { loadAdapter } from '../src/peft/registry';
import { train } from '../src/train/train';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { assertClose, devices, makeRng, randn, roundBf16 } from './helpers/check';
import type { Rng } from './helpers/check';
import { disposeWeight, quantWeight } from './helpers/quant_weight';

const M = 11, K = 40, N = 23, R = 4;
type Storage = 'f32' | 'bf16 (bf16 compute)' | 'nf4' | 'int8' | 'int8 + LLM.int8 threshold';
const STORAGES: Storage[] = ['f32', 'bf16 (bf16 compute)', 'nf4', 'int8', 'int8 + LLM.int8 threshold'];

/** A frozen Linear in `storage` with a bias, and its weight as f32 values (dequantized, or bf16-exact). */
function makeBase(rng: Rng, storage: Storage, device: Device): { base: BaseLinear; w: Float32Array; dispose(): void } {
  const bias = Tensor.from(randn(rng, N, 0.1), [N], { device });
  if (storage === 'f32' || storage.startsWith('bf16')) {
    const w = storage === 'f32' ? randn(rng, N * K, 0.05) : roundBf16(randn(rng, N * K, 0.05));
    const W = Tensor.from(w, [N, K], { device, dtype: storage === 'f32' ? 'f32' : 'bf16' });
    const compute = storage === 'f32' ? 'f32' : 'bf16';
    return { base: { module: 'm', weight: { W }, bias, compute }, w, dispose: () => { W.dispose(); bias.dispose(); } };
  }
  const { q, deq } = quantWeight(rng, storage === 'nf4' ? 'nf4' : 'int8', N, K, 64, device);
  const w = deq.toFloat32Array();
  deq.dispose();
  const weight: QuantWeight = q.format === 'int8' && storage.includes('threshold') ? { ...q, threshold: 1.5 } : q;
  return { base: { module: 'm', weight: { q: weight }, bias, compute: 'f32' }, w, dispose: () => { disposeWeight(q); bias.dispose(); } };
}

/** Row-major [rows, inner]·[cols, inner]ᵀ in float64. */
function matmulT(a: ArrayLike<number>, b: ArrayLike<number>, rows: number, cols: number, inner: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < cols; j++) {
      let acc = 0;
      for (let k = 0; k < inner; k++) acc += a[i * inner + k] * b[j * inner + k];
      out[i * cols + j] = acc;
    }
  return out;
}

const transpose = (a: ArrayLike<number>, rows: number, cols: number) => Float64Array.from({ length: rows * cols }, (_, i) => a[(i % rows) * cols + Math.floor(i / rows)]);

/**
 * PEFT's DoRA with dropout, forward and backward, naively in float64. `baseWx`: the base output
 * X·Wᵀ as the base layer computes it (LLM.int8), else the float64 product; without dropout PEFT
 * reuses it for the DoRA term, with dropout Xd·Wᵀ is F.linear of the dequantized weight.
 */
function reference(
  x: Float32Array, xd: Float64Array, keepScale: Float64Array, w: Float32Array, bias: Float32Array, a: Float32Array, b: Float32Array,
  m: Float32Array, s: number, dy: Float32Array, baseWx: Float32Array | null, dropout: boolean,
) {
  const ba = matmulT(b, transpose(a, R, K), N, K, R); // B·A [N, K]
  const norm = Float64Array.from({ length: N }, (_, o) => Math.sqrt(w.slice(o * K, (o + 1) * K).reduce((acc, v, k) => acc + (v + s * ba[o * K + k]) ** 2, 0)));
  const g = Float64Array.from(m, (v, o) => v / norm[o]);
  const wx = baseWx ?? matmulT(x, w, M, N, K), wxd = dropout ? matmulT(xd, w, M, N, K) : wx, xdA = matmulT(xd, a, M, R, K);
  const low = matmulT(xdA, b, M, N, R); // Xd·Aᵀ·Bᵀ
  const col = (i: number) => i % N;
  const y = Float64Array.from(wx, (v, i) => v + bias[col(i)] + (g[col(i)] - 1) * wxd[i] + g[col(i)] * s * low[i]);
  // Gradients: G = g ⊙ dY reaches the low-rank term, E = (g − 1) ⊙ dY the Xd·Wᵀ term, dY itself X·Wᵀ.
  const G = Float64Array.from(dy, (v, i) => g[col(i)] * v), E = Float64Array.from(dy, (v, i) => (g[col(i)] - 1) * v);
  const wT = transpose(w, N, K), GB = matmulT(G, transpose(b, N, R), M, R, N);
  const dyW = matmulT(dy, wT, M, K, N), eW = matmulT(E, wT, M, K, N), gBA = matmulT(GB, transpose(a, R, K), M, K, R);
  const dx = Float64Array.from(dyW, (v, i) => v + keepScale[i] * (eW[i] + s * gBA[i]));
  const dA = matmulT(transpose(GB, M, R), transpose(xd, M, K), R, K, M).map((v) => s * v);
  const dB = matmulT(transpose(G, M, N), transpose(xdA, M, R), N, R, M).map((v) => s * v);
  const z = Float64Array.from(wxd, (v, i) => v + s * low[i]);
  const dm = Float64Array.from({ length: N }, (_, o) => {
    let acc = 0;
    for (let i = 0; i < M; i++) acc += dy[i * N + o] * z[i * N + o];
    return acc / norm[o];
  });
  return { y, dx, dA, dB, dm, norm };
}

for (const device of devices()) {
  for (const storage of STORAGES) {
    for (const p of [0, 0.3]) {
      test(`${device}: DoRA with dropout ${p} on a ${storage} base matches PEFT's formula in float64 (Y, dX, dA, dB, dm)`, (t) => {
        const rng = makeRng(t);
        const { base, w, dispose } = makeBase(rng, storage, device);
        const a = randn(rng, R * K, 1 / Math.sqrt(K)), b = randn(rng, N * R, 0.05), s = 0.5 + rng.next();
        const call: SiteCall = { dropout: p, dropoutSeed: rng.int(0, 2 ** 31), streamOffset: rng.int(0, 1 << 20), scratch: new Scratch(device), weightsFixed: false };
        // The mask the engine draws at this call site: dropout of ones is 1/(1 − p) where kept, 0 where dropped.
        const ones = Tensor.from(new Float32Array(M * K).fill(1), [M, K], { device });
        ops.dropoutForward(ones, ones, { p, seed: call.dropoutSeed, offset: call.streamOffset });
        const keepScale = Float64Array.from(ones.toFloat32Array(), (v) => (v === 0 ? 0 : 1 / (1 - p)));
        if (p > 0) t.true(keepScale.some((v) => v === 0) && keepScale.some((v) => v > 0), 'the mask drops some elements and keeps others');
        const x = randn(rng, M * K), dy = randn(rng, M * N);
        const xd = Float64Array.from(x, (v, i) => v * keepScale[i]);
        const X = Tensor.from(x, [M, K], { device }), dY = Tensor.from(dy, [M, N], { device });
        const Y = Tensor.empty([M, N], { device }), dX = Tensor.empty([M, K], { device });
        // LLM.int8 quantizes X in the base output X·Wᵀ: that term is the engine's own product.
        let baseWx: Float32Array | null = null;
        if (storage.includes('threshold')) {
          baseForward(base, Y, X, false);
          baseWx = Y.toFloat32Array();
        }
        const ref = (m: Float32Array) => reference(x, xd, keepScale, w, base.bias!.toFloat32Array(), a, b, m, s, dy, baseWx, p > 0);
        // m moves g = m / ‖W'‖ well away from 1, so that every term counts.
        const m = Float32Array.from(ref(new Float32Array(N)).norm, (v) => v * (1 + 0.3 * rng.normal()));
        const want = ref(m);
        const layer = new DoraLayer({ name: 'm', inFeatures: K, outFeatures: N }, R, s, a, b, m, device);
        try {
          layer.forward(Y, X, base, call);
          layer.backward(dX, dY, X, base, call);
          // bf16 compute reads X, Xd, dY and (g − 1)·dY as bf16 in the base products: 2^-9 of each.
          const tol = storage.startsWith('bf16') ? 5e-3 : 1e-5;
          assertClose(t, Y.toFloat32Array(), want.y, tol, 'Y');
          assertClose(t, dX.toFloat32Array(), want.dx, tol, 'dX');
          assertClose(t, layer.dA.toFloat32Array(), want.dA, tol, 'dA');
          assertClose(t, layer.dB.toFloat32Array(), want.dB, tol, 'dB');
          assertClose(t, layer.dm.toFloat32Array(), want.dm, tol, 'dm');
        } finally {
          for (const d of [X, dY, Y, dX, ones, layer, call.scratch]) d.dispose();
          dispose();
        }
      });
    }

    test(`${device}: DoRA at m = ‖W + s·B·A‖ is LoRA with the same dropout mask, bit for bit (${storage} base)`, (t) => {
      const rng = makeRng(t);
      const { base, dispose } = makeBase(rng, storage, device);
      const a = randn(rng, R * K, 1 / Math.sqrt(K)), b = randn(rng, N * R, 0.05), s = 0.5 + rng.next();
      const call: SiteCall = { dropout: 0.3, dropoutSeed: rng.int(0, 2 ** 31), streamOffset: rng.int(0, 1 << 20), scratch: new Scratch(device), weightsFixed: false };
      const mod = { name: 'm', inFeatures: K, outFeatures: N };
      const lora = new LoraLayer(mod, R, s, a, b, device);
      // The engine's own norms (the layer's computation), so that g is exactly 1.
      const W = Tensor.empty([N, K], { device }), norms = Tensor.empty([N], { device });
      baseWeightF32(base, W);
      ops.gemm(W, lora.B, lora.A, { alpha: s, beta: 1 });
      ops.rowNorms(norms, W);
      const dora = new DoraLayer(mod, R, s, a, b, norms.toFloat32Array(), device);
      const X = Tensor.from(randn(rng, M * K), [M, K], { device }), dY = Tensor.from(randn(rng, M * N), [M, N], { device });
      const out = () => ({ Y: Tensor.empty([M, N], { device }), dX: Tensor.empty([M, K], { device }) });
      const l = out(), d = out();
      try {
        lora.forward(l.Y, X, base, call);
        lora.backward(l.dX, dY, X, base, call);
        dora.forward(d.Y, X, base, call);
        dora.backward(d.dX, dY, X, base, call);
        t.deepEqual(d.Y.toFloat32Array(), l.Y.toFloat32Array(), 'Y');
        t.deepEqual(d.dX.toFloat32Array(), l.dX.toFloat32Array(), 'dX');
        t.deepEqual(dora.dA.toFloat32Array(), lora.dA.toFloat32Array(), 'dA');
        t.deepEqual(dora.dB.toFloat32Array(), lora.dB.toFloat32Array(), 'dB');
      } finally {
        for (const x of [X, dY, W, norms, l.Y, l.dX, d.Y, d.dX, lora, dora, call.scratch]) x.dispose();
        dispose();
      }
    });
  }
}

test('DoRA with dropout resumes bit for bit: 2 steps, then resumed to 4 = 4 straight steps (the masks follow the step, not the process)', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-dora-'));
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 5 });
  const data = path.join(dir, 'train.jsonl');
  fs.writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `the number ${i} comes before ${i + 1}.` })).join('\n'));
  const common = { model, data, method: 'dora' as const, r: 4, alpha: 8, targets: 'all-linear' as const, batchSize: 4, lr: 1e-2, maxLength: 32, seed: 9 };
  const straight = await train({ ...common, out: path.join(dir, 'straight'), steps: 4 });
  await train({ ...common, out: path.join(dir, 'resumed'), steps: 2 });
  const resumed = await train({ ...common, out: path.join(dir, 'resumed'), steps: 4, resume: path.join(dir, 'resumed') });
  t.is(resumed.steps, 4);
  const config = (out: string) => JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
  t.like(config(straight.adapterDir), { use_dora: true, lora_dropout: 0.05 }, 'DoRA trains with LoRA\'s default dropout');
  const m = LlamaModel.load(model);
  const a = loadAdapter(straight.adapterDir, m.config), b = loadAdapter(resumed.adapterDir, m.config);
  for (const [k, v] of a.stateDict()) t.deepEqual(b.stateDict().get(k), v, `${k} after resume`);
  for (const x of [a, b, m]) x.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});
