/**
 * The rendezvous store of a distributed run: a small TCP key-value store that rank 0 serves
 * over node:net (torch's TCPStore in spirit). Gloo's rendezvous (native/distributed/store_client.cc,
 * a gloo::rendezvous::Store over this protocol) exchanges each rank's listening address through
 * it; later NCCL's unique id travels the same way. Every rank also keeps one connection open
 * with its rank announced (`hello`): when a collective fails, the store knows which rank's
 * connection closed without a `bye`, so the error can name the rank that died.
 *
 * Wire format (both directions): u32le body length, then the body. A request body is a u8 op
 * then fields, each a u32le length and its bytes; numbers travel as decimal text. A response
 * body is a u8 status (0 ok, 1 timed out, 2 error) then fields. One connection's requests are
 * answered in order.
 *
 *   'S' set(key, value)            'G' get(key, timeoutMs): waits for the key, returns its value
 *   'W' wait(timeoutMs, key...)    'A' add(key, delta): returns the new value (decimal text)
 *   'H' hello(rank)                'B' bye               'D' ranks(): connected, left, lost, failed
 *   'F' failed(message): this rank stopped on an error (the others' errors then quote it)
 */
import * as net from 'net';
import { PeftkitError } from '../errors';

export const STATUS_OK = 0;
export const STATUS_TIMEOUT = 1;
export const STATUS_ERROR = 2;
/** A frame larger than this is refused: rendezvous values are addresses and ids, not tensors. */
const MAX_FRAME = 64 << 20;

export function encodeFrame(head: number, fields: ReadonlyArray<Buffer | string>): Buffer {
  const parts = fields.map((f) => (typeof f === 'string' ? Buffer.from(f, 'utf8') : f));
  const len = 1 + parts.reduce((a, p) => a + 4 + p.length, 0);
  const out = Buffer.alloc(4 + len);
  out.writeUInt32LE(len, 0);
  out.writeUInt8(head, 4);
  let o = 5;
  for (const p of parts) {
    out.writeUInt32LE(p.length, o);
    p.copy(out, o + 4);
    o += 4 + p.length;
  }
  return out;
}

function decodeBody(body: Buffer): { head: number; fields: Buffer[] } {
  if (body.length < 1) throw new Error('empty frame');
  const fields: Buffer[] = [];
  let o = 1;
  while (o < body.length) {
    if (o + 4 > body.length) throw new Error('truncated field length');
    const n = body.readUInt32LE(o);
    if (o + 4 + n > body.length) throw new Error('field runs past the frame');
    fields.push(body.subarray(o + 4, o + 4 + n));
    o += 4 + n;
  }
  return { head: body[0], fields };
}

/** Splits a byte stream into frames; calls `onFrame` for each complete one. */
class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  constructor(private readonly onFrame: (head: number, fields: Buffer[]) => void, private readonly onBad: (why: string) => void) {}
  push(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (len > MAX_FRAME) return this.onBad(`a frame of ${len} bytes (more than ${MAX_FRAME})`);
      if (this.buf.length < 4 + len) return;
      const body = this.buf.subarray(4, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      let f: { head: number; fields: Buffer[] };
      try {
        f = decodeBody(body);
      } catch (e) {
        return this.onBad((e as Error).message);
      }
      this.onFrame(f.head, f.fields);
    }
  }
}

/** What the store knows of the ranks that said hello. */
export interface RankStates {
  /** Ranks whose liveness connection is open. */
  connected: number[];
  /** Ranks that said bye (a finished run). */
  left: number[];
  /** Ranks whose connection closed without bye: the process died or lost the network. */
  lost: number[];
  /** Ranks that reported an error before leaving, with its message. */
  failed: Record<number, string>;
}

interface Waiter {
  keys: string[];
  resolve: (ok: boolean) => void;
}

/**
 * Rank 0's store. `listen()` resolves once it accepts connections; `close()` ends every
 * connection. Waits are answered when their keys appear or their timeout passes.
 */
export class StoreServer {
  private readonly data = new Map<string, Buffer>();
  private waiters: Waiter[] = [];
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly ranks = new Map<number, 'connected' | 'left' | 'lost'>();
  private readonly failures = new Map<number, string>();

  constructor() {
    this.server = net.createServer((s) => this.accept(s));
  }

