/**
 * Row -> {inputIds, labels}. Labels follow Hugging Face's convention: same length as inputIds,
 * not shifted (the loss predicts labels[t] from position t-1), -100 where no loss is taken.
 */
import { PeftkitError } from '../errors';
import { IGNORE_INDEX, where } from './rows';
import type { ChatMessage, DataRow, RowSource } from './rows';
import type { Tokenizer } from './tokenizer';

export interface EncodeOptions {
  /** Longest example in tokens; longer ones are cut keeping the start (HF's default truncation side). Defaults to no limit. */
  maxLength?: number;
  /**
   * prompt/completion rows (plain and conversational): no loss on the prompt tokens, as TRL's
   * `completion_only_loss`. `false` trains on prompt and completion. Defaults to `true`.
   */
  maskPrompt?: boolean;
  /**
   * messages rows: loss only on assistant turns (each turn's content and the end-of-turn markup
   * the template writes after it), as TRL's `assistant_only_loss` / MLX-LM's `mask_prompt`.
   * `false` trains on the whole rendered conversation. Defaults to `true`.
   */
  assistantOnly?: boolean;
}

/** One encoded row. */
export interface Example {
  inputIds: number[];
  labels: number[];
  source: RowSource;
  /** The row was longer than maxLength and was cut. */
  truncated: boolean;
}

/** Pieces of text encoded one after the other; `train` says whether their tokens get labels. */
interface Piece {
  ids: number[];
  train: boolean;
}

function concat(pieces: Piece[]): { inputIds: number[]; labels: number[] } {
  const inputIds: number[] = [];
  const labels: number[] = [];
  for (const p of pieces) {
    for (const id of p.ids) {
      inputIds.push(id);
      labels.push(p.train ? id : IGNORE_INDEX);
    }
  }
  return { inputIds, labels };
}

function needEos(tok: Tokenizer): number {
  if (tok.eosId === null) throw new PeftkitError('E_CONFIG', `${tok.dir}: the tokenizer has no eos_token, needed to end text and completion rows`);
  return tok.eosId;
}

function withEos(ids: number[], eos: number): number[] {
  return ids.length > 0 && ids[ids.length - 1] === eos ? ids : [...ids, eos];
}

const startsWith = (ids: readonly number[], prefix: readonly number[]) => prefix.length <= ids.length && prefix.every((id, i) => ids[i] === id);

/**
 * `text`'s ids as they follow `prefixText` (encoded as `prefixIds`): the tail of the encoding of
 * prefixText + text when that starts with prefixIds, as TRL tokenizes a prompt and its
 * completion together. Encoded alone, a text may differ from how it reads after its prefix: a
 * SentencePiece-style tokenizer (Llama 2, Mistral, TinyLlama: a "▁" prepended to every input)
 * would put an extra "▁" token at its start, which the model would then learn to emit. When a
 * token merges across the boundary (the prefix's ids are not a prefix of the whole's), the text
 * is encoded alone, so the labels stay exactly on it.
 */
function continuation(tok: Tokenizer, prefixText: string, prefixIds: readonly number[], text: string, addSpecialTokens: boolean): number[] {
  const whole = tok.encode(prefixText + text, { addSpecialTokens });
  if (startsWith(whole, prefixIds)) return whole.slice(prefixIds.length);
  return tok.encode(text, { addSpecialTokens: false });
}

/**
 * Splits a rendered conversation at the boundaries of the trained spans and encodes it. A span
 * [start, end) is given by two renderings that must be prefixes of the full one: the
 * conversation before the trained turn(s) with the generation prompt, and through them. The ids
 * are those of the whole conversation, as at inference: the pieces encoded on their own when
 * they add up to it (the usual case), else the whole text's ids cut where the encodings of its
 * prefixes end (a SentencePiece-style tokenizer prepends "▁" to each piece encoded alone). If a
 * token merges across a boundary, the pieces encoded on their own are kept, which keeps the
 * labels exactly on the trained text.
 */
