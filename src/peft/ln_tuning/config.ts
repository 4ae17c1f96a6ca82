/** LnTuningConfig: the adapter_config.json of the method, keys as on disk; parsing names the file and field. */
import { PeftkitError } from '../../errors';
import { commonConfigFields, targetList } from '../method';

export interface LnTuningConfig {
  peft_type: 'LN_TUNING';
  /** Defaults to `'CAUSAL_LM'`. */
  task_type: string;
  base_model_name_or_path: string | null;
  /** Norm modules (suffix match, or one regular expression). Defaults to `['input_layernorm', 'post_attention_layernorm', 'norm']`: every RMSNorm. */
  target_modules: string[] | string;
  modules_to_save: null;
  inference_mode: boolean;
}

export function defaultLnTuningConfig(over: Partial<LnTuningConfig> = {}): LnTuningConfig {
  return {
    peft_type: 'LN_TUNING', task_type: 'CAUSAL_LM', base_model_name_or_path: null,
    target_modules: ['input_layernorm', 'post_attention_layernorm', 'norm'], modules_to_save: null, inference_mode: false, ...over,
  };
}

export function parseLnTuningConfig(raw: Record<string, unknown>, file: string): LnTuningConfig {
  const mts = raw.modules_to_save ?? null;
  if (mts !== null && !(Array.isArray(mts) && mts.length === 0)) throw new PeftkitError('E_UNSUPPORTED', `${file}: "modules_to_save" = ${JSON.stringify(mts)} is not supported by peftkit (only null)`);
  const d = defaultLnTuningConfig();
  return {
    ...commonConfigFields(raw, d, 'LN_TUNING', file),
    target_modules: targetList(file, 'target_modules', raw.target_modules, d.target_modules),
  };
}
