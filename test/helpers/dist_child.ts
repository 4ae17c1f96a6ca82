/**
 * One rank of a collective test, launched torchrun-style (RANK, WORLD_SIZE, MASTER_ADDR,
 * MASTER_PORT in the environment): `node dist_child.js <scenario>` prints one JSON line, what
 * it computed or the error it got.
 *   sum:   f32 tensors (one per rank pattern), step scalars in f64, and gradient buckets
 *   ncclSum: the tensor and the scalars of sum, over NCCL on CUDA tensors, each rank on the GPU
 *            its LOCAL_RANK picks (useRankCudaDevice), reported as `device`
 *   die:   rank 1 exits abruptly after one all-reduce; the others try a second one
 *   die0:  the same with rank 0 (the store's rank) dying
 *   dieStarted: as die, the second sum started in the background (overlap) and waited for
 *   hang:  rank 1 stops answering (a busy loop) after one all-reduce
 */
import { resolveDistributed } from '../../src/distributed/env';
import { ProcessGroup } from '../../src/distributed/group';
import { useRankCudaDevice } from '../../src/distributed/rank_device';
import { runtimeInfo } from '../../src/runtime';
import { GradBuckets } from '../../src/distributed/buckets';
import { PeftkitError } from '../../src/errors';
import { Tensor } from '../../src/tensor';

function pattern(rank: number, n: number, salt: number): Float32Array {
  // Values whose sums are exact in f32 whatever the order (multiples of 1/8, small), so "exact" is checkable.
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (((i * 7 + rank * 13 + salt * 5) % 97) - 48) / 8;
  return a;
}

const started = Date.now();

async function main(): Promise<void> {
  const scenario = process.argv[2];
  const setup = resolveDistributed()!;
  const device = scenario === 'ncclSum' ? 'cuda' : 'cpu';
  if (device === 'cuda') useRankCudaDevice(setup.localRank);
  const g = await ProcessGroup.join(setup, { prefix: `test-${scenario}`, device });
  const out: Record<string, unknown> = { rank: g.rank, size: g.size };
  try {
    if (scenario === 'ncclSum') {
      out.device = runtimeInfo().cudaDevice;
      const t = Tensor.from(pattern(g.rank, 1000, 0), [1000], { device: 'cuda' });
      g.allReduceSumStart(t, 'test tensor');
      g.waitStarted();
      out.sum = Array.from(t.toFloat32Array());
      out.numbers = g.allReduceNumbers([g.rank + 1, 0.1 * (g.rank + 1), 2 ** 40 + g.rank], 'test numbers');
    } else if (scenario === 'sum') {
      const t = Tensor.from(pattern(g.rank, 1000, 0), [10, 100]);
      g.allReduceSum(t, 'test tensor');
      out.sum = Array.from(t.toFloat32Array());
      out.numbers = g.allReduceNumbers([g.rank + 1, 0.1 * (g.rank + 1), 2 ** 40 + g.rank], 'test numbers');
      // Three gradients in buckets of at most 1 KiB: 50 + 200 floats (1000 bytes) share one, 300 floats get the second.
      const grads = [50, 200, 300].map((n, i) => ({ name: `g${i}`, grad: Tensor.from(pattern(g.rank, n, i + 1), [n]) }));
      const buckets = new GradBuckets(grads, { capBytes: 1024, firstCapBytes: 1024 });
      out.buckets = buckets.count;
      buckets.allReduce(g);
      out.grads = grads.map((x) => Array.from(x.grad.toFloat32Array()));
      buckets.dispose();
      // The same sums overlapped: the backward finishes g2 at point 1, g0 and g1 at point 0
      // (buckets [g2], [g0, g1]); only the first is started before the end.
      const again = [50, 200, 300].map((n, i) => ({ name: `g${i}`, grad: Tensor.from(pattern(g.rank, n, i + 1), [n]), ready: i === 2 ? 1 : 0 }));
      const overlapped = new GradBuckets(again, { capBytes: 1200, firstCapBytes: 1200 });
      out.overlappedBuckets = overlapped.count;
      overlapped.startReady(g, 1);
      overlapped.finish(g);
      out.overlappedGrads = again.map((x) => Array.from(x.grad.toFloat32Array()));
      overlapped.dispose();
      const empty = Tensor.empty([0]);
      g.allReduceSum(empty, 'empty'); // no elements: no collective, no error
      try {
        g.allReduceSum(Tensor.from(new Int32Array([1]), [1], { dtype: 'i32' }), 'an i32 tensor');
      } catch (e) {
        out.dtypeError = { code: (e as PeftkitError).code, message: (e as Error).message };
      }
    } else if (scenario === 'die' || scenario === 'die0' || scenario === 'hang' || scenario === 'dieStarted') {
      const victim = scenario === 'die0' ? 0 : 1;
      const t = Tensor.from(pattern(g.rank, 64, 0), [64]);
      g.allReduceSum(t, 'first');
      if (g.rank === victim) {
        if (scenario === 'hang') {
          const end = Date.now() + 20000;
          while (Date.now() < end); // alive, silent: its sockets stay open
        }
        process.exit(3); // no bye, no close: as a crash
      }
      const t0 = Date.now();
      try {
        if (scenario === 'dieStarted') {
          g.allReduceSumStart(t, 'second');
          g.waitStarted();
        } else {
          g.allReduceSum(t, 'second');
        }
        out.error = null;
      } catch (e) {
        const x = (await g.explain(e)) as PeftkitError;
        out.error = { code: x.code, message: x.message };
      }
      out.ms = Date.now() - t0;
    }
  } finally {
    await g.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
}
main().catch((e) => {
  process.stdout.write(JSON.stringify({ fatal: { code: (e as PeftkitError).code, message: (e as Error).message }, ms: Date.now() - started }) + '\n');
  process.exit(1);
});