function encodeSpans(tok: Tokenizer, full: string, spans: Array<[string, string]>): Piece[] {
  const cuts: Array<{ at: number; train: boolean }> = [];
  let at = 0;
  for (const [before, through] of spans) {
    if (!full.startsWith(before) || !full.startsWith(through) || before.length < at || through.length < before.length) {
      throw new PeftkitError(
        'E_DATA',
        'the chat template does not render the conversation up to a trained turn as a prefix of the whole conversation ' +
          '(templates that rewrite earlier turns, e.g. drop past reasoning, do), so the trained tokens cannot be located; ' +
          'expected a prefix-stable template, or set assistantOnly/maskPrompt to false to train on everything',
      );
    }
    cuts.push({ at: before.length, train: false }, { at: through.length, train: true });
    at = through.length;
  }
  cuts.push({ at: full.length, train: false });
  const encode = (from: number, to: number) => tok.encode(full.slice(from, to), { addSpecialTokens: false });
  let start = 0;
  const piecewise: Piece[] = [];
  for (const c of cuts) {
    if (c.at > start) piecewise.push({ ids: encode(start, c.at), train: c.train });
    start = Math.max(start, c.at);
  }
  const whole = encode(0, full.length);
  // The usual case (byte-level tokenizers, boundaries at special tokens or newlines): the pieces
  // are the whole text's tokens already.
  if (startsWith(whole, piecewise.flatMap((p) => p.ids)) && whole.length === piecewise.reduce((n, p) => n + p.ids.length, 0)) return piecewise;
  const pieces: Piece[] = [];
  let from = 0;
  let fromToken = 0;
  for (const cut of cuts) {
    if (cut.at <= from) continue;
    const upTo = cut.at === full.length ? whole : encode(0, cut.at);
    // A token spans this boundary: keep the pieces encoded on their own.
    if (!startsWith(whole, upTo) || upTo.length < fromToken) return piecewise;
    pieces.push({ ids: whole.slice(fromToken, upTo.length), train: cut.train });
    from = cut.at;
    fromToken = upTo.length;
  }
  return pieces;
}

/**
 * A row made ready to encode: its text (for chats, the rendered conversation and the trained
 * spans located in it, each [render(messages[:from], generation prompt), render(messages[:to])]
 * as in MLX-LM / TRL: a turn's content plus the end-of-turn markup after it; null spans train on
 * everything). Encoding can then be asked for the text's first `limit` characters only.
 */
type Prepared =
  | { kind: 'text'; text: string }
  | { kind: 'prompt_completion'; prompt: string; completion: string; maskPrompt: boolean }
  | { kind: 'chat'; full: string; spans: Array<[string, string]> | null }
  | { kind: 'tokens'; inputIds: number[]; labels: number[] };

function renderChat(tok: Tokenizer, messages: ChatMessage[], tools: unknown[] | null, trained: Array<[number, number]> | null): Prepared {
  const render = (upTo: number, addGenerationPrompt: boolean) =>
    tok.applyChatTemplate(messages.slice(0, upTo), { addGenerationPrompt, tools });
  const full = render(messages.length, false);
  const spans = trained === null ? null : trained.map(([from, to]): [string, string] => [render(from, true), render(to, false)]);
  return { kind: 'chat', full, spans };
}

function prepare(row: DataRow, tok: Tokenizer, opts: EncodeOptions): Prepared {
  switch (row.kind) {
    case 'text':
      return { kind: 'text', text: row.text };
    case 'prompt_completion':
      return { kind: 'prompt_completion', prompt: row.prompt, completion: row.completion, maskPrompt: opts.maskPrompt !== false };
    case 'chat_prompt_completion': {
      const messages = [...row.prompt, ...row.completion];
      return renderChat(tok, messages, row.tools, opts.maskPrompt === false ? null : [[row.prompt.length, messages.length]]);
    }
    case 'messages': {
      // Each assistant message is its own span, so turn headers between two consecutive
      // assistant messages stay untrained. A chat without one trains on nothing.
      const trained: Array<[number, number]> = [];
      row.messages.forEach((m, i) => m.role === 'assistant' && trained.push([i, i + 1]));
      return renderChat(tok, row.messages, row.tools, opts.assistantOnly === false ? null : trained);
    }
    case 'tokens':
      return { kind: 'tokens', inputIds: row.inputIds.slice(), labels: (row.labels ?? row.inputIds).slice() };
  }
}

/** Characters of text a prepared row encodes. */
function preparedChars(p: Prepared): number {
  switch (p.kind) {
    case 'text': return p.text.length;
    case 'prompt_completion': return p.prompt.length + p.completion.length;
    case 'chat': return p.full.length;
    case 'tokens': return 0;
  }
}

/** The first `limit` characters of `s`, not splitting a surrogate pair. */
function head(s: string, limit: number): string {
  if (limit >= s.length) return s;
  const c = s.charCodeAt(limit - 1);
  return s.slice(0, c >= 0xd800 && c <= 0xdbff ? limit - 1 : limit);
}

