/**
 * The job list a JobManager keeps in `<stateDir>/jobs.json`: written atomically at every change
 * of a job's status and at each checkpoint, so a manager started after a crash or a shutdown
 * finds every job as it last was.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { writeFileAtomic } from '../io/atomic';
import { makeDir } from '../io/io_error';
import type { JobInfo, JobStatus } from './job';

export const STATE_FILE = 'jobs.json';
const VERSION = 1;
const STATUSES: readonly JobStatus[] = ['queued', 'running', 'done', 'failed', 'cancelled', 'interrupted'];

export function writeJobState(stateDir: string, jobs: readonly JobInfo[]): void {
  makeDir(stateDir);
  writeFileAtomic(path.join(stateDir, STATE_FILE), [JSON.stringify({ version: VERSION, jobs }, null, 1) + '\n']);
}

/** The recorded jobs, oldest first; none when the file does not exist. A damaged file is E_FORMAT naming the entry. */
export function readJobState(stateDir: string): JobInfo[] {
  const file = path.join(stateDir, STATE_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new PeftkitError('E_IO', `${file}: cannot read (${(e as NodeJS.ErrnoException).code})`, { path: file, errno: (e as NodeJS.ErrnoException).code });
  }
  let value: { version?: unknown; jobs?: unknown };
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new PeftkitError('E_FORMAT', `${file}: not valid JSON (${(e as Error).message})`);
  }
  if (value?.version !== VERSION || !Array.isArray(value.jobs)) throw new PeftkitError('E_FORMAT', `${file}: expected {"version": ${VERSION}, "jobs": [...]}`);
  return value.jobs.map((j: Partial<JobInfo>, i: number) => {
    const bad = (field: string, expected: string) => new PeftkitError('E_FORMAT', `${file}: jobs[${i}].${field}: expected ${expected}, got ${JSON.stringify(j?.[field as keyof JobInfo])}`);
    if (typeof j?.id !== 'string' || !j.id) throw bad('id', 'a non-empty string');
    if (!STATUSES.includes(j.status as JobStatus)) throw bad('status', `one of ${STATUSES.join(', ')}`);
    if (typeof j.options !== 'object' || j.options === null || typeof j.options.out !== 'string') throw bad('options', 'train options with an `out` folder');
    return j as JobInfo;
  });
}
