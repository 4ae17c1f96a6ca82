/**
 * Which modules an adapter wraps, with PEFT's matching rules: a target name matches a module
 * whose full name equals it or ends with "." + name; "all-linear" means every Linear layer but
 * the output head. A target that matches nothing is an error, never a silent no-op.
 */
import { PeftkitError } from '../errors';

export interface LinearModule {
  /** Full module name, e.g. "model.layers.0.self_attn.q_proj". */
  name: string;
  inFeatures: number;
  outFeatures: number;
}

function matches(moduleName: string, target: string): boolean {
  return moduleName === target || moduleName.endsWith(`.${target}`);
}

export function selectTargets(
  modules: readonly LinearModule[],
  targets: readonly string[] | 'all-linear',
  exclude: readonly string[] | null = null,
  layersToTransform: readonly number[] | null = null,
): LinearModule[] {
  const excluded = (m: LinearModule) => (exclude ?? []).some((e) => matches(m.name, e));
  const layerOk = (m: LinearModule) => {
    if (!layersToTransform) return true;
    const layer = /\.layers\.(\d+)\./.exec(m.name);
    return layer !== null && layersToTransform.includes(Number(layer[1]));
  };
  if (targets === 'all-linear') {
    return modules.filter((m) => !m.name.endsWith('lm_head') && !excluded(m) && layerOk(m));
  }
  for (const t of targets) {
    if (!modules.some((m) => matches(m.name, t))) {
      const kinds = [...new Set(modules.map((m) => m.name.split('.').pop()))].join(', ');
      throw new PeftkitError('E_CONFIG', `target module '${t}' matches no module of this model (its Linear layers are: ${kinds})`);
    }
  }
  const chosen = modules.filter((m) => targets.some((t) => matches(m.name, t)) && !excluded(m) && layerOk(m));
  if (chosen.length === 0) throw new PeftkitError('E_CONFIG', 'target_modules, exclude_modules and layers_to_transform leave no module to adapt');
  return chosen;
}
