/**
 * Dataset files -> encoded train and eval examples: the step between `readRows` and
 * `BatchIterator` that a training run performs once at start.
 */
import { PeftkitError } from '../errors';
import { encodeRows } from './encode';
import type { EncodeOptions, Example } from './encode';
import { readRows } from './rows';
import type { Tokenizer } from './tokenizer';

export interface DatasetOptions extends EncodeOptions {
  /** A separate eval file (same formats). Defaults to none. */
  evalFile?: string;
  /**
   * Fraction in (0, 1) of the training file's rows held out for eval, taken from its tail (the
   * last ceil(fraction * rows) rows, as HF's train_test_split counts) so the split never depends
   * on a seed. Not together with evalFile. Defaults to none.
   */
  evalSplit?: number;
}

export interface DatasetStats {
  rows: number;
  tokens: number;
  /** Labels that are not -100 (before batching). */
  labelTokens: number;
  /** Rows cut to maxLength. */
  truncated: number;
  /** Rows with no label at all (e.g. a prompt longer than maxLength, a chat without an assistant turn): they cost compute and teach nothing. */
  untrained: number;
}

export interface Dataset {
  train: Example[];
  eval: Example[];
  stats: { train: DatasetStats; eval: DatasetStats };
  /** What was read but is worth a look (invalid UTF-8, with file:line). */
  warnings: string[];
}

/** Splits off the last ceil(fraction * n) items; `file` (where the items came from) prefixes the messages. */
export function splitTail<T>(items: readonly T[], fraction: number, file?: string): { head: T[]; tail: T[] } {
  if (!(fraction > 0 && fraction < 1)) throw new PeftkitError('E_ARG', `evalSplit is ${fraction}, expected a fraction between 0 and 1 (exclusive)`);
  const nTail = Math.ceil(fraction * items.length);
  if (nTail >= items.length) {
    throw new PeftkitError('E_DATA', `${file ? `${file}: ` : ''}evalSplit ${fraction} of ${items.length} rows leaves no training rows, expected more rows or a smaller fraction`);
  }
  return { head: items.slice(0, items.length - nTail), tail: items.slice(items.length - nTail) };
}

export function datasetStats(examples: readonly Example[]): DatasetStats {
  const s: DatasetStats = { rows: examples.length, tokens: 0, labelTokens: 0, truncated: 0, untrained: 0 };
  for (const ex of examples) {
    s.tokens += ex.inputIds.length;
    let labelled = 0;
    for (const l of ex.labels) if (l !== -100) labelled++;
    s.labelTokens += labelled;
    if (ex.truncated) s.truncated++;
    if (labelled === 0) s.untrained++;
  }
  return s;
}

/** Reads, checks and encodes the training file (and the eval file or split). */
export function loadDataset(trainFile: string, tokenizer: Tokenizer, options: DatasetOptions = {}): Dataset {
  if (options.evalFile !== undefined && options.evalSplit !== undefined) {
    throw new PeftkitError('E_ARG', 'evalFile and evalSplit were both given, expected at most one');
  }
  const warnings: string[] = [];
  let trainRows = readRows(trainFile, warnings);
  let evalRows = options.evalFile !== undefined ? readRows(options.evalFile, warnings) : [];
  if (options.evalSplit !== undefined) {
    const { head, tail } = splitTail(trainRows, options.evalSplit, trainFile);
    trainRows = head;
    evalRows = tail;
  }
  const train = encodeRows(trainRows, tokenizer, options);
  const evalExamples = encodeRows(evalRows, tokenizer, options);
  return { train, eval: evalExamples, stats: { train: datasetStats(train), eval: datasetStats(evalExamples) }, warnings };
}
