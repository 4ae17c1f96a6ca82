/**
 * The training run, top to bottom: load the model, the data and the adapter; then for each
 * optimizer step take gradAccum micro-batches, step, log, evaluate and checkpoint on schedule;
 * finally save the adapter, the log and the loss curve. Runs synchronously on whatever thread
 * calls it (train() puts it in a worker so the caller's event loop stays free).
 *
 * Data parallelism (hooks.group): every rank loads the model and the adapter, reads the same
 * global batches (batchSize rows per rank) and steps on its own rows (see Trainer); only rank 0
 * writes: it alone locks the output folder and writes the log, checkpoints and the adapter.
 */
import * as fs from 'fs';
import * as path from 'path';
import { BatchIterator, evalBatches, Example, shardBatch, Tokenizer } from '../data';
import { ranksPerNode } from '../distributed/env';
import type { ProcessGroup } from '../distributed/group';
import { describeRankDevice, RankDevice } from '../distributed/rank_device';
import type { Batch } from '../data';
import { PeftkitError } from '../errors';
import { removeLeftoverTemps } from '../io/atomic';
import { readModelConfig } from '../model/config';
import { LlamaModel } from '../model/llama';
import type { LoraConfig } from '../peft/lora/config';
import { adapterMethodOf, AdapterMethod, createAdapter, CreateAdapterOptions, loadAdapter } from '../peft/registry';
import { runtimeInfo } from '../runtime';
import { deviceChoice, resolveDevice } from '../tensor';
import { ioError, makeDir } from '../io/io_error';
import { FolderLock, lockFolder } from '../io/lock';
import { pruneCheckpoints, restoreCheckpoint, saveCheckpoint, TrainerState } from './checkpoint';
import { TrainLog, readLog } from './log';
import { writeLossCurve } from './loss_curve';
import { checkMemory, estimateRun, RunShape } from './memory';
import { ResolvedTrainOptions, TrainOptions } from './options';
import { CheckpointOptions, checkResume, holdsCheckpoints, loraFingerprint, resolveWithCheckpoint, runFingerprint } from './resume';
import { prepareData, RunData } from './run_data';
import { lrAt } from './schedule';
import { divergenceWarning, Trainer, UPDATE_RATIO_WARN } from './trainer';
import type { StepResult, UpdateMeasure } from './trainer';

export type TrainEvent =
  | { type: 'warning'; message: string }
  | {
    type: 'start'; totalSteps: number; startStep: number; trainExamples: number; evalExamples: number; trainableParams: number; device: string;
    /**
     * Why the run is on `device` (what 'auto' found, or that it was asked for); a rank of a
     * distributed CUDA run adds its GPU ("; rank 1: GPU 1 of 8 visible (NVIDIA H100 ..., PCI ...)").
     */
    deviceReason: string;
  }
  | { type: 'step'; step: number; totalSteps: number; loss: number; lr: number; gradNorm: number; tokensPerS: number; elapsedS: number; etaS: number }
  | { type: 'eval'; step: number; loss: number; perplexity: number }
  | { type: 'checkpoint'; step: number; dir: string };

export interface TrainResult {
  /** The PEFT adapter folder (= options.out). */
  adapterDir: string;
  steps: number;
  /** Mean training loss of the last step. */
  finalLoss: number;
  /** Last eval loss, when there was eval data. */
  evalLoss: number | null;
  /** Training throughput over the whole run (input tokens per second). */
  tokensPerS: number;
  elapsedS: number;
  logFile: string;
  lossCurve: string;
}

export interface RunHooks {
  onEvent?: (e: TrainEvent) => void;
  /** Polled between steps; true stops the run after a checkpoint (with a group: true on any rank stops every rank). */
  shouldStop?: () => boolean;
  /** Data-parallel training: the joined process group (see src/distributed). */
  group?: ProcessGroup;
  /** Data-parallel training on CUDA: the GPU this rank took (useRankCudaDevice), named in the 'start' event. */
  rankDevice?: RankDevice;
  /** What the memory check takes as available (tests); defaults to availableMemory(). */
  availableMemory?: () => { bytes: number; source: string };
}

