/**
 * LoraConfig: the fields of PEFT's adapter_config.json for LoRA, snake_case kept as on disk so
 * the type is the file. Reading validates every field and names the one that is wrong.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../../errors';
import { writeFileAtomic } from '../../io/atomic';
import { readAdapterConfigJson } from '../method';

export interface LoraConfig {
  peft_type: 'LORA';
  /** Defaults to `'CAUSAL_LM'`. */
  task_type: string;
  /** Informational: where the base model came from. Defaults to `null`. */
  base_model_name_or_path: string | null;
  revision: string | null;
  /** Rank. Defaults to `8`. */
  r: number;
  /** Scaling numerator: scaling = lora_alpha / r (rsLoRA: / sqrt(r)). Defaults to `8`. */
  lora_alpha: number;
  /** Dropout on the LoRA input. Defaults to `0`. */
  lora_dropout: number;
  /**
   * Module names (suffix match, as PEFT), "all-linear" (every Linear but lm_head), or any other
   * string: a regular expression the full module name must match whole (PEFT's re.fullmatch).
   * Defaults to `['q_proj', 'v_proj']` for Llama-family models.
   */
  target_modules: string[] | string;
  /** Module names (suffix match) or a regular expression (full match) left out, as PEFT. */
  exclude_modules: string[] | string | null;
  /** Defaults to `false`. */
  use_rslora: boolean;
  /** true: A kaiming-uniform(a=√5), B zeros; 'gaussian': A normal(0, 1/r), B zeros; false: both random (debug). Defaults to `true`. */
  init_lora_weights: boolean | 'gaussian';
  /**
   * Which biases train beside LoRA, as PEFT: 'none'; 'lora_only' (the existing biases of the
   * adapted modules); 'all' (every existing Linear bias). Saved as base_model.model.<module>.bias.
   * Defaults to `'none'`.
   */
  bias: 'none' | 'all' | 'lora_only';
  fan_in_fan_out: false;
  /** DoRA (weight-decomposed LoRA): a learned magnitude per output row. Defaults to `false`. */
  use_dora: boolean;
  /**
   * Whole modules trained as copies beside the adapter (PEFT's ModulesToSaveWrapper): 'embed_tokens'
   * and/or 'lm_head' (new tokens, a new head); a copied head of a tied model is its own (untied).
   * Saved as base_model.model.<module>.weight. Defaults to `null`.
   */
  modules_to_save: string[] | null;
  layers_to_transform: number[] | null;
  layers_pattern: string | null;
  /** Per-module ranks: a key (module name or regular expression, PEFT's matching) → r. Defaults to `{}`. */
  rank_pattern: Record<string, number>;
  /** Per-module alphas, matched as rank_pattern. Defaults to `{}`. */
  alpha_pattern: Record<string, number>;
  /** True in saved adapters (PEFT writes it so). */
  inference_mode: boolean;
}

export const LLAMA_DEFAULT_TARGETS = ['q_proj', 'v_proj'];

/** The modules modules_to_save may name on a Llama-family model. */
export const SAVABLE_MODULES = ['embed_tokens', 'lm_head'];

export function defaultLoraConfig(over: Partial<LoraConfig> = {}): LoraConfig {
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: null,
    revision: null,
    r: 8,
    lora_alpha: 8,
    lora_dropout: 0,
    target_modules: [...LLAMA_DEFAULT_TARGETS],
    exclude_modules: null,
    use_rslora: false,
    init_lora_weights: true,
    bias: 'none',
    fan_in_fan_out: false,
    use_dora: false,
    modules_to_save: null,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
    inference_mode: false,
    ...over,
  };
}

/**
 * The value of the first key of a rank_pattern / alpha_pattern that matches `module` as PEFT
 * matches them: the key equals the name, or as a regular expression it matches the name's end
 * after a dot (".*\.key$"); undefined when none does.
 */
export function patternValue(pattern: Record<string, number>, module: string): number | undefined {
  for (const [key, v] of Object.entries(pattern)) {
    if (key === module || new RegExp(`^(?:.*\\.)?(?:${key})$`).test(module)) return v;
  }
  return undefined;
}

/** lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA. */
export function loraScaling(c: Pick<LoraConfig, 'r' | 'lora_alpha' | 'use_rslora'>): number {
  return c.use_rslora ? c.lora_alpha / Math.sqrt(c.r) : c.lora_alpha / c.r;
}

function fail(file: string, key: string, got: unknown, expected: string): never {
  throw new PeftkitError('E_CONFIG', `${file}: "${key}" is ${JSON.stringify(got)}, expected ${expected}`);
}

function unsupported(file: string, key: string, got: unknown, supported: string): never {
  throw new PeftkitError('E_UNSUPPORTED', `${file}: "${key}" = ${JSON.stringify(got)} is not supported by peftkit (${supported})`);
}

const isStrList = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');

