/**
 * A Hugging Face tokenizer folder (`tokenizer.json` + `tokenizer_config.json`) through the pure-JS
 * port of HF tokenizers, with the chat template rendered by @huggingface/jinja the way
 * transformers' apply_chat_template does.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { PeftkitError } from '../errors';
import { readRegularFile } from '../io/regular_file';
import { renderTemplate } from './chat_template';
import { regexBacktrackingRisk, tokenizerRegexes } from './regex_safety';
import type { ChatMessage } from './rows';

type Json = Record<string, unknown>;

export interface EncodeTextOptions {
  /** Add the special tokens of the tokenizer's post-processor (BOS for Llama-style tokenizers). Defaults to `true`. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, PAD, chat markers) from the text. Defaults to `false`. */
  skipSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** Append the header that opens an assistant turn, as for generation. Defaults to `false`. */
  addGenerationPrompt?: boolean;
  /** Tool definitions, passed to the template as `tools`. Defaults to none. */
  tools?: unknown[] | null;
}

function readJson(file: string, what: string): Json {
  let text: string;
  try {
    text = readRegularFile(file);
  } catch (e) {
    if (e instanceof PeftkitError) throw e;
    throw new PeftkitError('E_IO', `${file}: cannot read ${what} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new PeftkitError('E_CONFIG', `${file}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PeftkitError('E_CONFIG', `${file}: expected a JSON object`);
  return v as Json;
}

/** Special tokens are written as a string or (older files) as an AddedToken object {content, ...}. */
function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

/** The template named "default" when tokenizer_config.json holds the list-of-{name, template} form. */
function pickChatTemplate(v: unknown, file: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const names = v.map((t) => (t as Json)?.name);
    const def = v.find((t) => (t as Json)?.name === 'default') as Json | undefined;
    if (!def || typeof def.template !== 'string') {
      throw new PeftkitError('E_CONFIG', `${file}: chat_template is a list without a "default" entry (names: ${names.map((n) => JSON.stringify(n)).join(', ')}), expected one named "default"`);
    }
    return def.template;
  }
  throw new PeftkitError('E_CONFIG', `${file}: chat_template is ${typeof v}, expected a string or a list of {name, template}`);
}

/** A loaded tokenizer: encode/decode, special token ids, chat template. */
export class Tokenizer {
  readonly dir: string;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  /** pad_token as configured; `padId` falls back to EOS when it is null. */
  readonly padToken: string | null;
  readonly bosId: number | null;
  readonly eosId: number | null;
  /** The id batches are padded with: pad_token's, else EOS's (what HF trainers set), else null. */
  readonly padId: number | null;
  /** Number of ids the tokenizer can produce (model vocab + added tokens). */
  readonly vocabSize: number;
  /** The Jinja source of the chat template, or null when the tokenizer has none. */
  readonly chatTemplate: string | null;
  private readonly hf: HfTokenizer;
  private readonly template: Template | null;
  private readonly templateVars: Json;
  /** Where the chat template was read from, for messages. */
  private readonly templateFile: string;

  constructor(
    tokenizerJson: Json, tokenizerConfig: Json, opts: { dir?: string; chatTemplate?: string | null; chatTemplateFile?: string; specialTokensMap?: Json } = {},
  ) {
    this.dir = opts.dir ?? '';
    const cfgFile = path.join(this.dir, 'tokenizer_config.json');
    const map = opts.specialTokensMap ?? {};
    const special = (key: string) => tokenContent(tokenizerConfig[key]) ?? tokenContent(map[key]);
    this.bosToken = special('bos_token');
    this.eosToken = special('eos_token');
    this.padToken = special('pad_token');
    const config: Json = { ...tokenizerConfig };
    for (const k of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
      const c = special(k);
      if (c !== null) config[k] = c;
      else delete config[k];
    }
    // The library runs these with JavaScript's backtracking engine, which nothing can interrupt.
    for (const { where, pattern } of tokenizerRegexes(tokenizerJson)) {
      const why = regexBacktrackingRisk(pattern);
      if (why) throw new PeftkitError('E_CONFIG', `${path.join(this.dir, 'tokenizer.json')}: ${where}.Regex ${JSON.stringify(pattern)} is refused: ${why}`);
    }
    checkTokenIds(tokenizerJson, path.join(this.dir, 'tokenizer.json'));
    try {
      this.hf = new HfTokenizer({ ...tokenizerJson, added_tokens: tokenizerJson.added_tokens ?? [] }, config);
    } catch (e) {
      throw new PeftkitError('E_CONFIG', `${path.join(this.dir, 'tokenizer.json')}: cannot build the tokenizer (${(e as Error).message})`);
    }
    const id = (key: string, token: string | null): number | null => {
      if (token === null) return null;
      const v = this.hf.token_to_id(token);
      if (v === undefined) throw new PeftkitError('E_CONFIG', `${cfgFile}: ${key} ${JSON.stringify(token)} is not in the vocabulary of tokenizer.json`);
      return v;
    };
    this.bosId = id('bos_token', this.bosToken);
    this.eosId = id('eos_token', this.eosToken);
    this.padId = id('pad_token', this.padToken) ?? this.eosId;
    this.vocabSize = this.guard('list its vocabulary', () => this.hf.get_vocab(true).size);
    // A probe, so that a damaged pipeline fails at load rather than in the middle of a dataset.
    // Decoding known ids rather than encode's output: a vocabulary without "a" and without an
    // unk token (characters, DNA) is a working tokenizer that cannot encode the probe text.
    this.guard('encode text', () => this.hf.encode('a b', { add_special_tokens: true }));
    this.decode(Array.from({ length: Math.min(this.vocabSize, 4) }, (_, i) => i));

    this.chatTemplate = opts.chatTemplate !== undefined ? opts.chatTemplate : pickChatTemplate(tokenizerConfig.chat_template, cfgFile);
    this.templateFile = opts.chatTemplateFile ?? cfgFile;
    this.template = null;
    if (this.chatTemplate !== null) {
      try {
        this.template = new Template(this.chatTemplate);
      } catch (e) {
        throw new PeftkitError('E_CONFIG', `${this.templateFile}: chat_template does not parse (${(e as Error).message})`);
      }
    }
    // What transformers hands every template besides messages: the special tokens by name.
    this.templateVars = {};
    for (const k of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
      const c = special(k);
      if (c !== null) this.templateVars[k] = c;
    }
  }

  /** Token ids of `text`. */
  encode(text: string, opts: EncodeTextOptions = {}): number[] {
    const ids = this.guard('encode text', () => this.hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids);
    // The library yields undefined for a piece outside a vocabulary that has no unk token
    // (where the Rust tokenizers raise "missing unk token").
    if (ids.some((id) => !Number.isInteger(id))) {
      throw new PeftkitError('E_DATA', `${path.join(this.dir, 'tokenizer.json')}: ${JSON.stringify(text.length > 40 ? text.slice(0, 40) + '…' : text)} has pieces outside the vocabulary, and the tokenizer has no unk token to map them to`);
    }
    return ids;
  }

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    if (ids.length === 0) return '';
    return this.guard('decode ids', () => this.hf.decode(Array.from(ids), { skip_special_tokens: opts.skipSpecialTokens ?? false }));
  }

  /**
   * The tokenizer library builds from a damaged tokenizer.json without complaint and fails only
   * when used, with a TypeError: such failures name the file instead.
   */
  private guard<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof PeftkitError) throw e;
      throw new PeftkitError('E_CONFIG', `${path.join(this.dir, 'tokenizer.json')}: the tokenizer cannot ${what} (${(e as Error).message}); is the file damaged?`);
    }
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  /**
   * Renders a conversation with the chat template (as text: encode it with
   * `addSpecialTokens: false`, since templates write their own BOS). The template's
   * `raise_exception(msg)` becomes a PeftkitError('E_DATA') carrying msg.
   */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
    if (this.template === null) {
      throw new PeftkitError(
        'E_CONFIG',
        `${path.join(this.dir, 'tokenizer_config.json')}: no chat_template (nor chat_template.jinja), needed for "messages" rows; use a chat model's tokenizer or "text"/"prompt","completion" rows`,
      );
    }
    try {
      return renderTemplate(this.template, {
        ...this.templateVars,
        messages,
        add_generation_prompt: opts.addGenerationPrompt ?? false,
        // transformers passes these as None when absent; templates test `tools is not none`.
        tools: opts.tools ?? null,
        documents: null,
      }, this.templateFile);
    } catch (e) {
      if (e instanceof PeftkitError) throw e;
      throw new PeftkitError('E_DATA', `chat template failed: ${(e as Error).message} (the template of ${this.templateFile})`);
    }
  }
}

