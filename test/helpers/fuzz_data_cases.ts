/**
 * Fuzz cases of training data files (JSONL and JSON arrays, every row shape, mixed): a valid
 * file is written from a seed, then damaged (fields retyped, ids huge or beyond the vocabulary,
 * labels of another length, BOM, CRLF, truncation, flipped bytes) and trained on for one step.
 */
import * as fs from 'fs';
import * as path from 'path';
import { runTraining } from '../../src/train/run';
import { flipBytes, FuzzRng, FuzzViolation, mutateJson, outcome } from './fuzz';
import { FuzzCase } from './fuzz_case';
import { writeTinyModel } from './fuzz_model_cases';

const VOCAB_NO_TOKENIZER = 40;

const word = (rng: FuzzRng) => rng.pick(['hello', 'world', 'Ünïcödé', '🙂', '', ' ', '\n', 'a b', '"quoted"', '\\', '\u0000', 'x'.repeat(30)]);

/** One valid row of a random shape (only pre-tokenized rows when the model has no tokenizer). */
function validRow(rng: FuzzRng, tokenizer: boolean, vocab: number): Record<string, unknown> {
  const ids = () => Array.from({ length: rng.int(1, 12) }, () => rng.int(0, vocab));
  const k = tokenizer ? rng.int(0, 6) : 5;
  if (k === 0) return { text: `${word(rng)} ${word(rng)}` };
  if (k === 1) return { prompt: word(rng), completion: word(rng) };
  if (k === 2) return { messages: [{ role: 'user', content: word(rng) }, { role: 'assistant', content: word(rng) }] };
  if (k === 3) return { prompt: [{ role: 'user', content: word(rng) }], completion: [{ role: 'assistant', content: word(rng) }] };
  if (k === 4) return { messages: [{ role: 'system', content: word(rng) }, { role: 'user', content: word(rng) }, { role: 'assistant', content: word(rng) }], tools: rng.chance(0.2) ? [] : null };
  const inputIds = ids();
  return rng.chance(0.5) ? { input_ids: inputIds } : { input_ids: inputIds, labels: inputIds.map((x) => (rng.chance(0.3) ? -100 : x)) };
}

/** One damage to a row object, aimed at the fields the reader checks. */
function damageRow(row: Record<string, unknown>, rng: FuzzRng, vocab: number): string {
  const k = rng.int(0, 8);
  const ids = Array.isArray(row.input_ids) ? (row.input_ids as number[]) : undefined;
  if (k < 3 && ids) {
    const i = rng.int(0, ids.length);
    ids[i] = rng.pick([vocab, vocab + 1, 2 ** 31, 2 ** 31 - 1, 2 ** 53, 1e300, -1, -100, 1.5, NaN, '5'] as number[]);
    return `input_ids[${i}] = ${JSON.stringify(ids[i])}`;
  }
  if (k < 5 && ids) {
    const labels = (row.labels as number[] | undefined) ?? [...ids];
    const r = rng.int(0, 4);
    if (r === 0) labels.push(1);
    else if (r === 1) labels.pop();
    else labels[rng.int(0, labels.length)] = rng.pick([vocab, 2 ** 31 - 1, 1e9, -1, -101, 0.5, null] as number[]);
    if (r === 3) row.labels = labels.map(() => -100);
    else row.labels = labels;
    return `labels = ${JSON.stringify(row.labels).slice(0, 60)}`;
  }
  return mutateJson(row, rng);
}

function serialize(rows: unknown[], rng: FuzzRng): string {
  if (rng.chance(0.25)) return JSON.stringify(rows, null, rng.chance(0.5) ? 2 : undefined);
  return rows.map((r) => JSON.stringify(r)).join('\n') + (rng.chance(0.8) ? '\n' : '');
}

const data: FuzzCase = {
  setup(dir) {
    writeTinyModel(path.join(dir, 'tok'), { tokenizer: true });
    writeTinyModel(path.join(dir, 'notok'));
  },
  run(rng, dir, log) {
    const tokenizer = rng.chance(0.6);
    const model = path.join(dir, tokenizer ? 'tok' : 'notok');
    const vocab = tokenizer ? (JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size : VOCAB_NO_TOKENIZER;
    const rows = Array.from({ length: rng.int(1, 7) }, () => validRow(rng, tokenizer, vocab));
    const file = path.join(dir, rng.chance(0.5) ? 'data.jsonl' : 'data.json');
    const what: string[] = [];
    const k = rng.int(0, 10);
    if (k < 6) {
      for (let n = rng.int(1, 3); n > 0; n--) {
        const i = rng.int(0, rows.length);
        what.push(`row ${i}: ${damageRow(rows[i], rng, vocab)}`);
      }
    } else if (k === 6) {
      rows.splice(rng.int(0, rows.length), 0, rng.pick<Record<string, unknown>>([{}, { conversations: [] }, { labels: [1] }, { text: 'a', input_ids: [1] }]));
      what.push('an odd row inserted');
    }
    let text = serialize(rows, rng);
    if (rng.chance(0.15)) {
      text = `\ufeff${text}`;
      what.push('BOM');
    }
    if (rng.chance(0.15)) {
      text = text.replace(/\n/g, '\r\n');
      what.push('CRLF');
    }
    const bytes = Buffer.from(text, 'utf8');
    if (k === 7) {
      what.push(flipBytes(bytes, 0, bytes.length, rng, rng.int(1, 4)));
      fs.writeFileSync(file, bytes);
    } else if (k === 8) {
      const cut = rng.int(0, bytes.length);
      fs.writeFileSync(file, bytes.subarray(0, cut));
      what.push(`cut at ${cut} of ${bytes.length}`);
    } else {
      fs.writeFileSync(file, rng.chance(0.03) ? '' : bytes);
    }
    log(`${path.basename(file)} (${tokenizer ? 'tokenizer' : 'pre-tokenized'}, ${rows.length} rows): ${what.join('; ') || 'valid'}`);
    const out = path.join(dir, 'out');
    let loss = NaN;
    const evalSplit = rng.chance(0.2) ? 0.3 : undefined;
    const got = outcome([path.basename(file)], () => {
      loss = runTraining({ model, data: file, out, steps: 1, batchSize: 2, maxLength: 24, evalSplit, packing: rng.chance(0.2) }).finalLoss;
    });
    if (got === 'ok' && !Number.isFinite(loss)) throw new FuzzViolation(`training succeeded with loss ${loss}`);
    if (got !== 'ok' && fs.existsSync(path.join(out, 'adapter_model.safetensors'))) throw new FuzzViolation('a failed run left an adapter in its output folder');
    return got;
  },
};

export const DATA_CASES: Record<string, FuzzCase> = { data };
