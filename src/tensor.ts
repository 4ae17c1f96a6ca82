/**
 * Tensors: typed, shaped blocks of engine memory on one device. Create them with
 * `Tensor.from`, `Tensor.zeros` or `Tensor.empty`; free them with `dispose()` (or `using`),
 * or leave them to the garbage collector, which knows their size.
 */
import * as os from 'os';
import { PeftkitError } from './errors';
import { native, NativeTensor } from './native';

export type DType = 'f32' | 'bf16' | 'f16' | 'i32' | 'i64' | 'u8' | 'i8' | 'f64';
export type Device = 'cpu' | 'cuda';
/** Where to run: 'auto' means CUDA when the addon has it and a GPU is visible, else CPU. */
export type DeviceOption = Device | 'auto';

/** Views a tensor remembers (a KV cache's moving slots must not grow it without bound). */
const VIEW_CACHE = 64;

const DTYPE_BYTES: Record<DType, number> = { f32: 4, bf16: 2, f16: 2, i32: 4, i64: 8, u8: 1, i8: 1, f64: 8 };

export interface TensorOptions {
  /** Element type. Defaults to `'f32'` (or the natural type of the data given). */
  dtype?: DType;
  /** Defaults to `'cpu'`. */
  device?: DeviceOption;
}

export interface MappedTensorOptions extends TensorOptions {
  /**
   * cpu: the file that holds the bytes; it is created (it must not exist yet) and deleted at
   * `dispose()`. Defaults to an unnamed file in `dir`.
   */
  file?: string;
  /**
   * cpu: the folder of the unnamed file, removed from the folder at once (so nothing is left
   * behind, even by a crash). Use a disk: on tmpfs the pages stay in RAM. Defaults to
   * `os.tmpdir()`.
   */
  dir?: string;
}

/** A tensor's bytes in a file: `bytes` bytes at `offset`, elements stored little-endian as `dtype`. */
export interface FileRange {
  file: string;
  offset: number;
  bytes: number;
  dtype: DType;
  /** Names the data in error messages (a checkpoint tensor). Defaults to `'tensor'`. */
  what?: string;
}

export type TensorData = Float32Array | Int32Array | Uint16Array | Uint8Array | Int8Array | BigInt64Array | Float64Array | number[];

/** The device a {@link DeviceOption} comes to here, and why (a run's log states it). */
export interface DeviceChoice {
  device: Device;
  reason: string;
}

/**
 * Resolves 'auto' (cuda when the addon is the CUDA build and a GPU is visible, else cpu) and
 * rejects 'cuda' when it cannot work (E_DEVICE, with the reason): never a silent fallback.
 */
export function deviceChoice(device: DeviceOption = 'cpu'): DeviceChoice {
  if (device !== 'cpu' && device !== 'cuda' && device !== 'auto') {
    throw new PeftkitError('E_DEVICE', `unknown device '${String(device)}' (expected 'cpu', 'cuda' or 'auto')`);
  }
  if (device === 'cpu') return { device, reason: "device 'cpu'" };
  const info = native.runtimeInfo();
  const absent = !info.cudaBuild ? 'this build of peftkit has no CUDA support (run `npm run build:cuda`)'
    : !info.cudaAvailable ? 'no CUDA device is visible' : null;
  if (device === 'auto') {
    if (!absent) return { device: 'cuda', reason: "device 'auto': the CUDA build is loaded and a GPU is visible" };
    return { device: 'cpu', reason: `device 'auto': ${info.cudaBuild ? 'the CUDA build is loaded but ' : ''}${absent}` };
  }
  if (absent) throw new PeftkitError('E_DEVICE', `device 'cuda' requested but ${absent}`);
  return { device, reason: "device 'cuda'" };
}

/** Resolves 'auto' and rejects 'cuda' when it cannot work, with the reason (see {@link deviceChoice}). */
export function resolveDevice(device: DeviceOption = 'cpu'): Device {
  return deviceChoice(device).device;
}

/**
 * The most bytes a tensor may span: 2^53 - 1, the largest integer a JS number holds exactly (8 PiB,
 * beyond any device). The engine checks the same bound (native/core/tensor.cc).
 */
const MAX_TENSOR_BYTES = Number.MAX_SAFE_INTEGER;

/**
 * Validates a shape for `dtype`: non-negative integer dimensions whose product (zeros left out,
 * so that no partial product a kernel forms can overflow either) times the element size fits
 * {@link MAX_TENSOR_BYTES}. Otherwise the element count would wrap in the engine's 64-bit
 * arithmetic and a tiny allocation would be indexed as a huge one.
 */