  /** Listens on host:port (port 0: any free port); resolves to the port. */
  listen(port: number, host = '0.0.0.0'): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (e: NodeJS.ErrnoException) => {
        reject(new PeftkitError('E_DIST', `rank 0 cannot serve the rendezvous store on ${host}:${port} (MASTER_PORT): ${e.code ?? e.message}` +
          (e.code === 'EADDRINUSE' ? ': another process holds the port; choose another MASTER_PORT' : '')));
      };
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        resolve((this.server.address() as net.AddressInfo).port);
      });
    });
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  rankStates(): RankStates {
    const out: RankStates = { connected: [], left: [], lost: [], failed: {} };
    for (const [r, s] of [...this.ranks].sort((a, b) => a[0] - b[0])) out[s].push(r);
    for (const [r, m] of this.failures) out.failed[r] = m;
    return out;
  }

  close(): Promise<void> {
    for (const w of this.waiters) w.resolve(false);
    this.waiters = [];
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.setNoDelay(true);
    let rank: number | null = null;
    let queue: Promise<void> = Promise.resolve();
    const reply = (status: number, fields: Array<Buffer | string> = []) => {
      if (!socket.destroyed) socket.write(encodeFrame(status, fields));
    };
    const reader = new FrameReader(
      (head, fields) => {
        // In order per connection: a client's wait is answered before its next request is read.
        queue = queue.then(async () => {
          try {
            const r = await this.handle(head, fields, (n) => (rank = n), () => rank);
            reply(r.status, r.fields);
          } catch (e) {
            reply(STATUS_ERROR, [(e as Error).message]);
          }
        });
      },
      (why) => {
        reply(STATUS_ERROR, [`bad request: ${why}`]);
        socket.destroy();
      },
    );
    socket.on('data', (c: Buffer) => reader.push(c));
    socket.on('error', () => {}); // a peer that dies resets the connection: 'close' follows
    socket.on('close', () => {
      this.sockets.delete(socket);
      if (rank !== null && this.ranks.get(rank) === 'connected') this.ranks.set(rank, 'lost');
    });
  }

  private async handle(head: number, f: Buffer[], setRank: (r: number) => void, getRank: () => number | null): Promise<{ status: number; fields?: Array<Buffer | string> }> {
    const op = String.fromCharCode(head);
    const need = (n: number) => {
      if (f.length < n) throw new Error(`op '${op}' needs ${n} fields, got ${f.length}`);
    };
    const num = (b: Buffer, what: string) => {
      const v = Number(b.toString('utf8'));
      if (!Number.isFinite(v)) throw new Error(`op '${op}': ${what} is not a number: '${b.toString('utf8')}'`);
      return v;
    };
    switch (op) {
      case 'S':
        need(2);
        this.put(f[0].toString('utf8'), Buffer.from(f[1]));
        return { status: STATUS_OK };
      case 'G': {
        need(2);
        const key = f[0].toString('utf8');
        if (!(await this.waitFor([key], num(f[1], 'timeoutMs')))) return { status: STATUS_TIMEOUT, fields: [key] };
        return { status: STATUS_OK, fields: [this.data.get(key)!] };
      }
      case 'W': {
        need(1);
        const keys = f.slice(1).map((k) => k.toString('utf8'));
        if (await this.waitFor(keys, num(f[0], 'timeoutMs'))) return { status: STATUS_OK };
        return { status: STATUS_TIMEOUT, fields: keys.filter((k) => !this.data.has(k)) };
      }
      case 'A': {
        need(2);
        const key = f[0].toString('utf8');
        const old = this.data.get(key);
        const v = (old === undefined ? 0 : num(old, `the value of '${key}'`)) + num(f[1], 'delta');
        this.put(key, Buffer.from(String(v)));
        return { status: STATUS_OK, fields: [String(v)] };
      }
      case 'H': {
        need(1);
        const r = num(f[0], 'rank');
        setRank(r);
        this.ranks.set(r, 'connected');
        return { status: STATUS_OK };
      }
      case 'B': {
        const r = getRank();
        if (r !== null) this.ranks.set(r, 'left');
        return { status: STATUS_OK };
      }
      case 'F': {
        need(1);
        const r = getRank();
        if (r === null) throw new Error("op 'F' before hello: the store does not know this connection's rank");
        this.failures.set(r, f[0].toString('utf8'));
        return { status: STATUS_OK };
      }
      case 'D':
        return { status: STATUS_OK, fields: [JSON.stringify(this.rankStates())] };
      default:
        throw new Error(`unknown op '${op}' (0x${head.toString(16)})`);
    }
  }

  private put(key: string, value: Buffer): void {
    this.data.set(key, value);
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.keys.every((k) => this.data.has(k))) w.resolve(true);
      else still.push(w);
    }
    this.waiters = still;
  }

  private waitFor(keys: string[], timeoutMs: number): Promise<boolean> {
    if (keys.every((k) => this.data.has(k))) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w: Waiter = { keys, resolve: (ok) => (clearTimeout(timer), resolve(ok)) };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(false);
      }, Math.max(0, timeoutMs));
      this.waiters.push(w);
    });
  }
}

