/**
 * NCCL, the process group of CUDA tensors (native/cuda/nccl_group.cu): compiled into the CUDA
 * build only and opened at run time, so most of this runs where scripts/gpu-check.sh runs the
 * suite. Here (a CPU build) only the refusal runs; the rest is test.skip with the reason.
 */
import test from 'ava';
import { execFileSync } from 'child_process';
import * as path from 'path';
import { PeftkitError } from '../src/errors';
import { ncclCompiled, ProcessGroup } from '../src/distributed/group';
import { freePort } from '../src/distributed/store';
import type { DistributedSetup } from '../src/distributed/env';
import { runtimeInfo } from '../src/runtime';
import { Tensor } from '../src/tensor';
import { deviceAbsence } from './helpers/check';
import { launchRanks } from './helpers/ranks';

const compiled = ncclCompiled();
const child = path.join(__dirname, 'helpers', 'dist_child.js');

async function oneRank(): Promise<DistributedSetup> {
  return { rank: 0, worldSize: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: await freePort(), localAddr: '127.0.0.1', timeoutMs: 20000, overlap: true, bucketCapMb: 25 };
}

/** GPUs nvidia-smi lists (0 without it). */
function gpuCount(): number {
  try {
    return execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8' }).split('\n').filter((l) => l.startsWith('GPU ')).length;
  } catch {
    return 0;
  }
}

(compiled ? test.skip : test)(`a CUDA group on an addon built without CUDA is E_UNSUPPORTED${compiled ? ': this addon is the CUDA build' : ''}`, async (t) => {
  const e = await t.throwsAsync(ProcessGroup.join(await oneRank(), { device: 'cuda' }), { instanceOf: PeftkitError });
  t.is(e!.code, 'E_UNSUPPORTED');
  t.regex(e!.message, /^distributed training on CUDA \(WORLD_SIZE 1\): this build of the peftkit addon has no CUDA, so no NCCL group/);
});

const notCompiled = 'the addon is not the CUDA build (NCCL is compiled only there; scripts/gpu-check.sh runs this)';

(compiled ? test : test.skip)(`a missing NCCL library is one E_UNSUPPORTED line naming it${compiled ? '' : `: ${notCompiled}`}`, async (t) => {
  const e = await t.throwsAsync(ProcessGroup.join(await oneRank(), { device: 'cuda', ncclLibrary: '/nonexistent/libnccl.so.2' }), { instanceOf: PeftkitError });
  t.is(e!.code, 'E_UNSUPPORTED');
  t.regex(e!.message, /^data-parallel training on CUDA needs NCCL: \/nonexistent\/libnccl\.so\.2 could not be loaded \(.*\); install NCCL 2/);
  t.false(e!.message.includes('\n'));
});

const cudaAbsent = deviceAbsence('cuda');
(cudaAbsent ? test.skip : test)(`1 rank over NCCL: sums of CUDA tensors in place, started and waited; f64 scalars${cudaAbsent ? `: ${cudaAbsent} (scripts/gpu-check.sh runs it)` : ''}`, async (t) => {
  const g = await ProcessGroup.join(await oneRank(), { device: 'cuda', prefix: 'nccl-1' });
  try {
    t.is(g.backend, 'nccl');
    const values = Float32Array.from({ length: 1000 }, (_, i) => (i % 97) / 8 - 6);
    const x = Tensor.from(values, [1000], { device: 'cuda' });
    g.allReduceSum(x, 'one rank');
    t.deepEqual(x.toFloat32Array(), values);
    g.allReduceSumStart(x, 'started');
    g.waitStarted();
    t.deepEqual(x.toFloat32Array(), values);
    t.deepEqual(g.allReduceNumbers([3, 2 ** 40 + 1], 'numbers'), [3, 2 ** 40 + 1]);
    const e = t.throws(() => g.allReduceSum(Tensor.from(values, [1000]), 'a CPU tensor'), { instanceOf: PeftkitError });
    t.is(e!.code, 'E_DEVICE');
    g.barrier();
    x.dispose();
  } finally {
    await g.close();
  }
});

const gpus = cudaAbsent ? 0 : gpuCount();
const twoAbsent = cudaAbsent ?? (gpus < 2 ? `${gpus} GPU here, NCCL needs one per rank` : null);
(twoAbsent ? test.skip : test)(`2 ranks over NCCL, one GPU each: exact sums on both${twoAbsent ? `: ${twoAbsent}` : ''}`, async (t) => {
  const rs = await launchRanks({ worldSize: 2, args: [child, 'ncclSum'], timeoutMs: 120000, perRankEnv: (r) => ({ CUDA_VISIBLE_DEVICES: String(r) }) });
  for (const r of rs) t.is(r.code, 0, r.stderr + r.stdout);
  const want = (n: number) => Array.from({ length: n }, (_, i) => [0, 1].reduce((a, rank) => a + ((((i * 7 + rank * 13) % 97) - 48) / 8), 0));
  for (const r of rs) {
    t.deepEqual(r.json!.sum, want(1000));
    t.deepEqual(r.json!.numbers, [3, 0.1 + 0.2, 2 ** 41 + 1]);
    t.is(r.json!.device, 0, 'one GPU visible: the rank takes it');
  }
});

// As torchrun, Slurm or Kubernetes start ranks: all of them see every GPU. Each must take the
// one its LOCAL_RANK names, on every thread that works on CUDA (the join runs on a pool
// thread, the tensors on the main one): otherwise both work on GPU 0 and NCCL refuses them.
const visible = cudaAbsent ? 0 : runtimeInfo().cudaDeviceCount;
const sharedAbsent = cudaAbsent ?? (visible < 2 ? `${visible} GPU visible here, 2 ranks need one each` : null);
(sharedAbsent ? test.skip : test)(`2 ranks that see every GPU: each takes GPU LOCAL_RANK, and the sums are exact${sharedAbsent ? `: ${sharedAbsent}` : ''}`, async (t) => {
  const rs = await launchRanks({ worldSize: 2, args: [child, 'ncclSum'], timeoutMs: 120000 });
  for (const r of rs) t.is(r.code, 0, r.stderr + r.stdout);
  t.deepEqual(rs.map((r) => r.json!.device), [0, 1]);
  t.deepEqual(rs[0].json!.sum, rs[1].json!.sum);
});

// A rank that never starts: NCCL's init would wait for it forever; the nonblocking init gives
// up at the timeout (PEFTKIT_DIST_TIMEOUT_MS) and the error names the rank that never came.
(cudaAbsent ? test.skip : test)(`a rank that never starts: rank 0 fails joining NCCL within the timeout, naming it${cudaAbsent ? `: ${cudaAbsent} (scripts/gpu-check.sh runs it)` : ''}`, async (t) => {
  const rs = await launchRanks({ worldSize: 1, args: [child, 'ncclSum'], timeoutMs: 60000, env: { WORLD_SIZE: '2', PEFTKIT_DIST_TIMEOUT_MS: '3000' } });
  t.is(rs[0].code, 1, rs[0].stderr + rs[0].stdout);
  const f = rs[0].json!.fatal as { code: string; message: string };
  t.is(f.code, 'E_DIST');
  t.regex(f.message, /^rank 1 never joined \(never reached the store at 127\.0\.0\.1:\d+\): rank 0: joining NCCL's group of 2 did not complete within 3000 ms/);
  const ms = rs[0].json!.ms as number;
  t.true(ms >= 3000 && ms < 30000, `${ms} ms from start to the error`);
});
