/**
 * A training run that holds its output folder while the parent tries a second run into it:
 * at its first step boundary it writes `<marker>` and waits until `<go>` exists, then finishes.
 * Usage: node lock_child.js <model> <data> <out> <marker> <go>. Prints {ok} or {code, message}.
 */
import * as fs from 'fs';
import { PeftkitError } from '../../src/index';
import { runTraining } from '../../src/train/run';

const [model, data, out, marker, go] = process.argv.slice(2);
const nap = new Int32Array(new SharedArrayBuffer(4));
let waited = false;
try {
  const r = runTraining({ model, data, out, steps: 4, saveEvery: 2, maxLength: 16 }, {
    shouldStop: () => {
      if (!waited) {
        waited = true;
        fs.writeFileSync(marker, String(process.pid));
        const until = Date.now() + 120_000;
        while (!fs.existsSync(go) && Date.now() < until) Atomics.wait(nap, 0, 0, 20);
      }
      return false;
    },
  });
  process.stdout.write(JSON.stringify({ ok: true, steps: r.steps }));
} catch (e) {
  process.stdout.write(JSON.stringify({ code: e instanceof PeftkitError ? e.code : 'other', message: (e as Error).message }));
}
