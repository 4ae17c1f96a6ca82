/**
 * What every PEFT method is to the rest of peftkit: the model's sites (src/model/sites.ts) plus
 * the verbs PEFT's tuners share — parameters, zeroGrad, save, load, merge — so the trainer,
 * optimizer, checkpoints, merge and generation never name a method. A method is a folder under
 * src/peft/ and one entry in registry.ts.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { writeDirAtomic, writeFileAtomic } from '../io/atomic';
import type { ModelAdapter } from '../model/sites';
import { readRegularFile } from '../io/regular_file';
import { SafetensorsCheckpoint, writeSafetensors } from '../model/safetensors';
import type { Tensor } from '../tensor';

/** One trainable tensor with its gradient, for the optimizer and checkpoints. */
export interface TrainableParam {
  /** The tensor's name in the adapter file. */
  name: string;
  param: Tensor;
  grad: Tensor;
  /**
   * Whether AdamW's weight decay applies. As transformers' Trainer groups parameters: none for
   * biases and norm scales. Defaults to `true`.
   */
  decay?: boolean;
}

/**
 * A base tensor the merge changes: `apply` gets the base's value (f32, null when the base has
 * no such tensor, e.g. a bias BitFit added) and returns the merged one.
 */
export interface MergeEdit {
  /** Checkpoint name, e.g. "model.layers.0.self_attn.q_proj.weight". */
  tensor: string;
  shape: number[];
  /** Only where the base has the tensor (IA3 scales a bias that exists); else it is created. Defaults to `false`. */
  ifPresent?: boolean;
  apply(base: Float32Array | null): Float32Array;
}

export interface PeftMethod extends ModelAdapter {
  /** PEFT's peft_type of the adapter folder ("LORA", "IA3", "LN_TUNING"; "BITFIT" is peftkit's). */
  readonly peftType: string;
  /** The adapter_config.json, as on disk. */
  readonly config: { readonly peft_type: string };
  /** Dropout probability the method applies in training (0 for methods without dropout). */
  readonly dropout: number;
  /** Trainable tensors in a fixed order (what the optimizer and checkpoints see). */
  parameters(): TrainableParam[];
  zeroGrad(): void;
  /** The adapter's tensors by file name (host f32 copies). */
  stateDict(): Map<string, Float32Array>;
  /** Writes the adapter folder atomically (it appears complete or not at all). */
  save(dir: string): void;
  /** Writes adapter_config.json and adapter_model.safetensors into an existing folder. */
  writeFiles(dir: string): void;
  /** Overwrites the trainable tensors from an adapter folder of the same layout (resume). */
  loadWeightsFrom(dir: string): void;
  /** Called after the backward of a step, before clipping: a method may constrain its gradients. */
  prepareGrads?(): void;
  /** Called after the optimizer update of step `step` (0-based): a method may constrain or prune its parameters. */
  afterUpdate?(step: number): void;
  /** The base tensors a merge changes and how; throws E_UNSUPPORTED where the method has no merge. */
  mergeEdits(): MergeEdit[];
  dispose(): void;
}

/** A NaN or an infinity in saved adapter weights would poison every output: refused at load, with its place. */
export function checkFinite(file: string, name: string, v: Float32Array): Float32Array {
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i])) throw new PeftkitError('E_FORMAT', `${file}: tensor '${name}' element ${i} is ${v[i]}, expected finite values`);
  }
  return v;
}

