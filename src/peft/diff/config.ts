/** DiffConfig: the adapter_config.json of the method, keys as on disk; parsing names the file and field. */
import { PeftkitError } from '../../errors';
import { commonConfigFields, targetList } from '../method';

export interface DiffConfig {
  peft_type: 'DIFF';
  /** Defaults to `'CAUSAL_LM'`. */
  task_type: string;
  base_model_name_or_path: string | null;
  /** Linear modules with a δ (suffix match, or one regular expression). Defaults to every Linear of the decoder. */
  target_modules: string[] | string;
  /** Fraction of each δ kept at pruning, in (0, 1]. Defaults to `0.005` (0.5%). */
  density: number;
  /** The optimizer step (0-based) after whose update δ is pruned. Defaults to `0`. */
  prune_step: number;
  inference_mode: boolean;
}

export function defaultDiffConfig(over: Partial<DiffConfig> = {}): DiffConfig {
  return {
    peft_type: 'DIFF', task_type: 'CAUSAL_LM', base_model_name_or_path: null,
    target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], density: 0.005, prune_step: 0, inference_mode: false, ...over,
  };
}

export function parseDiffConfig(raw: Record<string, unknown>, file: string): DiffConfig {
  const d = defaultDiffConfig();
  const density = raw.density ?? d.density;
  if (typeof density !== 'number' || !(density > 0 && density <= 1)) throw new PeftkitError('E_CONFIG', `${file}: "density" is ${JSON.stringify(density)}, expected a number in (0, 1]`);
  const pruneStep = raw.prune_step ?? d.prune_step;
  if (!Number.isInteger(pruneStep) || (pruneStep as number) < 0) throw new PeftkitError('E_CONFIG', `${file}: "prune_step" is ${JSON.stringify(pruneStep)}, expected an integer >= 0`);
  return {
    ...commonConfigFields(raw, d, 'DIFF', file),
    target_modules: targetList(file, 'target_modules', raw.target_modules, d.target_modules),
    density, prune_step: pruneStep as number,
  };
}
