/**
 * How bitsandbytes (through transformers' save_pretrained) stores quantized Linear weights in a
 * checkpoint, for a module `<prefix>` such as `model.layers.0.self_attn.q_proj`:
 *
 * 4-bit (QuantState.as_dict(packed=True)):
 *   <prefix>.weight                                  U8  [(n+1)/2, 1]  two codes a byte
 *   <prefix>.weight.absmax                           U8 [blocks] when nested, else F32 [blocks]
 *   <prefix>.weight.quant_map                        F32 [16]          the 4-bit code book
 *   <prefix>.weight.nested_absmax                    F32 [ceil(blocks/256)]   (nested only)
 *   <prefix>.weight.nested_quant_map                 F32 [256]         (nested only)
 *   <prefix>.weight.quant_state.bitsandbytes__<nf4|fp4>  U8 [len]: UTF-8 JSON of quant_type,
 *       blocksize, dtype, shape (+ nested_blocksize, nested_dtype, nested_offset)
 * LLM.int8 (Linear8bitLt):
 *   <prefix>.weight  I8 [out, in];  <prefix>.SCB  F32 [out];  <prefix>.weight_format  U8 [] = 0 (rows)
 */
import { PeftkitError } from '../errors';
import { DTYPE_BYTES } from '../model/safetensors';
import type { SafetensorsDType, TensorToWrite } from '../model/safetensors';
import { DYNAMIC_SIGNED_CODE, FP4_CODE, NF4_CODE } from './codes';
import type { Int8State } from './int8';
import { validateInt8State } from './int8';
import { pythonJsonDumps, PythonJsonValue } from './python_json';
import {
  checkBlocksize, checkQuantType, checkTorchDType, NestedAbsmax, Quant4State, Quant4Type, shapeNumel, validateQuant4State,
} from './quant4';

/** What the reader needs of a checkpoint: SafetensorsCheckpoint has it, and so does entriesReader(). */
export interface TensorSource {
  /** The file the tensors come from, named in messages (SafetensorsCheckpoint has it). */
  readonly source?: string;
  has(name: string): boolean;
  info(name: string): { dtype: SafetensorsDType; shape: number[] };
  readBytes(name: string): Uint8Array;
}

/** A TensorSource over entries in memory (as written by quant4Entries/int8Entries). */
export function entriesReader(entries: Record<string, TensorToWrite>): TensorSource {
  const get = (name: string) => {
    const e = entries[name];
    if (!e) throw new PeftkitError('E_MISSING', `no tensor named '${name}'`);
    return e;
  };
  return {
    has: (name) => name in entries,
    info: (name) => ({ dtype: get(name).dtype, shape: [...get(name).shape] }),
    readBytes: (name) => {
      const d = get(name).data;
      return new Uint8Array(d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength));
    },
  };
}

export const quantStateSuffix = (t: Quant4Type) => `quant_state.bitsandbytes__${t}`;
/**
 * The fp4 quant_map as bitsandbytes stores it: its table is built from a Python list whose `-0`
 * is the integer 0, so code 8 (sign bit, magnitude 0) holds +0.0 there, not FP4_CODE's -0.0.
 */
const BNB_FP4_QUANT_MAP = FP4_CODE.map((v, i) => (i === 8 ? 0 : v));
const codeBook = (t: Quant4Type) => (t === 'nf4' ? NF4_CODE : BNB_FP4_QUANT_MAP);
const modulePrefix = (prefix: string) => prefix.replace(/\.$/, '');

