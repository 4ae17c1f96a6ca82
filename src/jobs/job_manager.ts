/**
 * JobManager: training jobs for a service. Jobs wait in a FIFO queue and run `concurrency` at a
 * time, each in its own train() worker, sharing the CPU threads; a job is started only when its
 * memory estimate fits beside the running jobs'; cancel, status, a graceful shutdown that
 * checkpoints, and (with `stateDir`) a job list on disk from which the next manager resumes.
 */
import { TypedEmitter } from '../util/typed_emitter';
import { randomUUID } from 'crypto';
import { PeftkitError } from '../errors';
import { FolderLock, lockFolder } from '../io/lock';
import { runtimeInfo, setNumThreads } from '../runtime';
import { resolveDevice } from '../tensor';
import { estimateMemoryAsync } from '../tasks/async_tasks';
import { availableMemory, GiB, newMemory } from '../train/memory';
import { holdsCheckpoints } from '../train/resume';
import type { TrainResult } from '../train/run';
import { train, TrainRun } from '../train/train';
import { ENDED, Job, JobEventName, JobEvents, JobInfo, JobTrainOptions } from './job';
import { readJobState, writeJobState } from './job_state';

/**
 * Jobs running at once by default. Measured on a shared 2-core machine (bench/jobs.ts): two
 * small LoRA jobs at once on one thread each finished 4.7–10× sooner than one after another on
 * two threads (libgomp's spinning 2-thread team loses its time to a descheduled teammate), and
 * as soon with OMP_WAIT_POLICY=passive: never slower.
 */
export const DEFAULT_CONCURRENCY = 2;

export interface JobManagerOptions {
  /** Jobs training at once; the others wait in a FIFO queue. Defaults to `DEFAULT_CONCURRENCY` (2). */
  concurrency?: number;
  /**
   * CPU threads the running jobs share: each of n running jobs gets floor(threads / n) (at least
   * 1), and the shares grow again as jobs end. The manager sets the process-wide cap
   * (setNumThreads) while jobs run, and puts back the cap it found once none does (so one
   * JobManager per process: two would each set the cap for their own jobs). Defaults to the
   * cap when the manager is made (runtimeInfo().threads: PEFTKIT_NUM_THREADS, else all cores).
   */
  threads?: number;
  /**
   * A folder for the job list (`jobs.json`, written atomically at every change), locked while
   * this manager uses it. Without it nothing survives the process. Defaults to none.
   */
  stateDir?: string;
  /** With `stateDir`: resume the jobs a previous manager left interrupted, queued or running (restore()). Defaults to `false`. */
  resume?: boolean;
  /**
   * The bytes the jobs together may use. A job whose memory estimate (estimateMemory) does not fit
   * beside the running jobs' estimates waits for them to end; one that does not fit even alone
   * fails with E_MEMORY. A job's `memoryCheck: false` skips this check (and train()'s own), and so
   * does a job on cuda (as train()'s).
   * Defaults to the memory available when the job is about to start (MemAvailable within any cgroup limit).
   */
  memoryBudget?: number;
}

export interface SubmitOptions {
  /** The job's id (unique in this manager, kept in the state file). Defaults to a random UUID. */
  id?: string;
  /** Cancels the job when it fires (as cancel()). Defaults to none. */
  signal?: AbortSignal;
}

/** What a job holds while it runs. */
interface Running {
  run: TrainRun | null;
  /** Stops the memory estimate (a worker reading the whole dataset) when the job is cancelled or shut down first. */
  estimate: AbortController | null;
  /** Set by shutdown(): the run's E_ABORTED ends the job as `interrupted`, not `cancelled`. */
  interrupting: boolean;
  cancelling: boolean;
}

/**
 * Training jobs for a service: a FIFO queue, `concurrency` jobs at a time each in its own
 * train() worker, the CPU threads divided among them, a memory check before each starts, events
 * on the jobs and on the manager, cancel, graceful shutdown and (with `stateDir`) resume after a
 * restart.
 *
 *     const jobs = new JobManager({ stateDir: './jobs-state', resume: true });
 *     jobs.on('step', (e) => console.log(e.id, e.step, e.loss));
 *     const job = jobs.submit({ model: 'SmolLM2-135M', data: 'train.jsonl', out: 'adapters/a', steps: 100 });
 *     const result = await job;
 *     await jobs.shutdown();
 */
