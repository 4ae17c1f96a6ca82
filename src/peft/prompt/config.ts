/** PromptTuningConfig: PEFT's PROMPT_TUNING adapter_config.json, keys as on disk. */
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import { commonConfigFields } from '../method';

export interface PromptTuningConfig {
  peft_type: 'PROMPT_TUNING';
  /** Defaults to `'CAUSAL_LM'`. */
  task_type: string;
  base_model_name_or_path: string | null;
  /** Virtual tokens before every sequence. Defaults to `20`. */
  num_virtual_tokens: number;
  /** Their width: the model's hidden size. */
  token_dim: number;
  num_transformer_submodules: 1;
  num_attention_heads: number;
  num_layers: number;
  /** How a new adapter starts: 'RANDOM' (N(0, 1)), 'TEXT' (the embeddings of `prompt_tuning_init_text`, repeated or cut to n), 'SAMPLE_VOCAB' (embeddings of random vocabulary tokens). Defaults to `'RANDOM'`. */
  prompt_tuning_init: 'RANDOM' | 'TEXT' | 'SAMPLE_VOCAB';
  prompt_tuning_init_text: string | null;
  tokenizer_name_or_path: string | null;
  inference_mode: boolean;
}

export function defaultPromptTuningConfig(c: ModelConfig, over: Partial<PromptTuningConfig> = {}): PromptTuningConfig {
  return {
    peft_type: 'PROMPT_TUNING', task_type: 'CAUSAL_LM', base_model_name_or_path: null, num_virtual_tokens: 20, token_dim: c.hiddenSize,
    num_transformer_submodules: 1, num_attention_heads: c.numHeads, num_layers: c.numLayers, prompt_tuning_init: 'RANDOM',
    prompt_tuning_init_text: null, tokenizer_name_or_path: null, inference_mode: false, ...over,
  };
}

export function parsePromptTuningConfig(raw: Record<string, unknown>, file: string, c: ModelConfig): PromptTuningConfig {
  const d = defaultPromptTuningConfig(c);
  const n = raw.num_virtual_tokens ?? d.num_virtual_tokens;
  if (!Number.isInteger(n) || (n as number) < 1) throw new PeftkitError('E_CONFIG', `${file}: "num_virtual_tokens" is ${JSON.stringify(n)}, expected a positive integer`);
  const dim = raw.token_dim ?? d.token_dim;
  if (dim !== c.hiddenSize) throw new PeftkitError('E_CONFIG', `${file}: "token_dim" is ${JSON.stringify(dim)}, but the model's hidden_size is ${c.hiddenSize}`);
  const init = raw.prompt_tuning_init ?? d.prompt_tuning_init;
  if (init !== 'RANDOM' && init !== 'TEXT' && init !== 'SAMPLE_VOCAB') throw new PeftkitError('E_CONFIG', `${file}: "prompt_tuning_init" is ${JSON.stringify(init)}, expected "RANDOM", "TEXT" or "SAMPLE_VOCAB"`);
  return {
    ...commonConfigFields(raw, d, 'PROMPT_TUNING', file), num_virtual_tokens: n as number, prompt_tuning_init: init,
    prompt_tuning_init_text: typeof raw.prompt_tuning_init_text === 'string' ? raw.prompt_tuning_init_text : null,
    tokenizer_name_or_path: typeof raw.tokenizer_name_or_path === 'string' ? raw.tokenizer_name_or_path : null,
  };
}
