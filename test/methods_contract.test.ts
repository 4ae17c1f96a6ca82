/**
 * The contract every method keeps, one row per (method × base storage × device), as PEFT's own
 * test matrix: identity at init where the method is the identity, save → load exact, adapter off
 * = base outputs, merged = unmerged (dense merges of f32 bases), only the method's parameters
 * change, the loss falls, generation with the KV cache = the full forward. A new method is one row.
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Device } from '../src/index';
import { LlamaModel } from '../src/model/llama';
import { KvGenerator } from '../src/model/llama_generate';
import { writeRandomModel } from '../src/model/random_model';
import type { ModelAdapter } from '../src/model/sites';
import { mergeAdapterSync } from '../src/peft/merge';
import { AdapterMethod, createAdapter, CreateAdapterOptions, loadAdapter } from '../src/peft/registry';
import { Trainer } from '../src/train/trainer';
import { ALL_DEVICES, makeRng, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';

type Storage = 'f32' | 'bf16' | 'nf4' | 'int8';
interface Row {
  method: AdapterMethod;
  /** A name for a variant of the method (its extra options). */
  variant?: string;
  options?: CreateAdapterOptions;
  /** False where the method has nothing to merge (its merge must be refused by name). Defaults to true. */
  merges?: boolean;
  /** The method is the identity when new (LoRA: B = 0; DoRA: m = ‖W‖; IA3: ones; LN: the base's scales; BitFit: zero or base biases). */
  identityAtInit: boolean;
}

const ROWS: Row[] = [
  { method: 'lora', identityAtInit: true },
  { method: 'lora', variant: 'bias all + modules_to_save', identityAtInit: true, options: { lora: { bias: 'all', modules_to_save: ['embed_tokens', 'lm_head'] } } },
  { method: 'lora', variant: 'rank_pattern + alpha_pattern + rsLoRA', identityAtInit: true, options: { lora: { rank_pattern: { down_proj: 2 }, alpha_pattern: { v_proj: 4 }, use_rslora: true } } },
  { method: 'dora', identityAtInit: true },
  { method: 'ia3', identityAtInit: true },
  { method: 'ln', identityAtInit: true },
  // q/k/v: biases both architectures can hold once merged (Qwen2 has them; Llama gets attention_bias).
  { method: 'bitfit', identityAtInit: true, options: { targets: ['q_proj', 'k_proj', 'v_proj'] } },
  { method: 'bitfit', variant: 'every Linear', identityAtInit: true, options: { targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] } },
  { method: 'diff', identityAtInit: true, options: { diff: { density: 0.1, pruneStep: 2 } } },
  { method: 'adapter', identityAtInit: true, merges: false },
  // A new prefix is random rows (PEFT's init): not the identity.
  { method: 'prefix', identityAtInit: false, merges: false, options: { numVirtualTokens: 3 } },
  { method: 'prefix', variant: 'prefix_projection', identityAtInit: false, merges: false, options: { numVirtualTokens: 2, prefixProjection: true, encoderHiddenSize: 8 } },
  { method: 'prompt', identityAtInit: false, merges: false, options: { numVirtualTokens: 3 } },
  { method: 'p-tuning', identityAtInit: false, merges: false, options: { numVirtualTokens: 3, encoderHiddenSize: 8 } },
  { method: 'p-tuning', variant: 'LSTM encoder', identityAtInit: false, merges: false, options: { numVirtualTokens: 3, encoderHiddenSize: 6, encoder: 'lstm' } },
  { method: 'prompt', variant: 'init from the vocabulary', identityAtInit: false, merges: false, options: { numVirtualTokens: 2, promptInit: { kind: 'SAMPLE_VOCAB' } } },
  { method: 'adapter', variant: 'pfeiffer', identityAtInit: true, merges: false, options: { bottleneck: { type: 'pfeiffer', reductionFactor: 8 } } },
  // Trained with LoRA dropout (every other row trains without: lora_dropout 0 below).
  { method: 'dora', variant: 'lora_dropout 0.1', identityAtInit: true, options: { lora: { lora_dropout: 0.1 } } },
];
const STORAGES: Storage[] = ['f32', 'bf16', 'nf4', 'int8'];

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-contract-'));

function logits(model: LlamaModel, adapter: ModelAdapter | null, ids: readonly number[]): Float32Array {
  const g = new KvGenerator(model, ids.length, adapter);
  try {
    return g.feed(ids);
  } finally {
    g.dispose();
  }
}

function load(dir: string, storage: Storage, device: Device): LlamaModel {
  return LlamaModel.load(dir, { device, dtype: storage === 'bf16' ? 'bf16' : 'f32', quantize: storage === 'nf4' || storage === 'int8' ? storage : undefined });
}