/** The entries of a 4-bit weight under module `prefix`, named as bitsandbytes names them. */
export function quant4Entries(prefix: string, s: Quant4State): Record<string, TensorToWrite> {
  validateQuant4State(s);
  const w = `${modulePrefix(prefix)}.weight`;
  const n = shapeNumel(s.shape);
  const fields: Record<string, PythonJsonValue> = { quant_type: s.quantType, blocksize: s.blocksize, dtype: s.dtype, shape: s.shape };
  const out: Record<string, TensorToWrite> = {
    [w]: { dtype: 'U8', shape: [(n + 1) >> 1, 1], data: s.packed },
    [`${w}.absmax`]: { dtype: s.nested ? 'U8' : 'F32', shape: [s.absmax.length], data: s.absmax },
    [`${w}.quant_map`]: { dtype: 'F32', shape: [16], data: codeBook(s.quantType) },
  };
  if (s.nested) {
    out[`${w}.nested_absmax`] = { dtype: 'F32', shape: [s.nested.absmax.length], data: s.nested.absmax };
    out[`${w}.nested_quant_map`] = { dtype: 'F32', shape: [256], data: DYNAMIC_SIGNED_CODE };
    Object.assign(fields, { nested_blocksize: s.nested.blocksize, nested_dtype: s.nested.dtype, nested_offset: { float: s.nested.offset } });
  }
  const json = Buffer.from(pythonJsonDumps(fields), 'utf8');
  out[`${w}.${quantStateSuffix(s.quantType)}`] = { dtype: 'U8', shape: [json.length], data: new Uint8Array(json) };
  return out;
}

/** The entries of an LLM.int8 weight under module `prefix`. */
export function int8Entries(prefix: string, s: Int8State): Record<string, TensorToWrite> {
  validateInt8State(s);
  const p = modulePrefix(prefix);
  return {
    [`${p}.weight`]: { dtype: 'I8', shape: [...s.shape], data: s.cb },
    [`${p}.SCB`]: { dtype: 'F32', shape: [s.shape[0]], data: s.scb },
    [`${p}.weight_format`]: { dtype: 'U8', shape: [], data: new Uint8Array([0]) },
  };
}

/** Which quantized layout module `prefix` has in `src`, if any. */
export function detectQuantFormat(src: TensorSource, prefix: string): Quant4Type | 'int8' | null {
  const w = `${modulePrefix(prefix)}.weight`;
  for (const t of ['nf4', 'fp4'] as const) if (src.has(`${w}.${quantStateSuffix(t)}`)) return t;
  if (src.has(`${modulePrefix(prefix)}.SCB`)) return 'int8';
  return null;
}

function bad(name: string, what: string): never {
  throw new PeftkitError('E_FORMAT', `${name}: ${what}`);
}

/** A tensor's name for messages, after its file when the source has one. */
function label(src: TensorSource, name: string): string {
  return src.source ? `${src.source}: ${name}` : name;
}

/** Reads tensor `name`, which must have `dtype` and `numel` elements (and `shape` when given). */
function readTensor(src: TensorSource, name: string, dtype: SafetensorsDType, numel: number, shape?: number[]): Uint8Array {
  checkTensor(src, name, dtype, numel, shape);
  return src.readBytes(name);
}

/** Checks that tensor `name` exists with `dtype` and `numel` elements (and `shape` when given). */
function checkTensor(src: TensorSource, name: string, dtype: SafetensorsDType, numel: number, shape?: number[]): void {
  if (!src.has(name)) throw new PeftkitError('E_MISSING', `${label(src, name)}: tensor is missing`);
  const info = src.info(name);
  const got = info.shape.reduce((a, b) => a * b, 1);
  const shapeOk = shape ? info.shape.length === shape.length && info.shape.every((d, i) => d === shape[i]) : got === numel;
  if (info.dtype !== dtype || !shapeOk) {
    bad(label(src, name), `expected ${dtype} ${shape ? `[${shape.join(', ')}]` : `with ${numel} elements`}, got ${info.dtype} [${info.shape.join(', ')}]`);
  }
}

/**
 * Storage dtypes bitsandbytes packs 4-bit codes into (bnb_4bit_quant_storage; FSDP-QLoRA uses
 * bfloat16 so that the packed weights shard like the others): the bytes are the same codes, two a
 * byte, whatever dtype the tensor is labelled with.
 */
const QUANT_STORAGE_DTYPES: readonly SafetensorsDType[] = ['U8', 'I8', 'BF16', 'F16', 'F32'];

