/**
 * The training log: one JSON object per line (step, loss, lr, grad_norm, tokens/s, elapsed),
 * appended as the run goes so a crash keeps what was logged; eval records carry eval_loss and
 * eval_perplexity. A resumed run truncates the log back to its checkpoint step.
 */
import * as fs from 'fs';
import { writeFileAtomic } from '../io/atomic';
import { ioError, withIoErrors } from '../io/io_error';

export interface TrainRecord {
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  elapsed_s: number;
  tokens: number;
}

export interface EvalRecord {
  step: number;
  eval_loss: number;
  eval_perplexity: number;
  elapsed_s: number;
}

export type LogRecord = TrainRecord | EvalRecord;

export function isEval(r: LogRecord): r is EvalRecord {
  return 'eval_loss' in r;
}

export class TrainLog {
  readonly file: string;
  private fd: number | null;
  /** Bytes of complete records in the file. */
  private size: number;

  /** Opens the log; `keepUpToStep` keeps earlier records (resume), else starts empty. */
  constructor(file: string, keepUpToStep?: number) {
    this.file = file;
    const kept = keepUpToStep === undefined ? [] : readLog(file).filter((r) => r.step <= keepUpToStep);
    // Atomic: a run killed while it rewrites the log must not lose the records it keeps.
    const text = kept.map((r) => JSON.stringify(r) + '\n').join('');
    writeFileAtomic(file, [text]);
    this.fd = withIoErrors(() => fs.openSync(file, 'a'), file);
    this.size = Buffer.byteLength(text);
  }

  /**
   * Appends one record. A failed write (a full disk) is E_IO, and the part of the record that
   * was written is cut off again, so the log never ends in a broken line.
   */
  append(r: LogRecord): void {
    if (this.fd === null) throw new Error('internal: training log is closed');
    const line = Buffer.from(JSON.stringify(r) + '\n');
    try {
      for (let done = 0; done < line.length;) done += fs.writeSync(this.fd, line, done, line.length - done);
    } catch (e) {
      try {
        fs.ftruncateSync(this.fd, this.size);
      } catch {
        // The record stays torn; readLog stops at a torn last line.
      }
      throw ioError(e, this.file);
    }
    this.size += line.length;
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}

export function readLog(file: string): LogRecord[] {
  if (!fs.existsSync(file)) return [];
  const out: LogRecord[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as LogRecord);
    } catch {
      break; // a torn last line from a killed run
    }
  }
  return out;
}
