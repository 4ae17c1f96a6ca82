/**
 * Output folder locks. Two training runs into one folder at once destroy each other's work (the
 * second clears the first's in-progress checkpoint as a killed run's leftovers, then both write
 * checkpoints and the log), so a run holds `<out>/.peftkit.lock` while it writes there. The file
 * names its owner (pid, host, thread, the process's start time on Linux, when it started); a lock
 * whose owner is gone (a killed run) is stale and taken over. A lock from another host cannot be
 * checked and is respected: its message says how to remove it.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { threadId } from 'worker_threads';
import { PeftkitError } from '../errors';
import { ioError, makeDir } from './io_error';

export const LOCK_FILE = '.peftkit.lock';

interface LockInfo {
  pid: number;
  host: string;
  thread: number;
  /** /proc/<pid>/stat's start time (Linux): tells a live owner from a later process given its pid. */
  startTime: string | null;
  started: string;
  token: string;
}

/** A held lock; release() removes it (and the folder, when the lock made it and it is still empty). */
export interface FolderLock {
  readonly file: string;
  release(): void;
}

function processStartTime(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command (which may hold spaces and parentheses): state is field 3, starttime 22.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Whether the process that wrote `info` (on this host) still runs. */
function ownerAlive(info: LockInfo): boolean {
  try {
    process.kill(info.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  // The pid runs (or is not ours to signal): the same process unless its start time differs.
  const now = processStartTime(info.pid);
  return info.startTime === null || now === null || now === info.startTime;
}

function readLock(file: string): { info: LockInfo | null; text: string } | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ioError(e, file);
  }
  try {
    const v = JSON.parse(text) as LockInfo;
    if (Number.isInteger(v.pid) && typeof v.host === 'string') return { info: v, text };
  } catch {
    // written by a run killed while it wrote the lock, or not ours at all
  }
  return { info: null, text };
}

/** A lock file with no readable owner older than this was left by a run killed while writing it. */
const UNREADABLE_STALE_MS = 10_000;

function busy(dir: string, file: string, info: LockInfo | null, what: string): PeftkitError {
  const owner = info
    ? `another training run (pid ${info.pid} on ${info.host === os.hostname() ? 'this host' : `host ${info.host}`}, started ${info.started})`
    : 'another training run';
  const hint = info && info.host !== os.hostname()
    ? `; its host cannot be checked from here: if that run is gone, delete ${file}`
    : `; if no such run exists, delete ${file}`;
  return new PeftkitError('E_BUSY', `${what}: ${dir} is in use by ${owner}: wait for it to finish, stop it, or choose another folder${hint}`, { path: file });
}

/**
 * Locks folder `dir` for a writer (created if missing), or throws E_BUSY naming the run that holds
 * it. `what` names the folder in messages ('out').
 */
export function lockFolder(dir: string, what = 'out'): FolderLock {
  const existed = fs.existsSync(dir);
  makeDir(dir);
  const file = path.join(dir, LOCK_FILE);
  const mine: LockInfo = {
    pid: process.pid, host: os.hostname(), thread: threadId, startTime: processStartTime(process.pid),
    started: new Date().toISOString(), token: crypto.randomBytes(8).toString('hex'),
  };
  const text = JSON.stringify(mine, null, 2) + '\n';
  for (let attempt = 0; ; attempt++) {
    try {
      // O_EXCL: of two runs creating it at once, one gets it.
      const fd = fs.openSync(file, 'wx');
      try {
        fs.writeSync(fd, text);
      } catch (e) {
        fs.rmSync(file, { force: true }); // a full disk: leave no empty lock behind
        throw e;
      } finally {
        fs.closeSync(fd);
      }
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
        if (!existed) fs.rmSync(dir, { recursive: true, force: true });
        throw ioError(e, file);
      }
    }
    const held = readLock(file);
    if (held === null) continue; // released meanwhile
    const { info } = held;
    const stale = info
      ? info.host === os.hostname() && !ownerAlive(info)
      : Date.now() - (fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? 0) > UNREADABLE_STALE_MS;
    if (!stale || attempt >= 3) throw busy(dir, file, info, what);
    // Take the stale lock over: move it aside (atomic: of two runs doing this, one moves it)...
    const aside = `${file}.${mine.token}.stale`;
    try {
      fs.renameSync(file, aside);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw ioError(e, file);
    }
    // ...unless what was moved is not the stale lock but one a run just made: put it back.
    const moved = fs.readFileSync(aside, 'utf8');
    if (moved !== held.text) {
      try {
        fs.linkSync(aside, file);
      } catch {
        // a third run made one meanwhile: it holds the folder
      }
      fs.rmSync(aside, { force: true });
      throw busy(dir, file, readLock(file)?.info ?? null, what);
    }
    fs.rmSync(aside, { force: true });
  }
  let released = false;
  return {
    file,
    release(): void {
      if (released) return;
      released = true;
      // Only our own lock: never one a later run took over. (Called on the way out of a run,
      // where an error here would hide the run's own: an unreadable lock is left for the next run.)
      try {
        if (readLock(file)?.info?.token === mine.token) fs.rmSync(file, { force: true });
      } catch {
        // see above
      }
      if (!existed) {
        try {
          fs.rmdirSync(dir); // only when empty: the run wrote nothing
        } catch {
          // it holds the run's output
        }
      }
    },
  };
}

/**
 * Removes the lock of `dir` when a given thread of this process holds it: train() calls this when
 * its worker exits, so a worker stopped without unwinding (terminated) leaves no lock behind.
 */
export function releaseLockOfThread(dir: string, thread: number): void {
  const file = path.join(dir, LOCK_FILE);
  const info = readLock(file)?.info;
  if (info && info.pid === process.pid && info.host === os.hostname() && info.thread === thread) fs.rmSync(file, { force: true });
}
