/**
 * estimateMemory(): the memory a training run would need, from the same options as train()
 * (`peftkit estimate` takes train's flags), without loading the model or allocating anything.
 */
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { readModelConfig } from '../model/config';
import { runtimeInfo } from '../runtime';
import { availableMemory, estimateRun, MemoryEstimate, newMemory } from './memory';
import type { TrainOptions } from './options';
import { resolveWithCheckpoint } from './resume';
import { createOptions, runMethod } from './run';
import { prepareData } from './run_data';

export type { MemoryEstimate, MemoryPart } from './memory';

export interface EstimateOptions extends Omit<TrainOptions, 'out' | 'data'> {
  /** Training data, read to find the longest row; not needed with `seqLength`. */
  data?: string;
  /** The output folder; only a `resume` of an output folder reads it. Defaults to none. */
  out?: string;
  /**
   * Tokens per sequence to size the activations for, instead of reading and tokenizing `data`
   * to find its longest row (what train() does). Defaults to the data's longest row, at most
   * `maxLength` (`maxLength` itself with `packing`).
   */
  seqLength?: number;
}

export interface MemoryReport extends MemoryEstimate {
  /** The memory this process may still use (MemAvailable within any cgroup limit; os.freemem() off Linux). */
  available: { bytes: number; source: string };
  /** Whether the run fits in `available`: what train() checks before it loads the model. */
  fits: boolean;
}

/**
 * Estimates the memory of the run `train(options)` would make, part by part: the runtime (Node,
 * the addon, the training worker), the frozen weights in their storage (f32, bf16, NF4/FP4 with
 * their block scales, int8), the trainable parameters, their gradients, the optimizer states
 * (f32 or 8-bit moments; paged ones are in `total` but not in `required`), the activations of the
 * largest batch (all layers kept, or one with activationCheckpointing) with what the method keeps
 * for its backward, the loss's logits chunk and GEMM buffers, and the tokenized data. Nothing is
 * allocated; the data is read and tokenized unless `seqLength` is given. Within 15% of the
 * measured peak RSS on the benchmark shapes (test/memory.test.ts, BENCHMARKS.md).
 *
 *     const e = estimateMemory({ model: 'SmolLM2-135M', data: 'train.jsonl', batchSize: 8, maxLength: 1024 });
 *     for (const p of e.parts) console.log(p.part, (p.bytes / 2 ** 20).toFixed(0), 'MiB:', p.what);
 *     if (!e.fits) console.log('needs', e.required, 'bytes; available', e.available.bytes);
 */
export function estimateMemory(options: EstimateOptions): MemoryReport {
  const { seqLength, ...rest } = options;
  if (seqLength !== undefined && !(Number.isSafeInteger(seqLength) && seqLength > 0)) {
    throw new PeftkitError('E_ARG', `seqLength: expected a positive integer, got ${String(seqLength)}`);
  }
  if (seqLength === undefined && rest.data === undefined && rest.resume === undefined) throw new PeftkitError('E_ARG', 'data: expected a path (or seqLength, the tokens per row to assume)');
  // An output folder (and with seqLength, data) is not read to estimate: placeholders satisfy the
  // options' checks, and `overwrite` the check that the folder holds no other run's checkpoints.
  const placeholder = path.join(os.tmpdir(), 'peftkit-estimate');
  const train = { ...rest, out: rest.out ?? placeholder, data: rest.data ?? placeholder, ...(rest.resume === undefined ? { overwrite: true } : {}) } as TrainOptions;
  const { o, ck } = resolveWithCheckpoint(train);
  const method = runMethod(train, o, ck);
  const config = readModelConfig(o.model);
  const data = seqLength === undefined ? prepareData(o, config.vocabSize, () => {}) : null;
  const e = estimateRun({
    o, config, method, adapterDir: ck?.dir ?? o.adapter ?? null, create: createOptions(train, o, method, data?.tok ?? null),
    seqLength: data?.seqLength ?? seqLength!, dataTokens: data?.tokens ?? 0, threads: runtimeInfo().threads,
  });
  const available = availableMemory();
  return { ...e, available, fits: newMemory(e) <= available.bytes };
}
