import test from 'ava';
import * as path from 'path';
import { distributedAvailable } from '../src/distributed/group';
import { launchedRankThreads, resolveDistributed, threadsPerRank } from '../src/distributed/env';
import { PeftkitError } from '../src/errors';
import { launchRanks } from './helpers/ranks';
import { rankVisibleDevices } from '../src/cli/launch';
import { train } from '../src/train/train';

const child = path.join(__dirname, 'helpers', 'dist_child.js');
// The collectives need an addon built with Gloo (libgloo-dev; .ci/run installs it).
const gloo = distributedAvailable();
const needsGloo = gloo ? test : test.skip;
if (!gloo) console.log('distributed.test: collective tests skipped: the addon was built without Gloo (apt-get install libgloo-dev, then npx node-gyp rebuild)');

function pattern(rank: number, n: number, salt: number): number[] {
  return Array.from({ length: n }, (_, i) => (((i * 7 + rank * 13 + salt * 5) % 97) - 48) / 8);
}

test('torchrun variables: read, overridden by options, and refused with the variable named', (t) => {
  t.is(resolveDistributed({}, {}), null);
  t.is(resolveDistributed({}, { WORLD_SIZE: '1', RANK: '0' }), null);
  t.deepEqual(resolveDistributed({}, { WORLD_SIZE: '4', RANK: '2', MASTER_ADDR: 'node0', MASTER_PORT: '1234', LOCAL_RANK: '0' }), {
    rank: 2, worldSize: 4, localRank: 0, masterAddr: 'node0', masterPort: 1234, localAddr: '', timeoutMs: 300000, overlap: true, bucketCapMb: 25,
  });
  const d = resolveDistributed({ rank: 1, worldSize: 2, masterPort: 5000, timeoutMs: 10, overlap: false, bucketCapMb: 0.5 }, { WORLD_SIZE: '8', RANK: '7', MASTER_PORT: '1', PEFTKIT_DDP_OVERLAP: '1', PEFTKIT_DDP_BUCKET_MB: '4' })!;
  t.like(d, { rank: 1, worldSize: 2, localRank: 1, masterAddr: '127.0.0.1', masterPort: 5000, timeoutMs: 10, overlap: false, bucketCapMb: 0.5 });
  t.like(resolveDistributed({}, { WORLD_SIZE: '2', RANK: '0', PEFTKIT_DDP_OVERLAP: '0', PEFTKIT_DDP_BUCKET_MB: '4' })!, { overlap: false, bucketCapMb: 4 });
  // The local rank: LOCAL_RANK, else Slurm's SLURM_LOCALID (srun), else the rank.
  t.like(resolveDistributed({}, { WORLD_SIZE: '8', RANK: '5', SLURM_LOCALID: '1' })!, { rank: 5, localRank: 1 });
  t.like(resolveDistributed({}, { WORLD_SIZE: '8', RANK: '5', SLURM_LOCALID: '1', LOCAL_RANK: '3' })!, { localRank: 3 });
  t.like(resolveDistributed({}, { WORLD_SIZE: '8', RANK: '5' })!, { localRank: 5 });
  const bad: Array<[Record<string, string>, RegExp]> = [
    [{ WORLD_SIZE: '2' }, /^RANK: WORLD_SIZE is 2 but this process has no rank/],
    [{ WORLD_SIZE: '2', RANK: '2' }, /^RANK: expected a rank in \[0, 1\] \(WORLD_SIZE 2\), got 2/],
    [{ WORLD_SIZE: 'two', RANK: '0' }, /^WORLD_SIZE \(environment\): expected an integer in \[1, \d+\], got 'two'/],
    [{ WORLD_SIZE: '2', RANK: '0', MASTER_PORT: '70000' }, /^MASTER_PORT \(environment\): expected an integer in \[1, 65535\], got '70000'/],
    [{ WORLD_SIZE: '2', RANK: '-1' }, /^RANK \(environment\)/],
    [{ WORLD_SIZE: '2', RANK: '0', PEFTKIT_DDP_OVERLAP: 'yes' }, /^PEFTKIT_DDP_OVERLAP \(environment\): expected 0 or 1, got 'yes'/],
    [{ WORLD_SIZE: '2', RANK: '0', PEFTKIT_DDP_BUCKET_MB: '0' }, /^PEFTKIT_DDP_BUCKET_MB \(environment\): expected a number of MiB > 0, got "0"/],
  ];
  for (const [env, re] of bad) {
    const e = t.throws(() => resolveDistributed({}, env), { instanceOf: PeftkitError });
    t.is(e!.code, 'E_ARG');
    t.regex(e!.message, re);
  }
  t.throws(() => resolveDistributed({ worldSize: 2, rank: 0.5 }, {}), { message: /^distributed.rank: expected an integer/ });
});