function checkShape(shape: readonly number[], dtype: DType): number[] {
  if (!Array.isArray(shape)) throw new PeftkitError('E_ARG', 'shape: expected an array of integers');
  let n = DTYPE_BYTES[dtype];
  for (const [i, d] of shape.entries()) {
    if (!Number.isInteger(d) || d < 0) {
      throw new PeftkitError('E_SHAPE', `shape: dimension ${i} must be a non-negative integer, got ${d}`);
    }
    if (d > 0) n *= d; // exact while below 2^53; once past it the check below has already failed
    if (n > MAX_TENSOR_BYTES) {
      throw new PeftkitError(
        'E_SHAPE',
        `shape [${shape.join(', ')}]: ${dtype} elements would span more than 2^53 - 1 bytes (the element count overflows)`,
      );
    }
  }
  return [...shape];
}

/** f32 -> bf16 bits, round to nearest even (as PyTorch); NaN stays NaN. */
export function f32ToBf16(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < u.length; i++) {
    const v = u[i];
    if ((v & 0x7fffffff) > 0x7f800000) out[i] = (v >>> 16) | 0x40;
    else out[i] = ((v + 0x7fff + ((v >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

/** bf16 bits -> f32 (exact). */
export function bf16ToF32(x: Uint16Array): Float32Array {
  const u = new Uint32Array(x.length);
  for (let i = 0; i < x.length; i++) u[i] = x[i] << 16;
  return new Float32Array(u.buffer);
}

export class Tensor {
  /** The addon's handle; pass it to native ops. */
  readonly native: NativeTensor;
  /** Views handed out, by offset and shape (see view()). */
  private views?: Map<string, Tensor>;

  private constructor(handle: NativeTensor) {
    this.native = handle;
  }

  /** Uninitialized memory: every element must be written before it is read. */
  static empty(shape: readonly number[], opts: TensorOptions = {}): Tensor {
    const dtype = opts.dtype ?? 'f32';
    if (!(dtype in DTYPE_BYTES)) throw new PeftkitError('E_DTYPE', `unknown dtype '${String(dtype)}'`);
    return new Tensor(new native.NativeTensor(checkShape(shape, dtype), dtype, resolveDevice(opts.device)));
  }

  /**
   * A zeroed tensor in paged memory, which the system may move out of fast memory under
   * pressure and bring back when it is used: optimizer states larger than the free memory.
   * On cpu the bytes are a shared memory mapping of a file on disk (the kernel writes pages back
   * to it and drops them when RAM runs short); on cuda, managed memory that the driver migrates
   * between GPU and host (optimizers prefetch it to the GPU before their update). Otherwise it
   * is a tensor like any other.
   */
  static mapped(shape: readonly number[], opts: MappedTensorOptions = {}): Tensor {
    const dtype = opts.dtype ?? 'f32';
    if (!(dtype in DTYPE_BYTES)) throw new PeftkitError('E_DTYPE', `unknown dtype '${String(dtype)}'`);
    for (const k of ['file', 'dir'] as const) {
      if (opts[k] !== undefined && (typeof opts[k] !== 'string' || !opts[k])) throw new PeftkitError('E_ARG', `Tensor.mapped ${k}: expected a path`);
    }
    const where = opts.file !== undefined ? { file: opts.file } : { dir: opts.dir ?? os.tmpdir() };
    return new Tensor(new native.NativeTensor(checkShape(shape, dtype), dtype, resolveDevice(opts.device), where));
  }

  static zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
    const t = Tensor.empty(shape, opts);
    t.zero();
    return t;
  }

  /**
   * Copies `data` into a new tensor. Float32Array data with `dtype: 'bf16'` is rounded to
   * bf16; Uint16Array with 'bf16' is taken as raw bf16 bits.
   */
  static from(data: TensorData, shape: readonly number[], opts: TensorOptions = {}): Tensor {
    let dtype = opts.dtype;
    let view: ArrayBufferView;
    if (Array.isArray(data)) data = new Float32Array(data);
    if (data instanceof Float32Array) {
      dtype ??= 'f32';
      if (dtype === 'bf16') view = f32ToBf16(data);
      else if (dtype === 'f32') view = data;
      else throw new PeftkitError('E_DTYPE', `Tensor.from: Float32Array data cannot make a '${dtype}' tensor`);
    } else {
      const natural: DType =
        data instanceof Int32Array ? 'i32' : data instanceof Uint16Array ? 'bf16' : data instanceof Uint8Array ? 'u8'
        : data instanceof Int8Array ? 'i8' : data instanceof Float64Array ? 'f64' : 'i64';
      dtype ??= natural;
      if (DTYPE_BYTES[dtype] !== data.BYTES_PER_ELEMENT) {
        throw new PeftkitError('E_DTYPE', `Tensor.from: ${data.constructor.name} data cannot make a '${dtype}' tensor`);
      }
      view = data;
    }
    const t = Tensor.empty(shape, { ...opts, dtype });
    if (t.numel !== (view as Float32Array).length) {
      t.dispose();
      throw new PeftkitError(
        'E_SHAPE',
        `Tensor.from: ${(view as Float32Array).length} elements do not fill shape [${shape.join(', ')}] (${t.numel} elements)`,
      );
    }
    t.native.write(view);
    return t;
  }

  /**
   * A new tensor of `shape` read from a file range without passing through JS memory. f32, bf16
   * and f16 data become the tensor's `dtype` (f32 or bf16: widening is exact, rounding to bf16 is
   * to nearest even); other dtypes are read as they are. Defaults: the data's own dtype ('f32'
   * for f16 data).
   */
  static fromFile(src: FileRange, shape: readonly number[], opts: TensorOptions = {}): Tensor {
    const t = Tensor.empty(shape, { ...opts, dtype: opts.dtype ?? (src.dtype === 'f16' ? 'f32' : src.dtype) });
    try {
      t.readFile(src);
    } catch (e) {
      t.dispose();
      throw e;
    }
    return t;
  }

  get shape(): number[] {
    return this.native.shape;
  }
  get dtype(): DType {
    return this.native.dtype as DType;
  }
  get device(): Device {
    return this.native.device as Device;
  }
  get disposed(): boolean {
    return this.native.disposed;
  }
  /** Held in paged memory (made by {@link Tensor.mapped}, or a view of such a tensor). */
  get paged(): boolean {
    return this.native.paged;
  }
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get nbytes(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }

  /** Copies the data out, as f32 for every floating dtype (bf16 widened exactly). */
  toFloat32Array(): Float32Array {
    const buf = this.native.read();
    if (this.dtype === 'f32') return new Float32Array(buf);
    if (this.dtype === 'bf16') return bf16ToF32(new Uint16Array(buf));
    throw new PeftkitError('E_DTYPE', `toFloat32Array: tensor is ${this.dtype}; use toArray()`);
  }

  /** Copies the data out in its own type (bf16 as raw Uint16Array bits). */
  toArray(): Float32Array | Int32Array | Uint16Array | Uint8Array | Int8Array | BigInt64Array | Float64Array {
    const buf = this.native.read();
    switch (this.dtype) {
      case 'f32': return new Float32Array(buf);
      case 'bf16': case 'f16': return new Uint16Array(buf);
      case 'i32': return new Int32Array(buf);
      case 'i64': return new BigInt64Array(buf);
      case 'u8': return new Uint8Array(buf);
      case 'i8': return new Int8Array(buf);
      case 'f64': return new Float64Array(buf);
    }
  }

  /** Overwrites the contents; the byte length must match exactly. */
  write(data: ArrayBufferView): void {
    this.native.write(data);
  }

  /**
   * A tensor of `shape` that starts `offset` elements into this one and shares its memory (a
   * KV-cache slot, a block of rows). Writes through either are seen by both.
   *
   * The same offset and shape give the same handle again (the last 64 views are remembered), so
   * a view is shared: dispose() it only where no other code uses that view; otherwise leave it
   * to the garbage collector. A view keeps the memory alive after its parent is disposed.
   */
  view(offset: number, shape: readonly number[]): Tensor {
    // Why shared: a training step asks for the same views of its buffers every time, and each
    // new handle's native part is freed only by a finalizer that Node runs from the event loop,
    // which a synchronous training loop never reaches. So without this, every step would leave
    // its views' handles behind for good (and fragment the heap).
    const dims = checkShape(shape, this.dtype);
    if (typeof offset !== 'number') throw new PeftkitError('E_ARG', `view offset: expected an element index, got ${JSON.stringify(offset)}`);
    const key = `${offset}:${dims.join(',')}`;
    const cache = (this.views ??= new Map());
    const hit = cache.get(key);
    cache.delete(key); // (re)inserted below: the most recently used goes last
    if (hit && !hit.disposed) {
      cache.set(key, hit);
      return hit;
    }
    const v = new Tensor(this.native.view(offset, dims));
    cache.set(key, v);
    if (cache.size > VIEW_CACHE) cache.delete(cache.keys().next().value!);
    return v;
  }

  /** Sets every element to 0, in place on its device (no host buffer: nothing for the garbage collector). */
  zero(): void {
    this.native.zero();
  }

  /** Overwrites the contents with a file range (see {@link Tensor.fromFile}); its bytes must fill the tensor exactly. */
  readFile(src: FileRange): void {
    this.native.readFile(src.file, src.offset, src.bytes, src.dtype, src.what ?? 'tensor');
  }

  /** Copies `src` (same dtype and element count, any device) into this tensor. */
  copyFrom(src: Tensor): void {
    this.native.copyFrom(src.native);
  }

  /** Frees the memory now. Later use throws E_DISPOSED; running async ops finish safely. */
  dispose(): void {
    this.native.dispose();
    this.views = undefined; // views handed out stay valid (they hold the memory) until disposed themselves
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
