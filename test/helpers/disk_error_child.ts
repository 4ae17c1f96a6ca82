/**
 * Disk errors injected into a training run (issue 16): the fs functions are wrapped so that one
 * chosen call fails as Node reports a full disk (ENOSPC), a read-only one (EROFS: Node's
 * recursive mkdir says ENOENT there, as on a real read-only mount) or a denied permission
 * (EACCES). Usage: node disk_error_child.js <case> <model> <data> <out>. Prints one JSON line:
 * {name, code, errno, path, syscall, message, log: [lines of train_log.jsonl]}.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../../src/index';
import { runTraining } from '../../src/train/run';

const [which, model, data, out] = process.argv.slice(2);
const sysError = (code: string, text: string, syscall: string, p?: string) =>
  Object.assign(new Error(`${code}: ${text}, ${syscall}${p ? ` '${p}'` : ''}`), { code, syscall, ...(p ? { path: p } : {}) });

const real = { openSync: fs.openSync, writeSync: fs.writeSync, mkdirSync: fs.mkdirSync, mkdtempSync: fs.mkdtempSync };
const fdPath = new Map<number, string>();
// The module object itself (an `import * as` namespace has only getters, which read through to it).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const f = require('fs') as Record<string, unknown>;
f.openSync = (p: fs.PathLike, ...rest: unknown[]) => {
  if (which === 'eacces' && /adapter_model\.safetensors/.test(String(p))) throw sysError('EACCES', 'permission denied', 'open', String(p));
  const fd = (real.openSync as (...a: unknown[]) => number)(p, ...rest);
  fdPath.set(fd, String(p));
  return fd;
};
let logWrites = 0;
f.writeSync = (fd: number, buf: Uint8Array, ...rest: unknown[]) => {
  const p = fdPath.get(fd) ?? '';
  if (which === 'enospc-log' && p.endsWith('train_log.jsonl') && ++logWrites === 3) {
    // Half the record reaches the disk, then it is full.
    (real.writeSync as (...a: unknown[]) => number)(fd, buf, 0, Math.floor(buf.length / 2));
    throw sysError('ENOSPC', 'no space left on device', 'write');
  }
  if (which === 'enospc-checkpoint' && /step-2\.tmp-.*optimizer/.test(p)) throw sysError('ENOSPC', 'no space left on device', 'write');
  return (real.writeSync as (...a: unknown[]) => number)(fd, buf, ...rest);
};
const readOnly = path.join(path.dirname(out), 'ro');
f.mkdirSync = (p: fs.PathLike, o?: fs.MakeDirectoryOptions) => {
  if (which === 'erofs' && String(p).startsWith(readOnly + path.sep)) {
    throw o?.recursive ? sysError('ENOENT', 'no such file or directory', 'mkdir', String(p)) : sysError('EROFS', 'read-only file system', 'mkdir', String(p));
  }
  return (real.mkdirSync as (...a: unknown[]) => unknown)(p, o);
};

const o = { model, data, steps: 4, saveEvery: 2, maxLength: 16, logEvery: 1 };
let result: Record<string, unknown>;
try {
  runTraining({ ...o, out: which === 'erofs' ? path.join(readOnly, 'new', 'out') : out });
  result = { code: 'ok' };
} catch (e) {
  const p = e as PeftkitError;
  result = { name: (e as Error).name, code: e instanceof PeftkitError ? p.code : `other: ${(e as NodeJS.ErrnoException).code}`, errno: p.errno, path: p.path, syscall: p.syscall, message: p.message };
}
const logFile = path.join(out, 'train_log.jsonl');
const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n') : null;
process.stdout.write(`${JSON.stringify({ ...result, log })}\n`);