test('train() refuses a distributed setup without a rank before it starts a worker', async (t) => {
  const e = await t.throwsAsync(train({ model: 'm', data: 'd', out: 'o', distributed: { worldSize: 2 } }).result, { instanceOf: PeftkitError });
  t.is(e!.code, 'E_ARG');
  t.regex(e!.message, /^RANK: WORLD_SIZE is 2 but this process has no rank: set RANK \(0\.\.1\) or distributed\.rank/);
});

test('threads per rank: divided among the ranks of a machine; PEFTKIT_NUM_THREADS kept when set', (t) => {
  t.is(threadsPerRank(2, { PEFTKIT_NUM_THREADS: '8' }), 4);
  t.is(threadsPerRank(3, { PEFTKIT_NUM_THREADS: '2' }), 1);
  t.is(launchedRankThreads({ LOCAL_WORLD_SIZE: '2', PEFTKIT_NUM_THREADS: '6' }), null);
  t.is(launchedRankThreads({ LOCAL_WORLD_SIZE: '1' }), null);
  t.is(launchedRankThreads({}), null);
  t.is(launchedRankThreads({ LOCAL_WORLD_SIZE: '2' }), threadsPerRank(2, {}));
  t.is(launchedRankThreads({ SLURM_NTASKS_PER_NODE: '64' }), 1);
});

needsGloo('2 ranks: all-reduce sums are exact and identical on every rank; scalars in f64; gradient buckets', async (t) => {
  const rs = await launchRanks({ worldSize: 2, args: [child, 'sum'], timeoutMs: 60000 });
  for (const r of rs) t.is(r.code, 0, r.stderr + r.stdout);
  const want = pattern(0, 1000, 0).map((x, i) => x + pattern(1, 1000, 0)[i]);
  for (const r of rs) {
    t.deepEqual(r.json!.sum, want);
    t.deepEqual(r.json!.numbers, [3, 0.1 + 0.2, 2 ** 41 + 1]);
    t.is(r.json!.buckets, 2);
    const sums = [50, 200, 300].map((n, i) => pattern(0, n, i + 1).map((x, j) => x + pattern(1, n, i + 1)[j]));
    t.deepEqual(r.json!.grads, sums);
    // Started during a (pretend) backward, in the order the points finish them: the same sums.
    t.is(r.json!.overlappedBuckets, 2);
    t.deepEqual(r.json!.overlappedGrads, sums);
    t.like(r.json!.dtypeError as object, { code: 'E_DTYPE', message: 'an i32 tensor: the all-reduce sums f32 tensors, got i32' });
  }
});

needsGloo('3 ranks: the ring sums exactly too', async (t) => {
  const rs = await launchRanks({ worldSize: 3, args: [child, 'sum'], timeoutMs: 60000 });
  for (const r of rs) t.is(r.code, 0, r.stderr + r.stdout);
  const want = pattern(0, 1000, 0).map((x, i) => x + pattern(1, 1000, 0)[i] + pattern(2, 1000, 0)[i]);
  for (const r of rs) t.deepEqual(r.json!.sum, want);
});

