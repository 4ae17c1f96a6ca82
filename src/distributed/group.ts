/**
 * A process group: the ranks of a data-parallel run, joined through rank 0's store and
 * connected for the collectives by Gloo (TCP) on a CPU run, by NCCL on a CUDA run. `ProcessGroup.join()` is async (rank 0's event
 * loop serves the rendezvous while the native side waits in it); the collectives are
 * synchronous, for the synchronous training loop.
 *
 * A failed collective (a rank died, hung past the timeout, or the network broke) throws E_DIST
 * at once on the ranks that see it; `explain()` then asks the store which rank's liveness
 * connection closed, so the error the user sees names it.
 */
import { PeftkitError } from '../errors';
import { native } from '../native';
import type { NativeGroup } from '../native';
import type { Tensor } from '../tensor';
import type { DistributedSetup } from './env';
import { StoreClient, StoreServer } from './store';

/** Whether this build of the addon can run distributed on CPU tensors (it was built with Gloo). */
export function distributedAvailable(): boolean {
  return native.distInfo().gloo;
}

/**
 * Whether this build can run distributed on CUDA tensors: built with CUDA, so with the NCCL
 * group. NCCL itself (libnccl.so.2) is opened when a group connects, and missing is E_UNSUPPORTED then.
 */
export function ncclCompiled(): boolean {
  return native.distInfo().nccl;
}

/** The collective library of a group: Gloo for CPU tensors, NCCL for CUDA ones. */
export type Backend = 'gloo' | 'nccl';

export interface JoinOptions {
  /** Prefixes the group's keys in the store (several groups can meet through one). Defaults to `'peftkit'`. */
  prefix?: string;
  /** Where the tensors it sums live: `'cpu'` joins over Gloo, `'cuda'` over NCCL. Defaults to `'cpu'`. */
  device?: 'cpu' | 'cuda';
  /**
   * NCCL's library (a CUDA group), a name dlopen searches for or a path (PyTorch's pip wheels
   * carry one in site-packages/nvidia/nccl/lib). Defaults to `PEFTKIT_NCCL_LIBRARY`, else `'libnccl.so.2'`.
   */
  ncclLibrary?: string;
}

/** `p`, or a rejection after `ms` (for requests to a store that may never answer). */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  return Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms).unref())]);
}

/**
 * A join that failed (E_DIST: Gloo's rendezvous or NCCL's init ran out of time), naming the
 * ranks that never reached the store: the usual cause, a rank that did not start or died first.
 */
async function namingAbsentRanks(e: unknown, setup: DistributedSetup, liveness: StoreClient): Promise<unknown> {
  if (!(e instanceof PeftkitError) || e.code !== 'E_DIST') return e;
  try {
    const states = await within(liveness.rankStates(), 5000);
    const seen = new Set([...states.connected, ...states.left, ...states.lost, ...Object.keys(states.failed).map(Number)]);
    const absent = Array.from({ length: setup.worldSize }, (_, r) => r).filter((r) => !seen.has(r));
    if (!absent.length) return e;
    const list = absent.length > 8 ? `${absent.slice(0, 8).join(', ')} and ${absent.length - 8} more` : absent.join(', ');
    return new PeftkitError('E_DIST', `rank${absent.length > 1 ? 's' : ''} ${list} never joined (never reached the store at ${setup.masterAddr}:${setup.masterPort}): ${e.message}`);
  } catch {
    return e; // the store is gone: the error as it is
  }
}

export class ProcessGroup {
  private closed = false;

  private constructor(
    readonly setup: DistributedSetup,
    private readonly handle: NativeGroup,
    private readonly server: StoreServer | null,
    private readonly liveness: StoreClient,
    /** The collective library the group runs on. */
    readonly backend: Backend,
  ) {}

  get rank(): number {
    return this.setup.rank;
  }

  get size(): number {
    return this.setup.worldSize;
  }

  /** Joins the group: rank 0 serves the store first; every rank says hello, then Gloo or NCCL connects. */
  static async join(setup: DistributedSetup, o: JoinOptions = {}): Promise<ProcessGroup> {
    const prefix = o.prefix ?? 'peftkit';
    const backend: Backend = o.device === 'cuda' ? 'nccl' : 'gloo';
    if (backend === 'nccl' && !ncclCompiled()) {
      throw new PeftkitError('E_UNSUPPORTED', `distributed training on CUDA (WORLD_SIZE ${setup.worldSize}): this build of the peftkit addon has no CUDA, so no NCCL group; build it with CUDA (npm run build:cuda)`);
    }
    if (backend === 'gloo' && !distributedAvailable()) {
      throw new PeftkitError('E_UNSUPPORTED', `distributed training (WORLD_SIZE ${setup.worldSize}): this build of the peftkit addon has no Gloo; install libgloo-dev (apt-get install libgloo-dev) and rebuild it (npm rebuild peftkit)`);
    }
    let server: StoreServer | null = null;
    if (setup.rank === 0) {
      server = new StoreServer();
      await server.listen(setup.masterPort);
    }
    let liveness: StoreClient | null = null;
    const handle = native.distNewGroup();
    try {
      liveness = await StoreClient.connect({ host: setup.masterAddr, port: setup.masterPort, connectTimeoutMs: setup.timeoutMs });
      await liveness.hello(setup.rank);
      await native.distConnectAsync(handle, backend, setup.rank, setup.worldSize, setup.masterAddr, setup.masterPort, `${prefix}/`, setup.localAddr, setup.timeoutMs, o.ncclLibrary ?? (process.env.PEFTKIT_NCCL_LIBRARY || 'libnccl.so.2'));
    } catch (e) {
      const named = liveness ? await namingAbsentRanks(e, setup, liveness) : e;
      native.distClose(handle);
      liveness?.close();
      await server?.close();
      throw named;
    }
    return new ProcessGroup(setup, handle, server, liveness, backend);
  }

