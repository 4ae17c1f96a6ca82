import { native } from '../native';
import { Tensor } from '../tensor';

/** The two 4-bit code books of bitsandbytes: NormalFloat4 (QLoRA) and FP4. */
export type Quant4Type = 'nf4' | 'fp4';

/**
 * Blockwise 4-bit quantization, byte-compatible with bitsandbytes: x (f32, n elements, any shape,
 * flattened row-major) into `packed` (u8, (n+1)/2 elements, first element in the high nibble) and
 * `absmax` (f32, one per block of `blocksize`: a power of two from 32 to 4096).
 */
export function quantize4bit(packed: Tensor, absmax: Tensor, x: Tensor, blocksize: number, quantType: Quant4Type): void {
  native.quantize4bit(packed.native, absmax.native, x.native, blocksize, quantType);
}

/** `out[i] = code[nibble i] · absmax[i / blocksize]`; out is f32 or bf16 with n elements. */
export function dequantize4bit(out: Tensor, packed: Tensor, absmax: Tensor, blocksize: number, quantType: Quant4Type): void {
  native.dequantize4bit(out.native, packed.native, absmax.native, blocksize, quantType);
}

/**
 * Double quantization of 4-bit block scales: `absmax - offset` into 8-bit codes `q` (u8, one per
 * absmax) of the signed dynamic map with one f32 `absmax2` per `blocksize` of them. Returns the
 * offset, the f32 mean of absmax. bitsandbytes uses blocksize 256.
 */
export function doubleQuant(q: Tensor, absmax2: Tensor, absmax: Tensor, blocksize = 256): number {
  return native.doubleQuant(q.native, absmax2.native, absmax.native, blocksize);
}

/** Recovers the block scales: `absmax = code[q]·absmax2[i / blocksize] + offset` (f32). */
export function doubleDequant(absmax: Tensor, q: Tensor, absmax2: Tensor, offset: number, blocksize = 256): void {
  native.doubleDequant(absmax.native, q.native, absmax2.native, offset, blocksize);
}

/** LLM.int8 weights: w f32 [rows, cols] into cb i8 [rows, cols] and scb f32 [rows] (row absmax). */
export function quantizeInt8Rowwise(cb: Tensor, scb: Tensor, w: Tensor): void {
  native.quantizeInt8Rowwise(cb.native, scb.native, w.native);
}

/** `out = cb·scb/127` per row; out is f32 or bf16 [rows, cols]. */
export function dequantizeInt8Rowwise(out: Tensor, cb: Tensor, scb: Tensor): void {
  native.dequantizeInt8Rowwise(out.native, cb.native, scb.native);
}
