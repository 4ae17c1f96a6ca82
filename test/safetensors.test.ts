import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../src/index';
import { SafetensorsCheckpoint, SafetensorsFile, writeSafetensors } from '../src/model/safetensors';
import { makeRng, randn } from './helpers/check';

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
