/**
 * Hostile and careless inputs (issue 16): what used to crash the process, hang it or lose the
 * error's identity, each pinned down. Anything that could take the process down runs in a child.
 */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as path from 'path';

const HELPERS = path.join(__dirname, 'helpers');

test('tensors whose element count overflows are refused (E_SHAPE) however they are made; no op ever sees one', (t) => {
  const r = spawnSync(process.execPath, [path.join(HELPERS, 'huge_shape_child.js')], { encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, `child exited with ${r.status} (signal ${r.signal}); its last lines:\n${r.stdout.split('\n').slice(-4).join('\n')}\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { case?: string; code?: string; done?: boolean });
  t.true(lines.at(-1)?.done, 'the child did not finish');
  const cases = lines.filter((l) => l.case);
  t.is(cases.length, 5 * (6 + 4 * 5));
  for (const c of cases) {
    // Each op's call must fail before any kernel runs, on the overflowing tensor's creation.
    t.is(c.code, 'E_SHAPE', c.case);
  }
});
