/**
 * One Linear weight in a bitsandbytes format, whole: how it is quantized (a BnbSpec), read from
 * a checkpoint, dequantized, and written back as checkpoint entries. `peftkit quantize` and a
 * merge into a quantized base both go through here, so they write the same bytes for the same
 * weights.
 */
import { PeftkitError } from '../errors';
import type { TensorToWrite } from '../model/safetensors';
import { Tensor } from '../tensor';
import { detectQuantFormat, int8Entries, quant4Entries, quantStateSuffix, readInt8State, readQuant4State, TensorSource } from './bnb_layout';
import { roundArrayToF16 } from './f16';
import { dequantizeInt8, Int8State, quantizeInt8Rowwise } from './int8';
import { dequantize4bit, NESTED_BLOCKSIZE, Quant4State, Quant4Type, quantize4bit, TorchFloatDType } from './quant4';

/** bitsandbytes' weight formats: 4-bit NF4 / FP4 (QLoRA) and LLM.int8. */
export type QuantFormat = Quant4Type | 'int8';

/** How a 4-bit weight is quantized. */
export interface Quant4Spec {
  format: Quant4Type;
  /** Elements per block scale. */
  blocksize: number;
  /** Block scales double-quantized (8 bits, blocks of 256). */
  doubleQuant: boolean;
  /** The dtype recorded in the quant state (what bitsandbytes dequantizes to). */
  dtype: TorchFloatDType;
}

/** How a weight is quantized (LLM.int8 has no settings). */
export type BnbSpec = Quant4Spec | { format: 'int8' };

/** A quantized weight as its host-side state. */
export type BnbWeight = { format: 'int8'; state: Int8State } | { format: Quant4Type; state: Quant4State };

/** Quantizes an f32 weight [out, in] as bitsandbytes does for `spec`. */
export function quantizeBnb(w: Float32Array, shape: readonly [number, number], spec: BnbSpec): BnbWeight {
  if (spec.format === 'int8') {
    // bitsandbytes' Int8Params casts the weight to float16 before taking row absmaxes.
    return { format: 'int8', state: quantizeInt8Rowwise(roundArrayToF16(w), { shape }) };
  }
  const state = quantize4bit(w, { quantType: spec.format, blocksize: spec.blocksize, doubleQuant: spec.doubleQuant, shape, dtype: spec.dtype });
  return { format: spec.format, state };
}

/** The spec a weight was quantized with, to quantize a new value of it the same way. */
export function specOf(q: BnbWeight, where: string): BnbSpec {
  if (q.format === 'int8') return { format: 'int8' };
  const s = q.state;
  if (s.nested && s.nested.blocksize !== NESTED_BLOCKSIZE) {
    throw new PeftkitError('E_UNSUPPORTED', `${where}.${quantStateSuffix(s.quantType)}: nested_blocksize ${s.nested.blocksize} cannot be written again (bitsandbytes and peftkit use ${NESTED_BLOCKSIZE})`);
  }
  return { format: s.quantType, blocksize: s.blocksize, doubleQuant: s.nested !== null, dtype: s.dtype };
}

/** The quantized weight of module `prefix` in `src`, or null when it is stored unquantized. */
export function readBnbWeight(src: TensorSource, prefix: string): BnbWeight | null {
  const format = detectQuantFormat(src, prefix);
  if (format === null) return null;
  if (format === 'int8') return { format, state: readInt8State(src, prefix) };
  return { format, state: readQuant4State(src, prefix) };
}

/** The weight a quantized state stands for, as an f32 CPU tensor of its shape. */
export function dequantizeBnb(q: BnbWeight): Tensor {
  return q.format === 'int8' ? dequantizeInt8(q.state) : dequantize4bit(q.state);
}

/** The checkpoint entries of a quantized weight under module `prefix`, named as bitsandbytes names them. */
export function bnbEntries(prefix: string, q: BnbWeight): Record<string, TensorToWrite> {
  return q.format === 'int8' ? int8Entries(prefix, q.state) : quant4Entries(prefix, q.state);
}

/** Names a module's quantized weight may occupy in a checkpoint (some optional), to replace them all. */
export function bnbEntryNames(prefix: string): string[] {
  const w = `${prefix}.weight`;
  return [
    w, `${w}.absmax`, `${w}.quant_map`, `${w}.nested_absmax`, `${w}.nested_quant_map`,
    `${w}.${quantStateSuffix('nf4')}`, `${w}.${quantStateSuffix('fp4')}`, `${prefix}.SCB`, `${prefix}.weight_format`,
  ];
}

/** `what` for messages: "nf4, blocksize 64, double quant". */
export function describeSpec(s: BnbSpec): string {
  return s.format === 'int8' ? 'LLM.int8, row-wise absmax' : `${s.format}, blocksize ${s.blocksize}, ${s.doubleQuant ? 'double quant' : 'no double quant'}`;
}
