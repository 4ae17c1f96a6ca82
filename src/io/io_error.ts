/**
 * System errors from reading and writing files, given their identity: a full disk, a read-only
 * one or a denied permission reached API users as E_INTERNAL with Node's bare message and no
 * path. Here they become PeftkitError('E_IO') carrying `errno`, `path` and `syscall`, with a
 * message that names the path and says what to do.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';

/** A Node system error: an Error with a string `code` like 'ENOSPC' and usually `syscall` and `path`. */
export function isSystemError(e: unknown): e is NodeJS.ErrnoException & { code: string } {
  return e instanceof Error && !(e instanceof PeftkitError) && typeof (e as NodeJS.ErrnoException).code === 'string' && /^E[A-Z0-9]+$/.test((e as NodeJS.ErrnoException).code!);
}

const ADVICE: Record<string, string> = {
  ENOSPC: 'the disk is full: free some space or write to another disk, then resume from the last checkpoint',
  EDQUOT: 'the disk quota is used up: free some space or write elsewhere, then resume from the last checkpoint',
  EFBIG: 'the file is larger than this file system allows: write to another disk',
  EROFS: 'the file system is read-only: choose a folder on a writable disk',
  EACCES: 'permission denied: choose a folder you can write to, or change its permissions',
  EPERM: 'the operation is not permitted here: choose another folder, or change its permissions',
  ENOENT: 'a file or folder on the path does not exist',
  ENOTDIR: 'a part of the path is a file, not a folder: choose another path',
  EISDIR: 'the path is a folder where a file was expected',
  EEXIST: 'something already exists at this path',
  ENAMETOOLONG: 'the path is too long: choose a shorter one',
  EMFILE: 'the process has too many open files: raise the limit (ulimit -n)',
  ENFILE: 'the system has too many open files',
  EIO: 'the disk reported an I/O error: check the disk',
  EBUSY: 'the file or folder is busy',
  EXDEV: 'the paths are on different file systems',
};

/**
 * The error `e` (a system error) as PeftkitError('E_IO') naming its path (or `file`, when the
 * error has none or `rename` maps it: a temporary path to the one the user knows); any other
 * error is returned as it is.
 */
export function ioError(e: unknown, file?: string, rename?: (p: string) => string): unknown {
  if (!isSystemError(e)) return e;
  const where = e.path !== undefined ? (rename ? rename(e.path) : e.path) : file;
  const sys = e.message.replace(/^[A-Z0-9]+: /, '').replace(/, \w+ '.*'$/, '').replace(/, \w+$/, '');
  const advice = ADVICE[e.code];
  const msg = `${where ? `${where}: ` : ''}${e.syscall ? `${e.syscall} failed` : 'failed'} (${e.code}: ${sys})${advice ? `: ${advice}` : ''}`;
  return new PeftkitError('E_IO', msg, { errno: e.code, path: where, syscall: e.syscall });
}

/** Runs `fn`, turning a system error into E_IO (see {@link ioError}); `file` names the path when the error does not. */
export function withIoErrors<T>(fn: () => T, file?: string): T {
  try {
    return fn();
  } catch (e) {
    throw ioError(e, file);
  }
}

/**
 * `mkdir -p dir`, with the real cause when it fails: Node's recursive mkdir reports ENOENT when a
 * missing parent cannot be created (a read-only disk, a denied permission), so the missing
 * folders are created one by one and the first failure is reported, as E_IO.
 */
export function makeDir(dir: string): void {
  const missing: string[] = [];
  for (let p = path.resolve(dir); !fs.existsSync(p); p = path.dirname(p)) {
    missing.push(p);
    if (path.dirname(p) === p) break;
  }
  for (const p of missing.reverse()) {
    try {
      fs.mkdirSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && fs.statSync(p, { throwIfNoEntry: false })?.isDirectory()) continue;
      throw ioError(e, p);
    }
  }
  // An existing path that is not a folder.
  const st = fs.statSync(dir, { throwIfNoEntry: false });
  if (st && !st.isDirectory()) {
    throw new PeftkitError('E_IO', `${dir}: mkdir failed (ENOTDIR: it is a file, not a folder): ${ADVICE.ENOTDIR}`, { errno: 'ENOTDIR', path: dir, syscall: 'mkdir' });
  }
}
