/**
 * One rank of a data-parallel training test: `node ddp_train_child.js '<json TrainOptions>'`,
 * launched with the torchrun variables set (test/helpers/ranks.ts). Rank r trains into the
 * options' `out` with `-rank<r>` appended for r > 0, so the test can check that only rank 0
 * writes. Prints {rank, losses, gradNorms, steps, evalLoss} or {error: {code, message}} as one JSON line.
 * DIE_RANK / DIE_AT_STEP: that rank exits abruptly (code 3) once it has finished that step.
 * BAD_DATA_RANK: that rank reads a data file that does not exist (an error of its own).
 */
import { PeftkitError } from '../../src/errors';
import { train } from '../../src/train/train';
import type { TrainOptions } from '../../src/train/options';

async function main(): Promise<void> {
  const o = JSON.parse(process.argv[2]) as TrainOptions;
  const rank = Number(process.env.RANK ?? 0);
  const out = rank === 0 ? o.out : `${o.out}-rank${rank}`;
  const losses: number[] = [];
  const gradNorms: number[] = [];
  try {
    const data = String(rank) === process.env.BAD_DATA_RANK ? `${o.data}.missing` : o.data;
    const run = train({ ...o, out, data });
    run.on('step', (e) => {
      losses.push(e.loss);
      gradNorms.push(e.gradNorm);
      if (String(rank) === process.env.DIE_RANK && String(e.step) === process.env.DIE_AT_STEP) process.exit(3);
    });
    const r = await run;
    process.stdout.write(JSON.stringify({ rank, losses, gradNorms, steps: r.steps, evalLoss: r.evalLoss }) + '\n');
  } catch (e) {
    process.stdout.write(JSON.stringify({ rank, error: { code: (e as PeftkitError).code, message: (e as Error).message } }) + '\n');
  }
}
void main();
