import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError, Tensor } from '../src/index';
import { SafetensorsCheckpoint, SafetensorsFile, writeSafetensors } from '../src/model/safetensors';
import { devices, makeRng, randn } from './helpers/check';

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-st-'));
}

/** A file built byte by byte from the format's definition, independent of our writer. */
function handBuilt(file: string, header: object, data: Buffer): void {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
}

test('reads a hand-built file: F32, BF16 and F16 widen exactly', (t) => {
  const dir = tmpdir();
  const f32 = Buffer.from(new Float32Array([1.5, -2, 3.25]).buffer);
  const bf16 = Buffer.from(new Uint16Array([0x3fc0, 0xc000]).buffer); // 1.5, -2
  const f16 = Buffer.from(new Uint16Array([0x3e00, 0xc000, 0x0001]).buffer); // 1.5, -2, 2^-24
  handBuilt(path.join(dir, 'model.safetensors'), {
    __metadata__: { format: 'pt' },
    a: { dtype: 'F32', shape: [3], data_offsets: [0, 12] },
    b: { dtype: 'BF16', shape: [1, 2], data_offsets: [12, 16] },
    c: { dtype: 'F16', shape: [3], data_offsets: [16, 22] },
  }, Buffer.concat([f32, bf16, f16]));
  const ck = new SafetensorsCheckpoint(dir);
  t.deepEqual([...ck.readFloat32('a', [3])], [1.5, -2, 3.25]);
  t.deepEqual([...ck.readFloat32('b', [1, 2])], [1.5, -2]);
  t.deepEqual([...ck.readFloat32('c')], [1.5, -2, 2 ** -24]);
  const e = t.throws(() => ck.readFloat32('a', [4]), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_SHAPE');
  t.regex(e!.message, /'a' has shape \[3\], expected \[4\]/);
  t.is(t.throws(() => ck.readFloat32('zz'), { instanceOf: PeftkitError })?.code, 'E_MISSING');
});

test('writer output reads back exactly, header is 8-byte aligned with format metadata', (t) => {
  const rng = makeRng(t);
  const dir = tmpdir();
  const file = path.join(dir, 'model.safetensors');
  const x = randn(rng, 35);
  const ids = new Int32Array([5, -1, 7]);
  writeSafetensors(file, {
    'z.weight': { dtype: 'F32', shape: [5, 7], data: x },
    'a.ids': { dtype: 'I32', shape: [3], data: ids },
  });
  const buf = fs.readFileSync(file);
  t.is(Number(buf.readBigUInt64LE(0)) % 8, 0);
  const f = new SafetensorsFile(file);
  t.deepEqual(f.metadata, { format: 'pt' });
  t.deepEqual(new Float32Array(f.readBytes('z.weight').buffer, 0, 35), x);
  t.deepEqual([...new Int32Array(f.readBytes('a.ids').buffer, 0, 3)], [5, -1, 7]);
  t.deepEqual(fs.readdirSync(dir), ['model.safetensors'], 'no temp file left behind');
});

test('sharded checkpoints resolve through the index', (t) => {
  const dir = tmpdir();
  writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), { x: { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) } });
  writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), { y: { dtype: 'F32', shape: [1], data: new Float32Array([3]) } });
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({
    metadata: {}, weight_map: { x: 'model-00001-of-00002.safetensors', y: 'model-00002-of-00002.safetensors' },
  }));
  const ck = new SafetensorsCheckpoint(dir);
  t.deepEqual([...ck.readFloat32('x')], [1, 2]);
  t.deepEqual([...ck.readFloat32('y')], [3]);
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { q: 'model-00001-of-00002.safetensors' } }));
  const e = t.throws(() => new SafetensorsCheckpoint(dir), { instanceOf: PeftkitError });
  t.regex(e!.message, /'q' is in model-00001-of-00002.safetensors, but that shard has no such tensor/);
});