/** Reads adapter_config.json as a JSON object, naming the file in every error. */
export function readAdapterConfigJson(dir: string): Record<string, unknown> {
  const file = path.join(dir, 'adapter_config.json');
  let raw: unknown;
  try {
    // A regular file only: a FIFO in its place would hang the read.
    raw = JSON.parse(readRegularFile(file));
  } catch (e) {
    if (e instanceof PeftkitError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new PeftkitError(code ? 'E_IO' : 'E_CONFIG', `${file}: ${code ? `cannot read (${code})` : `not valid JSON (${(e as Error).message})`}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new PeftkitError('E_CONFIG', `${file}: not a JSON object`);
  return raw as Record<string, unknown>;
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  }
  return v;
}

/** Writes adapter_config.json as PEFT does: keys sorted, indent 2, inference_mode true. Atomic. */
export function writeAdapterConfigJson(dir: string, c: object): void {
  fs.mkdirSync(dir, { recursive: true });
  writeFileAtomic(path.join(dir, 'adapter_config.json'), [JSON.stringify(sortKeys({ ...c, inference_mode: true }), null, 2) + '\n']);
}

/** save() for every method: the folder is written whole in a temporary and renamed. */
export function saveAtomically(m: Pick<PeftMethod, 'writeFiles'>, dir: string): void {
  writeDirAtomic(dir, (tmp) => m.writeFiles(tmp));
}

/** loadWeightsFrom() for every method: each trainable tensor read by name, shape checked, finite. */
export function loadParamsFrom(params: readonly TrainableParam[], dir: string): void {
  const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
  for (const p of params) p.param.write(checkFinite(ck.source, p.name, ck.readFloat32(p.name, p.param.shape)));
}

/** stateDict() for every method. */
export function stateDictOf(params: readonly TrainableParam[]): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const p of params) out.set(p.name, p.param.toFloat32Array());
  return out;
}

/** A norm or bias scale gets no weight decay (transformers' get_decay_parameter_names). */
export function decays(name: string): boolean {
  return !/bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)/i.test(name);
}

/**
 * The verbs every method shares once its trainable tensors are listed: a method with a simple
 * file (one tensor per trainable, its config as adapter_config.json) only adds its sites.
 */
export abstract class ParamAdapter<C extends { readonly peft_type: string }> {
  abstract readonly config: C;
  abstract readonly source: string | null;
  /** The trainable tensors (fixed order). */
  abstract parameters(): TrainableParam[];

  get peftType(): string {
    return this.config.peft_type;
  }

  get dropout(): number {
    return 0;
  }

  zeroGrad(): void {
    for (const p of this.parameters()) p.grad.zero();
  }

  stateDict(): Map<string, Float32Array> {
    return stateDictOf(this.parameters());
  }

  save(dir: string): void {
    saveAtomically(this, dir);
  }

  /** adapter_model.safetensors (every parameter by its name) and adapter_config.json. */
  writeFiles(dir: string): void {
    const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const p of this.parameters()) tensors[p.name] = { dtype: 'F32', shape: p.param.shape, data: p.param.toFloat32Array() };
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
    this.writeConfig(dir);
  }

  /** adapter_config.json as the method's readers expect it. */
  protected writeConfig(dir: string): void {
    writeAdapterConfigJson(dir, this.config);
  }

  loadWeightsFrom(dir: string): void {
    loadParamsFrom(this.parameters(), dir);
  }

  dispose(): void {
    for (const p of this.parameters()) {
      p.param.dispose();
      p.grad.dispose();
    }
  }
}

/**
 * Reads the tensors a method expects from an adapter folder: every name in `expected` (with its
 * shape) must be there, finite, and nothing else may be (an unknown tensor is another method's or
 * another model's). Returns them by name.
 */
export function readAdapterTensors(dir: string, expected: ReadonlyMap<string, number[]>, what: string): Map<string, Float32Array> {
  const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
  for (const name of ck.tensors.keys()) {
    if (!expected.has(name)) throw new PeftkitError('E_CONFIG', `${ck.source}: tensor '${name}' is not one of this ${what} adapter's tensors for this model and adapter_config.json`);
  }
  const out = new Map<string, Float32Array>();
  for (const [name, shape] of expected) {
    if (!ck.has(name)) throw new PeftkitError('E_MISSING', `${ck.source}: no tensor '${name}' (adapter_config.json's targets need it)`);
    out.set(name, checkFinite(ck.source, name, ck.readFloat32(name, shape)));
  }
  return out;
}

/**
 * The fields every adapter_config.json shares, read from `raw` over the method's defaults `d`,
 * after checking its peft_type: what each method's parser starts from.
 */
export function commonConfigFields<C extends { task_type: string; base_model_name_or_path: string | null; inference_mode: boolean }>(
  raw: Record<string, unknown>, d: C, peftType: string, file: string,
): C {
  if (raw.peft_type !== peftType) throw new PeftkitError('E_CONFIG', `${file}: "peft_type" is ${JSON.stringify(raw.peft_type)}, expected "${peftType}"`);
  return {
    ...d,
    task_type: typeof raw.task_type === 'string' ? raw.task_type : d.task_type,
    base_model_name_or_path: typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : null,
    inference_mode: raw.inference_mode === true,
  };
}

/** A config field that must be a list of strings (or a single string: one regular expression). */
export function targetList(file: string, key: string, v: unknown, dflt: string[] | string): string[] | string {
  if (v === undefined || v === null) return dflt;
  if ((typeof v === 'string' && v !== '') || (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string' && x))) return v as string[] | string;
  throw new PeftkitError('E_CONFIG', `${file}: "${key}" is ${JSON.stringify(v)}, expected a non-empty list of module names or a regular expression`);
}
