/**
 * safetensors files (Hugging Face's tensor format): an 8-byte little-endian header length, a
 * JSON header `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {...}}`, then
 * the raw little-endian bytes. Readers here load one tensor at a time from disk (a model is
 * never held twice in memory); sharded checkpoints go through model.safetensors.index.json.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { openRegularFile, readRegularFile } from '../io/regular_file';
import { writeFileAtomic } from '../io/atomic';
import { DType, Tensor, TensorOptions } from '../tensor';

export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

export interface TensorInfo {
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute byte range of the data in the file. */
  begin: number;
  end: number;
  file: string;
}

const MAX_HEADER = 100 * 1024 * 1024;

function bad(file: string, what: string): never {
  throw new PeftkitError('E_FORMAT', `${file}: ${what}`);
}

/** `__metadata__` is a string-to-string map (the format says so, and other readers refuse anything else). */
function checkMetadata(file: string, v: unknown): Record<string, string> {
  if (v === null) return {}; // other readers take null as "no metadata"
  if (typeof v !== 'object' || Array.isArray(v)) bad(file, `__metadata__ is ${JSON.stringify(v)}, expected an object of strings`);
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== 'string') bad(file, `__metadata__.${k} is ${JSON.stringify(x)}, expected a string`);
  }
  return v as Record<string, string>;
}

/** Two tensors sharing bytes would alias each other's data: a corrupt or hand-edited header. */
function checkNoOverlap(file: string, tensors: ReadonlyMap<string, TensorInfo>): void {
  const spans = [...tensors].filter(([, t]) => t.end > t.begin).sort((a, b) => a[1].begin - b[1].begin);
  for (let i = 1; i < spans.length; i++) {
    const [prev, p] = spans[i - 1];
    const [name, t] = spans[i];
    if (t.begin < p.end) {
      bad(file, `tensor '${name}' (bytes ${t.begin}..${t.end} of the file) overlaps tensor '${prev}' (bytes ${p.begin}..${p.end}), expected disjoint data_offsets`);
    }
  }
}

/** One .safetensors file: its header, read eagerly; tensor bytes read on demand. */
export class SafetensorsFile {
  readonly file: string;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;