/**
 * Loads `<dir>/tokenizer.json` and `<dir>/tokenizer_config.json` (both required). Special tokens
 * missing from the config are looked up in special_tokens_map.json; a config without
 * chat_template takes `chat_template.jinja` when present (how newer transformers save it).
 */
export function loadTokenizer(dir: string): Tokenizer {
  const tokJson = readJson(path.join(dir, 'tokenizer.json'), 'the tokenizer (peftkit needs the fast-tokenizer file tokenizer.json)');
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfg = readJson(cfgFile, 'the tokenizer config');
  const mapFile = path.join(dir, 'special_tokens_map.json');
  const specialTokensMap = fs.existsSync(mapFile) ? readJson(mapFile, 'the special tokens map') : {};
  let chatTemplate = pickChatTemplate(cfg.chat_template, cfgFile);
  let chatTemplateFile = cfgFile;
  const jinjaFile = path.join(dir, 'chat_template.jinja');
  if (chatTemplate === null && fs.existsSync(jinjaFile)) {
    try {
      chatTemplate = readRegularFile(jinjaFile);
    } catch (e) {
      if (e instanceof PeftkitError) throw e;
      throw new PeftkitError('E_IO', `${jinjaFile}: cannot read the chat template (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    chatTemplateFile = jinjaFile;
  }
  return new Tokenizer(tokJson, cfg, { dir, chatTemplate, chatTemplateFile, specialTokensMap });
}

/**
 * Token ids above any real vocabulary (the largest released ones hold ~10^6): the tokenizer
 * library sizes its tables by the largest id, so one id of 2^31 in a damaged file took 106 s to
 * build (2^24: under a second).
 */
const MAX_TOKEN_ID = 2 ** 24;

/** Refuses ids in added_tokens and in the model's vocab that are not integers in [0, MAX_TOKEN_ID). */
function checkTokenIds(tokenizerJson: Json, file: string): void {
  const check = (id: unknown, where: string) => {
    if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= MAX_TOKEN_ID) {
      throw new PeftkitError('E_CONFIG', `${file}: ${where} is ${JSON.stringify(id)}, expected a token id: an integer from 0 to ${MAX_TOKEN_ID - 1}`);
    }
  };
  const added = tokenizerJson.added_tokens;
  if (Array.isArray(added)) added.forEach((t, i) => { if (t && typeof t === 'object') check((t as Json).id, `added_tokens.${i}.id`); });
  const vocab = (tokenizerJson.model as Json | undefined)?.vocab;
  // BPE and WordPiece map token → id; Unigram's vocab is a list whose ids are positions.
  if (vocab && typeof vocab === 'object' && !Array.isArray(vocab)) {
    for (const [token, id] of Object.entries(vocab as Json)) check(id, `model.vocab[${JSON.stringify(token)}]`);
  }
}
