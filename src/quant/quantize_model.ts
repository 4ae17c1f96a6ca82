/**
 * Quantizes a Hugging Face model folder into the layout transformers + bitsandbytes save: the
 * Linear weights of the decoder layers in 4-bit (NF4/FP4) or LLM.int8, everything else (embeddings,
 * norms, biases, an untied lm_head, which transformers also leaves unquantized) copied byte for
 * byte, tokenizer and generation files copied, and `quantization_config` in config.json.
 */
import * as path from 'path';
import { PeftkitError } from '../errors';
import { checkOutputFolder } from '../io/atomic';
import { parseModelConfig } from '../model/config';
import { readConfigJson, writeModelFolder } from '../model/hf_folder';
import { SafetensorsCheckpoint, SafetensorsDType, TensorToWrite } from '../model/safetensors';
import { checkLayerCount, layerLinears } from '../model/weights';
import { BnbSpec, bnbEntries, QuantFormat, quantizeBnb } from './bnb_weight';
import { checkBlocksize, checkTorchDType, TorchFloatDType } from './quant4';

export type { QuantFormat };

export interface QuantizeModelOptions {
  /** The source folder (config.json + model.safetensors or shards). */
  model: string;
  /** The folder to write; replaced atomically if it exists. */
  out: string;
  /** `'nf4'` or `'fp4'` (4-bit, QLoRA) or `'int8'` (LLM.int8). */
  format: QuantFormat;
  /** 4-bit elements per block scale, a power of two from 32 to 4096. Defaults to `64`. */
  blocksize?: number;
  /** 4-bit: quantize the block scales too. Defaults to `true`. */
  doubleQuant?: boolean;
  /** What config.json records as `bnb_4bit_compute_dtype`. Defaults to `'float32'` (transformers' default). */
  computeDtype?: TorchFloatDType;
}

export interface QuantizeModelResult {
  /** Checkpoint names of the weights that were quantized. */
  quantized: string[];
  /** Checkpoint names of the tensors copied unchanged. */
  copied: string[];
  /** Bytes of tensor data before and after. */
  bytesBefore: number;
  bytesAfter: number;
}

const TORCH_DTYPE: Partial<Record<SafetensorsDType, TorchFloatDType>> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };

/** `quantization_config` as transformers' BitsAndBytesConfig.to_dict() writes it. */
export function bnbQuantizationConfig(format: QuantFormat, doubleQuant: boolean, computeDtype: TorchFloatDType): Record<string, unknown> {
  const four = format !== 'int8';
  return {
    _load_in_4bit: four,
    _load_in_8bit: !four,
    bnb_4bit_compute_dtype: computeDtype,
    bnb_4bit_quant_storage: 'uint8',
    bnb_4bit_quant_type: four ? format : 'fp4',
    bnb_4bit_use_double_quant: four && doubleQuant,
    llm_int8_enable_fp32_cpu_offload: false,
    llm_int8_has_fp16_weight: false,
    llm_int8_skip_modules: null,
    llm_int8_threshold: 6.0,
    load_in_4bit: four,
    load_in_8bit: !four,
    quant_method: 'bitsandbytes',
  };
}

/** Writes the quantized copy of `o.model` to `o.out` and says what it did. */
export function quantizeModelSync(o: QuantizeModelOptions): QuantizeModelResult {
  if (typeof o !== 'object' || o === null) throw new PeftkitError('E_ARG', 'quantizeModelSync: expected an options object');
  if (typeof o.model !== 'string' || typeof o.out !== 'string') throw new PeftkitError('E_ARG', 'quantizeModelSync: model and out must be folder paths');
  if (o.format !== 'nf4' && o.format !== 'fp4' && o.format !== 'int8') {
    throw new PeftkitError('E_ARG', `format: expected 'nf4', 'fp4' or 'int8', got ${JSON.stringify(o.format)}`);
  }
  checkOutputFolder(o.out, { model: o.model });
  const format = o.format;
  const blocksize = checkBlocksize(o.blocksize ?? 64);
  const doubleQuant = o.doubleQuant ?? true;
  if (typeof doubleQuant !== 'boolean') throw new PeftkitError('E_ARG', `doubleQuant: expected true or false, got ${JSON.stringify(doubleQuant)}`);
  const computeDtype = checkTorchDType(o.computeDtype ?? 'float32', 'computeDtype');

  const raw = readConfigJson(o.model);
  if (raw.quantization_config !== undefined && raw.quantization_config !== null) {
    throw new PeftkitError('E_UNSUPPORTED', `${path.join(o.model, 'config.json')}: the model is already quantized (quantization_config is set)`);
  }
  const config = parseModelConfig(raw, path.join(o.model, 'config.json'));
  const ck = new SafetensorsCheckpoint(o.model);
  checkLayerCount(ck, config, path.join(o.model, 'config.json'));

  const targets = new Map<string, [number, number]>();
  for (let l = 0; l < config.numLayers; l++) {
    for (const [m, out, inp] of layerLinears(config)) targets.set(`model.layers.${l}.${m}`, [out, inp]);
  }
  const entries: Record<string, TensorToWrite> = {};
  const result: QuantizeModelResult = { quantized: [], copied: [], bytesBefore: 0, bytesAfter: 0 };
  for (const [module, shape] of targets) {
    const name = `${module}.weight`;
    const info = ck.info(name);
    const dtype = TORCH_DTYPE[info.dtype];
    if (!dtype) throw new PeftkitError('E_DTYPE', `${info.file}: tensor '${name}' is ${info.dtype}; only F32, BF16 and F16 weights can be quantized`);
    const spec: BnbSpec = format === 'int8' ? { format } : { format, blocksize, doubleQuant, dtype };
    Object.assign(entries, bnbEntries(module, quantizeBnb(ck.readFloat32(name, shape), shape, spec)));
    result.quantized.push(name);
    result.bytesBefore += info.end - info.begin;
  }
  for (const [name, info] of ck.tensors) {
    if (entries[name]) continue; // quantized above
    entries[name] = { dtype: info.dtype, shape: info.shape, data: ck.readBytes(name) };
    result.copied.push(name);
    result.bytesBefore += info.end - info.begin;
  }
  for (const e of Object.values(entries)) result.bytesAfter += e.data.byteLength;

  const outConfig = { ...raw, quantization_config: bnbQuantizationConfig(format, doubleQuant, computeDtype) };
  writeModelFolder(o.out, { source: o.model, config: outConfig, tensors: entries });
  result.quantized.sort();
  result.copied.sort();
  return result;
}
