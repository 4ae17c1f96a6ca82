import test from 'ava';
import { spawnSync } from 'child_process';
import * as os from 'os';
import * as path from 'path';
import { Tensor, PeftkitError, runtimeInfo } from '../src/index';
import { devices, makeRng, randn } from './helpers/check';

test('f32 round trip is exact', (t) => {
  const rng = makeRng(t);
  const data = randn(rng, 37);
  const x = Tensor.from(data, [37]);
  t.deepEqual(x.shape, [37]);
  t.is(x.dtype, 'f32');
  t.deepEqual(x.toFloat32Array(), data);
  x.dispose();
});

test('bf16 stores round-to-nearest-even and widens exactly', (t) => {
  // 1 + 2^-8 is a tie between bf16 neighbours 1 and 1 + 2^-7: even mantissa (1) wins.
  const x = Tensor.from(new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, NaN]), [4], { dtype: 'bf16' });
  const back = x.toFloat32Array();
  t.is(back[0], 1);
  t.is(back[1], 1 + 2 ** -6);
  t.is(back[2], -2.5);
  t.true(Number.isNaN(back[3]));
});

test('zeros are zero; sizes and dtypes are reported', (t) => {
  const z = Tensor.zeros([3, 5], { dtype: 'i32' });
  t.deepEqual([...(z.toArray() as Int32Array)], new Array(15).fill(0));
  t.is(z.nbytes, 60);
  t.is(z.device, 'cpu');
});

test('zero() clears a tensor in place, a view only its own elements', (t) => {
  for (const device of devices()) {
    const rng = makeRng(t);
    const x = Tensor.from(randn(rng, 37), [37], { device });
    const before = x.toFloat32Array();
    x.view(5, [3, 4]).zero();
    const after = x.toFloat32Array();
    for (let i = 0; i < 37; i++) t.is(after[i], i >= 5 && i < 17 ? 0 : before[i], `${device} element ${i}`);
    const b = Tensor.from(new Uint16Array(9).fill(0x7fc0), [9], { device, dtype: 'bf16' });
    b.zero();
    t.deepEqual([...(b.toArray() as Uint16Array)], new Array(9).fill(0));
    x.dispose();
    t.is(t.throws(() => x.zero(), { instanceOf: PeftkitError })?.code, 'E_DISPOSED');
  }
});

test('bad arguments are PeftkitErrors with codes', (t) => {
  const e1 = t.throws(() => Tensor.from(new Float32Array(5), [2, 3]), { instanceOf: PeftkitError });
  t.is(e1?.code, 'E_SHAPE');
  const e2 = t.throws(() => Tensor.empty([2, -1]), { instanceOf: PeftkitError });
  t.is(e2?.code, 'E_SHAPE');
  const e3 = t.throws(() => Tensor.empty([2], { dtype: 'q7' as never }), { instanceOf: PeftkitError });
  t.is(e3?.code, 'E_DTYPE');
  const x = Tensor.from(new Float32Array(4), [4]);
  const e4 = t.throws(() => x.write(new Float32Array(3)), { instanceOf: PeftkitError });
  t.is(e4?.code, 'E_SHAPE');
  x.dispose();
  const e5 = t.throws(() => x.toFloat32Array(), { instanceOf: PeftkitError });
  t.is(e5?.code, 'E_DISPOSED');
});

(runtimeInfo().cudaAvailable ? test.skip : test)(`asking for CUDA where there is none is a clear error${runtimeInfo().cudaAvailable ? ': a GPU is visible here' : ''}`, (t) => {
  const e = t.throws(() => Tensor.empty([2], { device: 'cuda' }), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_DEVICE');
  t.regex(e!.message, /cuda/);
  t.is(Tensor.empty([2], { device: 'auto' }).device, 'cpu');
});

test('runtime reports the CPU path it chose', (t) => {
  const info = runtimeInfo();
  t.regex(info.cpuIsa, /^(avx512|avx512\+amx-bf16|avx512\+amx-bf16-emulated|avx2|neon|portable)$/);
  t.true(info.threads >= 1);
});

test('views share memory and are bounds-checked; copyFrom copies', (t) => {
  const x = Tensor.from(new Float32Array([0, 1, 2, 3, 4, 5, 6, 7]), [2, 4]);
  const row1 = x.view(4, [4]);
  t.deepEqual([...row1.toFloat32Array()], [4, 5, 6, 7]);
  row1.write(new Float32Array([9, 9, 9, 9]));
  t.deepEqual([...x.toFloat32Array()], [0, 1, 2, 3, 9, 9, 9, 9]);
  const inner = row1.view(1, [2]);
  t.deepEqual([...inner.toFloat32Array()], [9, 9]);
  t.is(t.throws(() => x.view(5, [4]), { instanceOf: PeftkitError })?.code, 'E_SHAPE');
  t.is(t.throws(() => row1.view(-1, [1]), { instanceOf: PeftkitError })?.code, 'E_SHAPE');
  const y = Tensor.zeros([4]);
  y.copyFrom(x.view(0, [4]));
  t.deepEqual([...y.toFloat32Array()], [0, 1, 2, 3]);
  t.is(t.throws(() => y.copyFrom(x), { instanceOf: PeftkitError })?.code, 'E_SHAPE');
  x.dispose();
  t.deepEqual([...row1.toFloat32Array()], [9, 9, 9, 9], 'a view keeps the memory alive');
});

test('a view asked for again is the same handle (no new native handle per training step), until disposed', (t) => {
  const x = Tensor.from(new Float32Array([0, 1, 2, 3, 4, 5, 6, 7]), [8]);
  const a = x.view(2, [2, 3]);
  t.is(x.view(2, [2, 3]), a);
  t.not(x.view(2, [6]), a, 'another shape is another view');
  t.not(x.view(1, [2, 3]), a, 'another offset is another view');
  a.dispose();
  const b = x.view(2, [2, 3]);
  t.not(b, a, 'a disposed view is replaced');
  t.deepEqual([...b.toFloat32Array()], [2, 3, 4, 5, 6, 7]);
  // A KV cache asks for a new slot every token: only the recent views are remembered (an old
  // one is handed out fresh), and handles already given out keep working.
  const cache = Tensor.from(Float32Array.from({ length: 600 }, (_, i) => i), [600]);
  const first = cache.view(0, [1]);
  for (let i = 1; i < 500; i++) cache.view(i, [1]);
  t.is(cache.view(499, [1]), cache.view(499, [1]));
  t.not(cache.view(0, [1]), first, 'the oldest view was forgotten');
  t.deepEqual([...first.toFloat32Array()], [0]);
  cache.dispose();
  x.dispose();
  t.deepEqual([...b.toFloat32Array()], [2, 3, 4, 5, 6, 7], 'a view outlives its parent as before');
  b.dispose();
});

test('an addon that cannot be loaded is an E_ADDON error that says how to build it', (t) => {
  // A child process: this one has its addon loaded already.
  const index = path.join(__dirname, '..', 'src', 'index.js');
  const script = `try { require(${JSON.stringify(index)}).runtimeInfo(); console.log('loaded'); } ` +
    `catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
  const r = spawnSync(process.execPath, ['-e', script], {
    encoding: 'utf8',
    env: { ...process.env, PEFTKIT_ADDON: path.join(os.tmpdir(), 'no-such-peftkit.node') },
  });
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { code: string; message: string };
  t.is(out.code, 'E_ADDON');
  t.regex(out.message, /no-such-peftkit\.node/);
  t.regex(out.message, /npm rebuild peftkit/);
});
