/**
 * A named pipe (FIFO) in place of each file peftkit reads: the data file, the eval file and the
 * files of a model folder. Opening a FIFO for reading blocks until a writer comes, so without a
 * check each call here would hang; the parent runs this with a timeout. Prints one JSON line per
 * case: {case, code, message}.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModelSync, PeftkitError, Tensor } from '../../src/index';
import { readRows } from '../../src/data';
import { runTraining } from '../../src/train/run';
import { writeTinyModel } from './fuzz_model_cases';

const say = (o: object) => fs.writeSync(1, `${JSON.stringify(o)}\n`);

function mkfifo(file: string): void {
  fs.rmSync(file, { force: true });
  execFileSync('mkfifo', [file]);
}

function attempt(name: string, fn: () => unknown): void {
  say({ case: name, start: true });
  try {
    fn();
    say({ case: name, code: 'ok' });
  } catch (e) {
    say({ case: name, code: e instanceof PeftkitError ? e.code : `other: ${String(e)}`, message: (e as Error).message });
  }
}

if (require.main === module) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-fifo-'));
  const fixture = path.join(root, 'fixture');
  writeTinyModel(fixture, { tokenizer: true });
  fs.writeFileSync(path.join(fixture, 'data.jsonl'), '{"text": "hello there"}\n{"text": "general kenobi"}\n');
  const fresh = (): string => {
    const dir = path.join(root, 'model');
    fs.rmSync(dir, { recursive: true, force: true });
    fs.cpSync(fixture, dir, { recursive: true });
    return dir;
  };
  const train = (dir: string, o: Record<string, unknown> = {}) =>
    runTraining({ model: dir, data: path.join(dir, 'data.jsonl'), out: path.join(root, 'out'), steps: 1, maxLength: 8, ...o });

  let dir = fresh();
  mkfifo(path.join(dir, 'data.jsonl'));
  attempt('readRows', () => readRows(path.join(dir, 'data.jsonl')));
  attempt('data.jsonl', () => train(dir));
  dir = fresh();
  mkfifo(path.join(dir, 'eval.jsonl'));
  attempt('eval.jsonl', () => train(dir, { evalData: path.join(dir, 'eval.jsonl') }));
  for (const name of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json', 'chat_template.jinja']) {
    dir = fresh();
    mkfifo(path.join(dir, name));
    if (name === 'chat_template.jinja') {
      // Read only when tokenizer_config.json has no template.
      const cfgFile = path.join(dir, 'tokenizer_config.json');
      const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
      delete cfg.chat_template;
      fs.writeFileSync(cfgFile, JSON.stringify(cfg));
    }
    attempt(name, () => {
      const m = loadModelSync(dir);
      try {
        m.eosIds(); // reads generation_config.json
      } finally {
        m.dispose();
      }
    });
  }
  // A sharded checkpoint: the index and a shard.
  for (const name of ['model.safetensors.index.json', 'model-00001-of-00001.safetensors']) {
    dir = fresh();
    const shard = 'model-00001-of-00001.safetensors';
    fs.renameSync(path.join(dir, 'model.safetensors'), path.join(dir, shard));
    const header = JSON.parse(fs.readFileSync(path.join(dir, shard)).subarray(8, 8 + Number(fs.readFileSync(path.join(dir, shard)).readBigUInt64LE(0))).toString()) as Record<string, unknown>;
    const map = Object.fromEntries(Object.keys(header).filter((k) => k !== '__metadata__').map((k) => [k, shard]));
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: map }));
    mkfifo(path.join(dir, name));
    attempt(name, () => loadModelSync(dir).dispose());
  }
  // The engine's own reader, which the checkpoint loaders call after their checks.
  mkfifo(path.join(root, 'tensor.bin'));
  attempt('tensor.bin', () => Tensor.fromFile({ file: path.join(root, 'tensor.bin'), offset: 0, bytes: 16, dtype: 'f32' }, [4]));
  fs.rmSync(root, { recursive: true, force: true });
  say({ done: true });
}
