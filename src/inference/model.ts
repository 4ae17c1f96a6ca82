/**
 * loadModelSync(): a Hugging Face model folder ready for generation, with its tokenizer when the
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
import { BatchGenerator } from '../model/batch_generate';

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
  /**
   * The adapter to apply: the name of one loaded with Model.loadAdapter, else a PEFT adapter folder
   * (read once, again when its files change), or a loaded adapter object. Defaults to none.
   */
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

/** An adapter loaded by name (Model.loadAdapter). */
export interface AdapterInfo {
  /** The name generate() takes as `adapter`. */
  name: string;
  /** The folder it was read from (absolute). */
  folder: string;
  /** adapter_config.json's peft_type ("LORA", "IA3", ...). */
  peftType: string;
}

/** One request of a batch: a prompt and its own generate options (adapter, seed, lengths...). */
export interface BatchGenerateRequest extends ModelGenerateOptions {
  /** Text, or token ids. */
  prompt: string | readonly number[];
}

/** A piece of one request of a batch. */
export interface BatchPiece extends GenerationPiece {
  /** The request's index in the batch. */
  index: number;
  /** On the request's last piece: its whole Generation (as generateBatch returns it). */
  generation?: Generation;
}

export class Model {
  readonly llama: LlamaModel;
  readonly tokenizer: Tokenizer | null;
  // Adapters loaded from folders given as `adapter`, with the state of their files when loaded.
  private readonly folderCache = new Map<string, { adapter: PeftMethod; stamp: string }>();
  private readonly named = new Map<string, { adapter: PeftMethod; folder: string }>();
  /** Generations running (a stream being read) per adapter: one unloaded meanwhile is disposed when they end. */
  private readonly inUse = new Map<PeftMethod, number>();
  private readonly retired = new Set<PeftMethod>();

  constructor(llama: LlamaModel, tokenizer: Tokenizer | null) {
    this.llama = llama;
    this.tokenizer = tokenizer;
  }

  get config(): ModelConfig {
    return this.llama.config;
  }

  /**
   * Loads the adapter folder `folder` (any method) under `name`, for generate(..., { adapter: name })
   * and generateBatch. The base weights are shared: an adapter adds only its own tensors. Throws
   * E_ARG when the name is taken (unload it first), and what loading the folder throws.
   */
  loadAdapter(name: string, folder: string): void {
    if (typeof name !== 'string' || name === '') throw new PeftkitError('E_ARG', `loadAdapter: name: expected a non-empty string, got ${JSON.stringify(name)}`);
    if (this.named.has(name)) throw new PeftkitError('E_ARG', `loadAdapter: an adapter named '${name}' is loaded (from ${this.named.get(name)!.folder}); unloadAdapter('${name}') first`);
    const adapter = loadAdapter(folder, this.llama.config, { device: this.llama.device });
    this.named.set(name, { adapter, folder: path.resolve(folder) });
  }

  /**
   * Frees the adapter `name` (its tensors; a generation still using it keeps it until it ends).
   * Throws E_ARG when no adapter has that name.
   */
  unloadAdapter(name: string): void {
    const entry = this.named.get(name);
    if (!entry) throw new PeftkitError('E_ARG', `unloadAdapter: no adapter named '${name}' is loaded (loaded: ${[...this.named.keys()].join(', ') || 'none'})`);
    this.named.delete(name);
    this.retire(entry.adapter);
  }

  /** The adapters loaded by name, in the order they were loaded. */
  adapters(): AdapterInfo[] {
    return [...this.named].map(([name, e]) => ({ name, folder: e.folder, peftType: e.adapter.peftType }));
  }

  /** Disposes `a` now, or when the last generation using it ends. */
  private retire(a: PeftMethod): void {
    if (this.inUse.has(a)) this.retired.add(a);
    else a.dispose();
  }

  /** Holds the adapters of a generation until `release` is called. */
  private hold(adapters: ReadonlyArray<PeftMethod | null>): () => void {
    const held = adapters.filter((a): a is PeftMethod => a !== null);
    for (const a of held) this.inUse.set(a, (this.inUse.get(a) ?? 0) + 1);
    return () => {
      for (const a of held) {
        const n = this.inUse.get(a)! - 1;
        if (n > 0) this.inUse.set(a, n);
        else {
          this.inUse.delete(a);
          if (this.retired.delete(a)) a.dispose();
        }
      }
    };
  }

  private adapterFor(a: ModelGenerateOptions['adapter']): PeftMethod | null {
    if (!a) return null;
    if (typeof a !== 'string') return a;
    const named = this.named.get(a);
    if (named) return named.adapter;
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
    const cached = this.folderCache.get(key);
    if (cached && cached.stamp === stamp) return cached.adapter;
    const adapter = loadAdapter(a, this.llama.config, { device: this.llama.device });
    if (cached) this.retire(cached.adapter);
    this.folderCache.set(key, { adapter, stamp });
    return adapter;
  }