/** One optimizer step; a data error names the rows of the step (file:line), since the trainer sees only batches. */
function stepNaming(trainer: Trainer, window: Batch[], lr: number, examples: readonly Example[]): ReturnType<Trainer['step']> {
  try {
    return trainer.step(window, lr);
  } catch (e) {
    if (!(e instanceof PeftkitError) || e.code !== 'E_DATA') throw e;
    const rows = [...new Set(window.flatMap((b) => b.examples).map((i) => `${examples[i].source.file}:${examples[i].source.line}`))];
    throw new PeftkitError('E_DATA', `${rows.slice(0, 8).join(', ')}${rows.length > 8 ? ', ...' : ''}: ${e.message}`);
  }
}

/**
 * The micro-batches of one optimizer step: up to `gradAccum` of them, ending early at the end
 * of an epoch (as transformers' Trainer steps on an epoch's leftover batches), so an epoch's
 * rows are never mixed into a step with the next epoch's and `epochs: 1` sees each row once.
 */
function nextWindow(batches: BatchIterator, gradAccum: number, group: ProcessGroup | undefined, perRank: number): Batch[] {
  const first = batches.nextBatch();
  const window = [first];
  while (window.length < gradAccum && batches.position.epoch === first.position.epoch) window.push(batches.nextBatch());
  if (!group) return window;
  // This rank's rows of each global batch (none of a short last one: the trainer still joins the all-reduce).
  return window.map((b) => shardBatch(b, group.rank, perRank)).filter((b): b is Batch => b !== null);
}

export function runTraining(options: TrainOptions, hooks: RunHooks = {}): TrainResult {
  const emit = hooks.onEvent ?? (() => {});
  // A resume takes the options not given from its checkpoint.
  const { o, ck } = resolveWithCheckpoint(options);
  // Held until the run ends: a second run into the same folder is refused (E_BUSY), not let
  // loose on this one's checkpoints (nor told they are another run's).
  // Only rank 0 writes the folder (the other ranks' processes may share its file system).
  const lock: FolderLock = hooks.group && hooks.group.rank !== 0 ? { release: () => {} } as FolderLock : lockFolder(o.out);
  let prepared: Prepared;
  try {
    const method = runMethod(options, o, ck);
    // The data before the model: the memory check needs its longest row, and must come before
    // the model's memory is taken.
    const config = readModelConfig(o.model);
    const data = prepareData(o, config.vocabSize, (message) => emit({ type: 'warning', message }));
    const create = createOptions(options, o, method, data.tok);
    // cpu only: on cuda the tensors live in the GPU's memory, which MemAvailable does not describe.
    if (o.memoryCheck && resolveDevice(o.device) === 'cpu') {
      const shape: RunShape = { o, config, method, adapterDir: ck?.dir ?? o.adapter ?? null, create, seqLength: data.seqLength, dataTokens: data.tokens, threads: runtimeInfo().threads };
      checkMemory(estimateRun(shape), o, method, hooks.availableMemory?.(), hooks.group ? ranksPerNode() : 1);
    }
    prepared = { model: loadRunModel(options, o, method), method, data, create };
  } catch (e) {
    lock.release();
    throw ioError(e);
  }
  return trainWith(options, o, ck, prepared, lock, hooks);
}

interface Prepared {
  model: LlamaModel;
  method: AdapterMethod;
  data: RunData;
  create: CreateAdapterOptions;
}

/** The checks that need no model, and the method: the folder's being continued (its config wins), else the options'. */
export function runMethod(options: TrainOptions, o: ResolvedTrainOptions, ck: CheckpointOptions | null): AdapterMethod {
  if (!ck && holdsCheckpoints(o.out) && !o.overwrite) {
    throw new PeftkitError('E_ARG', `out: ${path.join(o.out, 'checkpoints')} holds another run's checkpoints: continue it with 'resume', or pass 'overwrite' to remove them, or choose another 'out'`);
  }
  const adapterSource = ck?.dir ?? o.adapter;
  const asked: AdapterMethod = o.method === 'qlora' || o.method === 'int8-lora' ? 'lora' : o.method;
  const method = adapterSource ? adapterMethodOf(adapterSource) : asked;
  if (adapterSource && options.method !== undefined && method !== asked) {
    throw new PeftkitError('E_ARG', `method: '${options.method}' was asked for, but ${adapterSource} holds a ${method} ${method === 'full' ? 'model' : 'adapter'} (its config wins: leave method out)`);
  }
  const full = method === 'full';
  if (full && path.resolve(o.out) === path.resolve(o.model)) throw new PeftkitError('E_ARG', `out: full fine-tuning writes a whole model folder; it must not be the model folder it reads (${o.model})`);
  if (full && o.adapter) throw new PeftkitError('E_ARG', 'adapter: full fine-tuning starts from the model; to go on from a fine-tuned model, give its folder as model');
  return method;
}

