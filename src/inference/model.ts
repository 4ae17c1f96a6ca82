/**
 * loadModel(): a Hugging Face model folder ready for generation, with its tokenizer when the
 * folder has one. `generate` takes text or token ids and an optional adapter (a PEFT folder or
 * a loaded adapter of any method).
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadTokenizer, Tokenizer } from '../data/tokenizer';
import { PeftkitError } from '../errors';
import type { PeftMethod } from '../peft/method';
import { loadAdapter } from '../peft/registry';
import type { DeviceOption } from '../tensor';
import type { ModelConfig } from '../model/config';
import { readGenerationEosIds } from '../model/generation_config';
import { LlamaModel } from '../model/llama';
import { IncrementalText } from './incremental_text';
import { DEFAULT_MAX_NEW_TOKENS, generateTokens, GenerateOptions } from '../model/llama_generate';

export interface LoadOptions {
  /** Where the weights live and the math runs. Defaults to `'cpu'`. */
  device?: DeviceOption;
  /**
   * 'bf16': the frozen Linear weights, embeddings and lm_head are stored in bf16 and the Linear and
   * LM-head products run in bf16 with f32 sums, as PyTorch's bf16 autocast (see LlamaModel.load).
   * Defaults to `'f32'`.
   */
  dtype?: 'f32' | 'bf16';
  /** Quantize the decoder Linear weights at load (see LlamaModel.load). Defaults to none. */
  quantize?: 'nf4' | 'fp4' | 'int8';
  /** LLM.int8 outlier threshold of an int8 base (see LoadModelOptions.int8Threshold). Defaults to none (dequantized-weight products). */
  int8Threshold?: number;
}

export interface ModelGenerateOptions extends Omit<GenerateOptions, 'adapter'> {
  /** A PEFT adapter folder or a loaded adapter to apply. Defaults to none. */
  adapter?: string | PeftMethod | null;
  /** Render a text prompt through the chat template as one user message. Defaults to `false`. */
  chat?: boolean;
}

export interface Generation {
  /** The generated text (empty when the model has no tokenizer). */
  text: string;
  /** The generated token ids (without the prompt). */
  ids: number[];
}

/** One generated token and the text it adds to the generation so far. */
export interface GenerationPiece {
  /** The token id. */
  id: number;
  /**
   * The text this token adds: '' for a stop token, and while a token ends inside a character
   * (its bytes come with a later token's piece). The pieces joined are the Generation's text.
   */
  text: string;
}

export class Model {
  readonly llama: LlamaModel;
  readonly tokenizer: Tokenizer | null;
  // Adapters loaded from folders, with the state of their files when loaded.
  private readonly adapters = new Map<string, { adapter: PeftMethod; stamp: string }>();

  constructor(llama: LlamaModel, tokenizer: Tokenizer | null) {
    this.llama = llama;
    this.tokenizer = tokenizer;
  }

  get config(): ModelConfig {
    return this.llama.config;
  }

  private adapterFor(a: ModelGenerateOptions['adapter']): PeftMethod | null {
    if (!a) return null;
    if (typeof a !== 'string') return a;
    const key = path.resolve(a);
    // A folder written again (training on into it, an atomic save: a new inode) is read again.
    const stamp = ['adapter_config.json', 'adapter_model.safetensors']
      .map((f) => {
        try {
          const st = fs.statSync(path.join(key, f));
          return `${st.ino}:${st.size}:${st.mtimeMs}`;
        } catch {
          return '-';
        }
      })
      .join('|');
    const cached = this.adapters.get(key);
    if (cached && cached.stamp === stamp) return cached.adapter;
    const adapter = loadAdapter(a, this.llama.config, { device: this.llama.device });
    cached?.adapter.dispose();
    this.adapters.set(key, { adapter, stamp });
    return adapter;
  }

  /**
   * Continues a prompt (text, or token ids) with a KV cache. Synchronous: it blocks the calling
   * thread until the last token (AsyncModel.generate, from loadModelAsync, does not).
   */
  generate(prompt: string | readonly number[], o: ModelGenerateOptions = {}): Generation {
    const it = this.stream(prompt, o, false);
    for (let r = it.next(); ; r = it.next()) if (r.done) return r.value;
  }

