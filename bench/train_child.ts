/**
 * One measured training run for bench/train.ts, in a child process so that its peak RSS is
 * training alone (the parent writes the random checkpoint first with writeBenchModel).
 *   node train_child.js DIR SHAPE STEPS B T CHECKPOINTING(0|1) QUANTIZE(none|nf4|fp4|int8) [DTYPE(f32|bf16)] [DEVICE(cpu|cuda)]
 * DTYPE bf16 is --bf16: Linear weights stored bf16 and bf16 compute.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { SeededRng } from '../src/util/rng';
import { Trainer } from '../src/train/trainer';

export const SHAPES: Record<string, Parameters<typeof writeRandomModel>[1]> = {
  smol135: { hiddenSize: 576, intermediateSize: 1536, numLayers: 30, numHeads: 9, numKvHeads: 3, vocabSize: 49152, ropeTheta: 100000 },
  tiny: { hiddenSize: 256, intermediateSize: 688, numLayers: 4, numHeads: 4, numKvHeads: 2, vocabSize: 4096, ropeTheta: 10000 },
  // TinyLlama-1.1B: untied embeddings, stored in bf16 as the real checkpoint is
  tinyllama: { hiddenSize: 2048, intermediateSize: 5632, numLayers: 22, numHeads: 32, numKvHeads: 4, vocabSize: 32000, ropeTheta: 10000, tieWordEmbeddings: false, dtype: 'bf16' },
};

/** Writes the random checkpoint of a benchmark shape into DIR/SHAPE. */
export function writeBenchModel(modelDir: string, shape: string): void {
  if (!SHAPES[shape]) throw new Error(`unknown shape '${shape}' (expected ${Object.keys(SHAPES).join(', ')})`);
  writeRandomModel(modelDir, { tieWordEmbeddings: true, ...SHAPES[shape], tokenizer: false, seed: 0 });
}

function main(): void {
  const [dir, shape, stepsArg, bArg, tArg, ckptArg, quantArg, dtypeArg, deviceArg] = process.argv.slice(2);
  const device = deviceArg === 'cuda' ? 'cuda' : 'cpu';
  const quantize = quantArg === 'nf4' || quantArg === 'fp4' || quantArg === 'int8' ? quantArg : undefined;
  const steps = Number(stepsArg), B = Number(bArg), T = Number(tArg);
  const modelDir = path.join(dir, shape);
  if (!fs.existsSync(path.join(modelDir, 'model.safetensors'))) throw new Error(`${modelDir}: no checkpoint (run bench/train.js)`);
  const model = LlamaModel.load(modelDir, { quantize, dtype: dtypeArg === 'bf16' ? 'bf16' : 'f32', device });
  const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 16, lora_alpha: 32, target_modules: 'all-linear' }), { seed: 0, device });
  const trainer = new Trainer(model, adapter, { maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 1, activationCheckpointing: ckptArg === '1' });
  const rng = new SeededRng(0);
  const ids = Int32Array.from({ length: B * T }, () => rng.nextU32() % model.config.vocabSize);
  const batch = { inputIds: ids, labels: ids, B, T };
  const times: number[] = [];
  for (let i = 0; i < steps + 2; i++) {
    const t0 = process.hrtime.bigint();
    trainer.step([batch], 2e-4);
    if (i >= 2) times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  times.sort((a, b) => a - b);
  const med = times[Math.floor(times.length / 2)];
  console.log(JSON.stringify({ tokensPerS: (B * T) / med, stepS: med }));
}

if (require.main === module) main();