export class JobManager extends TypedEmitter<JobEvents> {
  /** Jobs training at once. */
  readonly concurrency: number;
  /** CPU threads the running jobs share. */
  readonly threads: number;
  /** Where the job list is kept, or null. */
  readonly stateDir: string | null;
  private readonly memoryBudget: number | null;
  private readonly threadsBefore: number;
  private readonly jobs = new Map<string, Job>();
  private readonly queue: Job[] = [];
  /** The jobs holding a slot: being estimated, or running. */
  private readonly active = new Map<Job, Running>();
  /** A job that waits for running jobs to free memory: nothing behind it starts (the queue is FIFO). */
  private waitingForMemory = false;
  /** A job's memory is being estimated (admit()). */
  private admitting = false;
  private closing: Promise<JobInfo[]> | null = null;
  private readonly lock: FolderLock | null;
  private readonly idleWaiters: Array<() => void> = [];

  constructor(options: JobManagerOptions = {}) {
    super();
    const { concurrency = DEFAULT_CONCURRENCY, threads = runtimeInfo().threads, stateDir, memoryBudget } = options;
    if (!(Number.isSafeInteger(concurrency) && concurrency >= 1)) throw new PeftkitError('E_ARG', `concurrency: expected an integer >= 1, got ${String(concurrency)}`);
    if (!(Number.isSafeInteger(threads) && threads >= 1)) throw new PeftkitError('E_ARG', `threads: expected an integer >= 1, got ${String(threads)}`);
    if (memoryBudget !== undefined && !(Number.isFinite(memoryBudget) && memoryBudget > 0)) throw new PeftkitError('E_ARG', `memoryBudget: expected a number of bytes > 0, got ${String(memoryBudget)}`);
    if (options.resume && !stateDir) throw new PeftkitError('E_ARG', 'resume: needs a stateDir to resume from');
    this.concurrency = concurrency;
    this.threads = threads;
    this.threadsBefore = runtimeInfo().threads;
    this.memoryBudget = memoryBudget ?? null;
    this.stateDir = stateDir ?? null;
    this.lock = stateDir ? lockFolder(stateDir, 'stateDir') : null;
    if (stateDir) {
      try {
        for (const info of readJobState(stateDir)) this.jobs.set(info.id, recordedJob(info, (j) => this.cancelJob(j)));
      } catch (e) {
        this.lock?.release();
        throw e;
      }
    }
    if (options.resume) this.restore();
  }