/** Validates a parsed adapter_config.json (unknown keys are ignored, as PEFT does). */
export function parseLoraConfig(raw: Record<string, unknown>, file = 'adapter_config.json'): LoraConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new PeftkitError('E_CONFIG', `${file}: not a JSON object`);
  if (raw.peft_type !== 'LORA') {
    if (typeof raw.peft_type === 'string') unsupported(file, 'peft_type', raw.peft_type, 'this loader reads LORA adapters');
    fail(file, 'peft_type', raw.peft_type, '"LORA"');
  }
  const c = defaultLoraConfig();
  const r = raw.r ?? c.r;
  if (!Number.isInteger(r) || (r as number) < 1) fail(file, 'r', r, 'a positive integer');
  const alpha = raw.lora_alpha ?? c.lora_alpha;
  // The scaling reaches the kernels as an f32: a larger alpha would arrive as Infinity.
  if (typeof alpha !== 'number' || !(Math.abs(alpha) <= 3.4028234663852886e38)) fail(file, 'lora_alpha', alpha, 'a finite number');
  const dropout = raw.lora_dropout ?? 0;
  if (typeof dropout !== 'number' || dropout < 0 || dropout >= 1) fail(file, 'lora_dropout', dropout, 'a number in [0, 1)');
  const tm = raw.target_modules;
  if (!((typeof tm === 'string' && tm !== '') || (isStrList(tm) && tm.length > 0))) {
    fail(file, 'target_modules', tm, 'a non-empty list of module names, "all-linear" or a regular expression');
  }
  const init = raw.init_lora_weights ?? true;
  if (!(typeof init === 'boolean' || init === 'gaussian')) unsupported(file, 'init_lora_weights', init, 'true, false or "gaussian"');
  const bias = raw.bias ?? 'none';
  if (bias !== 'none' && bias !== 'all' && bias !== 'lora_only') fail(file, 'bias', bias, '"none", "all" or "lora_only"');
  if (raw.use_dora !== undefined && typeof raw.use_dora !== 'boolean') fail(file, 'use_dora', raw.use_dora, 'true or false');
  if (raw.fan_in_fan_out === true) unsupported(file, 'fan_in_fan_out', true, 'Llama-family Linear layers are not Conv1D');
  const patterns: Record<'rank_pattern' | 'alpha_pattern', Record<string, number>> = { rank_pattern: {}, alpha_pattern: {} };
  for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = raw[k] ?? {};
    if (typeof v !== 'object' || Array.isArray(v)) fail(file, k, v, 'an object of module pattern → number');
    for (const [key, x] of Object.entries(v as Record<string, unknown>)) {
      const ok = k === 'rank_pattern' ? Number.isInteger(x) && (x as number) >= 1 : typeof x === 'number' && Math.abs(x) <= 3.4028234663852886e38;
      if (!ok) fail(file, `${k}.${key}`, x, k === 'rank_pattern' ? 'a positive integer' : 'a finite number');
      try {
        new RegExp(key);
      } catch {
        fail(file, `${k}.${key}`, key, 'a module name or a regular expression');
      }
      patterns[k][key] = x as number;
    }
  }
  const mts = raw.modules_to_save ?? null;
  if (mts !== null && !isStrList(mts)) fail(file, 'modules_to_save', mts, 'a list of module names or null');
  for (const m of (mts as string[] | null) ?? []) {
    if (!SAVABLE_MODULES.includes(m.split('.').pop()!)) unsupported(file, 'modules_to_save', mts, `only ${SAVABLE_MODULES.join(' and ')}`);
  }
  const ex = raw.exclude_modules ?? null;
  if (ex !== null && !isStrList(ex) && typeof ex !== 'string') fail(file, 'exclude_modules', ex, 'a list of module names, a regular expression or null');
  const ltt = raw.layers_to_transform ?? null;
  const ltts = typeof ltt === 'number' ? [ltt] : ltt;
  if (ltts !== null && !(Array.isArray(ltts) && ltts.every((x) => Number.isInteger(x) && x >= 0))) fail(file, 'layers_to_transform', ltt, 'a layer index, a list of them, or null');
  return {
    ...c,
    task_type: typeof raw.task_type === 'string' ? raw.task_type : c.task_type,
    base_model_name_or_path: typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : null,
    revision: typeof raw.revision === 'string' ? raw.revision : null,
    r: r as number,
    lora_alpha: alpha,
    lora_dropout: dropout,
    target_modules: typeof tm === 'string' ? tm : [...(tm as string[])],
    exclude_modules: ex as string[] | string | null,
    bias: bias as LoraConfig['bias'],
    modules_to_save: mts === null || (mts as string[]).length === 0 ? null : [...(mts as string[])],
    use_rslora: raw.use_rslora === true,
    use_dora: raw.use_dora === true,
    rank_pattern: patterns.rank_pattern,
    alpha_pattern: patterns.alpha_pattern,
    init_lora_weights: init as boolean | 'gaussian',
    layers_to_transform: ltts as number[] | null,
    layers_pattern: typeof raw.layers_pattern === 'string' ? raw.layers_pattern : null,
    inference_mode: raw.inference_mode === true,
  };
}

export function readLoraConfig(dir: string): LoraConfig {
  return parseLoraConfig(readAdapterConfigJson(dir), path.join(dir, 'adapter_config.json'));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  }
  return v;
}

/** Writes adapter_config.json as PEFT does: keys sorted, indent 2, inference_mode true. Atomic. */
export function writeLoraConfig(dir: string, c: LoraConfig): void {
  fs.mkdirSync(dir, { recursive: true });
  // exclude_modules is recent in PEFT: write it only when it says something, so older readers load the file.
  const { exclude_modules, ...rest } = c;
  const out = { ...rest, ...(exclude_modules ? { exclude_modules } : {}), inference_mode: true };
  writeFileAtomic(path.join(dir, 'adapter_config.json'), [JSON.stringify(sortKeys(out), null, 2) + '\n']);
}
