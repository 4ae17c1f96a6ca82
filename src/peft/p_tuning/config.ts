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
  /**
   * The prompt encoder: 'MLP' (Linear, ReLU, Linear, ReLU, Linear) or 'LSTM' (a bidirectional
   * LSTM, then Linear, ReLU, Linear). Defaults to `'MLP'`.
   */
  encoder_reparameterization_type: 'MLP' | 'LSTM';
  /** The MLP's hidden width; with 'LSTM', each direction's hidden size (the Linears are 2× as wide). Defaults to `token_dim`. */
  encoder_hidden_size: number;
  /** The LSTM's stacked layers; PEFT ignores it for the MLP encoder (always 3 Linear layers). Defaults to `2`. */
  encoder_num_layers: number;
  /**
   * Dropout between the LSTM's layers: 0 only where it would act (an LSTM of 2 or more layers);
   * PEFT ignores it for the MLP encoder, and PyTorch for a 1-layer LSTM, and so does peftkit. Defaults to `0`.
   */
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
  const type = raw.encoder_reparameterization_type ?? d.encoder_reparameterization_type;
  if (type !== 'MLP' && type !== 'LSTM') throw new PeftkitError('E_CONFIG', `${file}: "encoder_reparameterization_type" is ${JSON.stringify(type)}, expected "MLP" or "LSTM"`);
  const layers = int('encoder_num_layers', d.encoder_num_layers);
  const dropout = raw.encoder_dropout ?? d.encoder_dropout;
  if (typeof dropout !== 'number' || !(dropout >= 0 && dropout < 1)) throw new PeftkitError('E_CONFIG', `${file}: "encoder_dropout" is ${JSON.stringify(dropout)}, expected a number in [0, 1)`);
  if (type === 'LSTM' && layers > 1 && dropout !== 0) {
    throw new PeftkitError('E_UNSUPPORTED', `${file}: "encoder_dropout" = ${dropout} is not supported by peftkit: dropout between the LSTM encoder's ${layers} layers is not implemented (only 0)`);
  }
  const dim = raw.token_dim ?? d.token_dim;
  if (dim !== c.hiddenSize) throw new PeftkitError('E_CONFIG', `${file}: "token_dim" is ${JSON.stringify(dim)}, but the model's hidden_size is ${c.hiddenSize}`);
  return {
    ...commonConfigFields(raw, d, 'P_TUNING', file), num_virtual_tokens: int('num_virtual_tokens', d.num_virtual_tokens),
    encoder_reparameterization_type: type, encoder_hidden_size: int('encoder_hidden_size', d.encoder_hidden_size), encoder_num_layers: layers,
    encoder_dropout: dropout,
  };
}
