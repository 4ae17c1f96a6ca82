/** Atomic writes and the clean-up after a writer killed in the middle of one. */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MAX_WRITE_BYTES, removeLeftoverTemps, writeDirAtomic, writeFileAtomic } from '../src/io/atomic';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-atomic-'));

test('removeLeftoverTemps removes a killed writer\'s temporaries, restores a folder moved aside, and leaves other files alone', (t) => {
  const dir = tmp();
  // What writeFileAtomic / writeDirAtomic leave when killed mid-way.
  fs.writeFileSync(path.join(dir, '.adapter_model.safetensors.1234.lz3k9a.tmp'), 'half');
  fs.mkdirSync(path.join(dir, '.step-4.tmp-Ab12Cd'));
  // Killed between writeDirAtomic's renames: the complete old step-5 sits aside, step-5 is gone.
  fs.mkdirSync(path.join(dir, '.step-5.tmp-Zz99Yy.old'));
  fs.writeFileSync(path.join(dir, '.step-5.tmp-Zz99Yy.old', 'trainer_state.json'), '{}');
  // Moved aside, but the new step-6 made it: the old copy is garbage.
  fs.mkdirSync(path.join(dir, 'step-6'));
  fs.mkdirSync(path.join(dir, '.step-6.tmp-Qq11Ww.old'));
  // The user's own files, dot-files included.
  for (const f of ['.gitignore', 'notes.tmp', '.cache', 'a.tmp-123456']) fs.writeFileSync(path.join(dir, f), 'mine');
  removeLeftoverTemps(dir);
  t.deepEqual(fs.readdirSync(dir).sort(), ['.cache', '.gitignore', 'a.tmp-123456', 'notes.tmp', 'step-5', 'step-6']);
  t.true(fs.existsSync(path.join(dir, 'step-5', 'trainer_state.json')));
  t.deepEqual(removeLeftoverTemps(path.join(dir, 'missing')), []);
});

test('writeFileAtomic and writeDirAtomic leave no temporaries and replace whole', (t) => {
  const dir = tmp();
  writeFileAtomic(path.join(dir, 'f.json'), ['{"a":', '1}']);
  writeDirAtomic(path.join(dir, 'd'), (d) => fs.writeFileSync(path.join(d, 'x'), '1'));
  writeDirAtomic(path.join(dir, 'd'), (d) => fs.writeFileSync(path.join(d, 'y'), '2'));
  t.deepEqual(fs.readdirSync(dir).sort(), ['d', 'f.json']);
  t.deepEqual(fs.readdirSync(path.join(dir, 'd')), ['y']);
  t.is(fs.statSync(path.join(dir, 'd')).mode & 0o777, 0o777 & ~process.umask(), 'the folder has the user\'s umask, not mkdtemp\'s 0700');
  t.is(fs.readFileSync(path.join(dir, 'f.json'), 'utf8'), '{"a":1}');
  t.throws(() => writeDirAtomic(path.join(dir, 'd'), () => {
    throw new Error('fill failed');
  }), { message: 'fill failed' });
  t.deepEqual(fs.readdirSync(dir).sort(), ['d', 'f.json'], 'a failed fill leaves the old folder and no temporary');
  t.deepEqual(fs.readdirSync(path.join(dir, 'd')), ['y']);
});

test('writeFileAtomic writes a buffer larger than one write call takes (Node refuses 2 GiB at once) in pieces, every byte in order', (t) => {
  const dir = tmp();
  const realFs = require('fs') as typeof fs; // the module object itself, which the writer's calls go through
  const write = realFs.writeSync;
  const lengths: number[] = [];
  const spy = (...args: unknown[]) => {
    if (typeof args[1] !== 'string') lengths.push(typeof args[3] === 'number' ? args[3] : (args[1] as ArrayBufferView).byteLength);
    return (write as (...a: unknown[]) => number)(...args);
  };
  const big = new Float32Array(1000).map((_, i) => i * 0.5 - 3);
  const view = new Uint8Array(big.buffer, 6, 3001); // unaligned, not the whole buffer
  realFs.writeSync = spy as typeof fs.writeSync;
  try {
    writeFileAtomic(path.join(dir, 'f.bin'), ['head', view, big], 7);
  } finally {
    realFs.writeSync = write;
  }
  t.true(lengths.length > 0 && lengths.every((n) => n <= 7), `write lengths up to ${Math.max(...lengths)}`);
  const want = Buffer.concat([Buffer.from('head'), Buffer.from(view), Buffer.from(big.buffer)]);
  t.deepEqual(fs.readFileSync(path.join(dir, 'f.bin')), want);
  t.true(MAX_WRITE_BYTES <= 2 ** 31 - 1, 'the default fits one fs.writeSync');
});