  /**
   * Continues a prompt (text, or token ids) with a KV cache. Synchronous: it blocks the calling
   * thread until the last token (AsyncModel.generate, from loadModel, does not).
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
    const adapter = this.adapterFor(o.adapter);
    const release = this.hold([adapter]);
    try {
      for (const id of generateTokens(this.llama, ids, { ...o, stopTokens, adapter })) {
        out.push(id);
        yield { id, text: text ? text.push(id, stopTokens.includes(id) || out.length === maxNew) : '' };
      }
    } finally {
      release();
    }
    return { text: this.decodeGenerated(out, stopTokens), ids: out };
  }

  /**
   * Generates every request of `requests` together: each its own prompt, adapter (a name, a
   * folder, a loaded adapter, or none), sampling options, seed and length. Rows are prefilled one
   * by one, then decoded together one token a step — each Linear one product over the shared base
   * weights, each row's adapter term added to its rows — and leave the batch as they finish.
   * Each result is what generate() gives that request alone, up to f32 rounding (see
   * BatchGenerator). Adapters that change the norms, embeddings or LM head (LN tuning, full
   * fine-tuning, LoRA's modules_to_save) are refused with E_UNSUPPORTED naming the adapter.
   * Synchronous: it blocks the calling thread (AsyncModel.generateBatch does not).
   */
  generateBatch(requests: readonly BatchGenerateRequest[]): Generation[] {
    const it = this.streamBatch(requests, false);
    for (let r = it.next(); ; r = it.next()) if (r.done) return r.value;
  }

  /**
   * generateBatch() a step at a time: yields each row's token as it is sampled, with the request's
   * index, and returns the Generations in request order. A failing row (E_NAN) throws at once
   * unless `onError` takes it (the row then ends with the tokens it had and the batch goes on).
   * `isStopped(index)` is asked after every step: true ends that row there. `return()` frees every cache.
   */
  *streamBatch(
    requests: readonly BatchGenerateRequest[], withText = true,
    hooks: { onError?: (index: number, e: PeftkitError) => void; isStopped?: (index: number) => boolean } = {},
  ): Generator<BatchPiece, Generation[], undefined> {
    if (!Array.isArray(requests) || requests.length === 0) throw new PeftkitError('E_ARG', 'generateBatch: requests: expected a non-empty array of { prompt, ...options }');
    // Each adapter resolved once per batch: a folder rewritten between two rows' reads would
    // otherwise load a new copy and retire the one an earlier row already took.
    const resolved = new Map<string, PeftMethod | null>();
    const adapterOf = (a: ModelGenerateOptions['adapter']): PeftMethod | null => {
      if (typeof a !== 'string') return this.adapterFor(a);
      const key = this.named.has(a) ? `name:${a}` : `dir:${path.resolve(a)}`;
      if (!resolved.has(key)) resolved.set(key, this.adapterFor(a));
      return resolved.get(key)!;
    };
    const rows = requests.map((r, i) => {
      const { prompt, ...o } = r ?? ({} as BatchGenerateRequest);
      if (typeof prompt !== 'string' && !Array.isArray(prompt)) throw new PeftkitError('E_ARG', `generateBatch: requests[${i}].prompt: expected text or an array of token ids`);
      const stopTokens = o.stopTokens ?? this.eosIds();
      const maxNew = o.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
      const label = typeof o.adapter === 'string' ? `'${o.adapter}'` : undefined;
      return {
        request: { prompt: this.promptIds(prompt, o), options: { ...o, stopTokens, adapter: adapterOf(o.adapter) }, label },
        text: withText && this.tokenizer ? new IncrementalText((t) => this.decodeGenerated(t, stopTokens)) : null,
        out: [] as number[], stopTokens, maxNew,
      };
    });
    const release = this.hold(rows.map((r) => r.request.options.adapter));
    let batch: BatchGenerator | null = null;
    try {
      batch = new BatchGenerator(this.llama, rows.map((r) => r.request));
      while (batch.live > 0) {
        for (const ev of batch.step()) {
          const row = rows[ev.row];
          if ('error' in ev) {
            if (!hooks.onError) throw ev.error;
            hooks.onError(ev.row, ev.error);
            continue;
          }
          row.out.push(ev.token);
          const text = row.text ? row.text.push(ev.token, ev.done) : '';
          yield { index: ev.row, id: ev.token, text, ...(ev.done ? { generation: { text: this.decodeGenerated(row.out, row.stopTokens), ids: [...row.out] } } : {}) };
        }
        if (hooks.isStopped) for (let i = 0; i < rows.length; i++) if (hooks.isStopped(i)) batch.stop(i);
      }
    } finally {
      batch?.dispose();
      release();
    }
    return rows.map((r) => ({ text: this.decodeGenerated(r.out, r.stopTokens), ids: r.out }));
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

  /** Frees the base weights and every adapter loaded by name or folder. */
  dispose(): void {
    for (const a of [...this.folderCache.values(), ...this.named.values()]) a.adapter.dispose();
    this.folderCache.clear();
    this.named.clear();
    this.llama.dispose();
  }
}

/**
 * Loads a LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM folder (and its tokenizer).
 * Synchronous: it blocks the calling thread while the weights are read (loadModel does not).
 */
export function loadModelSync(dir: string, o: LoadOptions = {}): Model {
  const llama = LlamaModel.load(dir, o);
  const tokenizer = fs.existsSync(path.join(dir, 'tokenizer.json')) ? loadTokenizer(dir) : null;
  return new Model(llama, tokenizer);
}