/** What a new adapter is made from (a continued one is loaded from its folder instead). */
export function createOptions(options: TrainOptions, o: ResolvedTrainOptions, method: AdapterMethod, tok: Tokenizer | null): CreateAdapterOptions {
  return {
    targets: options.targets === undefined && method !== 'lora' && method !== 'dora' ? undefined : o.targets,
    lora: { r: o.r, lora_alpha: o.alpha, lora_dropout: o.dropout, use_rslora: o.rslora, init_lora_weights: o.initLoraWeights },
    diff: { density: o.diffDensity, pruneStep: o.diffPruneStep },
    bottleneck: { type: o.adapterType, reductionFactor: o.adapterReduction },
    numVirtualTokens: o.numVirtualTokens,
    encoderHiddenSize: o.encoderHiddenSize,
    encoder: o.encoder,
    prefixProjection: o.prefixProjection,
    promptInit: o.promptInit && {
      kind: ({ random: 'RANDOM', text: 'TEXT', vocab: 'SAMPLE_VOCAB' } as const)[o.promptInit],
      text: o.promptInitText, ids: o.promptInit === 'text' && tok ? tok.encode(o.promptInitText ?? '') : undefined,
    },
    trainable: o.trainable,
    baseModel: path.resolve(o.model),
    seed: o.seed,
  };
}

/** The model as the method needs it. */
function loadRunModel(options: TrainOptions, o: ResolvedTrainOptions, method: AdapterMethod): LlamaModel {
  const full = method === 'full';
  // Full fine-tuning keeps f32 masters; bf16 is then the products' precision alone.
  const model = LlamaModel.load(o.model, {
    device: o.device, dtype: o.bf16 && !full ? 'bf16' : 'f32', compute: o.bf16 ? 'bf16' : 'f32', quantize: o.quantize, int8Threshold: o.int8Threshold,
  });
  // A bitsandbytes folder stays in its own format: asking for another (qlora's NF4 on an int8
  // folder) would train on a base other than the one asked for.
  const stored = model.quantFormat;
  if (o.quantize && stored && stored !== o.quantize) {
    model.dispose();
    const [field, value] = options.quantize !== undefined ? ['quantize', o.quantize] : ['method', o.method];
    throw new PeftkitError('E_ARG', `${field}: '${value}' asks for a ${o.quantize} base, but ${o.model} is already quantized, to ${stored} (bitsandbytes), and is used as stored: ` +
      `use ${stored === 'int8' ? 'int8-lora' : 'qlora'}, or leave 'quantize' out, or give a dense model folder`);
  }
  return model;
}

