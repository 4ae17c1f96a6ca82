/**
 * The CLI's flag table (src/cli/flags.ts) through the real `bin/peftkit.js`: per-command help
 * wrapped to the terminal, the README's table in step with it, --config files, the aliases, and
 * usage errors (exit 2) that name the flag. Also: the commands that need no engine work without
 * the native addon, and a missing addon is one line.
 */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { COMMANDS, TRAIN_FLAGS } from '../src/cli/flags';
import { writeRandomModel } from '../src/model/random_model';
import { METHOD_NAMES } from '../src/train/options';

const ROOT = path.join(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'peftkit.js');
const run = (args: string[], env: Record<string, string> = {}, bin = BIN) =>
  spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...env } });
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-flags-'));

function fixture(): { model: string; data: string; dir: string } {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 2, numLayers: 1, seed: 5 });
  const data = path.join(dir, 'd.jsonl');
  fs.writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `row ${i} says hello` })).join('\n'));
  return { model, data, dir };
}

test('each command\'s --help lists every flag, its aliases and default, wrapped to the terminal width', (t) => {
  for (const cmd of COMMANDS) {
    for (const width of [60, 100]) {
      const r = run([cmd.name, '--help'], { COLUMNS: String(width) });
      t.is(r.status, 0, r.stderr);
      for (const line of r.stdout.split('\n')) t.true(line.length <= width, `${cmd.name} at ${width} columns: ${JSON.stringify(line)}`);
      const flat = r.stdout.replace(/\s+/g, ' ');
      for (const f of cmd.flags) {
        t.true(flat.includes(`--${f.name}`), `${cmd.name} --help lists --${f.name}`);
        for (const a of f.aliases ?? []) t.true(flat.includes(a.length === 1 ? `-${a}` : `--${a}`), `${cmd.name} --help lists the alias ${a}`);
      }
    }
  }
  const train = run(['train', '--help'], { COLUMNS: '100' }).stdout.replace(/\s+/g, ' ');
  t.regex(train, /--batch-size, --per-device-train-batch-size N sequences per micro-batch \(default: 4\)/);
  t.regex(train, /--method METHOD fine-tuning method: lora, qlora, int8-lora, dora, ia3, ln, bitfit, diff, adapter, prompt, p-tuning, prefix, full \(default: lora\)/);
  t.regex(train, /--lr, --learning-rate X peak learning rate \(at most 1\) \(default: 0\.0002\)/);
});

test('the README\'s options table is the one the flag table makes', (t) => {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { expectedReadme } = require(path.join(ROOT, 'scripts', 'readme-options.js')) as { expectedReadme: (s: string) => string };
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  t.is(readme, expectedReadme(readme), 'README.md is out of step with src/cli/flags.ts: run `npm run docs:options`');
  for (const f of TRAIN_FLAGS) if (f.name !== 'config') t.true(readme.includes(`\`--${f.name}`), `--${f.name} in the README`);
  // --method lists the methods src/train/options.ts exports.
  t.deepEqual(TRAIN_FLAGS.find((f) => f.name === 'method')?.values, METHOD_NAMES);
});

