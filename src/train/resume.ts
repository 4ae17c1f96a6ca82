/**
 * What a checkpoint records of its run, and how `resume` uses it. trainer_state.json's
 * `fingerprint` holds every option that changes the result (the resolved values: paths absolute,
 * warmup in steps, the total steps). A resume takes every option it is not given from there, so
 * `resume` alone continues the run as it was; an option given with another value is refused,
 * naming both values, except the ones that are safe to change (RESUME_SAFE), which a warning
 * states.
 */
import * as fs from 'fs';
import * as path from 'path';
import { resolveDistributed } from '../distributed/env';
import { PeftkitError } from '../errors';
import { findCheckpoint, readTrainerState } from './checkpoint';
import type { TrainerState } from './checkpoint';
import { ResolvedTrainOptions, resolveTrainOptions, TrainOptions } from './options';

/** Options a resume may change: how often to save, evaluate and log, where to run, and (more) steps. */
export const RESUME_SAFE: readonly string[] = [
  'steps', 'epochs', 'totalSteps', 'saveEvery', 'evalEvery', 'saveTotalLimit', 'logEvery', 'device', 'activationCheckpointing', 'pagedDir', 'out',
];

/** The LoRA options an adapter's config decides: on a resume the checkpoint's adapter is loaded, so they are only compared when given. */
const ADAPTER_KEYS: readonly string[] = ['r', 'alpha', 'dropout', 'targets', 'rslora', 'initLoraWeights', 'adapter'];

/** Not recorded: how a run is started, not what it computes. */
const NOT_RECORDED: readonly string[] = ['resume', 'overwrite', 'steps', 'epochs', 'warmupRatio', 'signal', 'distributed', 'memoryCheck'];

/** Recorded and compared, but not taken from the checkpoint: a temp folder of another machine or day. */
const NOT_FILLED: readonly string[] = ['pagedDir'];

const PATHS = ['model', 'data', 'evalData', 'out', 'adapter', 'pagedDir'];

/** The type each known option must have when a checkpoint supplies it (a damaged file is named, not obeyed). */
const KIND: Record<string, 'string' | 'number' | 'boolean' | 'array'> = {
  model: 'string', data: 'string', out: 'string', evalData: 'string', evalSplit: 'number', method: 'string', quantize: 'string',
  int8Threshold: 'number', batchSize: 'number', gradAccum: 'number', lr: 'number', weightDecay: 'number', betas: 'array', eps: 'number',
  schedule: 'string', warmupSteps: 'number', maxGradNorm: 'number', maxLength: 'number', shuffle: 'boolean', seed: 'number',
  packing: 'boolean', maskPrompt: 'boolean', saveEvery: 'number', saveTotalLimit: 'number', evalEvery: 'number',
  activationCheckpointing: 'boolean', device: 'string', bf16: 'boolean', logEvery: 'number', optim: 'string',
};

/**
 * The fingerprint a checkpoint of this run records. `batchSize` is recorded as the global rows
 * of a micro-batch (batchSize × ranks), which is what the result depends on: a data-parallel
 * run resumes with any number of ranks that divides it (and one process reads it as is).
 */
export function runFingerprint(o: ResolvedTrainOptions, totalSteps: number, worldSize = 1): Record<string, unknown> {
  // The optional ones are recorded as null when not given, so that giving one on a resume is seen.
  const fp: Record<string, unknown> = { evalData: null, evalSplit: null, adapter: null, quantize: null, int8Threshold: null };
  for (const [k, v] of Object.entries(o)) {
    if (NOT_RECORDED.includes(k) || typeof v === 'function') continue;
    fp[k] = v === undefined ? null : PATHS.includes(k) && typeof v === 'string' ? path.resolve(v) : v;
  }
  fp.batchSize = o.batchSize * worldSize;
  fp.totalSteps = totalSteps;
  return fp;
}

