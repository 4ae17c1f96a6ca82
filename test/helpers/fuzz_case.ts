/** The shape of one fuzz case (see fuzz.ts) and checks the cases share. */
import * as fs from 'fs';
import * as path from 'path';
import type { Model } from '../../src/index';
import { FuzzRng, FuzzViolation } from './fuzz';

export interface FuzzCase {
  /** Writes the valid fixture into `dir` (once per child). */
  setup(dir: string): void;
  /** Damages a fresh copy of the fixture in `dir`, calls the API, returns 'ok' or the error code (see outcome()). */
  run(rng: FuzzRng, dir: string, log: (what: string) => void): string;
}

/** A few greedy tokens; the ids must be integers in the vocabulary. */
export function generateSome(m: Model): void {
  const ids = m.generate([1, 2, 3], { maxNewTokens: 3, temperature: 0 }).ids;
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= m.config.vocabSize) throw new FuzzViolation(`generate returned token id ${id} (vocab ${m.config.vocabSize})`);
  }
}

/** The folder `out` after a successful write: it must be complete (config + weights, or adapter files). */
export function expectComplete(out: string, files: string[]): void {
  for (const f of files) if (!fs.existsSync(path.join(out, f))) throw new FuzzViolation(`${out} lacks ${f} after a successful call`);
}
