/**
 * Examples -> padded batches, deterministically. An epoch is a sequence of units (examples, or
 * packed rows when packing), ordered by a permutation that depends only on (seed, epoch); a
 * batch is the next `batchSize` units. So a DataPosition {epoch, index} saved with a checkpoint
 * is all a resumed run needs to produce exactly the batches the original run would have.
 *
 * Batches are right-padded to the longest row (pad id in inputIds, -100 in labels), labels in
 * HF's unshifted convention (the loss at position t-1 predicts labels[t]).
 */
import { PeftkitError } from '../errors';
import { epochPermutation } from './shuffle';
import { packLayout, packedRow } from './packing';
import { IGNORE_INDEX } from './rows';
import type { Example } from './encode';

/** Where the next batch starts: `index` counts units (examples, or packed rows) into `epoch`'s order. */
export interface DataPosition {
  epoch: number;
  index: number;
}

export interface BatchOptions {
  /** Rows per batch. */
  batchSize: number;
  /** Id written into padding (Tokenizer.padId: pad_token, else EOS). */
  padId: number;
  /** Shuffle each epoch with a permutation derived from (seed, epoch). Defaults to `true`. */
  shuffle?: boolean;
  /** Seed of the shuffle; any safe integer. Defaults to `0`. */
  seed?: number;
  /** Concatenate examples into rows of exactly `maxLength` tokens (see packing.ts). Defaults to `false`. */
  packing?: boolean;
  /** Row length when packing (required then). Examples are truncated when encoded, not here. */
  maxLength?: number;
  /** Skip an epoch's last batch when it has fewer than batchSize rows. Defaults to `false` (as HF's Trainer). */
  dropLast?: boolean;
  /** Round T up to a multiple of this (kernels like multiples of 8 or 16). Defaults to `1`. */
  padToMultipleOf?: number;
}

export interface Batch {
  /** [B*T] row-major token ids, right-padded with padId. */
  inputIds: Int32Array;
  /** [B*T] unshifted labels, -100 on padding and on tokens without loss. */
  labels: Int32Array;
  B: number;
  T: number;
  /** [B] tokens in each row before padding. */
  lengths: Int32Array;
  /** Non-padding tokens in the batch. */
  tokens: number;
  /** Labels that are not -100. */
  labelTokens: number;
  /**
   * Labels that are targets of the causal-LM loss: not -100 and not at position 0 of a row (HF
   * shifts by one, so nothing predicts position 0). The mean loss divides by this.
   */
  targetTokens: number;
  /** Dataset indices of the examples in the batch, in row order. */
  examples: number[];
  /** Where this batch starts, and where the one after it starts. */
  position: DataPosition;
  next: DataPosition;
}

interface Row {
  inputIds: ArrayLike<number>;
  labels: ArrayLike<number>;
}

/** Pads rows to a batch (right padding, to the longest row rounded up to `multiple`). */
export function collate(rows: readonly Row[], padId: number, multiple = 1): Omit<Batch, 'examples' | 'position' | 'next'> {
  const B = rows.length;
  let longest = 1;
  for (const r of rows) longest = Math.max(longest, r.inputIds.length);
  const T = Math.ceil(longest / multiple) * multiple;
  const inputIds = new Int32Array(B * T).fill(padId);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  const lengths = new Int32Array(B);
  let tokens = 0;
  let labelTokens = 0;
  let targetTokens = 0;
  rows.forEach((r, b) => {
    const n = r.inputIds.length;
    lengths[b] = n;
    tokens += n;
    for (let t = 0; t < n; t++) {
      inputIds[b * T + t] = r.inputIds[t];
      const l = r.labels[t];
      labels[b * T + t] = l;
      if (l !== IGNORE_INDEX) {
        labelTokens++;
        if (t > 0) targetTokens++;
      }
    }
  });
  return { inputIds, labels, B, T, lengths, tokens, labelTokens, targetTokens };
}

function checkInt(name: string, v: number | undefined, min: number): void {
  if (v !== undefined && !(Number.isSafeInteger(v) && v >= min)) {
    throw new PeftkitError('E_ARG', `${name} is ${v}, expected an integer >= ${min}`);
  }
}

/** The units of one epoch and how to fetch them. */
interface EpochPlan {
  epoch: number;
  units: number;
  row(u: number): Row & { examples: number[] };
}

/** An endless, resumable stream of training batches over `examples`. */
export class BatchIterator {
  readonly batchSize: number;
  /** Units (examples, or packed rows) in every epoch. */
  readonly unitsPerEpoch: number;
  readonly batchesPerEpoch: number;
  private readonly examples: readonly Example[];
  private readonly opts: Required<Omit<BatchOptions, 'maxLength'>> & { maxLength: number | undefined };
  private plan: EpochPlan | null = null;
  private pos: DataPosition = { epoch: 0, index: 0 };