test('usage errors exit 2 and name the CLI flag, not the API field', (t) => {
  const { model, data, dir } = fixture();
  const base = ['train', '--model', model, '--data', data, '--out', path.join(dir, 'o')];
  const cases: Array<[string[], RegExp]> = [
    [[...base, '--lr', ''], /^peftkit: --lr: expected a number, got ''\n/],
    [[...base, '--lr', '5'], /^peftkit: --lr: expected a number in \[0, 1\], got 5\n/],
    [[...base, '--eps', '0'], /^peftkit: --eps: expected a number in \(0, 1\], got 0\n/],
    [[...base, '--max-length', '0'], /^peftkit: --max-length: expected a positive integer, got 0\n/],
    [[...base, '--batch-size', '2.5'], /^peftkit: --batch-size: expected an integer, got '2\.5'\n/],
    [[...base, '--eval-split', '1.5'], /^peftkit: --eval-split: expected a fraction between 0 and 1 \(exclusive\), got 1\.5\n/],
    [[...base, '--eval-split', '0.2', '--eval-data', data], /^peftkit: --eval-data and --eval-split were both given; expected one\n/],
    [[...base, '--warmup-steps', '2', '--warmup-ratio', '0.1'], /^peftkit: --warmup-steps and --warmup-ratio were both given/],
    [[...base, '--adapter', dir, '--r', '4'], /^peftkit: --r cannot be given with --adapter: the adapter's adapter_config\.json decides them\n/],
    [[...base, '--paged-dir', path.join(dir, 'nope')], /^peftkit: --paged-dir: .*nope is not an existing folder/],
    [[...base, '--method', 'p-tuning', '--encoder', 'gru'], /^peftkit: --encoder: expected mlp or lstm, got 'gru'\n/],
    [[...base, '--method', 'dora-x'], /^peftkit: --method: expected lora, qlora, int8-lora, dora, ia3, ln, bitfit, diff, adapter, prompt, p-tuning, prefix or full, got 'dora-x'\n/],
    [[...base, '--max-length', '8', '--max-seq-length', '8'], /^peftkit: --max-length was given twice \(as --max-length and --max-seq-length\)\n/],
    [[...base, '--learning_rate', '1'], /^peftkit: unknown option '--learning_rate' for `peftkit train` \(did you mean --learning-rate\?\)\n/],
    [['train', '--steps', '5'], /^peftkit: --model, --data and --out are required \(`peftkit train` with no arguments at all runs the demo/],
    [['train', '--device', 'cuda'], /^peftkit: --model, --data and --out are required/],
    [['train', '--model', model, '--data', data], /^peftkit: --out is required\n/],
    [['generate', '--model', model, '--prompt', 'x', '--top-p', '2'], /^peftkit: --top-p: expected a number in \(0, 1\], got '2'\n/],
    [['generate', '--model', model, '--prompt', 'x', '--max-new-tokens', '2.5'], /^peftkit: --max-new-tokens: expected an integer, got '2\.5'\n/],
    [['generate', '--model', model, '--prompt', 'x', '--temperature', ''], /^peftkit: --temperature: expected a number, got ''\n/],
    [['demo', '--steps', '0'], /^peftkit: --steps: expected an integer in \[1, 100000\], got '0'\n/],
  ];
  for (const [args, re] of cases) {
    const r = run(args);
    t.is(r.status, 2, `${args.slice(7).join(' ') || args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
  }
  t.false(fs.existsSync(path.join(dir, 'o')), 'no usage error created the output folder');
  // Found wrong only once the model is read: exit 1, still naming the flag.
  const i8 = run([...base, '--int8-threshold', '6']);
  t.is(i8.status, 1);
  t.regex(i8.stderr, /^peftkit: .*model: --int8-threshold applies to an int8 base/);
});

test('a hub id given to --model says that peftkit reads local folders and how to download one', (t) => {
  const r = run(['train', '--model', 'HuggingFaceTB/SmolLM2-135M', '--data', 'd.jsonl', '--out', path.join(tmp(), 'o')]);
  t.is(r.status, 1);
  t.regex(r.stderr, /^peftkit: --model HuggingFaceTB\/SmolLM2-135M: no such folder\. peftkit reads local Hugging Face model folders .*`huggingface-cli download HuggingFaceTB\/SmolLM2-135M --local-dir SmolLM2-135M/);
  t.is(r.stderr.split('\n').length, 2, 'one line');
});

test('--config reads YAML or JSON whose keys are the flags (aliases and _ spellings too); the command line wins', (t) => {
  const { model, data, dir } = fixture();
  const yaml = path.join(dir, 'run.yaml');
  fs.writeFileSync(yaml, [`model: ${model}`, `data: ${data}`, `out: ${path.join(dir, 'y')}`, 'steps: 3', 'batch_size: 2', 'targets: [q_proj, v_proj]', 'r: 2',
    'max-seq-length: 32', 'logging-steps: 2', 'gradient-checkpointing: true', 'warmup-ratio: 0.5', 'no-shuffle: true', ''].join('\n'));
  const r = run(['train', '--config', yaml, '--steps', '4']);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /: 4 steps, final loss/, 'the command line\'s --steps wins over the file\'s');
  const state = JSON.parse(fs.readFileSync(path.join(dir, 'y', 'checkpoints', 'step-4', 'trainer_state.json'), 'utf8'));
  t.like(state.fingerprint, { batchSize: 2, r: 2, maxLength: 32, logEvery: 2, activationCheckpointing: true, warmupSteps: 2, shuffle: false, totalSteps: 4 });
  const log = fs.readFileSync(path.join(dir, 'y', 'train_log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((x) => 'loss' in x);
  t.deepEqual(log.map((x) => x.step), [2, 4], '--logging-steps 2: a record every 2 steps');

  const json = path.join(dir, 'run.json');
  fs.writeFileSync(json, JSON.stringify({ model, data, out: path.join(dir, 'j'), steps: 2, 'batch-size': 2, targets: 'all-linear' }));
  const j = run(['train', '-c', json]);
  t.is(j.status, 0, j.stderr);
  t.regex(j.stdout, /: 2 steps/);

  const bad = path.join(dir, 'bad.yaml');
  fs.writeFileSync(bad, 'learning_rat: 0.1\n');
  const b = run(['train', '--config', bad]);
  t.is(b.status, 2);
  t.regex(b.stderr, /^peftkit: --config: .*bad\.yaml: unknown key 'learning_rat' \(keys are the flags of `peftkit train`, e.g\. batch-size\) \(did you mean --learning-rate\?\)\n/);
  fs.writeFileSync(bad, 'lr: high\n');
  t.regex(run(['train', '--config', bad]).stderr, /^peftkit: --lr \(in .*bad\.yaml\): expected a number, got 'high'\n/);
  fs.writeFileSync(bad, 'lr: [1\n');
  t.regex(run(['train', '--config', bad]).stderr, /^peftkit: --config: .*bad\.yaml is not valid YAML/);
});

test('peftkit demo honours --steps and --lr; --out keeps its files', (t) => {
  const out = path.join(tmp(), 'demo');
  const r = run(['demo', '--steps', '6', '--lr', '0.005', '--out', out]);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /step {3}6\/6 {2}loss/);
  t.regex(r.stdout, /\n6 steps in /);
  const state = JSON.parse(fs.readFileSync(path.join(out, 'adapter', 'checkpoints', 'step-6', 'trainer_state.json'), 'utf8'));
  t.is(state.fingerprint.lr, 0.005);
  t.true(fs.existsSync(path.join(out, 'tiny-llama', 'config.json')));
});

test('resume from the command line: --resume alone continues the run as it was; a changed flag is refused naming both values', (t) => {
  const { model, data, dir } = fixture();
  const out = path.join(dir, 'run');
  const first = run(['train', '--model', model, '--data', data, '--out', out, '--steps', '3', '--batch-size', '2', '--r', '2', '--lr', '1e-3', '--optim', 'adamw8bit', '--schedule', 'cosine']);
  t.is(first.status, 0, first.stderr);
  const done = run(['train', '--resume', out]);
  t.is(done.status, 2);
  t.regex(done.stderr, /^peftkit: --resume: .*trainer_state\.json: the run is complete \(step 3 of 3\): give --steps above 3 to train on\n/);
  const lr = run(['train', '--resume', out, '--steps', '5', '--lr', '2e-4']);
  t.is(lr.status, 2);
  t.regex(lr.stderr, /^peftkit: --resume: --lr was 0\.001 in the checkpoint's run \(.*\) but is 0\.0002 now; leave it out to continue the run as it was\n/);
  const more = run(['train', '--resume', out, '--steps', '5', '--save-every', '1']);
  t.is(more.status, 0, more.stderr);
  t.regex(more.stderr, /\(resuming at 3\)/);
  t.regex(more.stderr, /warning: --resume: 3 -> 5 steps/);
  t.regex(more.stderr, /warning: --resume: --save-every changed from 0 to 1/);
  t.regex(more.stdout, /: 5 steps, final loss \d/);
  const state = JSON.parse(fs.readFileSync(path.join(out, 'checkpoints', 'step-5', 'trainer_state.json'), 'utf8'));
  t.like(state.fingerprint, { lr: 1e-3, optim: 'adamw8bit', schedule: 'cosine', batchSize: 2, r: 2 });
  const again = run(['train', '--model', model, '--data', data, '--out', out, '--steps', '1']);
  t.is(again.status, 2);
  t.regex(again.stderr, /holds another run's checkpoints: continue it with --resume, or pass --overwrite/);
  const over = run(['train', '--model', model, '--data', data, '--out', out, '--steps', '1', '--overwrite']);
  t.is(over.status, 0, over.stderr);
  t.deepEqual(fs.readdirSync(path.join(out, 'checkpoints')), ['step-1']);
});

test('without the native addon: --help, --version and option errors work; a command that needs it fails in one line', (t) => {
  // A copy of the package with neither build/ nor prebuilds/ (dist copied: Node resolves symlinked modules to their real path).
  const pkg = tmp();
  fs.cpSync(path.join(ROOT, 'dist', 'src'), path.join(pkg, 'dist', 'src'), { recursive: true });
  fs.cpSync(path.join(ROOT, 'bin'), path.join(pkg, 'bin'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(pkg, 'node_modules'));
  const bin = path.join(pkg, 'bin', 'peftkit.js');
  const env = { PEFTKIT_ADDON: '' };
  t.is(run(['--version'], env, bin).status, 0);
  t.regex(run(['train', '--help'], env, bin).stdout, /--batch-size/);
  const bad = run(['train', '--model', 'm', '--data', 'd', '--out', 'o', '--lr', 'x'], env, bin);
  t.is(bad.status, 2);
  t.regex(bad.stderr, /--lr: expected a number/);
  const { model, data, dir } = fixture();
  const r = run(['train', '--model', model, '--data', data, '--out', path.join(dir, 'o'), '--steps', '1'], env, bin);
  t.is(r.status, 1);
  t.regex(r.stderr, /^peftkit: the peftkit native addon is missing: no prebuild in .*prebuilds\/[a-z0-9]+-[a-z0-9]+ and no build in .*build\/Release\. .*`npm rebuild peftkit` .*C\+\+17 compiler/);
  t.is(r.stderr.split('\n').length, 2, `one line: ${r.stderr}`);
  // The library imports without it too.
  const lib = spawnSync(process.execPath, ['-e', `const p = require(${JSON.stringify(path.join(pkg, 'dist', 'src', 'index.js'))}); console.log(typeof p.train)`], { encoding: 'utf8' });
  t.is(lib.stdout, 'function\n', lib.stderr);
});
