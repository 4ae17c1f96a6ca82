/** BitFitConfig: the adapter_config.json of the method, keys as on disk; parsing names the file and field. */
import { commonConfigFields, targetList } from '../method';

export interface BitFitConfig {
  peft_type: 'BITFIT';
  /** Defaults to `'CAUSAL_LM'`. */
  task_type: string;
  base_model_name_or_path: string | null;
  /** Linear modules whose bias trains (suffix match, one regular expression, or "all-linear"). Defaults to every Linear of the decoder. */
  target_modules: string[] | string;
  inference_mode: boolean;
}

export function defaultBitFitConfig(over: Partial<BitFitConfig> = {}): BitFitConfig {
  return {
    peft_type: 'BITFIT', task_type: 'CAUSAL_LM', base_model_name_or_path: null,
    target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], inference_mode: false, ...over,
  };
}

export function parseBitFitConfig(raw: Record<string, unknown>, file: string): BitFitConfig {
  const d = defaultBitFitConfig();
  return {
    ...commonConfigFields(raw, d, 'BITFIT', file),
    target_modules: targetList(file, 'target_modules', raw.target_modules, d.target_modules),
  };
}
