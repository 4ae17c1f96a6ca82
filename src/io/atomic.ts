/**
 * Atomic file writes: data goes to a temporary file in the same folder, is flushed, then
 * renamed over the target, so a reader (or a killed run) sees the old file or the new one,
 * never half of one.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { ioError, makeDir, withIoErrors } from './io_error';

function tempName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now().toString(36)}.tmp`);
}

/** Bytes handed to one fs.writeSync: Node refuses a buffer of 2 GiB or more in one call (a large model's embeddings in f32). */
export const MAX_WRITE_BYTES = 1 << 30;

/** Writes all of `c`, `maxWrite` bytes at most a call. */
function writeAll(fd: number, c: ArrayBufferView, maxWrite: number): void {
  const bytes = new Uint8Array(c.buffer, c.byteOffset, c.byteLength);
  for (let done = 0; done < bytes.length;) done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, maxWrite));
}

/**
 * Writes the chunks in order, then renames into place; `maxWrite` is the most bytes written a
 * call. A system error (a full or read-only disk) is E_IO naming `file` (see io_error.ts), and
 * leaves `file` as it was.
 */
export function writeFileAtomic(file: string, chunks: ReadonlyArray<string | ArrayBufferView>, maxWrite = MAX_WRITE_BYTES): void {
  const tmp = tempName(file);
  const named = (p: string) => (p === tmp ? file : p);
  let fd: number;
  try {
    fd = fs.openSync(tmp, 'w');
  } catch (e) {
    throw ioError(e, file, named);
  }
  try {
    for (const c of chunks) {
      if (typeof c === 'string') writeAll(fd, Buffer.from(c), maxWrite);
      else writeAll(fd, c, maxWrite);
    }
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw ioError(e, file, named);
  }
  fs.closeSync(fd);
  withIoErrors(() => fs.renameSync(tmp, file), file);
}

/**
 * Fills a folder atomically: `fill` writes into a fresh temporary folder beside `dir`, which then
 * replaces `dir` (an existing one is moved aside first and removed after), so `dir` is always
 * either the old complete folder or the new complete one.
 */
export function writeDirAtomic(dir: string, fill: (tmpDir: string) => void): void {
  const parent = path.dirname(path.resolve(dir));
  makeDir(parent);
  let tmp: string;
  try {
    tmp = fs.mkdtempSync(path.join(parent, `.${path.basename(dir)}.tmp-`));
  } catch (e) {
    throw ioError(e, dir, () => dir);
  }
  // A system error names the path the user knows: inside `dir`, not inside the temporary folder.
  const named = (p: string) => (p.startsWith(tmp) ? path.join(dir, p.slice(tmp.length)) : p);
  try {
    // mkdtemp makes 0700 folders; the result gets the user's umask as a plain mkdir would.
    fs.chmodSync(tmp, 0o777 & ~process.umask());
    fill(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (e instanceof PeftkitError && e.code === 'E_IO' && e.path?.startsWith(tmp)) {
      throw new PeftkitError('E_IO', e.message.split(tmp).join(dir), { errno: e.errno, path: named(e.path), syscall: e.syscall });
    }
    throw ioError(e, dir, named);
  }
  try {
    let old: string | null = null;
    if (fs.existsSync(dir)) {
      old = `${tmp}.old`;
      fs.renameSync(dir, old);
    }
    fs.renameSync(tmp, dir);
    if (old) fs.rmSync(old, { recursive: true, force: true });
  } catch (e) {
    throw ioError(e, dir, named);
  }
}

/**
 * Cleans up after a killed writer in `dir` (files and folders named as writeFileAtomic /
 * writeDirAtomic name them: a leading dot and a `.tmp` mark), so a resumed run does not pile
 * them up. A folder's complete old copy, moved aside when the kill came between writeDirAtomic's
 * two renames, goes back in place instead. Only for a folder no other writer is using. Returns
 * the names removed or restored.
 */
export function removeLeftoverTemps(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const temp = /^\..+(\.\d+\.[0-9a-z]+\.tmp|\.tmp-[A-Za-z0-9]{6}(\.old)?)$/;
  const names = fs.readdirSync(dir).filter((name) => temp.test(name));
  for (const name of names) {
    const moved = /^\.(.+)\.tmp-[A-Za-z0-9]{6}\.old$/.exec(name);
    if (moved && !fs.existsSync(path.join(dir, moved[1]))) fs.renameSync(path.join(dir, name), path.join(dir, moved[1]));
    else fs.rmSync(path.join(dir, name), { recursive: true, force: true });
  }
  return names;
}

/**
 * Refuses an output folder that is one of the inputs or holds one of them: writeDirAtomic
 * replaces the whole output folder, which would delete an input inside it. Symlinks are
 * resolved where the paths exist.
 */
export function checkOutputFolder(out: string, inputs: Record<string, string>): void {
  const real = (p: string) => {
    try {
      return fs.realpathSync(p);
    } catch {
      return path.resolve(p);
    }
  };
  const o = real(out);
  for (const [name, input] of Object.entries(inputs)) {
    const rel = path.relative(o, real(input));
    if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) {
      throw new PeftkitError('E_ARG', `out: ${out} ${rel === '' ? 'is' : 'holds'} the ${name} folder ${input}; writing it would replace that folder — choose another output folder`);
    }
  }
}
