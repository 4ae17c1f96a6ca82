/** A P-tuning folder as PEFT saves it (the encoder's output only): it generates as trained, and training it is refused by name. */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { KvGenerator } from '../src/model/llama_generate';
import { loadAdapter } from '../src/peft/registry';
import { Trainer } from '../src/train/trainer';
import { relErr } from './helpers/check';

const ROOT = path.join(__dirname, '..', '..', 'test', 'golden', 'methods');

test('a PEFT-saved P-tuning folder (no prompt encoder) generates as the trained one; training it is refused', (t) => {
  const fixture = path.join(ROOT, 'llama_p_tuning');
  const exp = JSON.parse(fs.readFileSync(path.join(fixture, 'expected.json'), 'utf8')) as { micro_batches: Array<{ input_ids: number[][] }>; logits_row0: number[][] };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-ptuning-'));
  for (const f of ['adapter_config.json', 'adapter_model.safetensors']) fs.copyFileSync(path.join(fixture, 'adapter_in', f), path.join(dir, f));
  const model = LlamaModel.load(path.join(ROOT, 'models', 'llama'));
  const adapter = loadAdapter(dir, model.config);
  t.deepEqual(adapter.parameters(), [], 'nothing to train without the encoder');
  const ids = exp.micro_batches[0].input_ids[0];
  const g = new KvGenerator(model, ids.length, adapter);
  let worst = 0;
  ids.forEach((id, i) => (worst = Math.max(worst, relErr(g.feed([id]), Float32Array.from(exp.logits_row0[i])))));
  t.true(worst <= 1e-5, `logits vs PyTorch: ${worst.toExponential(2)}`);
  g.dispose();
  const T = ids.length;
  const trainer = new Trainer(model, adapter, { maxRows: T, maxT: T, dropout: 0 });
  const batch = { inputIds: Int32Array.from(ids), labels: Int32Array.from(ids), B: 1, T };
  t.throws(() => trainer.step([batch], 1e-2), { code: 'E_UNSUPPORTED', message: /holds no prompt encoder .* can be used, not trained/ });
  trainer.dispose();
  adapter.dispose();
  model.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});