/** Encodes the first `limit` characters of a prepared row's text (all of it for Infinity). */
function encodePrepared(p: Prepared, tok: Tokenizer, limit: number): { inputIds: number[]; labels: number[] } {
  switch (p.kind) {
    case 'text': {
      const ids = withEos(tok.encode(head(p.text, limit), { addSpecialTokens: true }), needEos(tok));
      return { inputIds: ids, labels: ids.slice() };
    }
    case 'prompt_completion': {
      const eos = needEos(tok);
      const promptText = head(p.prompt, limit);
      const prompt = tok.encode(promptText, { addSpecialTokens: true });
      const completion = withEos(continuation(tok, promptText, prompt, head(p.completion, Math.max(0, limit - p.prompt.length)), true), eos);
      return concat([
        { ids: prompt, train: !p.maskPrompt },
        { ids: completion, train: true },
      ]);
    }
    case 'chat': {
      // The spans are prefixes of the full text, so cut at the same place they stay prefixes.
      const full = head(p.full, limit);
      if (p.spans === null) return concat([{ ids: tok.encode(full, { addSpecialTokens: false }), train: true }]);
      const spans = full === p.full ? p.spans : p.spans.map(([a, b]): [string, string] => [head(a, full.length), head(b, full.length)]);
      return concat(encodeSpans(tok, full, spans));
    }
    case 'tokens':
      return { inputIds: p.inputIds, labels: p.labels };
  }
}

/**
 * Characters per token of maxLength that the first cut of a long row keeps. A token is a few
 * characters of text; the cut is doubled until the tokens before maxLength no longer change.
 */
const CUT_CHARS_PER_TOKEN = 8;
const CUT_MIN_CHARS = 4096;

const sameHead = (a: readonly number[], b: readonly number[], n: number) => {
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
};

/**
 * The row's encoding cut to `max` tokens, without encoding all of a long row: a 50 MB row was
 * tokenized whole (for minutes, and past the heap) to keep its first 64 tokens. The text is cut
 * to L = 8·max characters (at least 4096) and to 2L; when both encodings are longer than `max`
 * and agree on their first `max` ids and labels, the cut is past every token that matters (only
 * tokens near a cut depend on where it is) and that is the result; otherwise L doubles, up to
 * the whole text. So the result is the whole encoding's first `max` tokens, at a cost in
 * proportion to `max`, not to the row.
 */
function encodeTruncated(p: Prepared, tok: Tokenizer, max: number): { inputIds: number[]; labels: number[]; truncated: boolean } {
  const chars = preparedChars(p);
  let limit = Math.max(CUT_MIN_CHARS, CUT_CHARS_PER_TOKEN * max);
  let enc = limit * 2 < chars ? encodePrepared(p, tok, limit) : null;
  for (; enc !== null && limit * 4 < chars; limit *= 2) {
    const next = encodePrepared(p, tok, limit * 2);
    if (enc.inputIds.length > max && next.inputIds.length > max && sameHead(enc.inputIds, next.inputIds, max) && sameHead(enc.labels, next.labels, max)) break;
    enc = next;
  }
  if (enc === null || limit * 4 >= chars) enc = encodePrepared(p, tok, Infinity);
  const truncated = enc.inputIds.length > max;
  if (truncated) {
    enc.inputIds.length = max;
    enc.labels.length = max;
  }
  return { ...enc, truncated };
}

/** Encodes one row; errors name the row's file:line. */
export function encodeRow(row: DataRow, tok: Tokenizer, opts: EncodeOptions = {}): Example {
  if (opts.maxLength !== undefined && !(Number.isInteger(opts.maxLength) && opts.maxLength > 0)) {
    throw new PeftkitError('E_ARG', `maxLength is ${opts.maxLength}, expected a positive integer`);
  }
  try {
    const enc = encodeTruncated(prepare(row, tok, opts), tok, opts.maxLength ?? Infinity);
    return { inputIds: enc.inputIds, labels: enc.labels, source: row.source, truncated: enc.truncated };
  } catch (e) {
    if (e instanceof PeftkitError && e.code === 'E_DATA') throw new PeftkitError('E_DATA', `${where(row.source)}: ${e.message}`);
    if (e instanceof PeftkitError) throw new PeftkitError(e.code, `${e.message} (at ${where(row.source)})`);
    throw e;
  }
}

export function encodeRows(rows: readonly DataRow[], tok: Tokenizer, opts: EncodeOptions = {}): Example[] {
  return rows.map((r) => encodeRow(r, tok, opts));
}