export interface CheckpointOptions {
  /** The checkpoint folder `resume` names (or the newest under an output folder). */
  dir: string;
  state: TrainerState;
  /** The options given, with the ones not given taken from the checkpoint. */
  options: TrainOptions;
  /** The keys taken from the checkpoint. */
  filled: string[];
}

const stateFile = (dir: string) => path.join(dir, 'trainer_state.json');

/**
 * The options of a resumed run: those given, and for the rest the checkpoint's. A value of the
 * wrong type in the checkpoint is an E_FORMAT naming its trainer_state.json. Returns null when
 * `resume` is not set.
 */
export function withCheckpointOptions(o: Partial<TrainOptions>): CheckpointOptions | null {
  if (o.resume === undefined) return null;
  const world = resolveDistributed(o.distributed)?.worldSize ?? 1;
  if (typeof o.resume !== 'string' || !o.resume) throw new PeftkitError('E_ARG', 'resume: expected a path');
  const dir = findCheckpoint(o.resume);
  const state = readTrainerState(dir);
  const out: Record<string, unknown> = { ...o };
  const filled: string[] = [];
  const given = (k: string) => out[k] !== undefined;
  for (const [k, v] of Object.entries(recorded(state))) {
    if (ADAPTER_KEYS.includes(k) || NOT_RECORDED.includes(k) || NOT_FILLED.includes(k) || v === null || given(k)) continue;
    if (k === 'totalSteps') {
      if (given('steps') || given('epochs')) continue;
      out.steps = v; // checked by readTrainerState
      filled.push('steps');
      continue;
    }
    if (k === 'warmupSteps' && given('warmupRatio')) continue;
    const kind = KIND[k];
    if (kind && (kind === 'array' ? !Array.isArray(v) : typeof v !== kind)) {
      throw new PeftkitError('E_FORMAT', `${stateFile(dir)}: fingerprint.${k} is ${JSON.stringify(v)}, expected ${kind === 'array' ? 'a list' : `a ${kind}`}`);
    }
    if (k === 'batchSize' && world > 1) {
      // The recorded global batch, shared among this run's ranks.
      if ((v as number) % world !== 0) {
        throw new PeftkitError('E_ARG', `resume: the checkpoint's run took ${String(v)} rows a micro-batch (${stateFile(dir)}), which ${world} ranks (WORLD_SIZE) cannot share equally: resume with a number of ranks that divides it`);
      }
      out[k] = (v as number) / world;
      filled.push(k);
      continue;
    }
    out[k] = v;
    filled.push(k);
  }
  return { dir, state, options: out as unknown as TrainOptions, filled };
}

/** The run's record: its fingerprint, and the total steps (top-level in trainer_state.json, also for checkpoints that predate the fingerprint's). */
function recorded(state: TrainerState): Record<string, unknown> {
  return { ...state.fingerprint, totalSteps: state.totalSteps };
}

/**
 * Resolves the options of a run, filling a resume's from its checkpoint; an option the
 * checkpoint filled that is out of range is an E_FORMAT naming the checkpoint's trainer_state.json.
 */
export function resolveWithCheckpoint(options: TrainOptions, name?: (f: string) => string): { o: ResolvedTrainOptions; ck: CheckpointOptions | null } {
  const ck = withCheckpointOptions(options);
  if (!ck) return { o: resolveTrainOptions(options, name), ck };
  try {
    return { o: resolveTrainOptions(ck.options, name), ck };
  } catch (e) {
    if (!(e instanceof PeftkitError) || !ck.filled.length) throw e;
    // Without the recorded options (model, data, out still from the checkpoint): is it the given ones that are wrong?
    const keep: Record<string, unknown> = { ...options };
    for (const k of ['model', 'data', 'out']) keep[k] ??= (ck.options as unknown as Record<string, unknown>)[k];
    resolveTrainOptions(keep as unknown as TrainOptions, name);
    throw new PeftkitError('E_FORMAT', `${stateFile(ck.dir)}: the checkpoint records options that are not valid: ${e.message}`);
  }
}

