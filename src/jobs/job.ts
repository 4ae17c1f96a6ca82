/**
 * One training job of a JobManager: its options, where it stands (JobInfo), its events, and its
 * result. The manager moves it from state to state; a user reads it, listens to it, awaits it
 * and cancels it.
 */
import { TypedEmitter } from '../util/typed_emitter';
import { PeftkitError } from '../errors';
import type { TrainRunOptions } from '../train/train';
import type { TrainEvent, TrainResult } from '../train/run';

/** A job's training options: train()'s, without the signal (a job is cancelled through its manager). */
export type JobTrainOptions = Omit<TrainRunOptions, 'signal'>;

/**
 * Where a job stands. `queued`: waiting for a slot (or for memory); `running`: training in its
 * worker; `done`, `failed`, `cancelled`: ended; `interrupted`: stopped (or never started) by the
 * manager's shutdown(), to be resumed by a manager created with `resume: true` (or restore()).
 */
export type JobStatus = 'queued' | 'running' | 'done' | 'failed' | 'cancelled' | 'interrupted';

/** A job's state, as status() lists it and the state file records it (plain JSON). */
export interface JobInfo {
  id: string;
  status: JobStatus;
  options: JobTrainOptions;
  /** ISO times. */
  submittedAt: string;
  startedAt: string | null;
  endedAt: string | null;
  /** The last step finished, and the run's total (null before its `started` event). */
  step: number;
  totalSteps: number | null;
  /** The last step's training loss. */
  loss: number | null;
  /** The CPU threads the job's kernels may use now (its share of the manager's `threads`); null when not running. */
  threads: number | null;
  /** The newest checkpoint folder the job wrote, if any: a cancelled or interrupted job can resume from it. */
  checkpoint: string | null;
  /** The bytes estimateMemory says the job adds (null when not estimated: memoryCheck false, or not started). */
  memoryBytes: number | null;
  result: TrainResult | null;
  /** Why a `failed` job failed (a PeftkitError's code and message). */
  error: { code: string; message: string } | null;
}

type Trained<T extends TrainEvent['type']> = Omit<Extract<TrainEvent, { type: T }>, 'type'>;

/** Every event a Job (and its JobManager) emits, by name. Each carries `type` and the job's `id`. */
export interface JobEvents {
  /** The job joined the queue; `position` 0 is next to start. */
  queued: { type: 'queued'; id: string; position: number };
  /** Its run loaded the model and data and starts stepping (train()'s `start`), on `threads` threads. */
  started: { type: 'started'; id: string; threads: number } & Trained<'start'>;
  step: { type: 'step'; id: string } & Trained<'step'>;
  eval: { type: 'eval'; id: string } & Trained<'eval'>;
  checkpoint: { type: 'checkpoint'; id: string } & Trained<'checkpoint'>;
  warning: { type: 'warning'; id: string; message: string };
  done: { type: 'done'; id: string; result: TrainResult };
  failed: { type: 'failed'; id: string; error: PeftkitError };
  /** Cancelled: `checkpoint` is the folder it stopped at (null when cancelled before it wrote one). */
  cancelled: { type: 'cancelled'; id: string; checkpoint: string | null };
  /** Stopped by shutdown(), to be resumed from `checkpoint` (or from the start when null). */
  interrupted: { type: 'interrupted'; id: string; checkpoint: string | null };
}
export type JobEventName = keyof JobEvents;
export type JobEvent = JobEvents[JobEventName];

/** The statuses a job does not leave. */
export const ENDED: readonly JobStatus[] = ['done', 'failed', 'cancelled', 'interrupted'];

/**
 * A submitted training job. Awaitable for its TrainResult: a failed job rejects with its
 * PeftkitError, a cancelled or interrupted one with E_ABORTED. The rejection is never left
 * unhandled (a service must not crash because nobody awaited a job): the `failed` event and
 * status() report it too.
 */
export class Job extends TypedEmitter<JobEvents> implements PromiseLike<TrainResult> {
  private state: JobInfo;
  private readonly settled: Promise<TrainResult>;
  private settle!: { resolve: (r: TrainResult) => void; reject: (e: PeftkitError) => void };

  /** @internal Made by JobManager.submit() and restore(). */
  constructor(info: JobInfo, private readonly onCancel: (job: Job) => void) {
    super();
    this.state = info;
    this.settled = new Promise<TrainResult>((resolve, reject) => (this.settle = { resolve, reject }));
    this.settled.catch(() => {});
  }

  get id(): string {
    return this.state.id;
  }

  get status(): JobStatus {
    return this.state.status;
  }

  /** A copy of the job's state. */
  info(): JobInfo {
    return structuredClone(this.state);
  }

  /** The job's TrainResult once done; rejects with the PeftkitError of a failed, cancelled or interrupted job. */
  get result(): Promise<TrainResult> {
    return this.settled;
  }

  /**
   * Cancels the job: a queued one ends at once, a running one stops at its next step boundary
   * after writing a checkpoint (its `cancelled` event names it). Nothing happens to an ended job.
   */
  cancel(): void {
    this.onCancel(this);
  }

  /** @internal The manager's record of the job changes. */
  update(change: Partial<JobInfo>): void {
    Object.assign(this.state, change);
  }

  /** @internal Ends the job: settles the result. */
  end(outcome: { result: TrainResult } | { error: PeftkitError }): void {
    if ('result' in outcome) this.settle.resolve(outcome.result);
    else this.settle.reject(outcome.error);
  }

  then<A = TrainResult, B = never>(onOk?: ((r: TrainResult) => A | PromiseLike<A>) | null, onErr?: ((e: unknown) => B | PromiseLike<B>) | null): Promise<A | B> {
    return this.settled.then(onOk, onErr);
  }
}
