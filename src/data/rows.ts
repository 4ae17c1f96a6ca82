/**
 * Dataset rows as users write them for TRL and MLX-LM: a JSONL file (one object per line, blank
 * lines skipped) or a JSON array, each row one of
 *   {"text": "..."}                                   language modelling, loss on every token
 *   {"prompt": "...", "completion": "..."}            loss on the completion
 *   {"prompt": [messages], "completion": [messages]}  TRL's conversational prompt/completion
 *   {"messages": [{"role", "content"}, ...]}          chat, loss on assistant turns
 *   {"input_ids": [...], "labels"?: [...]}            pre-tokenized, labels -100 = ignored
 * Other keys (ids, metadata, attention_mask) are ignored, as TRL drops unused columns.
 *
 * Mixed shapes in one file are accepted: every row is encoded by its own shape. (TRL and MLX-LM
 * decide the format from the first row, so a mixed file fails there; here it just works.)
 *
 * A malformed row throws PeftkitError('E_DATA') whose message starts with `file:line` and says
 * what is wrong and what was expected; the first bad row stops the read.
 */
import { isUtf8 } from 'buffer';
import { PeftkitError } from '../errors';
import { readRegularFile } from '../io/regular_file';

/** Where a row came from; `line` is 1-based (for a JSON array: the line its element starts on). */
export interface RowSource {
  file: string;
  line: number;
}

export const CHAT_ROLES = ['system', 'user', 'assistant', 'tool'] as const;
export type ChatRole = (typeof CHAT_ROLES)[number];

/**
 * One chat turn. Extra keys (name, tool_calls, tool_call_id...) are kept and reach the chat
 * template. `content` is a string, or null / absent in an assistant turn that makes tool calls
 * (the OpenAI format), as the chat templates of tool-calling models expect.
 */
export interface ChatMessage {
  role: ChatRole;
  content: string | null;
  [extra: string]: unknown;
}

export interface TextRow {
  kind: 'text';
  text: string;
  source: RowSource;
}
export interface PromptCompletionRow {
  kind: 'prompt_completion';
  prompt: string;
  completion: string;
  source: RowSource;
}
/** TRL's conversational prompt/completion: the completion turns are what is trained on. */
export interface ChatPromptCompletionRow {
  kind: 'chat_prompt_completion';
  prompt: ChatMessage[];
  completion: ChatMessage[];
  tools: unknown[] | null;
  source: RowSource;
}
export interface MessagesRow {
  kind: 'messages';
  messages: ChatMessage[];
  /** Tool definitions passed to the chat template as `tools` (MLX-LM's "tools" key), or null. */
  tools: unknown[] | null;
  source: RowSource;
}
export interface TokensRow {
  kind: 'tokens';
  inputIds: number[];
  /** Same length as inputIds, -100 where no loss is taken; null means "train on input_ids". */
  labels: number[] | null;
  source: RowSource;
}
export type DataRow = TextRow | PromptCompletionRow | ChatPromptCompletionRow | MessagesRow | TokensRow;

export const IGNORE_INDEX = -100;

const SHAPES = 'one of {"text"}, {"prompt","completion"}, {"messages":[{"role","content"}...]} or {"input_ids":[...],"labels"?:[...]}';

export function where(source: RowSource): string {
  return `${source.file}:${source.line}`;
}

function bad(source: RowSource, what: string): never {
  throw new PeftkitError('E_DATA', `${where(source)}: ${what}`);
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  if (s === undefined) return String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function typeName(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

function parseMessages(v: unknown, key: string, source: RowSource): ChatMessage[] {
  if (!Array.isArray(v)) bad(source, `"${key}" is ${typeName(v)}, expected an array of {"role","content"} objects`);
  if (v.length === 0) bad(source, `"${key}" is empty, expected at least one {"role","content"} message`);
  return v.map((m, i) => {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) {
      bad(source, `${key}[${i}] is ${typeName(m)}, expected an object {"role","content"}`);
    }
    const msg = m as Record<string, unknown>;
    if (!CHAT_ROLES.includes(msg.role as ChatRole)) {
      bad(source, `${key}[${i}].role is ${show(msg.role)}, expected one of ${CHAT_ROLES.map((r) => `"${r}"`).join(', ')}`);
    }
    const toolCalls = Array.isArray(msg.tool_calls) && msg.tool_calls.length > 0;
    if (typeof msg.content !== 'string' && !(toolCalls && (msg.content === null || msg.content === undefined))) {
      bad(source, `${key}[${i}].content is ${typeName(msg.content)}, expected a string${msg.tool_calls !== undefined ? ' (or null beside a non-empty "tool_calls" list)' : ''}`);
    }
    return { ...msg } as ChatMessage;
  });
}

function parseTools(v: unknown, source: RowSource): unknown[] | null {
  if (v === undefined || v === null) return null;
  if (!Array.isArray(v)) bad(source, `"tools" is ${typeName(v)}, expected an array of tool definitions`);
  return v;
}

function parseIds(v: unknown, key: string, source: RowSource, allowIgnore: boolean): number[] {
  if (!Array.isArray(v)) bad(source, `"${key}" is ${typeName(v)}, expected an array of token ids`);
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    const ok = Number.isInteger(x) && ((x as number) >= 0 || (allowIgnore && x === IGNORE_INDEX)) && (x as number) <= 0x7fffffff;
    if (!ok) {
      const tooBig = Number.isInteger(x) && (x as number) > 0x7fffffff;
      bad(source, `${key}[${i}] is ${show(x)}, expected a non-negative integer token id${tooBig ? ' below 2^31' : ''}${allowIgnore ? ' or -100' : ''}`);
    }
  }
  return v as number[];
}

