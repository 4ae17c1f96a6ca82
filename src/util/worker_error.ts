/**
 * Errors across a worker thread's message port: a PeftkitError keeps its code and E_IO details
 * (a structured clone would keep only the message), anything else becomes E_INTERNAL.
 */
import { PeftkitError } from '../errors';
import { ioError } from '../io/io_error';

/** A failure as a worker posts it. */
export interface WorkerErrorMessage {
  code: string;
  message: string;
  stack?: string;
  errno?: string;
  path?: string;
  syscall?: string;
}

/** `raw` (anything thrown in the worker) as a message the other side rebuilds with workerError(). */
export function workerErrorMessage(raw: unknown): WorkerErrorMessage {
  const e = ioError(raw) as Error;
  const details = e instanceof PeftkitError ? { errno: e.errno, path: e.path, syscall: e.syscall } : {};
  return { code: e instanceof PeftkitError ? e.code : 'E_INTERNAL', message: e?.message ?? String(e), stack: e?.stack, ...details };
}

/** The PeftkitError a worker posted with workerErrorMessage(). */
export function workerError(m: Partial<WorkerErrorMessage>, fallback: string): PeftkitError {
  return new PeftkitError(m.code ?? 'E_INTERNAL', m.message ?? fallback, { errno: m.errno, path: m.path, syscall: m.syscall });
}
