/**
 * Child process of the fuzz tests (see fuzz.ts): builds a case's fixture once, then runs its
 * iterations, each on a fresh copy. Prints `iter <i> seed <s>` before and `damage <what>` during
 * each iteration (synchronously, so a crash still leaves the seed on record), `FAIL ...\nEND` on
 * a violation (exit 1), and `result <json counts>` at the end.
 * Usage: node fuzz_child.js <case> <seed> <iterations> <exact|derived>
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FuzzViolation, fuzzRng, iterationSeed } from './fuzz';
import type { FuzzCase } from './fuzz_case';
import { ADAPTER_CASES } from './fuzz_adapter_cases';
import { BNB_CASES } from './fuzz_bnb_cases';
import { DATA_CASES } from './fuzz_data_cases';
import { MODEL_CASES } from './fuzz_model_cases';
import { RESUME_CASES } from './fuzz_resume_cases';

const CASES: Record<string, FuzzCase> = { ...MODEL_CASES, ...BNB_CASES, ...ADAPTER_CASES, ...DATA_CASES, ...RESUME_CASES };

const say = (line: string) => fs.writeSync(1, `${line}\n`);

const [name, seedArg, itersArg, mode] = process.argv.slice(2);
const c = CASES[name];
if (!c) {
  say(`FAIL unknown fuzz case '${name}' (known: ${Object.keys(CASES).join(', ')})\nEND`);
  process.exit(1);
}
const root = fs.mkdtempSync(path.join(os.tmpdir(), `peftkit-fuzz-${name}-`));
const fixture = path.join(root, 'fixture');
fs.mkdirSync(fixture);
c.setup(fixture);
const counts: Record<string, number> = {};
const base = Number(seedArg) >>> 0;
for (let i = 0; i < Number(itersArg); i++) {
  const seed = mode === 'exact' ? base : iterationSeed(base, i);
  say(`iter ${i} seed ${seed}`);
  const dir = path.join(root, 'work');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.cpSync(fixture, dir, { recursive: true });
  try {
    const got = c.run(fuzzRng(seed), dir, (what) => say(`damage ${what.replace(/\n/g, ' ')}`));
    counts[got] = (counts[got] ?? 0) + 1;
  } catch (e) {
    const msg = e instanceof FuzzViolation ? e.message : `the case itself threw: ${(e as Error).stack ?? String(e)}`;
    say(`FAIL ${msg}\nEND`);
    fs.rmSync(root, { recursive: true, force: true });
    process.exit(1);
  }
}
fs.rmSync(root, { recursive: true, force: true });
say(`result ${JSON.stringify(counts)}`);
