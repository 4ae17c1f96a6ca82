/**
 * `npm run bench:service`: examples/service while a job trains on every core. The service runs
 * in a child (bench/service_child.ts, which samples its event-loop delay); this process asks
 * GET /health every `--interval` ms, first for `--idle` seconds with nothing running, then for
 * `--seconds` seconds while a LoRA job trains on the SmolLM2-135M shape (random init, r=16 on all
 * linear layers, batch 2 × 256 random tokens) with all the threads, and reports the event loop's
 * delay and /health's latency (p50, p99, max) for both phases. Target: both p99 < 50 ms.
 *   npm run bench:service [-- --seconds 60 --idle 5 --interval 20 --shape smol135]
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { writeBenchModel } from './train_child';
import { arg } from './args';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

function start(dir: string): Promise<{ child: ChildProcess; base: string; lines: string[] }> {
  const child = spawn(process.execPath, [path.join(__dirname, 'service_child.js')], { env: { ...process.env, PORT: '0', PEFTKIT_SERVICE_DIR: path.join(dir, 'service') }, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      lines.push(...d.toString().split('\n').filter(Boolean));
      const m = lines.map((l) => /listening on (http:\/\/[\d.]+:\d+)/.exec(l)).find(Boolean);
      if (m) resolve({ child, base: m[1], lines });
    });
    child.once('exit', (code) => reject(new Error(`the service exited with ${code}`)));
  });
}

/** The loop delay the child measured since its last report. */
async function loopDelay(child: ChildProcess, lines: string[]): Promise<{ p50: number; p99: number; max: number; samples: number }> {
  const before = lines.length;
  child.kill('SIGUSR2');
  for (let i = 0; i < 500 && !lines.slice(before).some((l) => l.startsWith('LOOP ')); i++) await sleep(10);
  return JSON.parse(lines.slice(before).find((l) => l.startsWith('LOOP '))!.slice(5));
}

/** GET /health every `interval` ms for `seconds`: the latencies in ms. */
async function pollHealth(base: string, seconds: number, interval: number, until: () => boolean = () => false): Promise<number[]> {
  const out: number[] = [];
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end && !until()) {
    const t0 = process.hrtime.bigint();
    const r = await fetch(`${base}/health`);
    await r.json();
    out.push(Number(process.hrtime.bigint() - t0) / 1e6);
    await sleep(interval);
  }
  return out;
}

const row = (phase: string, loop: { p50: number; p99: number; max: number }, health: number[], load: string) =>
  `| ${phase} | ${loop.p50.toFixed(1)} / ${loop.p99.toFixed(1)} / ${loop.max.toFixed(1)} | ${pct(health, 50).toFixed(1)} / ${pct(health, 99).toFixed(1)} / ${Math.max(...health).toFixed(1)} | ${health.length} | ${load} |`;

async function main(): Promise<void> {
  const shape = arg('shape', 'smol135');
  const seconds = Number(arg('seconds', '60'));
  const idle = Number(arg('idle', '5'));
  const interval = Number(arg('interval', '20'));
  const T = 256;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-service-'));
  let service: Awaited<ReturnType<typeof start>> | null = null;
  try {
    const model = path.join(dir, shape);
    writeBenchModel(model, shape);
    const vocab = (JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
    const data = path.join(dir, 'data.jsonl');
    let s = 1;
    const next = () => ((s = (s * 1103515245 + 12345) >>> 0) % vocab);
    fs.writeFileSync(data, Array.from({ length: 64 }, () => JSON.stringify({ input_ids: Array.from({ length: T }, next) })).join('\n') + '\n');
    service = await start(dir);
    const { child, base, lines } = service;
    console.log(`${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores; shape ${shape}; GET /health every ${interval} ms`);
    console.log('| phase | event-loop delay p50 / p99 / max ms | GET /health p50 / p99 / max ms | requests | load (1 min) |');
    console.log('|---|---|---|---|---|');
    await loopDelay(child, lines); // from here on
    const idleLoad = os.loadavg()[0].toFixed(1);
    const idleHealth = await pollHealth(base, idle, interval);
    console.log(row('idle', await loopDelay(child, lines), idleHealth, idleLoad));

    const job = { model, data, steps: 100000, batchSize: 2, maxLength: T, r: 16, alpha: 32, targets: 'all-linear', dropout: 0, id: 'bench' };
    const posted = await fetch(`${base}/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(job) });
    if (posted.status !== 201) throw new Error(`POST /jobs: ${posted.status} ${await posted.text()}`);
    const trainLoad = os.loadavg()[0].toFixed(1);
    // Model loading included: the job's worker reads 540 MB of weights while /health is asked.
    const health = await pollHealth(base, seconds, interval);
    const loop = await loopDelay(child, lines);
    const info = (await (await fetch(`${base}/jobs/bench`)).json()) as { status: string; step: number; threads: number };
    console.log(row(`training (${info.status}, ${info.step} steps done, ${info.threads} threads)`, loop, health, `${trainLoad} → ${os.loadavg()[0].toFixed(1)}`));
    await fetch(`${base}/jobs/bench`, { method: 'DELETE' });
  } finally {
    if (service) {
      service.child.kill('SIGTERM');
      await new Promise((r) => service!.child.once('exit', r));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main();
