/**
 * mergeAdapter: folds a LoRA adapter into its base weights (W += scaling · B·A) and writes a
 * complete Hugging Face model folder that loads without peft: config.json, model.safetensors,
 * and the base folder's tokenizer files.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { writeDirAtomic } from '../io/atomic';
import { LlamaModel } from '../model/llama';
import { TensorToWrite, writeSafetensors } from '../model/safetensors';
import * as ops from '../ops';
import { f32ToBf16 } from '../tensor';
import { LoraAdapter } from './lora';

export interface MergeOptions {
  /** Base model folder. */
  model: string;
  /** PEFT adapter folder. */
  adapter: string;
  /** Output folder (replaced atomically). */
  out: string;
  /** Weight dtype on disk. Defaults to `'f32'`. */
  dtype?: 'f32' | 'bf16';
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja', 'generation_config.json'];

/** Adds scaling·B·A into each adapted weight of a loaded model, in place. */
export function mergeInto(model: LlamaModel, adapter: LoraAdapter): void {
  if (model.isQuantized) {
    throw new PeftkitError('E_UNSUPPORTED', `${model.dir}: the base model is quantized (bitsandbytes); merging an adapter into a quantized base is not supported yet (merge into the unquantized model folder instead)`);
  }
  for (const l of adapter.layers.values()) {
    ops.gemm(model.weight(`${l.module}.weight`), l.B, l.A, { alpha: adapter.scaling, beta: 1 });
  }
}

export function mergeAdapter(o: MergeOptions): string {
  const dtype = o.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new PeftkitError('E_ARG', `dtype: expected f32 or bf16, got '${String(dtype)}'`);
  if (path.resolve(o.out) === path.resolve(o.model)) throw new PeftkitError('E_ARG', 'out: must differ from the base model folder');
  const model = LlamaModel.load(o.model);
  try {
    const adapter = LoraAdapter.load(o.adapter, model.linearModules);
    try {
      mergeInto(model, adapter);
    } finally {
      adapter.dispose();
    }
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, t] of model.entries()) {
      const f = t.toFloat32Array();
      tensors[name] = dtype === 'bf16' ? { dtype: 'BF16', shape: t.shape, data: f32ToBf16(f) } : { dtype: 'F32', shape: t.shape, data: f };
    }
    const config = JSON.parse(fs.readFileSync(path.join(o.model, 'config.json'), 'utf8')) as Record<string, unknown>;
    config.torch_dtype = dtype === 'bf16' ? 'bfloat16' : 'float32';
    writeDirAtomic(o.out, (tmp) => {
      writeSafetensors(path.join(tmp, 'model.safetensors'), tensors);
      fs.writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(config, null, 2) + '\n');
      for (const f of TOKENIZER_FILES) {
        if (fs.existsSync(path.join(o.model, f))) fs.copyFileSync(path.join(o.model, f), path.join(tmp, f));
      }
    });
    return o.out;
  } finally {
    model.dispose();
  }
}
