/**
 * QLoRA's 4-bit weights (bitsandbytes NF4/FP4, optionally with double quantization) as a typed
 * state in host memory: what a checkpoint stores, what the engine dequantizes.
 */
import { PeftkitError } from '../errors';
import * as ops from '../ops/quant';
import type { Quant4Type } from '../ops/quant';
import { Device, Tensor } from '../tensor';

export type { Quant4Type };

/** dtype names as bitsandbytes writes them in a quant state (torch's, without "torch."). */
export type TorchFloatDType = 'float32' | 'bfloat16' | 'float16';

/** Block sizes bitsandbytes accepts: powers of two from 32 to 4096. */
export const QUANT_BLOCKSIZES: readonly number[] = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/** The block size bitsandbytes uses for the double quantization of block scales. */
export const NESTED_BLOCKSIZE = 256;

/** The 8-bit second level of double quantization: block scales = code[absmax]·nested.absmax + offset. */
export interface NestedAbsmax {
  /** One f32 scale per `blocksize` block scales. */
  absmax: Float32Array;
  blocksize: number;
  /** The f32 mean of the block scales, subtracted before quantizing them. */
  offset: number;
  dtype: 'float32';
}

export interface Quant4State {
  quantType: Quant4Type;
  blocksize: number;
  /** Shape of the original tensor ([out, in] for a Linear weight). */
  shape: number[];
  /** dtype of the original tensor, and of its dequantization in bitsandbytes. */
  dtype: TorchFloatDType;
  /** Two codes a byte, the first element in the high nibble: ceil(n/2) bytes. */
  packed: Uint8Array;
  /** One scale per block: f32 values, or 8-bit codes when `nested` is set. */
  absmax: Float32Array | Uint8Array;
  /** Double quantization of `absmax`, or null. */
  nested: NestedAbsmax | null;
}

export interface Quantize4bitOptions {
  /** Code book. Defaults to `'nf4'` (QLoRA). */
  quantType?: Quant4Type;
  /** Elements per block scale: a power of two from 32 to 4096. Defaults to `64`. */
  blocksize?: number;
  /** Quantize the block scales too (8 bits, blocks of 256). Defaults to `true` (QLoRA). */
  doubleQuant?: boolean;
  /** Shape to record; defaults to the Tensor's shape, or `[length]` for a Float32Array. */
  shape?: readonly number[];
  /** dtype to record (the weights' dtype in the source checkpoint). Defaults to `'float32'`. */
  dtype?: TorchFloatDType;
}

export function checkQuantType(v: unknown, what = 'quantType'): Quant4Type {
  if (v !== 'nf4' && v !== 'fp4') throw new PeftkitError('E_ARG', `${what}: expected 'nf4' or 'fp4', got ${JSON.stringify(v)}`);
  return v;
}

