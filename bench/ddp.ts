/**
 * `npm run bench:ddp`: data-parallel training on this machine: 2 ranks × 1 thread against
 * 1 rank × 2 threads at the same global batch (SmolLM2-135M shape, LoRA r=16 all linear,
 * 4 × 256 tokens a step), alternated `--rounds` times so load on a shared machine hits both;
 * and the gradient all-reduce's time per step, in the step and alone. The 2-rank runs go three
 * ways: the sums after the backward (overlap off), overlapped with DDP's bucket sizes (25 MiB,
 * the first 1 MiB), and overlapped with 2 MiB buckets; `--ddp-only` leaves out 1 rank × 2 threads.
 *   npm run bench:ddp [-- --rounds 3 --steps 3 --shape smol135 --ddp-only]
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { freePort } from '../src/distributed/store';
import { writeBenchModel } from './train_child';
import { arg } from './args';

interface RankOut {
  rank: number;
  stepS: number;
  allReduceInStepS: number | null;
  allReduceAloneS: number | null;
  buckets: number | null;
  gradBytes: number;
  cpuSPerStep: number;
  tokensPerStep: number;
}

interface Config {
  nproc: number;
  threads: number;
  /** PEFTKIT_DDP_OVERLAP and PEFTKIT_DDP_BUCKET_MB of the ranks. */
  overlap?: boolean;
  bucketMb?: number;
}

async function launch({ nproc, threads, overlap, bucketMb }: Config, args: string[]): Promise<RankOut[]> {
  const port = await freePort();
  const child = path.join(__dirname, 'ddp_child.js');
  return Promise.all(Array.from({ length: nproc }, (_, rank) => new Promise<RankOut>((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, PEFTKIT_NUM_THREADS: String(threads), PEFTKIT_DDP_OVERLAP: overlap ? '1' : '0', PEFTKIT_DDP_BUCKET_MB: String(bucketMb ?? 25) };
    if (nproc > 1) Object.assign(env, { RANK: String(rank), WORLD_SIZE: String(nproc), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) });
    const c = spawn(process.execPath, [child, ...args], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.once('close', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!) as RankOut) : reject(new Error(`rank ${rank} exited ${code}`))));
  })));
}

async function main(): Promise<void> {
  const shape = arg('shape', 'smol135');
  const rounds = Number(arg('rounds', '3'));
  const steps = arg('steps', '3');
  const T = 256;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-ddp-'));
  try {
    writeBenchModel(path.join(dir, shape), shape);
    console.log(`${os.cpus()[0]?.model}, ${os.cpus().length} cores; ${shape}, LoRA r=16 all linear, global batch 4 x ${T}, ${steps} timed steps after 2 warm-up`);
    const configs: Config[] = [
      ...(process.argv.includes('--ddp-only') ? [] : [{ nproc: 1, threads: 2 }]),
      { nproc: 2, threads: 1, overlap: false },
      { nproc: 2, threads: 1, overlap: true },
      { nproc: 2, threads: 1, overlap: true, bucketMb: 2 },
    ];
    for (let r = 0; r < rounds; r++) {
      for (const c of configs) {
        const load = os.loadavg()[0];
        const outs = await launch(c, [dir, shape, steps, String(4 / c.nproc), String(T)]);
        const o = outs[0];
        const cpu = outs.reduce((a, x) => a + x.cpuSPerStep, 0);
        const ddp = c.nproc > 1 ? (c.overlap ? `, overlap, ${c.bucketMb ?? 25} MiB buckets` : ', no overlap') : '';
        console.log(JSON.stringify({
          round: r + 1, config: `${c.nproc} rank${c.nproc > 1 ? 's' : ''} x ${c.threads} thread${c.threads > 1 ? 's' : ''}${ddp}`, tokensPerS: +(o.tokensPerStep / o.stepS).toFixed(1), stepS: +o.stepS.toFixed(3),
          // With overlap: the wait after the backward, i.e. the part of the sums the backward did not hide.
          allReduceInStepS: o.allReduceInStepS === null ? null : +o.allReduceInStepS.toFixed(4), allReduceAloneS: o.allReduceAloneS === null ? null : +o.allReduceAloneS.toFixed(4),
          buckets: o.buckets, gradMB: +(o.gradBytes / 2 ** 20).toFixed(1), cpuSPerStep: +cpu.toFixed(2), loadBefore: +load.toFixed(1),
        }));
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
void main();