  /**
   * generate() one token at a time: yields each token as it is sampled with the text it adds
   * (see GenerationPiece), and returns the whole Generation. Synchronous like generate(); a
   * `return()` (or a `break` out of a for-of) stops generation and frees its cache. With
   * `withText` false the pieces' texts are '' (nothing decoded per token; the returned
   * Generation still has its text). Defaults to `true`.
   */
  *stream(prompt: string | readonly number[], o: ModelGenerateOptions = {}, withText = true): Generator<GenerationPiece, Generation, undefined> {
    const ids = this.promptIds(prompt, o);
    const stopTokens = o.stopTokens ?? this.eosIds();
    const maxNew = o.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
    const text = withText && this.tokenizer ? new IncrementalText((t) => this.decodeGenerated(t, stopTokens)) : null;
    const out: number[] = [];
    for (const id of generateTokens(this.llama, ids, { ...o, stopTokens, adapter: this.adapterFor(o.adapter) })) {
      out.push(id);
      yield { id, text: text ? text.push(id, stopTokens.includes(id) || out.length === maxNew) : '' };
    }
    return { text: this.decodeGenerated(out, stopTokens), ids: out };
  }

  private decodeGenerated(ids: number[], stopTokens: readonly number[]): string {
    return this.tokenizer ? this.tokenizer.decode(ids.filter((t) => !stopTokens.includes(t)), { skipSpecialTokens: true }) : '';
  }

  private promptIds(prompt: string | readonly number[], o: ModelGenerateOptions): number[] {
    if (typeof prompt !== 'string') return [...prompt];
    if (!this.tokenizer) throw new PeftkitError('E_MISSING', `${this.llama.dir}: no tokenizer.json, so a text prompt cannot be encoded (pass token ids)`);
    const ids = o.chat
      ? this.tokenizer.encode(this.tokenizer.applyChatTemplate([{ role: 'user', content: prompt }], { addGenerationPrompt: true }), { addSpecialTokens: false })
      : this.tokenizer.encode(prompt);
    const tokFile = path.join(this.llama.dir, 'tokenizer.json');
    if (ids.length === 0) throw new PeftkitError('E_ARG', `generate: the prompt encodes to no tokens with ${tokFile} (an empty prompt, or a tokenizer without a BOS)`);
    const outside = ids.find((id) => !(id >= 0 && id < this.config.vocabSize));
    if (outside !== undefined) {
      throw new PeftkitError('E_CONFIG', `${tokFile}: encodes the prompt to token id ${outside}, outside the model's vocabulary [0, ${this.config.vocabSize}) from config.json`);
    }
    return ids;
  }

  /**
   * Where generation stops by default: every end-of-sequence id the folder names, in the
   * tokenizer (eos_token), config.json and generation_config.json (a list for chat models:
   * Llama 3.x Instruct ends its turns with <|eot_id|>, which its base eos_token is not). As
   * MLX-LM does; transformers reads generation_config.json, falling back to config.json.
   */
  eosIds(): number[] {
    const ids = [this.tokenizer?.eosId ?? null, this.config.eosTokenId, readGenerationEosIds(this.llama.dir)].flat();
    return [...new Set(ids.filter((x): x is number => typeof x === 'number'))];
  }

  dispose(): void {
    for (const a of this.adapters.values()) a.adapter.dispose();
    this.adapters.clear();
    this.llama.dispose();
  }
}

/**
 * Loads a LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM folder (and its tokenizer).
 * Synchronous: it blocks the calling thread while the weights are read (loadModelAsync does not).
 */
export function loadModel(dir: string, o: LoadOptions = {}): Model {
  const llama = LlamaModel.load(dir, o);
  const tokenizer = fs.existsSync(path.join(dir, 'tokenizer.json')) ? loadTokenizer(dir) : null;
  return new Model(llama, tokenizer);
}