/** Checks one parsed JSON value and returns the typed row; `source` names it in errors. */
export function parseRow(value: unknown, source: RowSource): DataRow {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    bad(source, `row is ${typeName(value)}, expected a JSON object, ${SHAPES}`);
  }
  const o = value as Record<string, unknown>;
  const has = (k: string) => o[k] !== undefined;
  const present = ['text', 'prompt', 'completion', 'messages', 'input_ids'].filter(has);

  if (has('messages')) {
    if (present.length > 1) bad(source, `row has "messages" and ${present.filter((k) => k !== 'messages').map((k) => `"${k}"`).join(', ')}, expected only one of the row shapes`);
    return { kind: 'messages', messages: parseMessages(o.messages, 'messages', source), tools: parseTools(o.tools, source), source };
  }
  if (has('prompt') || has('completion')) {
    if (!has('prompt') || !has('completion')) {
      bad(source, `row has "${has('prompt') ? 'prompt' : 'completion'}" without "${has('prompt') ? 'completion' : 'prompt'}", expected both`);
    }
    if (present.length > 2) bad(source, `row has "prompt"/"completion" and ${present.filter((k) => k !== 'prompt' && k !== 'completion').map((k) => `"${k}"`).join(', ')}, expected only one of the row shapes`);
    if (Array.isArray(o.prompt) || Array.isArray(o.completion)) {
      return {
        kind: 'chat_prompt_completion',
        prompt: parseMessages(o.prompt, 'prompt', source),
        completion: parseMessages(o.completion, 'completion', source),
        tools: parseTools(o.tools, source),
        source,
      };
    }
    if (typeof o.prompt !== 'string') bad(source, `"prompt" is ${typeName(o.prompt)}, expected a string (or an array of messages)`);
    if (typeof o.completion !== 'string') bad(source, `"completion" is ${typeName(o.completion)}, expected a string`);
    return { kind: 'prompt_completion', prompt: o.prompt, completion: o.completion, source };
  }
  if (has('text')) {
    if (present.length > 1) bad(source, `row has "text" and ${present.filter((k) => k !== 'text').map((k) => `"${k}"`).join(', ')}, expected only one of the row shapes`);
    if (typeof o.text !== 'string') bad(source, `"text" is ${typeName(o.text)}, expected a string`);
    return { kind: 'text', text: o.text, source };
  }
  if (has('input_ids')) {
    const inputIds = parseIds(o.input_ids, 'input_ids', source, false);
    if (inputIds.length === 0) bad(source, '"input_ids" is empty, expected at least one token id');
    let labels: number[] | null = null;
    if (o.labels !== undefined && o.labels !== null) {
      labels = parseIds(o.labels, 'labels', source, true);
      if (labels.length !== inputIds.length) {
        bad(source, `"labels" has ${labels.length} entries but "input_ids" has ${inputIds.length}, expected the same length`);
      }
    }
    return { kind: 'tokens', inputIds, labels, source };
  }
  if (has('labels')) bad(source, 'row has "labels" without "input_ids", expected both');
  if (has('conversations')) {
    bad(source, 'row has "conversations" (ShareGPT format), expected "messages": [{"role","content"}...]; convert "from"/"value" to "role"/"content"');
  }
  const keys = Object.keys(o);
  return bad(source, `unknown row shape with keys ${keys.length ? keys.map((k) => `"${k}"`).join(', ') : '(none)'}, expected ${SHAPES}`);
}

