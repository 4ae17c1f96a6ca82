/**
 * Writes a tiny but real byte-level BPE tokenizer folder (GPT-2 style, as Llama 3 / Qwen2 use):
 * 256 byte tokens (id = byte value), a few optional merges, special tokens, a TemplateProcessing
 * post-processor that adds BOS, and a ChatML-like chat template. Every UTF-8 string encodes and
 * decodes back exactly, so tests and demos need no download.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from '../io/atomic';

/** GPT-2's reversible byte -> printable character table (bytes that print as themselves keep their code point). */
export function byteLevelAlphabet(): string[] {
  const table = new Array<string>(256);
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 256;
  for (let b = 0; b < 256; b++) table[b] = String.fromCodePoint(printable(b) ? b : next++);
  return table;
}

export const BYTE_TOKENIZER_SPECIALS = ['<|bos|>', '<|eos|>', '<|pad|>', '<|im_start|>', '<|im_end|>'] as const;

/** Merges over byte-level symbols ("Ġ" is a space): enough to exercise multi-byte tokens. */
export const DEFAULT_BYTE_MERGES: ReadonlyArray<readonly [string, string]> = [
  ['Ġ', 't'],
  ['h', 'e'],
  ['Ġt', 'he'],
  ['i', 'n'],
  ['e', 'r'],
  ['Ġ', 'a'],
];

/** ChatML with a leading BOS, the shape of Qwen2's and SmolLM2's templates. */
export const BYTE_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

export interface ByteTokenizerOptions {
  /** BPE merges in byte-level symbols, applied in order. Defaults to `DEFAULT_BYTE_MERGES`; `[]` gives a pure byte tokenizer. */
  merges?: ReadonlyArray<readonly [string, string]>;
  /** Jinja chat template; `null` writes none. Defaults to `BYTE_CHAT_TEMPLATE`. */
  chatTemplate?: string | null;
}

export interface ByteTokenizerInfo {
  vocabSize: number;
  bosId: number;
  eosId: number;
  padId: number;
  imStartId: number;
  imEndId: number;
}

/** Writes tokenizer.json and tokenizer_config.json into `dir` (created if needed). */
export function writeByteTokenizer(dir: string, opts: ByteTokenizerOptions = {}): ByteTokenizerInfo {
  const merges = opts.merges ?? DEFAULT_BYTE_MERGES;
  const chatTemplate = opts.chatTemplate === undefined ? BYTE_CHAT_TEMPLATE : opts.chatTemplate;
  const vocab: Record<string, number> = {};
  byteLevelAlphabet().forEach((ch, b) => (vocab[ch] = b));
  let nextId = 256;
  for (const [a, b] of merges) {
    if (!(a in vocab) || !(b in vocab)) throw new Error(`merge ${a} ${b}: both sides must already be tokens`);
    if (!(a + b in vocab)) vocab[a + b] = nextId++;
  }
  const ids = BYTE_TOKENIZER_SPECIALS.map(() => nextId++);
  const [bosId, eosId, padId, imStartId, imEndId] = ids;
  const addedTokens = BYTE_TOKENIZER_SPECIALS.map((content, i) => ({
    id: ids[i],
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const bos = { SpecialToken: { id: '<|bos|>', type_id: 0 } };
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: {
      type: 'TemplateProcessing',
      single: [bos, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [bos, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|bos|>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<|bos|>': { id: '<|bos|>', ids: [bosId], tokens: ['<|bos|>'] } },
    },
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: merges.map(([a, b]) => [a, b]),
    },
  };
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const t of addedTokens) addedTokensDecoder[String(t.id)] = { ...t, id: undefined };
  const tokenizerConfig: Record<string, unknown> = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: '<|bos|>',
    eos_token: '<|eos|>',
    pad_token: '<|pad|>',
    unk_token: null,
    additional_special_tokens: ['<|im_start|>', '<|im_end|>'],
    add_bos_token: true,
    clean_up_tokenization_spaces: false,
    model_max_length: 2048,
    added_tokens_decoder: addedTokensDecoder,
  };
  if (chatTemplate !== null) tokenizerConfig.chat_template = chatTemplate;
  fs.mkdirSync(dir, { recursive: true });
  writeFileAtomic(path.join(dir, 'tokenizer.json'), [JSON.stringify(tokenizerJson, null, 2)]);
  writeFileAtomic(path.join(dir, 'tokenizer_config.json'), [JSON.stringify(tokenizerConfig, null, 2)]);
  return { vocabSize: nextId, bosId, eosId, padId, imStartId, imEndId };
}
