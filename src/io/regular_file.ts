/**
 * Opening the files peftkit reads (datasets, a model folder's files) only when they are regular
 * files. A named pipe blocks the open until a writer comes, and a pipe or device (/dev/zero,
 * /dev/stdin) may never end, so a model folder or a data path pointing at one would hang the
 * process. The open is non-blocking (a no-op for regular files), so the check itself never waits.
 */
import * as fs from 'fs';
import { PeftkitError } from '../errors';

function kind(st: fs.Stats): string {
  if (st.isFIFO()) return 'a named pipe (FIFO)';
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a plain file';
}

/** The error for a path that exists but is not a regular file. */
export function notRegularFile(file: string, st: fs.Stats): PeftkitError {
  return new PeftkitError('E_IO', `${file}: is ${kind(st)}, not a regular file; peftkit reads only regular files (a pipe or device could block or never end)`);
}

/**
 * Opens `file` for reading; throws a PeftkitError (E_IO, naming the file) when it is not a
 * regular file, and the system's error (with its `code`) when it cannot be opened.
 */
export function openRegularFile(file: string): number {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw notRegularFile(file, st);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  return fd;
}

/** fs.readFileSync(file, 'utf8') for regular files only (see {@link openRegularFile}). */
export function readRegularFile(file: string): string;
export function readRegularFile(file: string, encoding: null): Buffer;
export function readRegularFile(file: string, encoding: 'utf8' | null = 'utf8'): string | Buffer {
  const fd = openRegularFile(file);
  try {
    return encoding ? fs.readFileSync(fd, encoding) : fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
