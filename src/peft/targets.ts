/**
 * Which modules an adapter wraps, with PEFT's matching rules: a target name matches a module
 * whose full name equals it or ends with "." + name; "all-linear" means every Linear layer but
 * the output head; any other single string is a regular expression the full module name must
 * match whole (PEFT's re.fullmatch; layers_to_transform then does not apply, as in PEFT). A
 * target that matches nothing is an error, never a silent no-op.
 */
import { PeftkitError } from '../errors';

import type { LinearModule } from '../model/sites';

export type { LinearModule } from '../model/sites';

function matches(moduleName: string, target: string): boolean {
  return moduleName === target || moduleName.endsWith(`.${target}`);
}

/** A regular expression of target_modules / exclude_modules, matched against the whole module name. */
function fullMatch(pattern: string, key: string): (name: string) => boolean {
  let re: RegExp;
  try {
    re = new RegExp(`^(?:${pattern})$`);
  } catch (e) {
    throw new PeftkitError('E_CONFIG', `${key} ${JSON.stringify(pattern)} is not a regular expression peftkit can read (${(e as Error).message})`);
  }
  return (name) => re.test(name);
}

export function selectTargets(
  modules: readonly LinearModule[],
  targets: readonly string[] | string,
  exclude: readonly string[] | string | null = null,
  layersToTransform: readonly number[] | null = null,
): LinearModule[] {
  const excludeRe = typeof exclude === 'string' ? fullMatch(exclude, 'exclude_modules') : null;
  const excludeNames = typeof exclude === 'string' ? [] : exclude ?? [];
  const excluded = (m: LinearModule) => (excludeRe ? excludeRe(m.name) : excludeNames.some((e) => matches(m.name, e)));
  const layerOk = (m: LinearModule) => {
    if (!layersToTransform) return true;
    const layer = /\.layers\.(\d+)\./.exec(m.name);
    return layer !== null && layersToTransform.includes(Number(layer[1]));
  };
  if (targets === 'all-linear') {
    return modules.filter((m) => !m.name.endsWith('lm_head') && !excluded(m) && layerOk(m));
  }
  if (typeof targets === 'string') {
    const targeted = fullMatch(targets, 'target_modules');
    const chosen = modules.filter((m) => targeted(m.name) && !excluded(m));
    if (chosen.length === 0) {
      throw new PeftkitError('E_CONFIG', `target_modules ${JSON.stringify(targets)} (a regular expression, matched against whole module names such as '${modules[0]?.name}') leaves no module to adapt`);
    }
    return chosen;
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
