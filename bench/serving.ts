/**
 * `npm run bench:serving`: many adapters on one base. The SmolLM2-135M shape (random init, f32),
 * 8 LoRA adapters (r 16, all linear layers) loaded by name, 8 requests of 64 new tokens (greedy,
 * each its own adapter and prompt): one after another with Model.generate, then together with one
 * Model.generateBatch. Tokens/s counts generated tokens; both sides include their prefill. Also
 * reports whether each row's batched tokens equal its tokens alone, and the 1-minute load average
 * before and after each side (the machine may be shared: read the figures beside it).
 *   npm run bench:serving [-- --rows 8 --tokens 64 --reps 3 --runs 1 --shape smol135|tiny --omp-wait passive|active]
 * Each run alternates the two sides --reps times in one process and reports their medians.
 * The work runs in a child process started with OMP_WAIT_POLICY (default passive: on a machine
 * whose cores other processes hold, libgomp's spinning made generation 10-20× slower, see
 * docs/ARCHITECTURE.md). Writes bench/results/serving.json.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModelSync } from '../src/inference/model';
import { runtimeInfo } from '../src/index';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { SeededRng } from '../src/util/rng';
import { writeBenchModel } from './train_child';
import { arg } from './args';

const ROOT = path.join(__dirname, '..', '..');

interface Side {
  seconds: number;
  tokensPerS: number;
  load1: [number, number];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * One run in this (child) process: both sides on the same loaded model, alternated `reps` times
 * (load on a shared machine drifts; alternating exposes both sides to it alike). Medians.
 */
function measure(dir: string, rows: number, tokens: number, reps: number): { sequential: Side; batched: Side; identicalRows: number; ratios: number[] } {
  const m = loadModelSync(dir);
  for (let i = 0; i < rows; i++) {
    const a = LoraAdapter.create(m.llama.linearModules, defaultLoraConfig({ r: 16, lora_alpha: 32, target_modules: 'all-linear', init_lora_weights: false }), { seed: i + 1 });
    // Small B: the adapters change the tokens without making the random model's logits explode.
    for (const l of a.layers.values()) l.B.write(l.B.toFloat32Array().map((v) => v * 0.05));
    const f = path.join(dir, '..', `serving-adapter-${i}`);
    a.save(f);
    a.dispose();
    m.loadAdapter(`a${i}`, f);
  }
  const rng = new SeededRng(7);
  const requests = Array.from({ length: rows }, (_, i) => ({
    prompt: Array.from({ length: 16 }, () => rng.nextU32() % m.config.vocabSize), adapter: `a${i}`, maxNewTokens: tokens, temperature: 0, stopTokens: [],
  }));
  m.generate(requests[0].prompt, { ...requests[0], maxNewTokens: 2 }); // warm-up
  const time = <T>(f: () => T): { out: T; side: Side } => {
    const l0 = os.loadavg()[0];
    const t0 = process.hrtime.bigint();
    const out = f();
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    return { out, side: { seconds, tokensPerS: (rows * tokens) / seconds, load1: [l0, os.loadavg()[0]] } };
  };
  const seqs: Side[] = [], bats: Side[] = [];
  let identicalRows = rows;
  for (let rep = 0; rep < reps; rep++) {
    const seq = time(() => requests.map(({ prompt, ...o }) => m.generate(prompt, o)));
    const bat = time(() => m.generateBatch(requests));
    identicalRows = Math.min(identicalRows, seq.out.filter((g, i) => g.ids.join() === bat.out[i].ids.join()).length);
    seqs.push(seq.side);
    bats.push(bat.side);
  }
  m.dispose();
  const med = (sides: Side[]): Side => sides.find((x) => x.seconds === median(sides.map((y) => y.seconds)))!;
  return { sequential: med(seqs), batched: med(bats), identicalRows, ratios: seqs.map((x, i) => x.seconds / bats[i].seconds) };
}

function main(): void {
  const rows = Number(arg('rows', '8')), tokens = Number(arg('tokens', '64')), runs = Number(arg('runs', '1')), reps = Number(arg('reps', '3')), shape = arg('shape', 'smol135');
  const dir = path.join(os.tmpdir(), 'peftkit-bench', shape);
  if (process.argv.includes('--child')) {
    console.log(JSON.stringify(measure(dir, rows, tokens, reps)));
    return;
  }
  if (!fs.existsSync(path.join(dir, 'model.safetensors'))) writeBenchModel(dir, shape);
  const ompWait = arg('omp-wait', 'passive');
  const results = [];
  for (let run = 0; run < runs; run++) {
    const r = spawnSync(process.execPath, [__filename, ...process.argv.slice(2), '--child'], { encoding: 'utf8', env: { ...process.env, OMP_WAIT_POLICY: ompWait }, maxBuffer: 1 << 24 });
    if (r.status !== 0) throw new Error(`bench child failed:\n${r.stderr}`);
    const m = JSON.parse(r.stdout.trim().split('\n').pop()!) as ReturnType<typeof measure>;
    const speedup = m.batched.tokensPerS / m.sequential.tokensPerS;
    console.log(
      `run ${run}: one after another ${m.sequential.tokensPerS.toFixed(1)} tok/s (${m.sequential.seconds.toFixed(1)} s, load ${m.sequential.load1.map((x) => x.toFixed(1)).join('→')}); ` +
        `batched ${m.batched.tokensPerS.toFixed(1)} tok/s (${m.batched.seconds.toFixed(1)} s, load ${m.batched.load1.map((x) => x.toFixed(1)).join('→')}); ` +
        `${speedup.toFixed(2)}× (medians of ${reps}; each pair: ${m.ratios.map((x) => x.toFixed(2)).join(', ')}); rows identical to alone: ${m.identicalRows}/${rows}`,
    );
    results.push({ run, ...m, speedup });
  }
  const out = path.join(ROOT, 'bench', 'results', 'serving.json');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const info = runtimeInfo();
  fs.writeFileSync(out, JSON.stringify({ shape, rows, tokens, ompWait, cpus: os.cpus().length, cpu: os.cpus()[0]?.model, runtime: info, results }, null, 2) + '\n');
  console.log(`wrote ${path.relative(ROOT, out)}`);
}

main();
