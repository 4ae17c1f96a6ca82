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

test('a FIFO (or anything not a regular file) in place of a data, eval or model file is refused naming it, never a hang', (t) => {
  const r = spawnSync(process.execPath, [path.join(HELPERS, 'fifo_child.js')], { encoding: 'utf8', timeout: 90_000, killSignal: 'SIGKILL' });
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { case?: string; start?: boolean; code?: string; message?: string; done?: boolean });
  const hung = lines.at(-1)?.start ? lines.at(-1)?.case : undefined;
  t.is(r.status, 0, `child exited with ${r.status} (signal ${r.signal})${hung ? `, hanging in case ${hung}` : ''}\n${r.stderr}`);
  t.true(lines.at(-1)?.done, 'the child did not finish');
  const results = lines.filter((l) => l.case && !l.start);
  t.is(results.length, 13);
  for (const c of results) {
    const file = c.case === 'readRows' ? 'data.jsonl' : c.case!;
    t.is(c.code, 'E_IO', `${c.case}: ${c.message}`);
    t.regex(c.message ?? '', new RegExp(`${file.replace(/\./g, '\\.')}: is a named pipe \\(FIFO\\), not a regular file`), c.case);
  }
});
