/**
 * Fuzz cases of training checkpoints used by `resume`: trainer_state.json (step, data position,
 * seed, fingerprint), optimizer.safetensors (f32 and 8-bit AdamW moments) and the checkpoint's
 * adapter files. The model and data stay in the fixture folder (a resume checks that their paths
 * are the ones the checkpoint's run used); only the checkpoints are copied and damaged.
 */
import * as fs from 'fs';
import * as path from 'path';
import { runTraining } from '../../src/train/run';
import { damageJsonFile, damageSafetensors, FuzzRng, FuzzViolation, mutateJson, outcome } from './fuzz';
import { editTensors } from './fuzz_bnb_cases';
import { FuzzCase } from './fuzz_case';
import { writeTinyModel } from './fuzz_model_cases';

const OPTIMS = ['adamw', 'adamw8bit'] as const;
const TRAIN = { steps: 3, saveEvery: 1, batchSize: 2, maxLength: 8 };

/** One damage to optimizer.safetensors that keeps it a valid file: a state deleted, retyped, reshaped or made NaN. */
function damageMoments(file: string, rng: FuzzRng): string {
  return editTensors(file, (t) => {
    const name = rng.pick(Object.keys(t));
    const e = t[name];
    const k = rng.int(0, 4);
    if (k === 0) {
      delete t[name];
      return `deleted ${name}`;
    }
    if (k === 1) {
      t[name] = { dtype: e.dtype === 'U8' ? 'F32' : 'U8', shape: e.shape, data: e.dtype === 'U8' ? new Float32Array(e.data.byteLength) : new Uint8Array(e.data.byteLength / 4) };
      return `${name}: now ${t[name].dtype}`;
    }
    if (k === 2) {
      t[name] = { ...e, shape: [...e.shape].reverse().concat(rng.chance(0.5) ? [1] : []) };
      return `${name}: shape ${JSON.stringify(t[name].shape)}`;
    }
    if (e.dtype === 'F32') {
      const f = new Float32Array((e.data as Uint8Array).buffer.slice(0));
      const i = rng.int(0, f.length);
      f[i] = rng.pick([NaN, Infinity, -Infinity, -1]);
      t[name] = { ...e, data: f };
      return `${name}[${i}] = ${f[i]}`;
    }
    return 'no-op';
  });
}

function damageState(file: string, rng: FuzzRng): string {
  if (rng.chance(0.25)) return damageJsonFile(file, rng);
  const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  const key = rng.pick(['step', 'position', 'position.epoch', 'position.index', 'elapsedS', 'tokensSeen', 'fingerprint', '*']);
  let what: string;
  if (key === '*') what = mutateJson(doc, rng);
  else {
    const [a, b] = key.split('.');
    const box = (b ? doc[a] : doc) as Record<string, unknown>;
    const field = b ?? a;
    box[field] = rng.pick<unknown>([undefined, null, -1, 0, 1, 2, 3, 100, 1.5, 1e300, 2 ** 53, '1', [], {}]);
    what = `${key} = ${JSON.stringify(box[field])}`;
  }
  fs.writeFileSync(file, JSON.stringify(doc, null, 2));
  return `trainer_state.json: ${what}`;
}

const resume: FuzzCase = {
  setup(dir) {
    writeTinyModel(path.join(dir, 'model'));
    const rows = Array.from({ length: 10 }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: 5 + (i % 4) }, (_, j) => (i * 5 + j * 7) % 40) }));
    fs.writeFileSync(path.join(dir, 'data.jsonl'), rows.join('\n') + '\n');
    for (const optim of OPTIMS) {
      runTraining({ model: path.join(dir, 'model'), data: path.join(dir, 'data.jsonl'), out: path.join(dir, optim), optim, ...TRAIN });
    }
  },
  run(rng, dir, log) {
    const fixture = path.join(dir, '..', 'fixture');
    const optim = rng.pick(OPTIMS);
    const ckpt = path.join(dir, optim, 'checkpoints', `step-${rng.pick([1, 2])}`);
    const k = rng.int(0, 10);
    if (k < 4) log(damageState(path.join(ckpt, 'trainer_state.json'), rng));
    else if (k < 6) log(`${optim}: optimizer.safetensors: ${damageSafetensors(path.join(ckpt, 'optimizer.safetensors'), rng)}`);
    else if (k < 8) log(`${optim}: optimizer.safetensors: ${damageMoments(path.join(ckpt, 'optimizer.safetensors'), rng)}`);
    else if (k < 9) log(`${optim}: adapter_model.safetensors: ${damageSafetensors(path.join(ckpt, 'adapter_model.safetensors'), rng)}`);
    else log(`${optim}: ${damageJsonFile(path.join(ckpt, 'adapter_config.json'), rng)}`);
    const out = path.join(dir, 'resumed');
    const files = ['trainer_state.json', 'optimizer.safetensors', 'adapter_model.safetensors', 'adapter_config.json'];
    let loss = NaN;
    const got = outcome(files, () => {
      loss = runTraining({ model: path.join(fixture, 'model'), data: path.join(fixture, 'data.jsonl'), out, optim, resume: ckpt, ...TRAIN }).finalLoss;
    });
    // A resume past the end trains no step: its loss is NaN, and the adapter is the checkpoint's.
    if (got === 'ok' && !Number.isFinite(loss) && fs.existsSync(path.join(out, 'checkpoints'))) throw new FuzzViolation(`resumed training ran with loss ${loss}`);
    if (got !== 'ok' && fs.existsSync(path.join(out, 'adapter_model.safetensors'))) throw new FuzzViolation('a failed resume left an adapter in its output folder');
    return got;
  },
};

export const RESUME_CASES: Record<string, FuzzCase> = { resume };