export function checkBlocksize(v: unknown, what = 'blocksize'): number {
  if (typeof v !== 'number' || !QUANT_BLOCKSIZES.includes(v)) {
    throw new PeftkitError('E_ARG', `${what}: expected one of ${QUANT_BLOCKSIZES.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v;
}

export function checkTorchDType(v: unknown, what = 'dtype'): TorchFloatDType {
  if (v !== 'float32' && v !== 'bfloat16' && v !== 'float16') {
    throw new PeftkitError('E_ARG', `${what}: expected 'float32', 'bfloat16' or 'float16', got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Elements of a shape, which must be non-empty positive integers. */
export function shapeNumel(shape: unknown, what = 'shape'): number {
  if (!Array.isArray(shape) || shape.length === 0 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new PeftkitError('E_SHAPE', `${what}: expected a list of positive integers, got ${JSON.stringify(shape)}`);
  }
  return shape.reduce((a: number, b: number) => a * b, 1);
}

const blocks = (n: number, blocksize: number) => Math.ceil(n / blocksize);

/** Quantizes `w` (on its device when it is a Tensor, else on the CPU) into a host-side state. */
export function quantize4bit(w: Float32Array | Tensor, o: Quantize4bitOptions = {}): Quant4State {
  const quantType = checkQuantType(o.quantType ?? 'nf4');
  const blocksize = checkBlocksize(o.blocksize ?? 64);
  const doubleQuant = o.doubleQuant ?? true;
  if (typeof doubleQuant !== 'boolean') throw new PeftkitError('E_ARG', `doubleQuant: expected true or false, got ${JSON.stringify(doubleQuant)}`);
  const dtype = checkTorchDType(o.dtype ?? 'float32');
  const isTensor = w instanceof Tensor;
  if (!isTensor && !(w instanceof Float32Array)) throw new PeftkitError('E_ARG', 'w: expected a Float32Array or an f32 Tensor');
  if (isTensor && w.dtype !== 'f32') throw new PeftkitError('E_DTYPE', `w: expected an f32 tensor, got ${w.dtype}`);
  const n = isTensor ? w.numel : w.length;
  const shape = [...(o.shape ?? (isTensor ? w.shape : [n]))];
  if (shapeNumel(shape) !== n) throw new PeftkitError('E_SHAPE', `shape [${shape.join(', ')}] does not hold the ${n} elements of w`);
  const device = isTensor ? w.device : 'cpu';
  const owned: Tensor[] = [];
  const make = (length: number, dtype: 'u8' | 'f32') => {
    const t = Tensor.empty([length], { dtype, device });
    owned.push(t);
    return t;
  };
  try {
    const x = isTensor ? w : Tensor.from(w, [n]);
    if (!isTensor) owned.push(x);
    const packed = make((n + 1) >> 1, 'u8');
    const absmax = make(blocks(n, blocksize), 'f32');
    ops.quantize4bit(packed, absmax, x, blocksize, quantType);
    const state: Quant4State = { quantType, blocksize, shape, dtype, packed: packed.toArray() as Uint8Array, absmax: absmax.toFloat32Array(), nested: null };
    if (doubleQuant) {
      const q = make(absmax.numel, 'u8');
      const absmax2 = make(blocks(absmax.numel, NESTED_BLOCKSIZE), 'f32');
      const offset = ops.doubleQuant(q, absmax2, absmax, NESTED_BLOCKSIZE);
      state.absmax = q.toArray() as Uint8Array;
      state.nested = { absmax: absmax2.toFloat32Array(), blocksize: NESTED_BLOCKSIZE, offset, dtype: 'float32' };
    }
    return state;
  } finally {
    for (const t of owned) t.dispose();
  }
}

/** A 4-bit weight as engine tensors: the packed codes and the f32 block scales the GEMM reads. */
export interface Quant4Tensors {
  packed: Tensor;
  absmax: Tensor;
}

/**
 * Quantizes an f32 tensor on its device, keeping the result in engine memory (no host-side
 * state): loading a model quantizes each weight this way. With double quantization the block
 * scales are the ones the 8-bit codes give back, exactly what loading the saved state gives.
 */
export function quantize4bitTensors(x: Tensor, o: Quantize4bitOptions = {}): Quant4Tensors {
  const quantType = checkQuantType(o.quantType ?? 'nf4');
  const blocksize = checkBlocksize(o.blocksize ?? 64);
  const doubleQuant = o.doubleQuant ?? true;
  if (typeof doubleQuant !== 'boolean') throw new PeftkitError('E_ARG', `doubleQuant: expected true or false, got ${JSON.stringify(doubleQuant)}`);
  if (!(x instanceof Tensor) || x.dtype !== 'f32') throw new PeftkitError('E_DTYPE', 'x: expected an f32 Tensor');
  const n = x.numel, device = x.device;
  const packed = Tensor.empty([(n + 1) >> 1], { dtype: 'u8', device });
  const absmax = Tensor.empty([blocks(n, blocksize)], { device });
  try {
    ops.quantize4bit(packed, absmax, x, blocksize, quantType);
    if (doubleQuant) {
      const q = Tensor.empty([absmax.numel], { dtype: 'u8', device });
      const absmax2 = Tensor.empty([blocks(absmax.numel, NESTED_BLOCKSIZE)], { device });
      try {
        const offset = ops.doubleQuant(q, absmax2, absmax, NESTED_BLOCKSIZE);
        ops.doubleDequant(absmax, q, absmax2, offset, NESTED_BLOCKSIZE);
      } finally {
        q.dispose();
        absmax2.dispose();
      }
    }
    return { packed, absmax };
  } catch (e) {
    packed.dispose();
    absmax.dispose();
    throw e;
  }
}

/** Checks that the parts of a state fit together; `where` prefixes the messages. */
export function validateQuant4State(s: Quant4State, where = 'state'): void {
  if (typeof s !== 'object' || s === null) throw new PeftkitError('E_ARG', `${where}: expected a Quant4State object`);
  checkQuantType(s.quantType, `${where}.quantType`);
  checkBlocksize(s.blocksize, `${where}.blocksize`);
  checkTorchDType(s.dtype, `${where}.dtype`);
  const n = shapeNumel(s.shape, `${where}.shape`);
  const nb = blocks(n, s.blocksize);
  const expectArray = (v: unknown, cls: typeof Uint8Array | typeof Float32Array, length: number, what: string) => {
    if (!(v instanceof cls) || v.length !== length) {
      const got = ArrayBuffer.isView(v) ? `${v.constructor.name}(${(v as Uint8Array).length})` : typeof v;
      throw new PeftkitError('E_SHAPE', `${where}.${what}: expected a ${cls.name} of ${length} elements, got ${got}`);
    }
  };
  expectArray(s.packed, Uint8Array, (n + 1) >> 1, 'packed');
  if (s.nested === null || s.nested === undefined) {
    expectArray(s.absmax, Float32Array, nb, 'absmax');
    return;
  }
  expectArray(s.absmax, Uint8Array, nb, 'absmax');
  checkBlocksize(s.nested.blocksize, `${where}.nested.blocksize`);
  expectArray(s.nested.absmax, Float32Array, blocks(nb, s.nested.blocksize), 'nested.absmax');
  if (typeof s.nested.offset !== 'number' || !Number.isFinite(s.nested.offset)) {
    throw new PeftkitError('E_ARG', `${where}.nested.offset: expected a finite number, got ${JSON.stringify(s.nested.offset)}`);
  }
}

/** The f32 block scales of a state (recovered from the 8-bit codes when double-quantized). */
export function recoverAbsmax(s: Quant4State): Float32Array {
  validateQuant4State(s);
  if (!s.nested) return Float32Array.from(s.absmax);
  const out = recoverAbsmaxTensor(s);
  try {
    return out.toFloat32Array();
  } finally {
    out.dispose();
  }
}

/** The f32 block scales of a (checked) state as a tensor on `device`, recovered there from double quantization. */
export function recoverAbsmaxTensor(s: Pick<Quant4State, 'absmax' | 'nested'>, device: Device = 'cpu'): Tensor {
  if (!s.nested) return Tensor.from(s.absmax as Float32Array, [s.absmax.length], { device });
  const nested = s.nested;
  const q = Tensor.from(s.absmax as Uint8Array, [s.absmax.length], { device });
  const absmax2 = Tensor.from(nested.absmax, [nested.absmax.length], { device });
  const out = Tensor.empty([s.absmax.length], { device });
  try {
    ops.doubleDequant(out, q, absmax2, nested.offset, nested.blocksize);
    return out;
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    q.dispose();
    absmax2.dispose();
  }
}

export interface DequantizeOptions {
  /** Element type of the result. Defaults to `'f32'`. */
  dtype?: 'f32' | 'bf16';
  /** Defaults to `'cpu'`. */
  device?: Device;
}

/** The weights a state stands for, as a Tensor of `state.shape`. */
export function dequantize4bit(s: Quant4State, o: DequantizeOptions = {}): Tensor {
  validateQuant4State(s);
  const device = o.device ?? 'cpu';
  const dtype = o.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new PeftkitError('E_ARG', `dtype: expected 'f32' or 'bf16', got ${JSON.stringify(dtype)}`);
  const packed = Tensor.from(s.packed, [s.packed.length], { device });
  const absmax = Tensor.from(recoverAbsmax(s), [s.absmax.length], { device });
  const out = Tensor.empty(s.shape, { dtype, device });
  try {
    ops.dequantize4bit(out, packed, absmax, s.blocksize, s.quantType);
    return out;
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    packed.dispose();
    absmax.dispose();
  }
}
