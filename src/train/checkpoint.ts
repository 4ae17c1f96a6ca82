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
import { SafetensorsCheckpoint, writeSafetensors } from '../model/safetensors';
import type { LoraAdapter } from '../peft/lora';
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

export function saveCheckpoint(out: string, adapter: LoraAdapter, optimizer: AdamW, state: TrainerState): string {
  const dir = checkpointDir(out, state.step);
  writeDirAtomic(dir, (tmp) => {
    adapter.writeFiles(tmp);
    const moments: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    optimizer.params.forEach((p, i) => {
      moments[`exp_avg.${p.name}`] = { dtype: 'F32', shape: p.param.shape, data: optimizer.m[i].toFloat32Array() };
      moments[`exp_avg_sq.${p.name}`] = { dtype: 'F32', shape: p.param.shape, data: optimizer.v[i].toFloat32Array() };
    });
    writeSafetensors(path.join(tmp, 'optimizer.safetensors'), moments, { format: 'pt', optimizer: 'adamw', step: String(optimizer.step) });
    writeFileAtomic(path.join(tmp, 'trainer_state.json'), [JSON.stringify(state, null, 2) + '\n']);
  });
  return dir;
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
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as TrainerState;
  } catch (e) {
    throw new PeftkitError('E_FORMAT', `${file}: cannot read the trainer state (${(e as Error).message})`);
  }
}

/** Restores adapter weights and optimizer moments from a checkpoint folder. */
export function restoreCheckpoint(dir: string, adapter: LoraAdapter, optimizer: AdamW, state: TrainerState): void {
  adapter.loadWeightsFrom(dir);
  const ck = new SafetensorsCheckpoint(dir, 'optimizer.safetensors');
  optimizer.params.forEach((p, i) => {
    optimizer.m[i].write(ck.readFloat32(`exp_avg.${p.name}`, p.param.shape));
    optimizer.v[i].write(ck.readFloat32(`exp_avg_sq.${p.name}`, p.param.shape));
  });
  optimizer.step = state.step;
}