for (const row of ROWS) {
  for (const storage of STORAGES) {
    for (const device of ALL_DEVICES) {
      deviceTest(device, `${row.method}${row.variant ? ` (${row.variant})` : ''} on a ${storage} base`, (t) => {
        const rng = makeRng(t as never);
        const dir = tmp();
        // Qwen2 has q/k/v biases (BitFit replaces them); the tied Llama has none (BitFit adds them).
        // Alternating over the storages, so each method meets both architectures whatever the seed.
        const arch = (ROWS.indexOf(row) + STORAGES.indexOf(storage)) % 2 === 0 ? 'Qwen2ForCausalLM' : 'LlamaForCausalLM';
        writeRandomModel(dir, { architecture: arch, hiddenSize: 64, intermediateSize: 96, numHeads: 4, numKvHeads: 2, numLayers: 2, tieWordEmbeddings: arch === 'LlamaForCausalLM', seed: rng.seed });
        t.log(`${arch}, seed ${rng.seed}`);
        const model = load(dir, storage, device);
        const V = model.config.vocabSize;
        const B = 2, T = 10;
        const inputIds = Int32Array.from({ length: B * T }, () => rng.int(0, V));
        const batch = { inputIds, labels: inputIds.slice(), B, T };
        const ids = Array.from(inputIds.subarray(0, T));
        const adapter = createAdapter(row.method, model, { targets: row.options?.targets ?? (row.method === 'lora' || row.method === 'dora' ? 'all-linear' : undefined), lora: { r: 4, lora_alpha: 8, lora_dropout: 0, ...row.options?.lora }, diff: row.options?.diff, bottleneck: row.options?.bottleneck, numVirtualTokens: row.options?.numVirtualTokens, promptInit: row.options?.promptInit, encoderHiddenSize: row.options?.encoderHiddenSize, encoder: row.options?.encoder, prefixProjection: row.options?.prefixProjection, seed: rng.seed });
        const owned: Array<{ dispose(): void }> = [adapter, model];
        try {
          const base = logits(model, null, ids);
          // Identity at init.
          if (row.identityAtInit) {
            const e = relErr(logits(model, adapter, ids), base);
            t.true(e <= (storage === 'f32' ? 1e-6 : 2e-3), `a new adapter changes the outputs by ${e.toExponential(2)}`);
          }
          // Training: the loss falls; only the adapter's tensors change (the base weights are frozen).
          const frozenBefore = [...model.entries()].map(([n, w]) => [n, w.toFloat32Array()] as const);
          const trainer = new Trainer(model, adapter, { maxRows: B * T, maxT: T, dropout: adapter.dropout, maxGradNorm: 1 });
          owned.push(trainer);
          const before = adapter.parameters().map((p) => p.param.toFloat32Array());
          const losses = [0, 1, 2, 3, 4].map(() => trainer.step([batch], 3e-2).loss);
          t.true(losses[4] < losses[0], `loss ${losses.map((l) => l.toFixed(4)).join(' → ')}`);
          adapter.parameters().forEach((p, i) => t.true(relErr(p.param.toFloat32Array(), before[i]) > 0, `${p.name} trained`));
          for (const [n, w] of frozenBefore) t.deepEqual(model.weight(n).toFloat32Array(), w, `${n} is frozen`);
          const trained = logits(model, adapter, ids);
          t.true(relErr(trained, base) > 1e-4, 'training moved the outputs');
          // Adapter off: the base's outputs, exactly.
          t.deepEqual(logits(model, null, ids), base, 'without the adapter the base model is untouched');
          // Generation with the KV cache, token by token = one prefill of the whole prompt.
          const g = new KvGenerator(model, T, adapter);
          owned.push(g);
          let last: Float32Array = new Float32Array(0);
          for (let i = 0; i < T; i++) last = g.feed([ids[i]]);
          // bf16 compute rounds each activation to bf16: an f32 difference of one ulp upstream (the
          // single-row product sums in another order) can move an element by a bf16 step, 2^-8.
          const e = relErr(last, trained);
          t.true(e <= (storage === 'bf16' ? 2e-2 : 1e-5), `cached token-by-token vs prefill logits: ${e.toExponential(2)}`);
          // Save → load exact.
          const saved = path.join(dir, 'adapter');
          adapter.save(saved);
          const back = loadAdapter(saved, model.config, { device });
          owned.push(back);
          t.is(back.peftType, adapter.peftType);
          t.deepEqual(back.stateDict(), adapter.stateDict(), 'save/load round trip is exact');
          t.deepEqual(logits(model, back, ids), trained, 'the loaded adapter gives the same outputs');
          // Merged = unmerged (a dense f32 merge: no requantization in the comparison).
          // o_proj and MLP biases: transformers' Qwen2 has no place for them, so such a merge is refused.
          const unmergeable = row.variant === 'every Linear' && arch === 'Qwen2ForCausalLM';
          if (storage === 'f32' && row.merges === false) {
            t.throws(() => mergeAdapterSync({ model: dir, adapter: saved, out: path.join(dir, 'merged') }), { code: 'E_UNSUPPORTED', message: /cannot be merged/ });
          } else if (storage === 'f32' && unmergeable) {
            t.throws(() => mergeAdapterSync({ model: dir, adapter: saved, out: path.join(dir, 'merged') }), { code: 'E_UNSUPPORTED', message: /Qwen2ForCausalLM cannot hold/ });
          } else if (storage === 'f32') {
            const merged = mergeAdapterSync({ model: dir, adapter: saved, out: path.join(dir, 'merged') });
            const mm = LlamaModel.load(merged.out, { device });
            owned.push(mm);
            const e = relErr(logits(mm, null, ids), trained);
            t.true(e <= 1e-5, `merged vs unmerged: ${e.toExponential(2)}`);
          }
        } finally {
          for (const r of owned.reverse()) r.dispose();
          fs.rmSync(dir, { recursive: true, force: true });
        }
      });
    }
  }
}

test('a LoRA rank past a layer\'s own is refused before anything is allocated, naming r and the module', (t) => {
  const dir = tmp();
  writeRandomModel(dir, { hiddenSize: 32, intermediateSize: 48, numHeads: 4, numKvHeads: 2, numLayers: 1, seed: 3 });
  const model = LlamaModel.load(dir);
  t.throws(() => createAdapter('lora', model, { lora: { r: 100000 }, targets: 'all-linear' }), { code: 'E_ARG', message: /^r: 100000 exceeds model\.layers\.0\.self_attn\.q_proj's rank bound min\(in 32, out 32\) = 32/ });
  t.notThrows(() => createAdapter('lora', model, { lora: { r: 16 }, targets: 'all-linear' }).dispose());
  model.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});