  constructor(examples: readonly Example[], options: BatchOptions) {
    checkInt('batchSize', options.batchSize, 1);
    checkInt('padId', options.padId, 0);
    checkInt('maxLength', options.maxLength, 1);
    checkInt('padToMultipleOf', options.padToMultipleOf, 1);
    if (options.seed !== undefined && !Number.isSafeInteger(options.seed)) throw new PeftkitError('E_ARG', `seed is ${options.seed}, expected a safe integer`);
    if (options.packing && options.maxLength === undefined) throw new PeftkitError('E_ARG', 'packing needs maxLength (the length of every packed row)');
    if (examples.length === 0) throw new PeftkitError('E_DATA', 'no examples to make batches from');
    this.examples = examples;
    this.opts = {
      batchSize: options.batchSize,
      padId: options.padId,
      shuffle: options.shuffle ?? true,
      seed: options.seed ?? 0,
      packing: options.packing ?? false,
      maxLength: options.maxLength,
      dropLast: options.dropLast ?? false,
      padToMultipleOf: options.padToMultipleOf ?? 1,
    };
    this.batchSize = options.batchSize;
    this.unitsPerEpoch = this.planFor(0).units;
    this.batchesPerEpoch = this.opts.dropLast ? Math.floor(this.unitsPerEpoch / this.batchSize) : Math.ceil(this.unitsPerEpoch / this.batchSize);
    if (this.batchesPerEpoch === 0) {
      throw new PeftkitError('E_DATA', `an epoch has ${this.unitsPerEpoch} ${this.opts.packing ? 'packed rows' : 'examples'}, fewer than batchSize ${this.batchSize} with dropLast`);
    }
  }

  private planFor(epoch: number): EpochPlan {
    if (this.plan?.epoch === epoch) return this.plan;
    const n = this.examples.length;
    const order = this.opts.shuffle ? epochPermutation(n, this.opts.seed, epoch) : Uint32Array.from({ length: n }, (_, i) => i);
    if (this.opts.packing) {
      const layout = packLayout(this.examples, order, this.opts.maxLength!);
      this.plan = { epoch, units: layout.rows, row: (u) => packedRow(this.examples, layout, u) };
    } else {
      this.plan = {
        epoch,
        units: n,
        row: (u) => {
          const i = order[u];
          return { inputIds: this.examples[i].inputIds, labels: this.examples[i].labels, examples: [i] };
        },
      };
    }
    return this.plan;
  }

  /** The same position, moved to the next epoch when no (full, with dropLast) batch is left. */
  private normalize(p: DataPosition): DataPosition {
    const left = this.unitsPerEpoch - p.index;
    if (left <= 0 || (this.opts.dropLast && left < this.batchSize)) return { epoch: p.epoch + 1, index: 0 };
    return p;
  }

  /** Where the next batch starts; save it with a checkpoint. */
  get position(): DataPosition {
    return { ...this.pos };
  }

  /** Continue from a saved position (same examples and options give the same batches). */
  seek(p: DataPosition): void {
    checkInt('position.epoch', p.epoch, 0);
    checkInt('position.index', p.index, 0);
    if (p.index > this.unitsPerEpoch) {
      throw new PeftkitError('E_ARG', `position.index is ${p.index}, but an epoch has ${this.unitsPerEpoch} units; was the position saved with another dataset or options?`);
    }
    this.pos = this.normalize({ epoch: p.epoch, index: p.index });
  }

  /** The batch starting at `p`, without moving. */
  batchAt(p: DataPosition): Batch {
    const start = this.normalize(p);
    const plan = this.planFor(start.epoch);
    const end = Math.min(start.index + this.batchSize, plan.units);
    const rows: Array<Row & { examples: number[] }> = [];
    for (let u = start.index; u < end; u++) rows.push(plan.row(u));
    const batch = collate(rows, this.opts.padId, this.opts.padToMultipleOf);
    const next = this.normalize({ epoch: start.epoch, index: end });
    return { ...batch, examples: rows.flatMap((r) => r.examples), position: start, next };
  }

  nextBatch(): Batch {
    const b = this.batchAt(this.pos);
    this.pos = b.next;
    return b;
  }
}

export interface EvalBatchOptions {
  batchSize: number;
  padId: number;
  packing?: boolean;
  maxLength?: number;
  padToMultipleOf?: number;
}

/** One pass over `examples` in file order (no shuffle, last batch kept), for evaluation. */
export function* evalBatches(examples: readonly Example[], options: EvalBatchOptions): Generator<Batch> {
  const it = new BatchIterator(examples, { ...options, shuffle: false, dropLast: false });
  for (let i = 0; i < it.batchesPerEpoch; i++) yield it.nextBatch();
}

/**
 * Rank `rank`'s rows of a global batch in data-parallel training: rows [rank·perRank,
 * (rank+1)·perRank), T kept (the same padding as one process reading the whole batch). Null
 * when the batch has no rows for this rank (an epoch's short last batch). `examples` stays the
 * whole batch's (a packed row holds several, so rows do not map to examples one to one); it
 * only names rows in errors.
 */
export function shardBatch(b: Batch, rank: number, perRank: number): Batch | null {
  const r0 = rank * perRank;
  const r1 = Math.min(b.B, r0 + perRank);
  if (r1 <= r0) return null;
  const T = b.T;
  const labels = b.labels.slice(r0 * T, r1 * T);
  const lengths = b.lengths.slice(r0, r1);
  let tokens = 0;
  let labelTokens = 0;
  let targetTokens = 0;
  for (const n of lengths) tokens += n;
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] !== IGNORE_INDEX) {
      labelTokens++;
      if (i % T > 0) targetTokens++;
    }
  }
  return { ...b, inputIds: b.inputIds.slice(r0 * T, r1 * T), labels, B: r1 - r0, lengths, tokens, labelTokens, targetTokens };
}