  constructor(file: string) {
    this.file = file;
    let fd: number;
    try {
      fd = openRegularFile(file);
    } catch (e) {
      if (e instanceof PeftkitError) throw e;
      throw new PeftkitError('E_IO', `${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < 8) bad(file, `file is ${size} bytes, too short for a safetensors header`);
      const lenBuf = Buffer.alloc(8);
      fs.readSync(fd, lenBuf, 0, 8, 0);
      const headerLen = Number(lenBuf.readBigUInt64LE(0));
      if (headerLen > MAX_HEADER || headerLen + 8 > size) {
        bad(file, `header length ${headerLen} does not fit the file (${size} bytes)`);
      }
      const hb = Buffer.alloc(headerLen);
      fs.readSync(fd, hb, 0, headerLen, 8);
      let header: Record<string, unknown>;
      try {
        header = JSON.parse(hb.toString('utf8')) as Record<string, unknown>;
      } catch (e) {
        bad(file, `header is not valid JSON (${(e as Error).message})`);
      }
      if (typeof header !== 'object' || header === null || Array.isArray(header)) bad(file, 'header is not a JSON object');
      const dataStart = 8 + headerLen;
      const tensors = new Map<string, TensorInfo>();
      let metadata: Record<string, string> = {};
      for (const [name, v] of Object.entries(header)) {
        if (name === '__metadata__') {
          metadata = checkMetadata(file, v);
          continue;
        }
        const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        if (typeof e !== 'object' || e === null) bad(file, `tensor '${name}': entry is not an object`);
        if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_BYTES)) {
          bad(file, `tensor '${name}': dtype ${JSON.stringify(e.dtype)} is not one of ${Object.keys(DTYPE_BYTES).join(', ')}`);
        }
        if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0)) {
          bad(file, `tensor '${name}': shape ${JSON.stringify(e.shape)} is not a list of non-negative integers`);
        }
        const off = e.data_offsets;
        if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d) && d >= 0) || off[0] > off[1]) {
          bad(file, `tensor '${name}': data_offsets ${JSON.stringify(off)} is not [begin, end]`);
        }
        const dtype = e.dtype as SafetensorsDType;
        const shape = e.shape as number[];
        const want = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
        const [b, en] = off as [number, number];
        if (en - b !== want) bad(file, `tensor '${name}': data_offsets span ${en - b} bytes but ${dtype}[${shape.join(', ')}] needs ${want}`);
        if (dataStart + en > size) bad(file, `tensor '${name}': data ends at byte ${dataStart + en}, past the end of the file (${size})`);
        tensors.set(name, { dtype, shape, begin: dataStart + b, end: dataStart + en, file });
      }
      checkNoOverlap(file, tensors);
      this.tensors = tensors;
      this.metadata = metadata;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** The raw little-endian bytes of one tensor, in a fresh 8-byte-aligned buffer. */
  readBytes(name: string): Uint8Array {
    const info = this.tensors.get(name);
    if (!info) throw new PeftkitError('E_MISSING', `${this.file}: no tensor named '${name}'`);
    return readRange(info);
  }
}

export function readRange(info: TensorInfo): Uint8Array {
  const n = info.end - info.begin;
  const out = new Uint8Array(new ArrayBuffer(Math.ceil(n / 8) * 8), 0, n);
  const fd = openRegularFile(info.file);
  try {
    let done = 0;
    while (done < n) {
      const r = fs.readSync(fd, out, done, Math.min(n - done, 1 << 30), info.begin + done);
      if (r === 0) bad(info.file, `unexpected end of file reading ${n} bytes at ${info.begin}`);
      done += r;
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

/** Widens F32/BF16/F16 bytes to a Float32Array (exact for all three); F32 is a view of `bytes` when aligned. */
export function toFloat32(bytes: Uint8Array, dtype: SafetensorsDType, where = 'tensor'): Float32Array {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'F32':
      // readRange's buffers are fresh and aligned: view them rather than copy (a model's weights
      // pass through here one by one, and each copy is garbage the size of a weight).
      return bytes.byteOffset % 4 === 0
        ? new Float32Array(bytes.buffer, bytes.byteOffset, n)
        : new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    case 'BF16': {
      const h = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      const u = new Uint32Array(n);
      for (let i = 0; i < n; i++) u[i] = h[i] << 16;
      return new Float32Array(u.buffer);
    }
    case 'F16': {
      const h = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16ToF32(h[i]);
      return out;
    }
    default:
      throw new PeftkitError('E_DTYPE', `${where}: dtype ${dtype} is not a floating-point type (expected F32, BF16 or F16)`);
  }
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** A checkpoint: one model.safetensors, or shards listed by model.safetensors.index.json. */
export class SafetensorsCheckpoint {
  readonly dir: string;
  /** The file that lists the tensors (the .safetensors file, or the index of a sharded checkpoint), for messages. */
  readonly source: string;
  readonly tensors: ReadonlyMap<string, TensorInfo>;

  constructor(dir: string, single = 'model.safetensors') {
    this.dir = dir;
    const index = path.join(dir, `${single}.index.json`);
    const one = path.join(dir, single);
    const tensors = new Map<string, TensorInfo>();
    if (fs.existsSync(index)) {
      this.source = index;
      const shards = new Map<string, SafetensorsFile>();
      for (const [name, shard] of Object.entries(readWeightMap(index))) {
        let f = shards.get(shard);
        if (!f) {
          const file = path.join(dir, shard);
          if (!fs.existsSync(file)) throw new PeftkitError('E_IO', `${index}: weight_map lists shard ${shard} (for '${name}'), but ${file} does not exist`);
          f = new SafetensorsFile(file);
          shards.set(shard, f);
        }
        const info = f.tensors.get(name);
        if (!info) bad(index, `weight_map says '${name}' is in ${shard}, but that shard has no such tensor`);
        tensors.set(name, info);
      }
    } else if (fs.existsSync(one)) {
      this.source = one;
      for (const [k, v] of new SafetensorsFile(one).tensors) tensors.set(k, v);
    } else {
      throw new PeftkitError('E_IO', `${dir}: neither ${single} nor ${single}.index.json found`);
    }
    this.tensors = tensors;
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new PeftkitError('E_MISSING', `${this.source}: checkpoint has no tensor '${name}'`);
    return t;
  }

  /** The raw little-endian bytes of one tensor, whatever its dtype (U8/I8 quantized weights...). */
  readBytes(name: string): Uint8Array {
    return readRange(this.info(name));
  }

  /**
   * One tensor read from disk straight into engine memory (no copy in the JS heap), checked
   * against the shape the caller expects. F32/BF16/F16 data is stored as `dtype` (f32 or bf16);
   * integer data keeps its own type. Defaults: f32 for floating-point data.
   */
  readTensor(name: string, shape?: readonly number[], opts: TensorOptions = {}): Tensor {
    const info = this.info(name);
    checkShape(info, name, shape);
    const dtype = ENGINE_DTYPE[info.dtype];
    const where = `tensor '${name}'`;
    if (!dtype) throw new PeftkitError('E_DTYPE', `${info.file}: ${where} is ${info.dtype}, which peftkit does not load into a tensor`);
    const isFloat = dtype === 'f32' || dtype === 'bf16' || dtype === 'f16';
    return Tensor.fromFile({ file: info.file, offset: info.begin, bytes: info.end - info.begin, dtype, what: where }, info.shape,
      { device: opts.device, dtype: opts.dtype ?? (isFloat ? 'f32' : dtype) });
  }

  /** One tensor as f32, checked against the shape the caller expects. */
  readFloat32(name: string, shape?: readonly number[]): Float32Array {
    const info = this.info(name);
    checkShape(info, name, shape);
    return toFloat32(readRange(info), info.dtype, `${info.file}: tensor '${name}'`);
  }
}

/** The weight_map of a sharded checkpoint's index: tensor name -> shard file name in the same folder. */
function readWeightMap(index: string): Record<string, string> {
  let doc: unknown;
  try {
    doc = JSON.parse(readRegularFile(index));
  } catch (e) {
    if (e instanceof PeftkitError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code) throw new PeftkitError('E_IO', `${index}: cannot read (${code})`);
    bad(index, `not valid JSON (${(e as Error).message})`);
  }
  const map = (doc as { weight_map?: unknown } | null)?.weight_map;
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc) || typeof map !== 'object' || map === null || Array.isArray(map)) {
    bad(index, 'expected a JSON object with a "weight_map" object {tensor name: shard file}');
  }
  for (const [name, shard] of Object.entries(map)) {
    // Shards sit beside the index: a path elsewhere is a corrupt (or hostile) index.
    if (typeof shard !== 'string' || path.basename(shard) !== shard || shard.includes('\\') || !shard.endsWith('.safetensors')) {
      bad(index, `weight_map['${name}'] is ${JSON.stringify(shard)}, expected the file name of a .safetensors shard in the same folder`);
    }
  }
  return map as Record<string, string>;
}

/** The engine dtype a safetensors dtype loads as, where there is one. */
const ENGINE_DTYPE: Partial<Record<SafetensorsDType, DType>> = { F32: 'f32', BF16: 'bf16', F16: 'f16', I32: 'i32', I64: 'i64', U8: 'u8', I8: 'i8', BOOL: 'u8' };

function checkShape(info: TensorInfo, name: string, shape?: readonly number[]): void {
  if (shape && (shape.length !== info.shape.length || shape.some((d, i) => d !== info.shape[i]))) {
    throw new PeftkitError('E_SHAPE', `${info.file}: tensor '${name}' has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}]`);
  }
}

export interface TensorToWrite {
  dtype: SafetensorsDType;
  shape: readonly number[];
  data: ArrayBufferView;
}

/**
 * Writes a .safetensors file atomically. Tensors are laid out in name order, the header is
 * padded with spaces to a multiple of 8 bytes (as the reference writer does).
 */
export function writeSafetensors(file: string, tensors: Record<string, TensorToWrite>, metadata: Record<string, string> = { format: 'pt' }): void {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const name of names) {
    const t = tensors[name];
    const want = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== want) {
      throw new PeftkitError('E_SHAPE', `${file}: tensor '${name}' has ${t.data.byteLength} bytes, ${t.dtype}[${t.shape.join(', ')}] needs ${want}`);
    }
    header[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + want] };
    offset += want;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const chunks: Array<string | ArrayBufferView> = [len, json];
  for (const name of names) {
    const d = tensors[name].data;
    chunks.push(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
  }
  writeFileAtomic(file, chunks);
}
