/**
 * Child of test/serving_memory.test.ts (run with --expose-gc): RSS after warm-up and at the end of
 * 100 generate calls in a row (by adapter name, and batched), then of 20 load/unload cycles of an
 * adapter. Between calls the event loop turns and the collector runs, as in a serving process.
 *   node --expose-gc serving_leak_child.js DIR
 */
import * as path from 'path';
import { loadModelSync } from '../../src/inference/model';
import { writeRandomModel } from '../../src/model/random_model';
import { LoraAdapter } from '../../src/peft/lora';
import { defaultLoraConfig } from '../../src/peft/lora/config';

const settle = async () => {
  await new Promise((r) => setImmediate(r));
  (globalThis as unknown as { gc: () => void }).gc();
  await new Promise((r) => setImmediate(r));
};

async function main(): Promise<void> {
  const dir = process.argv[2];
  const modelDir = path.join(dir, 'model');
  writeRandomModel(modelDir, { hiddenSize: 256, intermediateSize: 688, numLayers: 4, numHeads: 4, numKvHeads: 2, vocabSize: 512, tokenizer: false, seed: 1 });
  const m = loadModelSync(modelDir);
  const folders = [1, 2].map((seed) => {
    const a = LoraAdapter.create(m.llama.linearModules, defaultLoraConfig({ r: 16, lora_alpha: 32, target_modules: 'all-linear', init_lora_weights: false }), { seed });
    const f = path.join(dir, `adapter${seed}`);
    a.save(f);
    a.dispose();
    return f;
  });
  m.loadAdapter('a', folders[0]);
  const o = { maxNewTokens: 16, temperature: 0.7, stopTokens: [] };
  const generateRss: number[] = [];
  for (let i = 0; i < 100; i++) {
    if (i % 2) m.generate([1, 2, 3 + (i % 7)], { ...o, seed: i, adapter: i % 4 === 1 ? 'a' : null });
    else m.generateBatch([{ prompt: [1, 2], ...o, seed: i, adapter: 'a' }, { prompt: [3, 4, 5], ...o, seed: i }]);
    await settle();
    generateRss.push(process.memoryUsage().rss);
  }
  const cycleRss: number[] = [];
  for (let i = 0; i < 20; i++) {
    m.loadAdapter('b', folders[1]);
    m.generate([1, 2, 3], { ...o, adapter: 'b' });
    m.unloadAdapter('b');
    await settle();
    cycleRss.push(process.memoryUsage().rss);
  }
  m.dispose();
  console.log(JSON.stringify({ generateRss, cycleRss }));
}

void main();