export interface StoreClientOptions {
  host: string;
  port: number;
  /** How long to keep trying to connect (rank 0 may start after the others). Defaults to `30000` ms. */
  connectTimeoutMs?: number;
}

/**
 * A client of the store, for JS (the native side has its own, store_client.cc): the liveness
 * connection of each rank, and the tests. Requests are sent one at a time.
 */
export class StoreClient {
  private socket: net.Socket | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private pending: { resolve: (r: { status: number; fields: Buffer[] }) => void; reject: (e: Error) => void } | null = null;
  private closedWith: Error | null = null;

  private constructor(private readonly where: string) {}

  static async connect(o: StoreClientOptions): Promise<StoreClient> {
    const where = `${o.host}:${o.port}`;
    const c = new StoreClient(where);
    const deadline = Date.now() + (o.connectTimeoutMs ?? 30000);
    for (;;) {
      try {
        c.socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(o.port, o.host);
          s.once('connect', () => (s.off('error', reject), resolve(s)));
          s.once('error', reject);
        });
        break;
      } catch (e) {
        if (Date.now() >= deadline) {
          throw new PeftkitError('E_DIST', `no rendezvous store answers at ${where} (MASTER_ADDR:MASTER_PORT) after ${o.connectTimeoutMs ?? 30000} ms: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; is rank 0 running?`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const s = c.socket;
    s.setNoDelay(true);
    const reader = new FrameReader(
      (status, fields) => {
        const p = c.pending;
        c.pending = null;
        p?.resolve({ status, fields });
      },
      (why) => c.fail(new PeftkitError('E_DIST', `the rendezvous store at ${where} sent a bad frame: ${why}`)),
    );
    s.on('data', (d: Buffer) => reader.push(d));
    s.on('error', () => {});
    s.on('close', () => c.fail(new PeftkitError('E_DIST', `the rendezvous store at ${where} closed the connection (rank 0 ended or died)`)));
    return c;
  }

  private fail(e: Error): void {
    this.closedWith ??= e;
    const p = this.pending;
    this.pending = null;
    p?.reject(e);
    this.socket?.destroy();
  }

  private request(op: string, fields: Array<Buffer | string>): Promise<{ status: number; fields: Buffer[] }> {
    const run = () =>
      new Promise<{ status: number; fields: Buffer[] }>((resolve, reject) => {
        if (this.closedWith) return reject(this.closedWith);
        this.pending = { resolve, reject };
        this.socket!.write(encodeFrame(op.charCodeAt(0), fields));
      }).then((r) => {
        if (r.status === STATUS_ERROR) throw new PeftkitError('E_DIST', `the rendezvous store at ${this.where} refused '${op}': ${r.fields[0]?.toString('utf8') ?? ''}`);
        return r;
      });
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  async set(key: string, value: Buffer | string): Promise<void> {
    await this.request('S', [key, value]);
  }

  /** The key's value, waiting up to `timeoutMs` for it to be set. */
  async get(key: string, timeoutMs: number): Promise<Buffer> {
    const r = await this.request('G', [key, String(timeoutMs)]);
    if (r.status === STATUS_TIMEOUT) throw new PeftkitError('E_DIST', `rendezvous store at ${this.where}: key '${key}' was not set within ${timeoutMs} ms`);
    return r.fields[0];
  }

  /** Waits until every key is set; a timeout names the keys still missing. */
  async wait(keys: string[], timeoutMs: number): Promise<void> {
    const r = await this.request('W', [String(timeoutMs), ...keys]);
    if (r.status === STATUS_TIMEOUT) {
      throw new PeftkitError('E_DIST', `rendezvous store at ${this.where}: ${r.fields.map((k) => `'${k.toString('utf8')}'`).join(', ')} not set within ${timeoutMs} ms`);
    }
  }

  async add(key: string, delta: number): Promise<number> {
    const r = await this.request('A', [key, String(delta)]);
    return Number(r.fields[0].toString('utf8'));
  }

  /** Announces this connection as `rank`'s liveness connection. */
  async hello(rank: number): Promise<void> {
    await this.request('H', [String(rank)]);
  }

  /** Tells the store this rank stopped on an error; the other ranks' errors quote `message`. */
  async failed(message: string): Promise<void> {
    await this.request('F', [message]);
  }

  /** Tells the store this rank ends normally, so its closing connection is not a lost rank. */
  async bye(): Promise<void> {
    await this.request('B', []);
  }

  async rankStates(): Promise<RankStates> {
    const r = await this.request('D', []);
    return JSON.parse(r.fields[0].toString('utf8')) as RankStates;
  }

  close(): void {
    this.closedWith ??= new PeftkitError('E_DIST', 'store client closed');
    this.socket?.destroy();
  }
}

/** A TCP port free on this machine now (for a local run's MASTER_PORT); another process may still take it first. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}