test('corrupt files give errors naming the file and the field', (t) => {
  const dir = tmpdir();
  const file = path.join(dir, 'bad.safetensors');
  const cases: Array<[Buffer | (() => void), RegExp]> = [
    [Buffer.from([1, 2, 3]), /too short/],
    [() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(1000n); fs.writeFileSync(file, b); }, /header length 1000 does not fit/],
    [() => handBuilt(file, { a: { dtype: 'Q4', shape: [1], data_offsets: [0, 1] } }, Buffer.alloc(1)), /'a': dtype "Q4" is not one of/],
    [() => handBuilt(file, { a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, Buffer.alloc(4)), /'a': data_offsets span 4 bytes but F32\[2\] needs 8/],
    [() => handBuilt(file, { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, Buffer.alloc(4)), /past the end of the file/],
    [() => handBuilt(file, { a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, Buffer.alloc(8)), /shape \[-2\]/],
  ];
  for (const [make, msg] of cases) {
    if (typeof make === 'function') make();
    else fs.writeFileSync(file, make);
    const e = t.throws(() => new SafetensorsFile(file), { instanceOf: PeftkitError });
    t.is(e?.code, 'E_FORMAT');
    t.true(e!.message.startsWith(file), e!.message);
    t.regex(e!.message, msg);
  }
  fs.writeFileSync(file, Buffer.concat([Buffer.from([5, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"a":')]));
  t.regex(t.throws(() => new SafetensorsFile(file))!.message, /not valid JSON/);
  t.is(t.throws(() => new SafetensorsFile(path.join(dir, 'nope.safetensors')), { instanceOf: PeftkitError })?.code, 'E_IO');
});

// ---- native reads (SafetensorsCheckpoint.readTensor, Tensor.fromFile) --------------------------

/** float64 value of IEEE half bits, from the format's definition. */
function halfValue(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 31) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

/** float64 value of bf16 bits. */
function bf16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 7) & 0xff, m = h & 0x7f;
  if (e === 255) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -133 : s * (1 + m / 128) * 2 ** (e - 127);
}

/** The bf16 nearest to a finite f32 (ties to the even mantissa), found by comparing neighbours in float64. */
function nearestBf16(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0];
  const lo = u >>> 16, hi = lo + 1; // truncation toward zero, and the next bf16 away from zero
  const dLo = Math.abs(x - bf16Value(lo)), dHi = Math.abs(bf16Value(hi) - x);
  return dLo < dHi || (dLo === dHi && (lo & 1) === 0) ? lo : hi;
}

const sameValues = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  for (let i = 0; i < b.length; i++) if (!Object.is(a[i], b[i]) && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return `element ${i}: ${a[i]} vs ${b[i]}`;
  return a.length === b.length ? null : `length ${a.length} vs ${b.length}`;
};

for (const device of devices()) {
  test(`${device}: readTensor converts F32/BF16/F16 natively: every half, random bf16 bits, f32 rounded to bf16`, (t) => {
    const rng = makeRng(t);
    const dir = tmpdir();
    const halves = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const bf = Uint16Array.from({ length: 4099 }, () => rng.int(0, 65536));
    const f32 = randn(rng, 3001, 100);
    f32[0] = -0;
    f32[1] = Math.fround(1 + 2 ** -8); // a tie between two bf16: to the even one
    f32[2] = Math.fround(1 + 3 * 2 ** -8);
    writeSafetensors(path.join(dir, 'model.safetensors'), {
      h: { dtype: 'F16', shape: [256, 256], data: halves },
      b: { dtype: 'BF16', shape: [4099], data: bf },
      f: { dtype: 'F32', shape: [3, 1000, 1], data: f32.subarray(0, 3000) },
      i: { dtype: 'I32', shape: [2], data: new Int32Array([-7, 1 << 30]) },
    });
    const ck = new SafetensorsCheckpoint(dir);
    const h = ck.readTensor('h', [256, 256], { device });
    t.is(h.dtype, 'f32');
    t.is(sameValues(h.toFloat32Array(), Array.from(halves, halfValue)), null, 'F16 -> f32');
    const b = ck.readTensor('b', undefined, { device });
    t.is(sameValues(b.toFloat32Array(), Array.from(bf, bf16Value)), null, 'BF16 -> f32');
    const bb = ck.readTensor('b', [4099], { device, dtype: 'bf16' });
    t.deepEqual(Array.from(bb.toArray() as Uint16Array), Array.from(bf), 'BF16 -> bf16 keeps the bits');
    const f = ck.readTensor('f', [3, 1000, 1], { device });
    t.deepEqual(f.shape, [3, 1000, 1]);
    t.is(sameValues(f.toFloat32Array(), f32.subarray(0, 3000)), null, 'F32 -> f32');
    const fb = ck.readTensor('f', undefined, { device, dtype: 'bf16' });
    t.deepEqual(Array.from(fb.toArray() as Uint16Array), Array.from(f32.subarray(0, 3000), nearestBf16), 'F32 -> bf16 rounds to nearest even');
    const i = ck.readTensor('i', [2], { device });
    t.is(i.dtype, 'i32');
    t.deepEqual(Array.from(i.toArray() as Int32Array), [-7, 1 << 30]);
    for (const x of [h, b, bb, f, fb, i]) x.dispose();
  });
}

test('native reads: a truncated file, a wrong byte length or a conversion that does not exist name the file and the tensor', (t) => {
  const dir = tmpdir();
  const file = path.join(dir, 'model.safetensors');
  writeSafetensors(file, {
    'model.embed_tokens.weight': { dtype: 'F32', shape: [64, 8], data: new Float32Array(512).fill(1) },
    'x.ids': { dtype: 'I32', shape: [4], data: new Int32Array(4) },
  });
  const ck = new SafetensorsCheckpoint(dir);
  const code = (fn: () => unknown) => t.throws(fn, { instanceOf: PeftkitError });
  // Wrong shape asked for: refused before reading.
  t.is(code(() => ck.readTensor('model.embed_tokens.weight', [8, 64]))?.code, 'E_SHAPE');
  // Integer data cannot become a float tensor, nor float data bf16 -> i32.
  let e = code(() => ck.readTensor('x.ids', [4], { dtype: 'f32' }));
  t.is(e?.code, 'E_DTYPE');
  t.true(e!.message.startsWith(file) && e!.message.includes("tensor 'x.ids'"), e!.message);
  // A byte count that does not fill the tensor.
  const info = ck.info('model.embed_tokens.weight');
  e = code(() => Tensor.fromFile({ file, offset: info.begin, bytes: 100, dtype: 'f32', what: "tensor 'w'" }, [64, 8]));
  t.is(e?.code, 'E_SHAPE');
  t.regex(e!.message, /tensor 'w': 100 bytes of f32 data do not fill f32\[64, 8\]/);
  // The file shrinks after its header was read: the read stops at the end and says where.
  fs.truncateSync(file, info.begin + 1000);
  e = code(() => ck.readTensor('model.embed_tokens.weight'));
  t.is(e?.code, 'E_IO');
  t.true(e!.message.startsWith(file), e!.message);
  t.regex(e!.message, /tensor 'model.embed_tokens.weight': the file ends at byte \d+, inside the 2048 bytes of data/);
  fs.rmSync(file);
  t.is(code(() => ck.readTensor('model.embed_tokens.weight'))?.code, 'E_IO');
});
