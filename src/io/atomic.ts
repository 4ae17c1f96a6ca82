/**
 * Atomic file writes: data goes to a temporary file in the same folder, is flushed, then
 * renamed over the target, so a reader (or a killed run) sees the old file or the new one,
 * never half of one.
 */
import * as fs from 'fs';
import * as path from 'path';

function tempName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now().toString(36)}.tmp`);
}

/** Writes the chunks in order, then renames into place. */
export function writeFileAtomic(file: string, chunks: ReadonlyArray<string | ArrayBufferView>): void {
  const tmp = tempName(file);
  const fd = fs.openSync(tmp, 'w');
  try {
    for (const c of chunks) {
      if (typeof c === 'string') fs.writeSync(fd, c);
      else fs.writeSync(fd, c as NodeJS.ArrayBufferView);
    }
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}
