/**
 * A run's data, read before the model is loaded (so that the memory check knows the longest row):
 * the tokenizer, the train and eval rows encoded and checked against the vocabulary, the rows with
 * nothing to learn from dropped, and the sequence length the buffers are made for.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Dataset, Example, IGNORE_INDEX, loadDataset, loadTokenizer, readRows, splitTail, Tokenizer } from '../data';
import { PeftkitError } from '../errors';
import type { ResolvedTrainOptions } from './options';

export interface RunData {
  tok: Tokenizer | null;
  data: Dataset;
  /** Tokens per sequence the activation buffers are made for: maxLength with packing, else the longest row (at most maxLength). */
  seqLength: number;
  /** Tokens of all train and eval rows. */
  tokens: number;
}

function pretokenizedOnly(file: string, maxLength: number, warnings: string[]): Example[] {
  return readRows(file, warnings).map((row) => {
    if (row.kind !== 'tokens') {
      throw new PeftkitError('E_DATA', `${row.source.file}:${row.source.line}: a ${row.kind} row needs a tokenizer, but the model folder has no tokenizer.json`);
    }
    const labels = row.labels ?? row.inputIds;
    return { inputIds: row.inputIds.slice(0, maxLength), labels: labels.slice(0, maxLength), source: row.source, truncated: row.inputIds.length > maxLength };
  });
}

function loadData(o: ResolvedTrainOptions, tok: Tokenizer | null): Dataset {
  if (tok) {
    return loadDataset(o.data, tok, { maxLength: o.maxLength, maskPrompt: o.maskPrompt, assistantOnly: o.maskPrompt, evalFile: o.evalData, evalSplit: o.evalSplit });
  }
  const warnings: string[] = [];
  let train = pretokenizedOnly(o.data, o.maxLength, warnings);
  let evalEx = o.evalData ? pretokenizedOnly(o.evalData, o.maxLength, warnings) : [];
  if (o.evalSplit !== undefined) ({ head: train, tail: evalEx } = splitTail(train, o.evalSplit, o.data));
  const stats = (e: Example[]) => ({ examples: e.length }) as unknown as Dataset['stats']['train'];
  return { train, eval: evalEx, stats: { train: stats(train), eval: stats(evalEx) }, warnings };
}

function checkVocab(examples: readonly Example[], vocab: number): void {
  for (const e of examples) {
    for (const id of e.inputIds) {
      if (!Number.isInteger(id) || id < 0 || id >= vocab) {
        throw new PeftkitError('E_DATA', `${e.source.file}:${e.source.line}: token id ${id} is outside the model's vocabulary [0, ${vocab})`);
      }
    }
    // Labels are the loss's targets: one outside the vocabulary has no logit to score.
    for (const id of e.labels) {
      if (id !== IGNORE_INDEX && (!Number.isInteger(id) || id < 0 || id >= vocab)) {
        throw new PeftkitError('E_DATA', `${e.source.file}:${e.source.line}: label ${id} is outside the model's vocabulary [0, ${vocab}), expected a token id or -100`);
      }
    }
  }
}

/**
 * Drops the rows that have no label token past their first position (the loss predicts token
 * t+1 from t, so a label at position 0 is never a target): a prompt longer than maxLength, a
 * completion truncated away, a chat without an assistant turn. They cost compute and teach
 * nothing, and a step made only of them would have no loss at all, stopping a long run midway.
 * Returns a warning naming them, or null; no trainable row left at all is an error.
 */
function skipUntrainable(data: { train: Example[]; eval: Example[] }, o: { data: string; maxLength: number }): string | null {
  const trainable = (e: Example) => e.labels.some((l, t) => t > 0 && l !== IGNORE_INDEX);
  const dropped = [...data.train, ...data.eval].filter((e) => !trainable(e));
  if (!dropped.length) return null;
  data.train = data.train.filter(trainable);
  data.eval = data.eval.filter(trainable);
  const where = dropped.slice(0, 5).map((e) => `${e.source.file}:${e.source.line}`).join(', ') + (dropped.length > 5 ? ', ...' : '');
  const why = `no label token to learn from after truncation to maxLength ${o.maxLength} (a prompt longer than that, a completion cut away, or no assistant turn)`;
  if (!data.train.length) throw new PeftkitError('E_DATA', `${o.data}: no training row has a label token: ${why}: ${where}`);
  return `${dropped.length} row${dropped.length > 1 ? 's' : ''} skipped, ${why}: ${where}`;
}

/**
 * Reads and checks the run's rows; each warning (invalid UTF-8, rows skipped) is passed to
 * `warn` as soon as it is known.
 */
export function prepareData(o: ResolvedTrainOptions, vocabSize: number, warn: (message: string) => void): RunData {
  const tok = fs.existsSync(path.join(o.model, 'tokenizer.json')) ? loadTokenizer(o.model) : null;
  const data = loadData(o, tok);
  for (const message of data.warnings) warn(message);
  if (data.train.length === 0) throw new PeftkitError('E_DATA', `${o.data}: no training rows`);
  checkVocab(data.train, vocabSize);
  checkVocab(data.eval, vocabSize);
  const skipped = skipUntrainable(data, o);
  if (skipped) warn(skipped);
  // A loop, not Math.max(...): spreading 100k+ lengths would overflow the call stack.
  let longest = 1;
  let tokens = 0;
  for (const e of [...data.train, ...data.eval]) {
    longest = Math.max(longest, e.inputIds.length);
    tokens += e.inputIds.length;
  }
  return { tok, data, seqLength: o.packing ? o.maxLength : Math.min(o.maxLength, longest), tokens };
}
