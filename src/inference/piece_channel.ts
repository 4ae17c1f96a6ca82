/**
 * An async iterator fed from outside: values pushed before anyone asks wait in a queue, a
 * next() asked before any value waits for one. It ends with a result or an error; `onReturn`
 * runs when the consumer stops early (a `break` out of for-await calls return()).
 */
export class PieceChannel<T> implements AsyncIterableIterator<T> {
  private readonly queue: T[] = [];
  private waiting: { resolve: (r: IteratorResult<T, undefined>) => void; reject: (e: unknown) => void } | null = null;
  private ended = false;
  private error: unknown = null;

  constructor(private readonly onReturn: () => void) {}

  push(value: T): void {
    if (this.ended) return;
    if (this.waiting) {
      this.waiting.resolve({ value, done: false });
      this.waiting = null;
    } else this.queue.push(value);
  }

  /** Ends the iterator after the queued values. */
  end(): void {
    this.finish(null);
  }

  /** Ends the iterator with `e`, thrown after the queued values. */
  fail(e: unknown): void {
    this.finish(e);
  }

  private finish(e: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = e;
    if (this.waiting) {
      if (e) this.waiting.reject(e);
      else this.waiting.resolve({ value: undefined, done: true });
      this.waiting = null;
    }
  }

  next(): Promise<IteratorResult<T, undefined>> {
    if (this.queue.length > 0) return Promise.resolve({ value: this.queue.shift()!, done: false });
    if (this.ended) {
      const e = this.error;
      this.error = null; // thrown once; later calls see a finished iterator
      return e ? Promise.reject(e) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  return(): Promise<IteratorResult<T, undefined>> {
    if (!this.ended) this.onReturn();
    this.finish(null);
    this.queue.length = 0;
    this.error = null;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