function lineOf(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** Where each top-level element of the JSON array opening at `open` starts and ends (tolerant of broken elements). */
function arrayElementSpans(text: string, open: number): Array<{ line: number; start: number; end: number }> {
  const spans: Array<{ line: number; start: number; end: number }> = [];
  let line = lineOf(text, open);
  let depth = 0;
  let inString = false;
  let current: { line: number; start: number; end: number } | null = null;
  for (let i = open; i < text.length; i++) {
    const c = text[i];
    if (c === '\n') line++;
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (depth === 1 && current === null && c !== ',' && c !== ']' && !/\s/.test(c)) {
      current = { line, start: i, end: text.length };
      spans.push(current);
    }
    if (c === '"') inString = true;
    else if (c === '[' || c === '{') depth++;
    else if ((c === ',' && depth === 1) || ((c === ']' || c === '}') && --depth === 0)) {
      if (current) current.end = i;
      current = null;
      if (depth === 0) break;
    }
  }
  return spans;
}

/** The line of a JSON syntax error: the first element that does not parse alone, else V8's position. */
function jsonErrorAt(text: string, open: number, message: string): { line: number; message: string } {
  for (const span of arrayElementSpans(text, open)) {
    try {
      JSON.parse(text.slice(span.start, span.end));
    } catch (e) {
      return { line: span.line, message: (e as Error).message };
    }
  }
  const m = /position (\d+)/.exec(message);
  return { line: m ? lineOf(text, Number(m[1])) : 1, message };
}

/**
 * The longest row accepted, in characters of its JSON text (64 Mi): rows are cut to maxLength
 * tokens without being encoded whole, but a row is still read, parsed and (chats) rendered whole.
 */
export const MAX_ROW_CHARS = 64 * 1024 * 1024;

function checkRowSize(chars: number, source: RowSource): void {
  if (chars > MAX_ROW_CHARS) {
    bad(source, `the row is ${chars} characters long, over the limit of ${MAX_ROW_CHARS} (64 Mi) per row; split it into several rows`);
  }
}

/** Parses dataset text (JSONL or a JSON array, told apart by the first character); `file` names it in errors. */
export function parseRows(text: string, file: string): DataRow[] {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const first = text.search(/\S/);
  if (first >= 0 && text[first] === '[') {
    let values: unknown;
    try {
      values = JSON.parse(text);
    } catch (e) {
      const at = jsonErrorAt(text, first, (e as Error).message);
      throw new PeftkitError('E_DATA', `${file}:${at.line}: not valid JSON (${at.message}), expected a JSON array of row objects or JSONL`);
    }
    if (!Array.isArray(values)) throw new PeftkitError('E_DATA', `${file}:1: not valid JSON, expected a JSON array of row objects or JSONL`);
    const spans = arrayElementSpans(text, first);
    return values.map((v, i) => {
      const source = { file, line: spans[i]?.line ?? 1 };
      if (spans[i]) checkRowSize(spans[i].end - spans[i].start, source);
      return parseRow(v, source);
    });
  }
  const rows: DataRow[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i];
    if (raw.trim() === '') continue;
    const source = { file, line: i + 1 };
    checkRowSize(raw.length, source);
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (e) {
      bad(source, `not valid JSON (${(e as Error).message}), expected one JSON object per line`);
    }
    rows.push(parseRow(value, source));
  }
  return rows;
}

/**
 * The lines of `bytes` that are not valid UTF-8, as a warning naming `file` and them (at most 5
 * listed), or null. Only called when the whole file is not valid UTF-8, so valid files cost one
 * validation pass.
 */
function invalidUtf8Warning(bytes: Buffer, file: string): string | null {
  const lines: number[] = [];
  let line = 1;
  for (let start = 0; start < bytes.length; line++) {
    let end = bytes.indexOf(10, start);
    if (end < 0) end = bytes.length;
    if (!isUtf8(bytes.subarray(start, end))) lines.push(line);
    start = end + 1;
  }
  if (!lines.length) return null;
  const where = lines.slice(0, 5).map((l) => `${file}:${l}`).join(', ') + (lines.length > 5 ? ', ...' : '');
  return `${file}: ${lines.length} line${lines.length > 1 ? 's hold' : ' holds'} invalid UTF-8 (read with U+FFFD in place of the bad bytes): ${where}`;
}

/**
 * Reads a dataset file (JSONL or a JSON array). An empty file is an error: there is nothing to
 * train on. Bytes that are not UTF-8 are read as U+FFFD, as every JSON reader does; `warnings`,
 * when given, receives a message naming the file and the lines that hold them.
 */
export function readRows(file: string, warnings?: string[]): DataRow[] {
  let bytes: Buffer;
  try {
    bytes = readRegularFile(file, null);
  } catch (e) {
    if (e instanceof PeftkitError) throw e;
    throw new PeftkitError('E_IO', `${file}: cannot read dataset (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (warnings && !isUtf8(bytes)) {
    const w = invalidUtf8Warning(bytes, file);
    if (w) warnings.push(w);
  }
  const rows = parseRows(bytes.toString('utf8'), file);
  if (rows.length === 0) throw new PeftkitError('E_DATA', `${file}: no rows, expected JSONL (one JSON object per line) or a JSON array of rows`);
  return rows;
}
