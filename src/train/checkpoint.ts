/**
 * Training checkpoints: <out>/checkpoints/step-<N>/ holds the adapter (a loadable PEFT folder),
 * the AdamW moments (optimizer.safetensors) and trainer_state.json (step, data position, RNG
 * seed, elapsed time). Each is written as a whole folder, atomically, so a run killed at any
 * moment resumes from its last complete checkpoint.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { DataPosition } from '../data';
import { PeftkitError } from '../errors';
import { writeDirAtomic, writeFileAtomic } from '../io/atomic';
import { readRegularFile } from '../io/regular_file';
import { SafetensorsCheckpoint, TensorToWrite, readRange, writeSafetensors } from '../model/safetensors';
import type { PeftMethod } from '../peft/method';
import type { AdamW } from './optimizer';

export interface TrainerState {
  /** Optimizer steps done. */
  step: number;
  totalSteps: number;
  /** Where the next training batch starts. */
  position: DataPosition;
  seed: number;
  elapsedS: number;
  tokensSeen: number;
  /** Options that must not change across a resume (model, data, batch size...). */
  fingerprint: Record<string, unknown>;
}

export const checkpointDir = (out: string, step: number) => path.join(out, 'checkpoints', `step-${step}`);

export function saveCheckpoint(out: string, adapter: PeftMethod, optimizer: AdamW, state: TrainerState): string {
  const dir = checkpointDir(out, state.step);
  writeDirAtomic(dir, (tmp) => {
    adapter.writeFiles(tmp);
    writeSafetensors(path.join(tmp, 'optimizer.safetensors'), optimizerTensors(optimizer), {
      format: 'pt', optimizer: optimizer.optim, step: String(optimizer.step),
    });
    writeFileAtomic(path.join(tmp, 'trainer_state.json'), [JSON.stringify(state, null, 2) + '\n']);
  });
  return dir;
}

/**
 * The optimizer's state as safetensors entries: f32 moments as `exp_avg.<param>` and
 * `exp_avg_sq.<param>`; 8-bit ones as their u8 codes under the same names plus the f32 block
 * maxima as `exp_avg_absmax.<param>` and `exp_avg_sq_absmax.<param>`.
 */
function optimizerTensors(optimizer: AdamW): Record<string, TensorToWrite> {
  const out: Record<string, TensorToWrite> = {};
  optimizer.params.forEach((p, i) => {
    const mAbsmax = optimizer.mAbsmax[i];
    const vAbsmax = optimizer.vAbsmax[i];
    if (mAbsmax && vAbsmax) {
      out[`exp_avg.${p.name}`] = { dtype: 'U8', shape: p.param.shape, data: optimizer.m[i].toArray() };
      out[`exp_avg_sq.${p.name}`] = { dtype: 'U8', shape: p.param.shape, data: optimizer.v[i].toArray() };
      out[`exp_avg_absmax.${p.name}`] = { dtype: 'F32', shape: mAbsmax.shape, data: mAbsmax.toFloat32Array() };
      out[`exp_avg_sq_absmax.${p.name}`] = { dtype: 'F32', shape: vAbsmax.shape, data: vAbsmax.toFloat32Array() };
    } else {
      out[`exp_avg.${p.name}`] = { dtype: 'F32', shape: p.param.shape, data: optimizer.m[i].toFloat32Array() };
      out[`exp_avg_sq.${p.name}`] = { dtype: 'F32', shape: p.param.shape, data: optimizer.v[i].toFloat32Array() };
    }
  });
  return out;
}

/**
 * Deletes all but the newest `keep` checkpoints up to step `current` (the one just completed)
 * under `out/checkpoints` (keep > 0). Checkpoints past `current` (left by another run in the
 * same folder) are not this run's to delete. Called after `current` is complete, so a kill
 * mid-way never leaves fewer than `keep`.
 */
export function pruneCheckpoints(out: string, keep: number, current: number): void {
  const root = path.join(out, 'checkpoints');
  if (!fs.existsSync(root)) return;
  const steps = fs.readdirSync(root).map((d) => /^step-(\d+)$/.exec(d))
    .filter((m): m is RegExpExecArray => !!m && Number(m[1]) <= current)
    .sort((a, b) => Number(b[1]) - Number(a[1]));
  for (const m of steps.slice(keep)) fs.rmSync(path.join(root, m[0]), { recursive: true, force: true });
}

/** The newest complete checkpoint under an output folder, or the folder itself if it is one. */
export function findCheckpoint(dirOrOut: string): string {
  if (fs.existsSync(path.join(dirOrOut, 'trainer_state.json'))) return dirOrOut;
  const root = path.join(dirOrOut, 'checkpoints');
  const steps = fs.existsSync(root)
    ? fs.readdirSync(root).map((d) => /^step-(\d+)$/.exec(d)).filter((m): m is RegExpExecArray => !!m && fs.existsSync(path.join(root, m[0], 'trainer_state.json')))
    : [];
  if (!steps.length) throw new PeftkitError('E_MISSING', `${dirOrOut}: no checkpoint to resume from (expected trainer_state.json here or checkpoints/step-N/ below)`);
  steps.sort((a, b) => Number(b[1]) - Number(a[1]));
  return path.join(root, steps[0][0]);
}