/** Checks the packed codes of a 4-bit weight of `n` elements: ceil(n/2) bytes in a quant storage dtype. */
function checkPackedCodes(src: TensorSource, name: string, n: number): void {
  if (!src.has(name)) throw new PeftkitError('E_MISSING', `${label(src, name)}: tensor is missing`);
  const info = src.info(name);
  const bytes = info.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[info.dtype];
  if (!QUANT_STORAGE_DTYPES.includes(info.dtype) || bytes !== (n + 1) >> 1) {
    bad(label(src, name), `expected ${(n + 1) >> 1} bytes of packed 4-bit codes (U8, or the BF16/F16/F32/I8 of bnb_4bit_quant_storage), got ${info.dtype} [${info.shape.join(', ')}]`);
  }
}

const f32 = (b: Uint8Array) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

/**
 * Absolute maxima (block scales, row scales): a NaN, an infinity or a negative value is
 * corruption that would flow into every product that reads the weight, so it is refused here.
 */
function checkMaxima(src: TensorSource, name: string, v: Float32Array): Float32Array {
  for (let i = 0; i < v.length; i++) {
    if (!(v[i] >= 0 && v[i] !== Infinity)) bad(label(src, name), `element ${i} is ${v[i]}, expected finite absolute maxima (>= 0)`);
  }
  return v;
}

function expectCodeBook(src: TensorSource, name: string, want: Float32Array): void {
  const got = f32(readTensor(src, name, 'F32', want.length, [want.length]));
  // By value: -0.0 and +0.0 both dequantize to zero (fp4's code 8 is stored either way).
  if (!got.every((v, i) => v === want[i])) {
    throw new PeftkitError('E_UNSUPPORTED', `${label(src, name)}: this code book differs from bitsandbytes' standard one, which is the only one supported`);
  }
}

/** The quant state JSON of `name` as an object. */
function readStateJson(src: TensorSource, name: string): Record<string, unknown> {
  const info = src.info(name);
  if (info.dtype !== 'U8' || info.shape.length !== 1) bad(label(src, name), `expected a 1-D U8 tensor of UTF-8 JSON, got ${info.dtype} [${info.shape.join(', ')}]`);
  let obj: unknown;
  try {
    obj = JSON.parse(Buffer.from(src.readBytes(name)).toString('utf8'));
  } catch (e) {
    bad(label(src, name), `not valid JSON (${(e as Error).message})`);
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) bad(label(src, name), 'JSON is not an object');
  return obj as Record<string, unknown>;
}

/** Runs a field check, turning its error into one that names the tensor and the field. */
function field<T>(name: string, key: string, obj: Record<string, unknown>, check: (v: unknown, what: string) => T): T {
  if (!(key in obj)) bad(name, `field "${key}" is missing`);
  try {
    return check(obj[key], `field "${key}"`);
  } catch (e) {
    if (e instanceof PeftkitError) bad(name, e.message);
    throw e;
  }
}

/** A 4-bit weight's state without its codes, which stay in the checkpoint as tensor `packedName`. */
export type Quant4Meta = Omit<Quant4State, 'packed'> & { packedName: string };

/** Reads and checks every entry of a 4-bit weight under module `prefix`. */
export function readQuant4State(src: TensorSource, prefix: string): Quant4State {
  const { packedName, ...meta } = readQuant4Meta(src, prefix);
  const packed = src.readBytes(packedName);
  const state: Quant4State = { ...meta, packed: new Uint8Array(packed.buffer, packed.byteOffset, packed.byteLength) };
  validateQuant4State(state, packedName);
  return state;
}

/**
 * Checks every entry of a 4-bit weight under module `prefix` and reads all but the codes (the
 * bulk of it), so that a loader can read those straight into engine memory.
 */
