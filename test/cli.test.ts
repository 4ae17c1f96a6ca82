/** The peftkit command: exit codes, one-line errors, and a real train → generate → merge. */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { writeRandomModel } from '../src/model/random_model';

const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');
const run = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 });

test('usage errors exit 2, failures exit 1 with one line', (t) => {
  const r1 = run(['frobnicate']);
  t.is(r1.status, 2);
  t.regex(r1.stderr, /unknown command 'frobnicate'/);
  const r2 = run(['train', '--model', '/nonexistent', '--data', 'x.jsonl', '--out', os.tmpdir(), '--steps', '1']);
  t.is(r2.status, 1);
  t.regex(r2.stderr, /^peftkit: .*config\.json.*\n$/);
  const r3 = run(['train', '--model', 'm', '--data', 'd', '--out', 'o', '--r', 'four']);
  t.is(r3.status, 2);
  t.regex(r3.stderr, /--r: expected a number, got 'four'/);
});

test('train, generate with the adapter, and merge from the command line', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cli-'));
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 2, numLayers: 1, seed: 5 });
  const data = path.join(dir, 'd.jsonl');
  fs.writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `row ${i} says hello` })).join('\n'));
  const out = path.join(dir, 'adapter');
  const tr = run(['train', '--model', model, '--data', data, '--out', out, '--steps', '4', '--batch-size', '2', '--targets', 'q_proj,v_proj', '--r', '2']);
  t.is(tr.status, 0, tr.stderr);
  t.regex(tr.stdout, /adapter written to .*: 4 steps, final loss/);
  t.regex(tr.stderr, /step 4\/4 loss/, 'plain progress lines when stderr is not a terminal');
  t.true(fs.existsSync(path.join(out, 'adapter_model.safetensors')));
  const gen = run(['generate', '--model', model, '--adapter', out, '--prompt', 'row 1', '--max-new-tokens', '4', '--temperature', '0']);
  t.is(gen.status, 0, gen.stderr);
  const merged = path.join(dir, 'merged');
  const mg = run(['merge', '--model', model, '--adapter', out, '--out', merged]);
  t.is(mg.status, 0, mg.stderr);
  t.true(fs.existsSync(path.join(merged, 'model.safetensors')) && fs.existsSync(path.join(merged, 'tokenizer.json')));
});

test('the bundled demo trains and shows the generation change', (t) => {
  const r = run(['train']);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /before: "What does Ada keep\?"/);
  const steps = [...r.stdout.matchAll(/loss (\d+\.\d+)/g)].map((m) => Number(m[1]));
  t.true(steps.length >= 3 && steps[steps.length - 1] < steps[0] / 5, `loss fell: ${steps.join(' ')}`);
  t.regex(r.stdout, /after: {2}"What does Ada keep\?" -> " Ada keeps a red cat\."/);
});
