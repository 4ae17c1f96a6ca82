/** The peftkit command: exit codes, one-line errors, and a real train → generate → merge. */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readModelConfig } from '../src/model/config';
import { writeRandomModel } from '../src/model/random_model';
import { linearModules } from '../src/model/weights';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';

const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');
const run = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 });

test('usage errors exit 2, failures exit 1 with one line', (t) => {
  const r1 = run(['frobnicate']);
  t.is(r1.status, 2);
  t.regex(r1.stderr, /unknown command 'frobnicate'/);
  const r2 = run(['train', '--model', '/nonexistent', '--data', 'x.jsonl', '--out', os.tmpdir(), '--steps', '1']);
  t.is(r2.status, 1);
  t.regex(r2.stderr, /^peftkit: --model \/nonexistent: no such folder \(expected a Hugging Face model folder with config\.json and safetensors\)\n$/);
  const r3 = run(['train', '--model', 'm', '--data', 'd', '--out', 'o', '--r', 'four']);
  t.is(r3.status, 2);
  t.regex(r3.stderr, /--r: expected an integer, got 'four'/);
});

test('--help anywhere prints the usage; --version prints the package version', (t) => {
  const top = run(['--help']);
  t.is(top.status, 0);
  t.regex(top.stdout, /^usage:\n {2}peftkit train --model DIR/);
  for (const args of [['train', '--help'], ['merge', '-h'], ['help', 'generate']]) {
    const r = run(args);
    t.is(r.status, 0, args.join(' '));
    t.regex(r.stdout, /^peftkit (train|merge|generate): .*\n\nusage:\n {2}peftkit (train|merge|generate) --model DIR/, args.join(' '));
  }
  const v = run(['--version']);
  t.is(v.status, 0);
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
  t.is(v.stdout, `peftkit ${pkg.version}\n`);
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

test('merge into a quantized base: one warning line on stderr; --dtype f32 writes it dense', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cli-'));
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 2, numLayers: 1, seed: 7 });
  const bnb = path.join(dir, 'bnb');
  const q = run(['quantize', '--model', model, '--out', bnb, '--format', 'nf4']);
  t.is(q.status, 0, q.stderr);
  const adapter = path.join(dir, 'adapter');
  const a = LoraAdapter.create(linearModules(readModelConfig(model)), defaultLoraConfig({ r: 2, lora_alpha: 4, target_modules: ['q_proj', 'v_proj'], init_lora_weights: false }));
  a.save(adapter);
  a.dispose();
  const merged = path.join(dir, 'merged');
  const mg = run(['merge', '--model', bnb, '--adapter', adapter, '--out', merged]);
  t.is(mg.status, 0, mg.stderr);
  t.regex(mg.stderr, /^peftkit: warning: merging into a quantized base requantized 2 weights \(nf4, blocksize 64, double quant\): [^\n]+ outputs differ from the base [^\n]+\n$/);
  t.regex(mg.stdout, /^merged model written to .*merged \(2 weights merged, requantized to the base's nf4\)\n$/);
  t.truthy(JSON.parse(fs.readFileSync(path.join(merged, 'config.json'), 'utf8')).quantization_config);
  const dense = run(['merge', '--model', bnb, '--adapter', adapter, '--out', path.join(dir, 'dense'), '--dtype', 'f32']);
  t.is(dense.status, 0, dense.stderr);
  t.is(dense.stderr, '');
  t.regex(dense.stdout, /\(2 weights merged, f32, the nf4 base dequantized\)/);
  t.is(JSON.parse(fs.readFileSync(path.join(dir, 'dense', 'config.json'), 'utf8')).quantization_config, undefined);
  const bad = run(['merge', '--model', bnb, '--adapter', adapter, '--out', path.join(dir, 'x'), '--dtype', 'f16']);
  t.is(bad.status, 2);
  t.regex(bad.stderr, /--dtype: expected f32 or bf16, got 'f16'/);
});

test('the bundled demo trains and shows the generation change, in a temporary folder it removes', (t) => {
  const tmpdir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cli-tmp-'));
  const r = spawnSync(process.execPath, [BIN, 'train'], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, TMPDIR: tmpdir } });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /before: "What does Ada keep\?"/);
  const steps = [...r.stdout.matchAll(/loss (\d+\.\d+)/g)].map((m) => Number(m[1]));
  t.true(steps.length >= 3 && steps[steps.length - 1] < steps[0] / 5, `loss fell: ${steps.join(' ')}`);
  t.regex(r.stdout, /after: {2}"What does Ada keep\?" -> " Ada keeps a red cat\."/);
  t.deepEqual(fs.readdirSync(tmpdir), [], 'the demo removed its temporary folder');
});
