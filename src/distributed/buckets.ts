/**
 * Gradient all-reduce in buckets, as PyTorch DDP does it: the gradients are packed into a few
 * flat f32 buffers (up to `capBytes` each, 25 MiB as DDP's bucket_cap_mb; the first 1 MiB, as
 * DDP's first bucket, so the first sum starts early), each summed over the ranks in one
 * collective, then unpacked. One large message per bucket instead of one per tensor: a LoRA on
 * every Linear of a 30-layer model has ~400 small gradients, and each collective costs a
 * network round trip. Copies in and out are memcpy speed, small next to a step.
 *
 * Overlap with the backward: each gradient says at which point of the backward it is final
 * (`ready`: the backward announces points in decreasing order — the layers run last first —
 * and -1 is "after the whole backward"). The buckets hold the gradients in that order, so a
 * bucket is complete at a point of the backward and {@link GradBuckets.startReady} sends it
 * then, while the backward goes on; the order of the buckets, hence of the collectives, is the
 * same on every rank whatever the timing.
 */
import { PeftkitError } from '../errors';
import { Tensor } from '../tensor';
import type { ProcessGroup } from './group';

/** A gradient to sum, and the point of the backward after which nothing adds to it. */
export interface BucketGrad {
  /** For errors. */
  name: string;
  grad: Tensor;
  /** The backward point that finishes it (larger: earlier in the backward); -1: only the end of the backward. Defaults to `-1`. */
  ready?: number;
}

interface Slot {
  grad: Tensor;
  /** The gradient's place in its bucket (a view that shares the bucket's memory). */
  view: Tensor;
}

interface Bucket {
  flat: Tensor;
  slots: Slot[];
  /** The backward point after which every gradient in it is final: the smallest of theirs. */
  ready: number;
}

export interface BucketSizes {
  /** Largest bucket, in bytes. Defaults to 25 MiB (DDP's bucket_cap_mb). */
  capBytes?: number;
  /** Largest first bucket, in bytes. Defaults to 1 MiB, or capBytes when smaller (DDP's first bucket). */
  firstCapBytes?: number;
}

export class GradBuckets {
  private readonly buckets: Bucket[] = [];
  /** Buckets started this step (a prefix of `buckets`). */
  private started = 0;

  /** `grads` all f32 on one device (Gloo sums CPU tensors, NCCL CUDA ones). */
  constructor(grads: readonly BucketGrad[], sizes: BucketSizes = {}) {
    const cap = sizes.capBytes ?? 25 << 20;
    const firstCap = sizes.firstCapBytes ?? Math.min(1 << 20, cap);
    const device = grads[0]?.grad.device;
    for (const g of grads) {
      if (g.grad.dtype !== 'f32') throw new PeftkitError('E_DTYPE', `${g.name}: data-parallel training all-reduces f32 gradients, this one is ${g.grad.dtype}`);
      if (g.grad.device !== device) throw new PeftkitError('E_DEVICE', `${g.name}: the gradients of one group must be on one device (${device}), this one is on ${g.grad.device}`);
    }
    // Stable: within a point, the parameters' own order.
    const order = grads.map((g, i) => ({ g, i, ready: g.ready ?? -1 })).sort((a, b) => b.ready - a.ready || a.i - b.i);
    const groups: Array<typeof order> = [];
    let size = Infinity;
    for (const o of order) {
      const bytes = o.g.grad.numel * 4;
      const limit = groups.length === 1 ? firstCap : cap;
      if (size + bytes > limit && size > 0) {
        groups.push([]);
        size = 0;
      }
      groups[groups.length - 1].push(o);
      size += bytes;
    }
    for (const group of groups) {
      const n = group.reduce((a, o) => a + o.g.grad.numel, 0);
      const flat = Tensor.empty([n], { device });
      let off = 0;
      const slots = group.map(({ g }) => {
        const view = flat.view(off, [g.grad.numel]);
        off += g.grad.numel;
        return { grad: g.grad, view };
      });
      this.buckets.push({ flat, slots, ready: Math.min(...group.map((o) => o.ready)) });
    }
  }

  get count(): number {
    return this.buckets.length;
  }

  /** Sums every gradient over the ranks, in place, one bucket after the other on this thread (no overlap). */
  allReduce(group: ProcessGroup): void {
    for (const [i, b] of this.buckets.entries()) {
      for (const s of b.slots) s.view.copyFrom(s.grad);
      group.allReduceSum(b.flat, this.what(i));
      for (const s of b.slots) s.grad.copyFrom(s.view);
    }
  }

  /**
   * The backward reached `point`: starts every bucket whose gradients are all final now, in
   * bucket order. Call it on the last micro-batch of a window only (an earlier one's gradients
   * are not final), and end the step with {@link finish}.
   */
  startReady(group: ProcessGroup, point: number): void {
    while (this.started < this.buckets.length && this.buckets[this.started].ready >= point) this.start(group, this.started++);
  }

  /** Starts the buckets not started yet, waits for all, and copies the sums back into the gradients. */
  finish(group: ProcessGroup): void {
    while (this.started < this.buckets.length) this.start(group, this.started++);
    this.started = 0;
    group.waitStarted();
    for (const b of this.buckets) for (const s of b.slots) s.grad.copyFrom(s.view);
  }

  private start(group: ProcessGroup, i: number): void {
    const b = this.buckets[i];
    for (const s of b.slots) s.view.copyFrom(s.grad);
    group.allReduceSumStart(b.flat, this.what(i));
  }

  private what(i: number): string {
    return `gradient bucket ${i + 1} of ${this.buckets.length}`;
  }

  dispose(): void {
    for (const b of this.buckets) {
      for (const s of b.slots) s.view.dispose();
      b.flat.dispose();
    }
    this.buckets.length = 0;
  }
}
