/**
 * One measured training run of one method for bench/methods.ts, in a child process so that its
 * peak RSS is that method's training alone (the parent writes the random checkpoint first with
 * writeBenchModel).
 *   node methods_child.js DIR SHAPE METHOD STEPS B T
 * Methods as `createAdapter` makes them: lora / dora r=16 alpha=32 on all linear layers; ia3 on
 * k_proj, v_proj and down_proj's input; ln on every RMSNorm; bitfit a bias on each of the 7
 * Linears; diff a dense δ on the 7 Linears, kept dense (its prune step is never reached: the
 * dense phase is what is timed); full every weight. f32 weights and compute, AdamW lr 2e-4,
 * clipping at 1, no dropout. Prints one JSON line.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { AdapterMethod, ADAPTER_METHODS, createAdapter } from '../src/peft/registry';
import { SeededRng } from '../src/util/rng';
import { Trainer } from '../src/train/trainer';

function main(): void {
  const [dir, shape, method, stepsArg, bArg, tArg] = process.argv.slice(2);
  if (!ADAPTER_METHODS.includes(method as AdapterMethod)) throw new Error(`method: expected one of ${ADAPTER_METHODS.join(', ')}, got '${method}'`);
  const steps = Number(stepsArg), B = Number(bArg), T = Number(tArg);
  const modelDir = path.join(dir, shape);
  if (!fs.existsSync(path.join(modelDir, 'model.safetensors'))) throw new Error(`${modelDir}: no checkpoint (run bench/methods.js)`);
  const model = LlamaModel.load(modelDir, { dtype: 'f32' });
  const adapter = createAdapter(method as AdapterMethod, model, {
    ...(method === 'lora' || method === 'dora' ? { targets: 'all-linear' as const, lora: { r: 16, lora_alpha: 32 } } : {}),
    diff: { pruneStep: Number.MAX_SAFE_INTEGER },
    seed: 0,
  });
  const trainable = adapter.parameters().reduce((n, p) => n + p.param.numel, 0);
  const trainer = new Trainer(model, adapter, { maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 1 });
  const rng = new SeededRng(0);
  const ids = Int32Array.from({ length: B * T }, () => rng.nextU32() % model.config.vocabSize);
  const batch = { inputIds: ids, labels: ids, B, T };
  const times: number[] = [];
  const losses: number[] = [];
  for (let i = 0; i < steps + 2; i++) {
    const t0 = process.hrtime.bigint();
    const r = trainer.step([batch], 2e-4);
    if (i >= 2) times.push(Number(process.hrtime.bigint() - t0) / 1e9);
    losses.push(r.loss);
  }
  const sorted = [...times].sort((a, b) => a - b);
  const med = sorted[Math.floor(sorted.length / 2)];
  console.log(JSON.stringify({ method, trainable, tokensPerS: (B * T) / med, stepS: med, times, lossFirst: losses[0], loss: losses[losses.length - 1] }));
}

main();