function trainWith(options: TrainOptions, o: ResolvedTrainOptions, ck: CheckpointOptions | null, prepared: Prepared, lock: FolderLock, hooks: RunHooks): TrainResult {
  const emit = hooks.onEvent ?? (() => {});
  const { model, method, data: { tok, data, seqLength: maxT } } = prepared;
  const adapterSource = ck?.dir ?? o.adapter;
  const full = method === 'full';
  // Everything holding engine memory or a file is released however the run ends, bad input included.
  const owned: Array<{ dispose(): void }> = [{ dispose: () => lock.release() }, model];
  const group = hooks.group;
  const writer = !group || group.rank === 0;
  const world = group?.size ?? 1;
  const own = <T extends { dispose(): void }>(r: T): T => (owned.push(r), r);
  try {
    const padId = tok?.padId ?? 0;

    // A run killed while writing a checkpoint or the adapter leaves temporaries beside them.
    if (writer) {
      removeLeftoverTemps(o.out);
      removeLeftoverTemps(path.join(o.out, 'checkpoints'));
    }
    const resumeDir = ck?.dir ?? null;
    const resumed: TrainerState | null = ck?.state ?? null;

    // With a group the iterator yields global batches (batchSize rows per rank), so the order,
    // the epochs and the resume position are those of one process reading batchSize × ranks.
    const batches = new BatchIterator(data.train, { batchSize: o.batchSize * world, padId, shuffle: o.shuffle, seed: o.seed, packing: o.packing, maxLength: o.maxLength });
    // As transformers counts them: an epoch's last window may hold fewer than gradAccum batches.
    const stepsPerEpoch = Math.ceil(batches.batchesPerEpoch / o.gradAccum);
    const totalSteps = o.steps ?? Math.max(1, Math.ceil((o.epochs ?? 1) * stepsPerEpoch));
    if (o.warmupRatio !== undefined) o.warmupSteps = Math.ceil(o.warmupRatio * totalSteps); // transformers' get_warmup_steps
    // Full fine-tuning's checkpoints are model folders: the weights come back in restoreCheckpoint.
    const adapter = own(full
      ? createAdapter('full', model, { trainable: o.trainable })
      : adapterSource
      ? loadAdapter(adapterSource, model.config, { device: model.device })
      : createAdapter(method, model, { ...prepared.create, diff: { ...prepared.create.diff, pruneStep: o.diffPruneStep ?? Math.floor(totalSteps / 10) } }));
    // Every option that changes the result (checkpoint.ts records it; resume.ts compares it).
    const fingerprint = { ...runFingerprint(o, totalSteps, world), ...loraFingerprint(o, adapter.peftType === 'LORA' ? (adapter.config as LoraConfig) : null, ck) };
    if (ck) for (const message of checkResume(options, runFingerprint(o, totalSteps, world), ck)) emit({ type: 'warning', message });
    else if (writer && o.overwrite && holdsCheckpoints(o.out)) fs.rmSync(path.join(o.out, 'checkpoints'), { recursive: true, force: true });

    const trainer = own(new Trainer(model, adapter, {
      maxRows: o.batchSize * maxT, maxT, dropout: adapter.dropout, maxGradNorm: o.maxGradNorm,
      activationCheckpointing: o.activationCheckpointing, seed: o.seed, betas: o.betas, eps: o.eps, weightDecay: o.weightDecay,
      optim: o.optim, pagedDir: o.pagedDir, group,
    }));
    const logFile = path.join(o.out, 'train_log.jsonl');
    const lossCurve = path.join(o.out, 'loss_curve.svg');
    let step = 0;
    let elapsedBefore = 0;
    let tokensSeen = 0;
    if (resumed && resumeDir) {
      restoreCheckpoint(resumeDir, adapter, trainer.optimizer, resumed);
      try {
        batches.seek(resumed.position);
      } catch (e) {
        if (!(e instanceof PeftkitError)) throw e;
        throw new PeftkitError(e.code, `${path.join(resumeDir, 'trainer_state.json')}: ${e.message}`);
      }
      step = resumed.step;
      elapsedBefore = resumed.elapsedS;
      tokensSeen = resumed.tokensSeen;
    }
    // Created only now, so that bad input found above leaves no output folder behind.
    if (writer) makeDir(o.out);
    const log = writer ? new TrainLog(logFile, resumed ? step : undefined) : null;
    if (log) owned.push({ dispose: () => log.close() });
    const t0 = Date.now();
    const elapsed = () => elapsedBefore + (Date.now() - t0) / 1000;
    const state = (): TrainerState => ({ step, totalSteps, position: batches.position, seed: o.seed, elapsedS: elapsed(), tokensSeen, fingerprint });
    const checkpoint = () => {
      if (!writer) return;
      const dir = saveCheckpoint(o.out, adapter, trainer.optimizer, state());
      if (o.saveTotalLimit > 0) pruneCheckpoints(o.out, o.saveTotalLimit, step);
      writeLossCurve(lossCurve, readLog(logFile));
      emit({ type: 'checkpoint', step, dir });
    };
    let evalLoss: number | null = null;
    const evaluate = () => {
      if (!data.eval.length) return;
      const r = trainer.evaluate(evalBatches(data.eval, { batchSize: o.batchSize, padId }));
      evalLoss = r.loss;
      log?.append({ step, eval_loss: r.loss, eval_perplexity: Math.exp(r.loss), elapsed_s: elapsed() });
      emit({ type: 'eval', step, loss: r.loss, perplexity: Math.exp(r.loss) });
    };

    emit({
      type: 'start', totalSteps, startStep: step, trainExamples: data.train.length, evalExamples: data.eval.length,
      trainableParams: adapter.parameters().reduce((a, p) => a + p.param.numel, 0), device: model.device,
      // what LlamaModel.load resolved o.device by
      deviceReason: deviceChoice(o.device).reason + (group && hooks.rankDevice ? `; rank ${group.rank}: ${describeRankDevice(hooks.rankDevice)}` : ''),
    });
    let finalLoss = NaN;
    const runStart = elapsed();
    const tokensAtStart = tokensSeen;
    let warnedDivergence = false;
    // A step's update is measured during the next one (its norm comes back with that step's loss).
    const warnIfDiverging = (u: UpdateMeasure | undefined) => {
      if (warnedDivergence || !u || !(u.ratio > UPDATE_RATIO_WARN)) return;
      warnedDivergence = true; // once a run: every later step of a diverging run would repeat it
      emit({ type: 'warning', message: divergenceWarning(u, { maxGradNorm: o.maxGradNorm }) });
    };
    // A run that stops, or fails with E_NAN, before the next step reports the last update warns
    // of it first (a diverging update is what turns the next loss into NaN). Not after other
    // errors: reading the device behind a failed collective could wait on it. A read that fails
    // must not hide the error being raised.
    const warnOfLastUpdate = () => {
      let u: UpdateMeasure | undefined;
      try {
        u = trainer.lastUpdate();
      } catch {
        return;
      }
      warnIfDiverging(u);
    };
    while (step < totalSteps) {
      let stop = hooks.shouldStop?.() ?? false;
      // A stop asked of one rank stops them all at the same step (the others would wait in the next all-reduce).
      if (group) stop = group.allReduceNumbers([stop ? 1 : 0], 'stop flag')[0] > 0;
      if (stop) {
        warnOfLastUpdate();
        checkpoint();
        throw new PeftkitError('E_ABORTED', `training stopped at step ${step}; resume with resume: '${o.out}'`);
      }
      const window = nextWindow(batches, o.gradAccum, group, o.batchSize);
      const lr = lrAt(step, { schedule: o.schedule, lr: o.lr, warmupSteps: o.warmupSteps, totalSteps });
      const ts = Date.now();
      let r: StepResult;
      try {
        r = stepNaming(trainer, window, lr, data.train);
      } catch (e) {
        if (e instanceof PeftkitError && e.code === 'E_NAN') warnOfLastUpdate();
        throw e;
      }
      step++;
      tokensSeen += r.inputTokens;
      finalLoss = r.loss;
      warnIfDiverging(r.previousUpdate);
      const tokensPerS = r.inputTokens / Math.max(1e-9, (Date.now() - ts) / 1000);
      const el = elapsed();
      if (step % o.logEvery === 0 || step === totalSteps) {
        log?.append({ step, loss: r.loss, lr, grad_norm: r.gradNorm, tokens_per_s: tokensPerS, elapsed_s: el, tokens: tokensSeen });
      }
      const perStep = (el - runStart) / Math.max(1, step - (resumed?.step ?? 0));
      emit({ type: 'step', step, totalSteps, loss: r.loss, lr, gradNorm: r.gradNorm, tokensPerS, elapsedS: el, etaS: perStep * (totalSteps - step) });
      if (o.evalEvery > 0 && step % o.evalEvery === 0) evaluate();
      if (o.saveEvery > 0 && step % o.saveEvery === 0 && step < totalSteps) checkpoint();
    }
    warnIfDiverging(trainer.lastUpdate());
    if (evalLoss === null || o.evalEvery === 0 || step % o.evalEvery !== 0) evaluate();
    checkpoint(); // at the final step too: a finished run can be continued to more steps
    if (writer && log) {
      adapter.writeFiles(o.out);
      log.close();
      writeLossCurve(lossCurve, readLog(logFile));
    }
    // Every rank returns once the adapter is written: a caller of any rank may read it.
    group?.barrier();
    const el = elapsed();
    return {
      adapterDir: o.out, steps: step, finalLoss, evalLoss, elapsedS: el, logFile, lossCurve,
      tokensPerS: (tokensSeen - tokensAtStart) / Math.max(1e-9, el - runStart),
    };
  } catch (e) {
    throw ioError(e); // a full or read-only disk: E_IO with errno and path, not a bare Node error
  } finally {
    for (const r of owned.reverse()) r.dispose();
  }
}