  /**
   * Queues a training job (any of train()'s options; `out` is where its adapter goes) and
   * returns it. Bad options fail the job (its `failed` event, a rejected result), as any other
   * failure. E_ARG at once for a duplicate id or after shutdown().
   */
  submit(trainOptions: JobTrainOptions, options: SubmitOptions = {}): Job {
    if (this.closing) throw new PeftkitError('E_ARG', 'submit: this JobManager is shut down');
    const id = options.id ?? randomUUID();
    if (typeof id !== 'string' || !id) throw new PeftkitError('E_ARG', `id: expected a non-empty string, got ${String(id)}`);
    if (this.jobs.has(id)) throw new PeftkitError('E_ARG', `id: a job '${id}' already exists in this manager`);
    if (typeof trainOptions?.out !== 'string') throw new PeftkitError('E_ARG', 'out: expected the folder the job writes its adapter to');
    let copy: JobTrainOptions;
    try {
      copy = structuredClone(trainOptions); // kept as submitted (the state file, a restore), whatever the caller does to its object
    } catch (e) {
      throw new PeftkitError('E_ARG', `submit: the train options must be plain data (they go to a worker and the state file): ${(e as Error).message}`);
    }
    const job = new Job(newInfo(id, copy), (j) => this.cancelJob(j));
    this.jobs.set(id, job);
    this.enqueue(job);
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) this.cancelJob(job);
      else {
        const onAbort = () => this.cancelJob(job);
        signal.addEventListener('abort', onAbort, { once: true });
        // A long-lived signal shared by many jobs must not keep each ended job alive.
        job.then(() => signal.removeEventListener('abort', onAbort), () => signal.removeEventListener('abort', onAbort));
      }
    }
    return job;
  }

  /** The job with this id (also ended and restored ones), or undefined. */
  job(id: string): Job | undefined {
    return this.jobs.get(id);
  }

  /** Every job's state, in the order they were submitted. */
  status(): JobInfo[] {
    return [...this.jobs.values()].map((j) => j.info());
  }

  /** Cancels the job with this id (see Job.cancel); E_ARG when there is none. */
  cancel(id: string): void {
    const job = this.jobs.get(id);
    if (!job) throw new PeftkitError('E_ARG', `cancel: no job '${id}'`);
    this.cancelJob(job);
  }

  /** Resolves when no job is queued or running. */
  onIdle(): Promise<void> {
    if (this.queue.length === 0 && this.active.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Queues again, in their original order, the recorded jobs a previous manager left
   * interrupted, queued or running (all three are `interrupted` once read): each resumes from the
   * newest checkpoint in its `out` folder, or starts over when there is none. Returns them. A
   * manager made with `resume: true` calls it, so they run before any job submitted to it.
   */
  restore(): Job[] {
    if (this.closing) throw new PeftkitError('E_ARG', 'restore: this JobManager is shut down');
    const again = [...this.jobs.values()].filter((j) => j.status === 'interrupted');
    for (const job of again) {
      const { options } = job.info();
      // The run continues where it stopped; every option is as it was, so the checkpoint accepts them.
      const resumed: JobTrainOptions = holdsCheckpoints(options.out) ? { ...options, resume: options.out, overwrite: undefined } : options;
      job.update({ status: 'queued', options: resumed, threads: null, endedAt: null, error: null, memoryBytes: null });
      this.enqueue(job);
    }
    return again;
  }

  /**
   * Stops taking jobs; queued jobs become `interrupted` at once, running ones stop at their next
   * step boundary after writing a checkpoint (their worker is terminated if it does not reach one
   * within the job's `abortGraceMs`), then become `interrupted`. Resolves with every job's state
   * once the running ones have stopped and the state file is written; the stateDir is then free
   * for the next manager.
   */
  shutdown(): Promise<JobInfo[]> {
    this.closing ??= (async () => {
      for (const job of this.queue.splice(0)) this.end(job, 'interrupted', { checkpoint: job.info().checkpoint });
      for (const slot of this.active.values()) {
        slot.interrupting = true;
        slot.estimate?.abort();
        slot.run?.abort();
      }
      await this.onIdle();
      this.persist();
      this.lock?.release();
      return this.status();
    })();
    return this.closing;
  }

  private enqueue(job: Job): void {
    this.queue.push(job);
    const position = this.queue.length - 1;
    this.persist();
    // Emitted after submit() returns, so that listeners added to the job then hear it.
    queueMicrotask(() => {
      if (!ENDED.includes(job.status)) this.emitJob(job, { type: 'queued', id: job.id, position });
    });
    setImmediate(() => this.pump());
  }

  /**
   * Admits the head of the queue when a slot is free, the head is not waiting for memory and no
   * other job is being admitted: one at a time, so jobs start in the order they were submitted
   * and each estimate is compared with those of the jobs started before it.
   */
  private pump(): void {
    if (!this.closing && !this.admitting && !this.waitingForMemory && this.active.size < this.concurrency && this.queue.length > 0) {
      const job = this.queue.shift()!;
      const slot: Running = { run: null, estimate: null, interrupting: false, cancelling: false };
      this.active.set(job, slot);
      this.admitting = true;
      void this.admit(job, slot).finally(() => {
        this.admitting = false;
        this.pump();
      });
    }
    this.checkIdle();
  }

  /** Estimates the job's memory (in a worker), then starts it, puts it back to wait, or fails it. */
  private async admit(job: Job, slot: Running): Promise<void> {
    const options = job.info().options;
    // As train(): on cuda the tensors live in the GPU's memory, which the host's figures do not describe.
    if (options.memoryCheck !== false && resolveDevice(options.device) === 'cpu') {
      let needed: number;
      try {
        const known = job.info().memoryBytes;
        slot.estimate = new AbortController();
        needed = known ?? newMemory(await estimateMemoryAsync(options, { signal: slot.estimate.signal }));
      } catch (e) {
        return this.finish(job, slot, e);
      } finally {
        slot.estimate = null;
      }
      job.update({ memoryBytes: needed });
      if (slot.cancelling || slot.interrupting) return this.finish(job, slot, new PeftkitError('E_ABORTED', 'stopped before it started'));
      const verdict = this.memoryVerdict(job, needed);
      if (verdict === 'wait') {
        this.active.delete(job);
        this.queue.unshift(job);
        this.waitingForMemory = true;
        return;
      }
      if (verdict instanceof PeftkitError) return this.finish(job, slot, verdict);
    }
    this.start(job, slot);
  }

  /** Whether `needed` bytes fit now beside the running jobs' estimates, would fit once they end, or never. */
  private memoryVerdict(job: Job, needed: number): 'start' | 'wait' | PeftkitError {
    const others = [...this.active.keys()].filter((j) => j !== job && j.info().memoryBytes !== null);
    const reserved = others.reduce((a, j) => a + j.info().memoryBytes!, 0);
    const available = this.memoryBudget !== null ? { bytes: this.memoryBudget, source: 'the memoryBudget option' } : availableMemory();
    if (needed + reserved <= available.bytes) return 'start';
    // The host's available memory already lacks what the running jobs hold (up to their
    // estimates), which comes back when they end; a budget is the whole pool.
    const onceEnded = this.memoryBudget !== null ? available.bytes : available.bytes + reserved;
    if (others.length > 0 && needed <= onceEnded) return 'wait';
    return new PeftkitError('E_MEMORY', `job '${job.id}' needs about ${GiB(needed)} (estimateMemory) but ${GiB(available.bytes)} is available (${available.source})` +
      `${others.length ? `, of which the running jobs ${others.map((j) => `'${j.id}'`).join(', ')} are estimated to use ${GiB(reserved)}` : ''}: ` +
      `lower its batchSize or maxLength, use activationCheckpointing or a quantized base, or pass memoryCheck: false to start it anyway`);
  }

  private start(job: Job, slot: Running): void {
    job.update({ status: 'running', startedAt: new Date().toISOString() });
    let run: TrainRun;
    try {
      run = train(job.info().options);
    } catch (e) {
      return this.finish(job, slot, e); // the worker could not start
    }
    slot.run = run;
    this.divideThreads();
    this.persist();
    run.on('start', (e) => this.emitJob(job, { ...e, type: 'started', id: job.id, threads: job.info().threads! }));
    run.on('step', (e) => {
      job.update({ step: e.step, totalSteps: e.totalSteps, loss: e.loss });
      this.emitJob(job, { ...e, id: job.id });
    });
    run.on('eval', (e) => this.emitJob(job, { ...e, id: job.id }));
    run.on('warning', (e) => this.emitJob(job, { ...e, id: job.id }));
    run.on('checkpoint', (e) => {
      job.update({ checkpoint: e.dir, step: e.step });
      this.persist();
      this.emitJob(job, { ...e, id: job.id });
    });
    run.result.then((result) => this.finish(job, slot, null, result), (e) => this.finish(job, slot, e));
    if (slot.cancelling || slot.interrupting) run.abort();
  }

  /** Ends a job that held a slot: done with `result`, else failed, cancelled or interrupted by `error`. */
  private finish(job: Job, slot: Running, error: unknown, result?: TrainResult): void {
    this.active.delete(job);
    this.waitingForMemory = false; // memory was freed: the head of the queue may fit now
    this.divideThreads();
    const checkpoint = job.info().checkpoint;
    if (result) this.end(job, 'done', { result });
    else if (error instanceof PeftkitError && error.code === 'E_ABORTED' && slot.interrupting) this.end(job, 'interrupted', { checkpoint });
    else if (error instanceof PeftkitError && error.code === 'E_ABORTED' && slot.cancelling) this.end(job, 'cancelled', { checkpoint });
    else this.end(job, 'failed', { error: error instanceof PeftkitError ? error : new PeftkitError('E_INTERNAL', String((error as Error)?.message ?? error)) });
    this.pump();
  }

  private end(job: Job, status: 'done', how: { result: TrainResult }): void;
  private end(job: Job, status: 'failed', how: { error: PeftkitError }): void;
  private end(job: Job, status: 'cancelled' | 'interrupted', how: { checkpoint: string | null }): void;
  private end(job: Job, status: 'done' | 'failed' | 'cancelled' | 'interrupted', how: { result?: TrainResult; error?: PeftkitError; checkpoint?: string | null }): void {
    const error = how.error ?? (status === 'cancelled' || status === 'interrupted'
      ? new PeftkitError('E_ABORTED', `job '${job.id}' ${status === 'cancelled' ? 'was cancelled' : 'was interrupted by shutdown(); a JobManager made with resume: true resumes it'}${how.checkpoint ? ` (checkpoint ${how.checkpoint})` : ''}`)
      : undefined);
    job.update({ status, endedAt: new Date().toISOString(), threads: null, result: how.result ?? null, error: error && status === 'failed' ? { code: error.code, message: error.message } : null });
    this.persist();
    if (status === 'done') this.emitJob(job, { type: 'done', id: job.id, result: how.result! });
    else if (status === 'failed') this.emitJob(job, { type: 'failed', id: job.id, error: error! });
    else this.emitJob(job, { type: status, id: job.id, checkpoint: how.checkpoint ?? null });
    job.end(how.result ? { result: how.result } : { error: error! });
  }

  private cancelJob(job: Job): void {
    if (ENDED.includes(job.status)) return;
    const queued = this.queue.indexOf(job);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      if (queued === 0) this.waitingForMemory = false;
      this.end(job, 'cancelled', { checkpoint: job.info().checkpoint });
      setImmediate(() => this.pump());
      return;
    }
    const slot = this.active.get(job);
    if (!slot) return;
    slot.cancelling = true;
    slot.estimate?.abort();
    slot.run?.abort();
  }

  /** Each running job's share of the threads; the cap found at construction when none runs. */
  private divideThreads(): void {
    const running = [...this.active].filter(([, s]) => s.run !== null);
    const share = Math.max(1, Math.floor(this.threads / Math.max(1, running.length)));
    setNumThreads(running.length === 0 ? this.threadsBefore : share);
    for (const [job] of running) job.update({ threads: share });
  }

  private emitJob<K extends JobEventName>(job: Job, event: JobEvents[K]): void {
    job.emit(event.type, event);
    this.emit(event.type, event);
  }

  private persist(): void {
    if (!this.stateDir) return;
    try {
      writeJobState(this.stateDir, this.status());
    } catch (e) {
      // A full disk must not stop the jobs themselves: said, and tried again at the next change.
      for (const job of this.active.keys()) this.emitJob(job, { type: 'warning', id: job.id, message: `the job list could not be saved: ${(e as Error).message}` });
    }
  }

  private checkIdle(): void {
    if (this.queue.length > 0 || this.active.size > 0) return;
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }
}

/**
 * A job of the state file: one that was queued or running there (a process that crashed, or one
 * that was never shut down) is `interrupted` here; an ended one is settled as it ended. An
 * interrupted one settles once restore() has run it.
 */
function recordedJob(info: JobInfo, onCancel: (job: Job) => void): Job {
  const job = new Job(info.status === 'queued' || info.status === 'running' ? { ...info, status: 'interrupted', threads: null } : info, onCancel);
  if (info.status === 'done' && info.result) job.end({ result: info.result });
  else if (info.status === 'failed') job.end({ error: new PeftkitError(info.error?.code ?? 'E_INTERNAL', info.error?.message ?? 'failed') });
  else if (info.status === 'cancelled') job.end({ error: new PeftkitError('E_ABORTED', `job '${info.id}' was cancelled`) });
  return job;
}

function newInfo(id: string, options: JobTrainOptions): JobInfo {
  return {
    id, status: 'queued', options, submittedAt: new Date().toISOString(), startedAt: null, endedAt: null,
    step: 0, totalSteps: null, loss: null, threads: null, checkpoint: null, memoryBytes: null, result: null, error: null,
  };
}
