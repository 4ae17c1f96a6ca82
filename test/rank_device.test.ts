/**
 * A distributed rank's GPU (src/distributed/rank_device.ts): the rule is pure and runs
 * everywhere; making the device current (native/cuda: bind_device, use_device) needs the CUDA
 * build and is checked in child processes, since a process chooses its device once (the ava
 * workers share one).
 */
import test from 'ava';
import { execFileSync } from 'child_process';
import * as path from 'path';
import { describeRankDevice, rankCudaDevice, useRankCudaDevice } from '../src/distributed/rank_device';
import { PeftkitError } from '../src/errors';
import { native } from '../src/native';
import { runtimeInfo } from '../src/runtime';
import { deviceAbsence } from './helpers/check';

test('a rank takes the only visible GPU, else GPU LOCAL_RANK', (t) => {
  t.is(rankCudaDevice(0, 1), 0);
  t.is(rankCudaDevice(3, 1), 0, 'one GPU visible (our launcher, or CUDA_VISIBLE_DEVICES per rank): that one');
  t.deepEqual([0, 1, 2, 3].map((r) => rankCudaDevice(r, 4)), [0, 1, 2, 3]);
  t.is(rankCudaDevice(7, 8), 7);
});

test('a local rank without a GPU of its own is refused: E_DEVICE naming LOCAL_RANK, the count and the fix', (t) => {
  const e = t.throws(() => rankCudaDevice(2, 2), { instanceOf: PeftkitError });
  t.is(e!.code, 'E_DEVICE');
  t.is(e!.message, 'LOCAL_RANK 2: this rank sees 2 CUDA devices, so local rank 2 has none of its own (NCCL refuses two ranks on one GPU); start at most 2 ranks on this machine, or give each rank its own GPU through CUDA_VISIBLE_DEVICES');
  t.throws(() => rankCudaDevice(9, 4), { instanceOf: PeftkitError, code: 'E_DEVICE', message: /^LOCAL_RANK 9: this rank sees 4 CUDA devices/ });
  t.throws(() => rankCudaDevice(0, 0), { instanceOf: PeftkitError, code: 'E_DEVICE', message: 'LOCAL_RANK 0: no CUDA device is visible to this rank' });
});

test('the log names the GPU by index, count and bus id', (t) => {
  t.is(describeRankDevice({ index: 1, visible: 8, name: 'NVIDIA H100 80GB HBM3 (PCI 0000:1B:00.0)' }), 'GPU 1 of 8 visible (NVIDIA H100 80GB HBM3 (PCI 0000:1B:00.0))');
  t.is(describeRankDevice({ index: 0, visible: 1, name: null }), 'GPU 0 of 1 visible');
});

const { cudaBuild, cudaAvailable } = runtimeInfo();
(cudaAvailable ? test.skip : test)(`no CUDA device visible: no device to choose, E_DEVICE${cudaAvailable ? ': a GPU is visible here' : ''}`, (t) => {
  const info = runtimeInfo();
  t.is(info.cudaDeviceCount, 0);
  t.is(info.cudaDevice, null);
  t.is(info.cudaDeviceName, null);
  t.throws(() => useRankCudaDevice(0), { instanceOf: PeftkitError, code: 'E_DEVICE', message: 'LOCAL_RANK 0: no CUDA device is visible to this rank' });
  const native0 = cudaBuild
    ? { code: 'E_DEVICE', message: 'CUDA device 0: expected an index in [0, 0) of the 0 visible devices' }
    : { code: 'E_UNSUPPORTED', message: /^CUDA device 0: this build of the peftkit addon has no CUDA/ };
  t.throws(() => native.cudaUseDevice(0), { instanceOf: PeftkitError, ...native0 });
});

/** Runs `body` (async JS, with `rd` = rank_device, `rt` = runtime, `Tensor`, `ops`) in a fresh process; what it put in `out`. */
function inChild(body: string, env: Record<string, string> = {}): Record<string, unknown> {
  const src = path.join(__dirname, '..', 'src');
  const script = `const rd = require(${JSON.stringify(path.join(src, 'distributed', 'rank_device'))});
const rt = require(${JSON.stringify(path.join(src, 'runtime'))});
const { Tensor } = require(${JSON.stringify(path.join(src, 'tensor'))});
const ops = require(${JSON.stringify(path.join(src, 'ops'))});
const out = {};
(async () => {
  try { ${body} } catch (e) { out.error = { code: e.code, message: e.message }; }
  console.log(JSON.stringify(out));
})();`;
  const stdout = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

const cudaAbsent = deviceAbsence('cuda');
const visible = cudaAbsent ? 0 : runtimeInfo().cudaDeviceCount;
const twoAbsent = cudaAbsent ?? (visible < 2 ? `${visible} GPU visible here, the checks choose GPU 1` : null);

(twoAbsent ? test.skip : test)(`GPU LOCAL_RANK is made current on every thread: tensors, async ops and runtimeInfo on it${twoAbsent ? `: ${twoAbsent}` : ''}`, (t) => {
  const r = inChild(`out.before = rt.runtimeInfo().cudaDevice;
const d = rd.useRankCudaDevice(1);
out.chosen = d.index; out.name = d.name;
const x = Tensor.from(new Float32Array([1, 2, 3]), [1, 3], { device: 'cuda' });
const s = Tensor.from(new Float32Array([2, 3, 4]), [3], { device: 'cuda' });
await ops.mulColsAsync(x, x, s); // on a pool thread, which must take GPU 1 too
out.product = Array.from(x.toFloat32Array());
out.after = rt.runtimeInfo().cudaDevice;
out.again = (rd.useRankCudaDevice(1), rt.runtimeInfo().cudaDevice);`);
  t.is(r.error, undefined, JSON.stringify(r.error));
  t.is(r.before, null);
  t.is(r.chosen, 1);
  t.regex(r.name as string, /\(PCI [0-9A-Fa-f:.]+\)$/);
  t.deepEqual(r.product, [2, 6, 12]);
  t.is(r.after, 1);
  t.is(r.again, 1, 'choosing the same device again is a no-op');
});

(twoAbsent ? test.skip : test)(`a device chosen after CUDA work ran on GPU 0 is refused (E_DEVICE)${twoAbsent ? `: ${twoAbsent}` : ''}`, (t) => {
  const r = inChild(`Tensor.from(new Float32Array([1]), [1], { device: 'cuda' }); rd.useRankCudaDevice(1);`);
  const e = r.error as { code: string; message: string };
  t.is(e.code, 'E_DEVICE');
  t.regex(e.message, /^CUDA device 1 cannot be chosen: this process already works on CUDA device 0/);
});

(twoAbsent ? test.skip : test)(`LOCAL_RANK past the visible GPUs is refused before any CUDA work${twoAbsent ? `: ${twoAbsent}` : ''}`, (t) => {
  const r = inChild(`rd.useRankCudaDevice(${visible}); out.device = rt.runtimeInfo().cudaDevice;`);
  t.like(r.error as object, { code: 'E_DEVICE' });
  t.regex((r.error as { message: string }).message, new RegExp(`^LOCAL_RANK ${visible}: this rank sees ${visible} CUDA devices`));
});
