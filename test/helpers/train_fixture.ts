/** A tiny random model and a text dataset to train on in a fraction of a second (jobs and service tests). */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { writeRandomModel } from '../../src/model/random_model';

export const tmpDir = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), `peftkit-${prefix}-`));

/** A 2-layer model (hidden 32) and 24 rows of text (odd ones prompt/completion); `seed` varies the rows. */
export function tinyTrainFixture(dir: string, seed = 0): { model: string; data: string } {
  const model = path.join(dir, 'model');
  if (!fs.existsSync(model)) writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 11 });
  const rows: string[] = [];
  for (let i = seed; i < seed + 24; i++) {
    rows.push(JSON.stringify(i % 2 ? { prompt: `Q${i}: what is ${i} + 1?`, completion: ` ${i + 1}` } : { text: `the number ${i} comes before ${i + 1}.` }));
  }
  const data = path.join(dir, `train_${seed}.jsonl`);
  fs.writeFileSync(data, rows.join('\n') + '\n');
  return { model, data };
}