// 'dieStarted': the survivor's sum runs on the group's own thread (overlap) and fails in the wait.
for (const [scenario, how] of [['die', ''], ['dieStarted', ' (its sum started in the background: the wait fails)']]) {
  needsGloo(`a rank that dies: the other stops at once with E_DIST naming it${how}`, async (t) => {
    const rs = await launchRanks({ worldSize: 2, args: [child, scenario], timeoutMs: 60000, env: { PEFTKIT_DIST_TIMEOUT_MS: '30000' } });
    t.is(rs[1].code, 3);
    t.is(rs[0].code, 0, rs[0].stderr);
    const e = rs[0].json!.error as { code: string; message: string };
    t.is(e.code, 'E_DIST');
    t.regex(e.message, /^rank 1 died \(its connection to the store closed without finishing\): rank 0 of 2: all-reduce of second failed/);
    t.true((rs[0].json!.ms as number) < 10000, `took ${rs[0].json!.ms} ms, the timeout is 30 s: the death was not seen by its closed sockets`);
  });
}

needsGloo('rank 0 (the store) dies: the other names rank 0', async (t) => {
  const rs = await launchRanks({ worldSize: 2, args: [child, 'die0'], timeoutMs: 60000, env: { PEFTKIT_DIST_TIMEOUT_MS: '30000' } });
  t.is(rs[0].code, 3);
  const e = rs[1].json!.error as { code: string; message: string };
  t.is(e.code, 'E_DIST');
  t.regex(e.message, /^rank 0 is gone or hung \(its store at 127\.0\.0\.1:\d+ does not answer/);
  t.regex(e.message, /rank 1 of 2: all-reduce of second failed/);
});

needsGloo('a rank that hangs: the other stops after the timeout, saying none died', async (t) => {
  const rs = await launchRanks({ worldSize: 2, args: [child, 'hang'], timeoutMs: 60000, env: { PEFTKIT_DIST_TIMEOUT_MS: '1500' }, killAfterRank: 0 });
  t.is(rs[0].code, 0, rs[0].stderr);
  const e = rs[0].json!.error as { code: string; message: string };
  t.is(e.code, 'E_DIST');
  t.regex(e.message, /^no rank has died \(all connected: 0, 1\); one hung past the timeout of 1500 ms/);
  t.regex(e.message, /Timed out/);
  const ms = rs[0].json!.ms as number;
  t.true(ms >= 1400 && ms < 15000, `${ms} ms`);
});

needsGloo('a rank missing from the rendezvous: E_DIST after the timeout, naming the rank that never joined and the store', async (t) => {
  // WORLD_SIZE 2 but only rank 0 started.
  const rs = await launchRanks({ worldSize: 1, args: [child, 'sum'], timeoutMs: 60000, env: { WORLD_SIZE: '2', PEFTKIT_DIST_TIMEOUT_MS: '1000' } });
  t.is(rs[0].code, 1);
  const f = rs[0].json!.fatal as { code: string; message: string };
  t.is(f.code, 'E_DIST');
  t.regex(f.message, /^rank 1 never joined \(never reached the store at 127\.0\.0\.1:\d+\): /);
  t.regex(f.message, /rank 0: connecting to the other ranks failed \(rendezvous at 127\.0\.0\.1:\d+\)|not set within 1000 ms/);
  const ms = rs[0].json!.ms as number;
  t.true(ms >= 1000 && ms < 15000, `${ms} ms from start to the error`);
});

test('--nproc-per-node with --device cuda: each local rank sees its own GPU', (t) => {
  t.deepEqual([0, 1, 2].map((r) => rankVisibleDevices(r, 3, {})), ['0', '1', '2']);
  t.deepEqual([0, 1].map((r) => rankVisibleDevices(r, 2, { CUDA_VISIBLE_DEVICES: '5, 7,2' })), ['5', '7']);
  t.deepEqual([0, 1].map((r) => rankVisibleDevices(r, 2, { CUDA_VISIBLE_DEVICES: 'GPU-a1,GPU-b2' })), ['GPU-a1', 'GPU-b2']);
  t.is(rankVisibleDevices(1, 2, { CUDA_VISIBLE_DEVICES: '' }), '1');
  t.throws(() => rankVisibleDevices(0, 2, { CUDA_VISIBLE_DEVICES: '0' }), { instanceOf: PeftkitError, code: 'E_ARG', message: /names 1 GPU; each rank needs its own/ });
});
