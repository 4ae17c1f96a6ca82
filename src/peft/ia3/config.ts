/** Ia3Config: the adapter_config.json of the method, keys as on disk; parsing names the file and field. */
import { PeftkitError } from '../../errors';
import { commonConfigFields, targetList } from '../method';

export interface Ia3Config {
  peft_type: 'IA3';
  /** Defaults to `'CAUSAL_LM'`. */
  task_type: string;
  base_model_name_or_path: string | null;
  /** Modules to rescale (suffix match, or one regular expression). Defaults to `['k_proj', 'v_proj', 'down_proj']` (PEFT's Llama default). */
  target_modules: string[] | string;
  /** Of the targets, those whose input is rescaled instead of their output. Defaults to `['down_proj']`. */
  feedforward_modules: string[] | string;
  /** ones (the identity) when true. Defaults to `true`. */
  init_ia3_weights: boolean;
  fan_in_fan_out: false;
  modules_to_save: null;
  inference_mode: boolean;
}

export function defaultIa3Config(over: Partial<Ia3Config> = {}): Ia3Config {
  return {
    peft_type: 'IA3', task_type: 'CAUSAL_LM', base_model_name_or_path: null, target_modules: ['k_proj', 'v_proj', 'down_proj'],
    feedforward_modules: ['down_proj'], init_ia3_weights: true, fan_in_fan_out: false, modules_to_save: null, inference_mode: false, ...over,
  };
}

export function parseIa3Config(raw: Record<string, unknown>, file: string): Ia3Config {
  if (raw.fan_in_fan_out === true) throw new PeftkitError('E_UNSUPPORTED', `${file}: "fan_in_fan_out" = true is not supported by peftkit (Llama-family Linear layers are not Conv1D)`);
  const mts = raw.modules_to_save ?? null;
  if (mts !== null && !(Array.isArray(mts) && mts.length === 0)) throw new PeftkitError('E_UNSUPPORTED', `${file}: "modules_to_save" = ${JSON.stringify(mts)} is not supported by peftkit (only null)`);
  const d = defaultIa3Config();
  return {
    ...commonConfigFields(raw, d, 'IA3', file),
    target_modules: targetList(file, 'target_modules', raw.target_modules, d.target_modules),
    feedforward_modules: targetList(file, 'feedforward_modules', raw.feedforward_modules, d.feedforward_modules),
    init_ia3_weights: raw.init_ia3_weights !== false,
  };
}