  /** Sums an f32 CPU tensor over the ranks in place; every rank gets the same bits. */
  allReduceSum(t: Tensor, what: string): void {
    native.distAllReduceSum(this.handle, t.native, what);
  }

  /**
   * Starts summing `t` in place and returns at once (Gloo: on the group's own thread; NCCL: on
   * the op stream). Sums run in the order they were started, which must be the same on every
   * rank; `t` must not be touched until {@link waitStarted} returns.
   */
  allReduceSumStart(t: Tensor, what: string): void {
    native.distAllReduceSumStart(this.handle, t.native, what);
  }

  /** Waits for every sum started with {@link allReduceSumStart}; the first that failed throws (E_DIST). */
  waitStarted(): void {
    native.distWaitStarted(this.handle);
  }

  /** Sums numbers over the ranks (in f64: token counts stay exact). */
  allReduceNumbers(values: number[], what: string): number[] {
    const a = Float64Array.from(values);
    native.distAllReduceSumF64(this.handle, a, what);
    return Array.from(a);
  }

  barrier(): void {
    native.distBarrier(this.handle);
  }

  /**
   * The error to report for a failed collective: the same code, naming the ranks whose
   * process is gone when the store can tell (rank 0's store itself gone means rank 0 is).
   */
  async explain(e: unknown): Promise<unknown> {
    if (!(e instanceof PeftkitError) || e.code !== 'E_DIST') return e;
    const where = `${this.setup.masterAddr}:${this.setup.masterPort}`;
    let why: string;
    try {
      // A dead process's sockets all close at once, but the store may learn of it a moment after
      // this rank did: ask again for up to 2 s before concluding that nobody died.
      const deadline = Date.now() + 2000;
      let lost: number[] = [];
      let states;
      for (;;) {
        states = await within(this.liveness.rankStates(), 5000);
        lost = states.lost.filter((r) => r !== this.rank);
        if (Object.keys(states.failed).some((r) => Number(r) !== this.rank)) break;
        if (lost.length || Date.now() >= deadline) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const failed = Object.entries(states.failed).filter(([r]) => Number(r) !== this.rank);
      why = failed.length
        ? failed.map(([r, m]) => `rank ${r} stopped on an error (${m})`).join('; ')
        : lost.length
        ? `rank${lost.length > 1 ? 's' : ''} ${lost.join(', ')} died (${lost.length > 1 ? 'their' : 'its'} connection to the store closed without finishing)`
        : `no rank has died (all connected: ${states.connected.join(', ')}); one hung past the timeout of ${this.setup.timeoutMs} ms, or the network between ranks broke`;
    } catch (q) {
      why = this.rank === 0 ? `the store could not be asked: ${(q as Error).message}` : `rank 0 is gone or hung (its store at ${where} does not answer: ${(q as Error).message})`;
    }
    return new PeftkitError('E_DIST', `${why}: ${e.message}`);
  }

  /**
   * Leaves the group: drops the connections, and says bye (a normal end, or a collective that
   * failed because of another rank) or, given the error this rank stops on, reports it to the
   * store so the other ranks' errors can quote it. Rank 0 then keeps its store up `lingerMs`
   * more, for the others to ask why.
   */
  async close(failure?: unknown, lingerMs = 3000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // A failed collective is a consequence of another rank's end, which the store already knows:
    // leave without a report. Any other error is reported, for the others' errors to quote.
    const report = failure !== undefined && !(failure instanceof PeftkitError && failure.code === 'E_DIST');
    // Sent now but not awaited yet: the store runs on rank 0's thread, which may be blocked in a
    // collective with this rank until the abort below frees it.
    const msg = failure instanceof PeftkitError ? `${failure.code}: ${failure.message}` : String((failure as Error)?.message ?? failure);
    const reported = report ? within(this.liveness.failed(msg), lingerMs) : null;
    // On an error the peers' collectives must fail now, on closed sockets. Dropping the group
    // closes them too, but only once nothing holds it (an async op in flight would).
    if (failure !== undefined) native.distAbort(this.handle);
    native.distClose(this.handle);
    if (reported) await reported.catch(() => {});
    else await within(this.liveness.bye(), lingerMs).catch(() => {});
    // Rank 0 keeps its store up a little, for the others to ask why.
    if (report && this.server) await new Promise((r) => setTimeout(r, lingerMs));
    this.liveness.close();
    await this.server?.close();
  }
}