export function readTrainerState(dir: string): TrainerState {
  const file = path.join(dir, 'trainer_state.json');
  let raw: unknown;
  try {
    raw = JSON.parse(readRegularFile(file));
  } catch (e) {
    if (e instanceof PeftkitError) throw e;
    throw new PeftkitError('E_FORMAT', `${file}: cannot read the trainer state (${(e as Error).message})`);
  }
  const bad = (what: string): never => {
    throw new PeftkitError('E_FORMAT', `${file}: ${what}`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('expected a JSON object');
  const s = raw as Record<string, unknown>;
  const int = (o: Record<string, unknown>, key: string, min: number, where = key) => {
    if (!Number.isSafeInteger(o[key]) || (o[key] as number) < min) bad(`field "${where}" is ${JSON.stringify(o[key])}, expected an integer >= ${min}`);
    return o[key] as number;
  };
  const pos = s.position;
  if (typeof pos !== 'object' || pos === null || Array.isArray(pos)) bad(`field "position" is ${JSON.stringify(pos)}, expected {"epoch", "index"}`);
  const p = pos as Record<string, unknown>;
  const fp = s.fingerprint;
  if (typeof fp !== 'object' || fp === null || Array.isArray(fp)) bad(`field "fingerprint" is ${JSON.stringify(fp)}, expected an object`);
  const elapsedS = s.elapsedS;
  if (typeof elapsedS !== 'number' || !(elapsedS >= 0) || !Number.isFinite(elapsedS)) bad(`field "elapsedS" is ${JSON.stringify(elapsedS)}, expected a finite number >= 0`);
  return {
    step: int(s, 'step', 0),
    totalSteps: int(s, 'totalSteps', 1),
    position: { epoch: int(p, 'epoch', 0, 'position.epoch'), index: int(p, 'index', 0, 'position.index') },
    seed: int(s, 'seed', 0),
    elapsedS: elapsedS as number,
    tokensSeen: int(s, 'tokensSeen', 0),
    fingerprint: fp as Record<string, unknown>,
  };
}

/** Restores adapter weights and optimizer moments from a checkpoint folder. */
export function restoreCheckpoint(dir: string, adapter: PeftMethod, optimizer: AdamW, state: TrainerState): void {
  adapter.loadWeightsFrom(dir);
  const ck = new SafetensorsCheckpoint(dir, 'optimizer.safetensors');
  optimizer.params.forEach((p, i) => {
    const mAbsmax = optimizer.mAbsmax[i];
    const vAbsmax = optimizer.vAbsmax[i];
    const stored = ck.info(`exp_avg.${p.name}`).dtype;
    if (stored !== (mAbsmax ? 'U8' : 'F32')) {
      throw new PeftkitError(
        'E_ARG',
        `resume: ${ck.source} holds ${stored === 'U8' ? '8-bit' : 'f32'} optimizer moments for ${p.name}, but optim '${optimizer.optim}' keeps ` +
          `${mAbsmax ? '8-bit' : 'f32'} ones for it; resume with the optim the checkpoint was written with`,
      );
    }
    if (mAbsmax && vAbsmax) {
      optimizer.m[i].write(readCodes(ck, `exp_avg.${p.name}`, p.param.shape));
      optimizer.v[i].write(readCodes(ck, `exp_avg_sq.${p.name}`, p.param.shape));
      mAbsmax.write(readMoment(ck, `exp_avg_absmax.${p.name}`, mAbsmax.shape, 0));
      vAbsmax.write(readMoment(ck, `exp_avg_sq_absmax.${p.name}`, vAbsmax.shape, 0));
    } else {
      optimizer.m[i].write(readMoment(ck, `exp_avg.${p.name}`, p.param.shape, -Infinity));
      optimizer.v[i].write(readMoment(ck, `exp_avg_sq.${p.name}`, p.param.shape, 0));
    }
  });
  optimizer.step = state.step;
}

/**
 * An f32 optimizer state, finite and >= `min` (second moments and block maxima are never
 * negative): a NaN here would turn the adapter into NaN at the first step, then be saved.
 */
function readMoment(ck: SafetensorsCheckpoint, name: string, shape: readonly number[], min: number): Float32Array {
  const v = ck.readFloat32(name, shape);
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i]) || v[i] < min) {
      throw new PeftkitError('E_FORMAT', `${ck.info(name).file}: tensor '${name}' element ${i} is ${v[i]}, expected finite values${min === 0 ? ' >= 0' : ''}`);
    }
  }
  return v;
}

function readCodes(ck: SafetensorsCheckpoint, name: string, shape: readonly number[]): Uint8Array {
  const info = ck.info(name);
  if (info.dtype !== 'U8' || info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw new PeftkitError('E_SHAPE', `${info.file}: tensor '${name}' is ${info.dtype}[${info.shape.join(', ')}], expected U8[${shape.join(', ')}]`);
  }
  return readRange(info);
}
