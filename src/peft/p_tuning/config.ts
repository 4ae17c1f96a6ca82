/** PTuningConfig: PEFT's P_TUNING adapter_config.json, keys as on disk. */
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import { commonConfigFields } from '../method';

export interface PTuningConfig {
  peft_type: 'P_TUNING';
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
  /** The prompt encoder: 'MLP' (LSTM is not implemented). Defaults to `'MLP'`. */
  encoder_reparameterization_type: 'MLP';
  /** The MLP's hidden width. Defaults to `token_dim`. */
  encoder_hidden_size: number;
  /** PEFT ignores it for the MLP encoder (always 3 Linear layers). Defaults to `2`. */
  encoder_num_layers: number;
  /** Dropout inside the encoder: 0 only. Defaults to `0`. */
  encoder_dropout: number;
  inference_mode: boolean;
}

export function defaultPTuningConfig(c: ModelConfig, over: Partial<PTuningConfig> = {}): PTuningConfig {
  return {
    peft_type: 'P_TUNING', task_type: 'CAUSAL_LM', base_model_name_or_path: null, num_virtual_tokens: 20, token_dim: c.hiddenSize,
    num_transformer_submodules: 1, num_attention_heads: c.numHeads, num_layers: c.numLayers, encoder_reparameterization_type: 'MLP',
    encoder_hidden_size: c.hiddenSize, encoder_num_layers: 2, encoder_dropout: 0, inference_mode: false, ...over,
  };
}

export function parsePTuningConfig(raw: Record<string, unknown>, file: string, c: ModelConfig): PTuningConfig {
  const d = defaultPTuningConfig(c);
  const int = (key: keyof PTuningConfig, dflt: number): number => {
    const v = raw[key] ?? dflt;
    if (!Number.isInteger(v) || (v as number) < 1) throw new PeftkitError('E_CONFIG', `${file}: "${key}" is ${JSON.stringify(v)}, expected a positive integer`);
    return v as number;
  };
  const type = raw.encoder_reparameterization_type ?? 'MLP';
  if (type !== 'MLP') throw new PeftkitError('E_UNSUPPORTED', `${file}: "encoder_reparameterization_type" = ${JSON.stringify(type)} is not supported by peftkit (only "MLP")`);
  if ((raw.encoder_dropout ?? 0) !== 0) throw new PeftkitError('E_UNSUPPORTED', `${file}: "encoder_dropout" = ${JSON.stringify(raw.encoder_dropout)} is not supported by peftkit (only 0)`);
  const dim = raw.token_dim ?? d.token_dim;
  if (dim !== c.hiddenSize) throw new PeftkitError('E_CONFIG', `${file}: "token_dim" is ${JSON.stringify(dim)}, but the model's hidden_size is ${c.hiddenSize}`);
  return {
    ...commonConfigFields(raw, d, 'P_TUNING', file), num_virtual_tokens: int('num_virtual_tokens', d.num_virtual_tokens),
    encoder_hidden_size: int('encoder_hidden_size', d.encoder_hidden_size), encoder_num_layers: int('encoder_num_layers', d.encoder_num_layers),
  };
}
