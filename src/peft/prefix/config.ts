/** PrefixTuningConfig: PEFT's PREFIX_TUNING adapter_config.json, keys as on disk. */
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import { commonConfigFields } from '../method';

export interface PrefixTuningConfig {
  peft_type: 'PREFIX_TUNING';
  /** Defaults to `'CAUSAL_LM'`. */
  task_type: string;
  base_model_name_or_path: string | null;
  /** Prefix rows per layer. Defaults to `20`. */
  num_virtual_tokens: number;
  /** Width of one prefix row's key (or value): kv_heads · head_dim, as PEFT writes it for grouped-query models. */
  token_dim: number;
  num_transformer_submodules: 1;
  /** The key/value heads (PEFT rewrites it so for grouped-query attention). */
  num_attention_heads: number;
  num_layers: number;
  /** The projection MLP's hidden size (prefix_projection). Defaults to `token_dim`. */
  encoder_hidden_size: number;
  /**
   * A reparameterizing MLP during training: the prefix is Linear(h → L·2·token_dim)(tanh(Linear(token_dim → h)(E))),
   * E [n, token_dim] and the MLP training. Defaults to `false`.
   */
  prefix_projection: boolean;
  inference_mode: boolean;
}

export function defaultPrefixTuningConfig(c: ModelConfig, over: Partial<PrefixTuningConfig> = {}): PrefixTuningConfig {
  const kvd = c.numKvHeads * c.headDim;
  return {
    peft_type: 'PREFIX_TUNING', task_type: 'CAUSAL_LM', base_model_name_or_path: null, num_virtual_tokens: 20, token_dim: kvd,
    num_transformer_submodules: 1, num_attention_heads: c.numKvHeads, num_layers: c.numLayers, encoder_hidden_size: kvd,
    prefix_projection: false, inference_mode: false, ...over,
  };
}

/** Checks the file against the model: the prefix layout is [n, num_layers · 2 · token_dim]. */
export function parsePrefixTuningConfig(raw: Record<string, unknown>, file: string, c: ModelConfig): PrefixTuningConfig {
  const d = defaultPrefixTuningConfig(c);
  const int = (key: keyof PrefixTuningConfig, dflt: number): number => {
    const v = raw[key] ?? dflt;
    if (!Number.isInteger(v) || (v as number) < 1) throw new PeftkitError('E_CONFIG', `${file}: "${key}" is ${JSON.stringify(v)}, expected a positive integer`);
    return v as number;
  };
  const cfg = {
    ...commonConfigFields(raw, d, 'PREFIX_TUNING', file),
    num_virtual_tokens: int('num_virtual_tokens', d.num_virtual_tokens), token_dim: int('token_dim', d.token_dim),
    num_attention_heads: int('num_attention_heads', d.num_attention_heads), num_layers: int('num_layers', d.num_layers),
    encoder_hidden_size: int('encoder_hidden_size', d.encoder_hidden_size),
    prefix_projection: raw.prefix_projection === true,
  };
  if (cfg.num_layers !== c.numLayers) throw new PeftkitError('E_CONFIG', `${file}: "num_layers" is ${cfg.num_layers}, but the model has ${c.numLayers} layers`);
  if (cfg.token_dim !== d.token_dim || cfg.num_attention_heads !== c.numKvHeads) {
    throw new PeftkitError('E_CONFIG', `${file}: "token_dim" ${cfg.token_dim} with "num_attention_heads" ${cfg.num_attention_heads} does not match the model's key/value heads ` +
      `(${c.numKvHeads} × head_dim ${c.headDim} = ${d.token_dim}: PEFT writes these for grouped-query attention)`);
  }
  return cfg;
}
