/**
 * One measured training run of one method for bench/methods.ts, in a child process so that its
 * peak RSS is that method's training alone (the parent writes the random checkpoint first with
 * writeBenchModel).
 *   node methods_child.js DIR SHAPE METHOD STEPS B T
 * Methods as `createAdapter` makes them: lora / dora r=16 alpha=32 on all linear layers; ia3 on
 * k_proj, v_proj and down_proj's input; ln on every RMSNorm; bitfit a bias on each of the 7
 * Linears; diff a dense δ on the 7 Linears, kept dense (its prune step is never reached: the
 * dense phase is what is timed); full every weight; adapter Houlsby bottlenecks (reduction 16)
 * after each attention and MLP block; prompt, p-tuning (MLP encoder) and prefix with 20 virtual
 * tokens. f32 weights and compute, AdamW lr 2e-4, clipping at 1, no dropout.
 * `frozen` is the yardstick of the soft-prompt methods: the same batch's forward and backward
 * through the frozen base down to the input embeddings (what a prompt's gradient needs), with no
 * parameter to update and no optimizer — the cost a prompt or prefix adds is measured against it.
 * Prints one JSON line.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LlamaForward } from '../src/model/llama_forward';
import { LlamaModel } from '../src/model/llama';
import type { ModelAdapter } from '../src/model/sites';
import { AdapterMethod, ADAPTER_METHODS, createAdapter } from '../src/peft/registry';
import { Tensor } from '../src/tensor';
import { SeededRng } from '../src/util/rng';
import { Trainer } from '../src/train/trainer';

/** Virtual tokens of prompt, p-tuning and prefix: PEFT's examples' and the issue's 20. */
const VIRTUAL = 20;

/** An adapter that adds nothing but asks the backward to reach the input embeddings. */
function frozenBase(model: LlamaModel): ModelAdapter {
  const weight = model.weight('model.embed_tokens.weight');
  // The embedding gradient is a scatter of B·T rows (never zeroed here: only its cost matters).
  const grad = Tensor.zeros(weight.shape, { device: weight.device });
  return { linear: () => undefined, norm: () => undefined, embedding: () => ({ weight, grad }), source: null };
}

function main(): void {
  const [dir, shape, method, stepsArg, bArg, tArg] = process.argv.slice(2);
  if (method !== 'frozen' && !ADAPTER_METHODS.includes(method as AdapterMethod)) throw new Error(`method: expected frozen or one of ${ADAPTER_METHODS.join(', ')}, got '${method}'`);
  const steps = Number(stepsArg), B = Number(bArg), T = Number(tArg);
  const modelDir = path.join(dir, shape);
  if (!fs.existsSync(path.join(modelDir, 'model.safetensors'))) throw new Error(`${modelDir}: no checkpoint (run bench/methods.js)`);
  const model = LlamaModel.load(modelDir, { dtype: 'f32' });
  const rng = new SeededRng(0);
  const ids = Int32Array.from({ length: B * T }, () => rng.nextU32() % model.config.vocabSize);
  const batch = { inputIds: ids, labels: ids, B, T };
  let step: () => number;
  let trainable = 0;
  if (method === 'frozen') {
    const fwd = new LlamaForward(model, frozenBase(model), B * T, T);
    const scale = 1 / fwd.labelTokens(batch);
    step = () => fwd.run(batch, { dropout: 0, dropoutSeed: 0 }, scale).lossSum * scale;
  } else {
    const adapter = createAdapter(method as AdapterMethod, model, {
      ...(method === 'lora' || method === 'dora' ? { targets: 'all-linear' as const, lora: { r: 16, lora_alpha: 32 } } : {}),
      diff: { pruneStep: Number.MAX_SAFE_INTEGER },
      numVirtualTokens: VIRTUAL,
      seed: 0,
    });
    trainable = adapter.parameters().reduce((n, p) => n + p.param.numel, 0);
    const trainer = new Trainer(model, adapter, { maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 1 });
    step = () => trainer.step([batch], 2e-4).loss;
  }
  const times: number[] = [];
  const losses: number[] = [];
  for (let i = 0; i < steps + 2; i++) {
    const t0 = process.hrtime.bigint();
    losses.push(step());
    if (i >= 2) times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  const sorted = [...times].sort((a, b) => a - b);
  const med = sorted[Math.floor(sorted.length / 2)];
  console.log(JSON.stringify({ method, trainable, tokensPerS: (B * T) / med, stepS: med, times, lossFirst: losses[0], loss: losses[losses.length - 1] }));
}

main();
