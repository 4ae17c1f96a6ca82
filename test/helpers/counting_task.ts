/**
 * A tiny random Llama and a learnable text task (counting phrases) for end-to-end train() tests
 * on quantized bases: small enough for a dozen steps in a test, regular enough that the loss
 * must fall.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeRandomModel } from '../../src/model/random_model';

export function countingTask(dir: string): { model: string; data: string } {
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 5 });
  const rows = Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `the number ${i % 4} comes before ${(i % 4) + 1}.` }));
  const data = path.join(dir, 'train.jsonl');
  fs.writeFileSync(data, rows.join('\n') + '\n');
  return { model, data };
}
