/**
 * `npm run bench:kernels`: every module in bench/kernels/ that exports `run()` measures its
 * kernels (beside their peers where one exists); the rows are printed as a table and written
 * to bench/results/kernels.json with the machine they ran on.
 * Filter modules with `npm run bench:kernels -- gemm attention`.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runtimeInfo } from '../src/index';
import type { BenchRow } from './kernels/types';

interface BenchModule {
  run(): Promise<BenchRow[]> | BenchRow[];
}

function fmt(x: number | undefined, digits = 1): string {
  return x === undefined ? '' : x.toFixed(digits);
}

async function main(): Promise<void> {
  const only = process.argv.slice(2);
  const dir = path.join(__dirname, 'kernels');
  const names = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.js') && f !== 'types.js' && !f.startsWith('_'))
    .map((f) => f.replace(/\.js$/, ''))
    .filter((n) => only.length === 0 || only.includes(n))
    .sort();
  const machine = `${os.cpus()[0]?.model ?? 'unknown cpu'}, ${os.cpus().length} cores, ${runtimeInfo().cpuIsa}`;
  console.log(`machine: ${machine}`);
  const rows: BenchRow[] = [];
  for (const name of names) {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const mod = require(path.join(dir, name)) as Partial<BenchModule>;
    if (typeof mod.run !== 'function') continue;
    console.log(`\n## ${name}`);
    console.log('kernel | shape | ms | GFLOP/s | peer | peer ms | peer GFLOP/s | note');
    for (const r of await mod.run()) {
      rows.push(r);
      console.log(
        [r.kernel, r.shape, fmt(r.ms, 3), fmt(r.gflops), r.peer?.name ?? '', fmt(r.peer?.ms, 3), fmt(r.peer?.gflops), r.note ?? ''].join(' | '),
      );
    }
  }
  const out = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'kernels.json'), JSON.stringify({ machine, date: new Date().toISOString(), rows }, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