/**
 * The LoRA options a checkpoint records: as given (targets 'all-linear' stays so), those of an
 * `adapter` folder's config when training continues one, and on a resume the checkpoint's own.
 */
export function loraFingerprint(o: ResolvedTrainOptions, config: { r: number; lora_alpha: number; lora_dropout: number; target_modules: unknown; use_rslora: boolean; init_lora_weights: unknown } | null, ck: CheckpointOptions | null): Record<string, unknown> {
  if (ck) {
    const was = ck.state.fingerprint;
    return Object.fromEntries(ADAPTER_KEYS.filter((k) => k in was).map((k) => [k, was[k]]));
  }
  if (o.adapter === undefined || config === null) return {};
  return { r: config.r, alpha: config.lora_alpha, dropout: config.lora_dropout, targets: config.target_modules, rslora: config.use_rslora, initLoraWeights: config.init_lora_weights };
}

const show = (v: unknown) => JSON.stringify(v ?? null);
/** paged_adamw keeps adamw's states in paged memory: the same numbers, so a resume may switch between them. */
const unpaged = (v: unknown) => String(v).replace(/^paged_/, '');

/**
 * Compares a resumed run with its checkpoint's. `given` are the options passed (explicitly),
 * `now` the fingerprint of the resolved ones. Refuses a different value of an option that
 * changes the result (E_ARG naming both), a run already complete, and fewer steps than done;
 * returns a warning for each safe change.
 */
export function checkResume(given: TrainOptions, now: Record<string, unknown>, ck: CheckpointOptions): string[] {
  const was = recorded(ck.state);
  const file = stateFile(ck.dir);
  const done = ck.state.step;
  const warnings: string[] = [];
  const g = given as unknown as Record<string, unknown>;
  for (const [k, v] of Object.entries(now)) {
    // A key the checkpoint does not record was not checked when it was written (an older peftkit).
    if (!(k in was)) continue;
    if (ADAPTER_KEYS.includes(k) && g[k] === undefined) continue; // the checkpoint's adapter decides
    if (show(was[k]) === show(v)) continue;
    if (k === 'totalSteps') {
      if ((v as number) > done) warnings.push(`resume: ${show(was[k])} -> ${String(v)} steps (the checkpoint is at step ${done}; the learning-rate schedule now spans ${String(v)} steps)`);
    } else if (RESUME_SAFE.includes(k) || (k === 'optim' && unpaged(was[k]) === unpaged(v))) {
      warnings.push(`resume: '${k}' changed from ${show(was[k])} to ${show(v)}`);
    } else {
      // batchSize is recorded as the global rows (batchSize × ranks): say so when it may not be the option's own value.
      const what = k === 'batchSize' ? `'batchSize' (rows a micro-batch, over all ranks)` : `'${k}'`;
      throw new PeftkitError(
        'E_ARG',
        `resume: ${what} was ${show(was[k])} in the checkpoint's run (${file}) but is ${show(v)} now; leave it out to continue the run as it was`,
      );
    }
  }
  const total = now.totalSteps as number;
  if (total <= done) {
    throw new PeftkitError('E_ARG', done >= ck.state.totalSteps && total === ck.state.totalSteps
      ? `resume: ${file}: the run is complete (step ${done} of ${ck.state.totalSteps}): give 'steps' above ${done} to train on`
      : `resume: ${file} is at step ${done}, and the run would end at step ${total}: give 'steps' above ${done} to train on`);
  }
  return warnings;
}

/** True when `out/checkpoints` holds a checkpoint folder (step-N). */
export function holdsCheckpoints(out: string): boolean {
  const root = path.join(out, 'checkpoints');
  return fs.existsSync(root) && fs.readdirSync(root).some((d) => /^step-\d+$/.test(d));
}