export function readQuant4Meta(src: TensorSource, prefix: string): Quant4Meta {
  const w = `${modulePrefix(prefix)}.weight`;
  const type = detectQuantFormat(src, prefix);
  if (type !== 'nf4' && type !== 'fp4') {
    throw new PeftkitError('E_MISSING', `${label(src, `${w}.${quantStateSuffix('nf4')}`)} (or __fp4): tensor is missing, so ${w} is not a bitsandbytes 4-bit weight`);
  }
  const stateName = `${w}.${quantStateSuffix(type)}`;
  const js = readStateJson(src, stateName);
  const at = label(src, stateName);
  const quantType = field(at, 'quant_type', js, checkQuantType);
  if (quantType !== type) bad(at, `field "quant_type" is '${quantType}' but the tensor name says '${type}'`);
  const blocksize = field(at, 'blocksize', js, checkBlocksize);
  const dtype = field(at, 'dtype', js, checkTorchDType);
  const shape = field(at, 'shape', js, (v, what) => (shapeNumel(v, what), [...(v as number[])]));
  const n = shapeNumel(shape);
  const blocks = Math.ceil(n / blocksize);
  const nestedKeys = ['nested_blocksize', 'nested_dtype', 'nested_offset'];
  const nestedCount = nestedKeys.filter((k) => k in js).length;
  if (nestedCount !== 0 && nestedCount !== 3) bad(at, `fields ${nestedKeys.join(', ')} must all be present (double quantization) or all absent`);

  checkPackedCodes(src, w, n);
  expectCodeBook(src, `${w}.quant_map`, codeBook(type));
  let nested: NestedAbsmax | null = null;
  let absmax: Float32Array | Uint8Array;
  if (nestedCount === 3) {
    const nestedBlocksize = field(at, 'nested_blocksize', js, checkBlocksize);
    field(at, 'nested_dtype', js, (v, what) => {
      if (v !== 'float32') throw new PeftkitError('E_FORMAT', `${what}: expected 'float32', got ${JSON.stringify(v)}`);
    });
    const offset = field(at, 'nested_offset', js, (v, what) => {
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new PeftkitError('E_FORMAT', `${what}: expected a finite number, got ${JSON.stringify(v)}`);
      return Math.fround(v);
    });
    absmax = readTensor(src, `${w}.absmax`, 'U8', blocks, [blocks]);
    const nb2 = Math.ceil(blocks / nestedBlocksize);
    const absmax2 = checkMaxima(src, `${w}.nested_absmax`, f32(readTensor(src, `${w}.nested_absmax`, 'F32', nb2, [nb2])));
    expectCodeBook(src, `${w}.nested_quant_map`, DYNAMIC_SIGNED_CODE);
    nested = { absmax: absmax2, blocksize: nestedBlocksize, offset, dtype: 'float32' };
  } else {
    absmax = checkMaxima(src, `${w}.absmax`, f32(readTensor(src, `${w}.absmax`, 'F32', blocks, [blocks])));
  }
  return { quantType, blocksize, shape, dtype, absmax, nested, packedName: w };
}

/** Reads and checks the entries of an LLM.int8 weight under module `prefix`. */
export function readInt8State(src: TensorSource, prefix: string): Int8State {
  const { cbName, scb, shape } = readInt8Meta(src, prefix);
  const cb = src.readBytes(cbName);
  return { cb: new Int8Array(cb.buffer, cb.byteOffset, shape[0] * shape[1]), scb, shape };
}

/** An LLM.int8 weight's row scales and shape; its codes stay in the checkpoint as tensor `cbName`. */
export function readInt8Meta(src: TensorSource, prefix: string): { cbName: string; scb: Float32Array; shape: [number, number] } {
  const p = modulePrefix(prefix);
  const w = `${p}.weight`;
  if (!src.has(w)) throw new PeftkitError('E_MISSING', `${label(src, w)}: tensor is missing`);
  const info = src.info(w);
  if (info.dtype !== 'I8' || info.shape.length !== 2 || !info.shape.every((d) => d > 0)) {
    bad(label(src, w), `expected I8 [out, in], got ${info.dtype} [${info.shape.join(', ')}]`);
  }
  const [rows, cols] = info.shape;
  const scb = checkMaxima(src, `${p}.SCB`, f32(readTensor(src, `${p}.SCB`, 'F32', rows, [rows])));
  // Absent in checkpoints older than the format flag; row layout (0) is the only one written since.
  if (src.has(`${p}.weight_format`)) {
    const fmt = readTensor(src, `${p}.weight_format`, 'U8', 1);
    if (fmt[0] !== 0) throw new PeftkitError('E_UNSUPPORTED', `${label(src, `${p}.weight_format`)}: value ${fmt[0]} is a tiled GPU layout; only 0 (row-major) is supported`);
  }
  return { cbName: w, scb, shape: [rows, cols] };
}
