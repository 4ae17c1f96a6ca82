/**
 * The native addon's surface, typed by hand in this one file. The addon is found by
 * node-gyp-build: a matching prebuild in prebuilds/<platform>-<arch>/, else build/Release.
 * Everything here is internal; the public API wraps it (src/tensor.ts, src/ops/*).
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from './errors';

/** A handle to engine memory. Use the public `Tensor` class instead. */
export interface NativeTensor {
  readonly shape: number[];
  readonly dtype: string;
  readonly device: string;
  readonly disposed: boolean;
  read(): ArrayBuffer;
  write(data: ArrayBufferView | ArrayBuffer): void;
  dispose(): void;
}

export interface RuntimeInfo {
  /** The SIMD path the CPU kernels use: 'avx512', 'avx512+amx-bf16', 'avx2', 'neon' or 'portable'. */
  cpuIsa: string;
  avx2: boolean;
  avx512: boolean;
  avx512bf16: boolean;
  amxBf16: boolean;
  /** Threads a CPU kernel uses (PEFTKIT_NUM_THREADS, else all cores). */
  threads: number;
  /** The addon was built with CUDA (`npm run build:cuda`). */
  cudaBuild: boolean;
  /** ...and a CUDA device is visible now. */
  cudaAvailable: boolean;
}

type T = NativeTensor;
/** Every op comes as a sync call and an `...Async` twin that runs on the libuv pool. */
type WithAsync<O> = O & { [K in keyof O as K extends string ? `${K}Async` : never]: O[K] extends (...a: infer A) => infer R ? (...a: A) => Promise<R> : never };

// ---- ops: gemm -------------------------------------------------------------------------------
interface GemmOps {
  /** C = alpha·op(A)·op(B) + beta·C. */
  gemm(C: T, A: T, B: T, transA: boolean, transB: boolean, alpha: number, beta: number): void;
  /** C = Σ alpha·op(A)·op(B) + beta·C; `terms` repeats (A, B, transA, transB, alpha). */
  gemmSum(C: T, beta: number, ...terms: Array<T | boolean | number>): void;
}

// ---- ops: lora -------------------------------------------------------------------------------
interface LoraOps {}

// ---- ops: transformer (embedding, norms, rope, activations, dropout, cast) ------------------
interface TransformerOps {}

// ---- ops: attention --------------------------------------------------------------------------
interface AttentionOps {}

// ---- ops: loss -------------------------------------------------------------------------------
interface LossOps {}

// ---- ops: optimizer --------------------------------------------------------------------------
interface OptimOps {}

export type NativeOps = WithAsync<GemmOps & LoraOps & TransformerOps & AttentionOps & LossOps & OptimOps>;

export interface NativeAddon extends NativeOps {
  NativeTensor: new (shape: number[], dtype: string, device: string) => NativeTensor;
  setErrorClass(cls: typeof PeftkitError): void;
  runtimeInfo(): RuntimeInfo;
  setNumThreads(n: number): void;
}

function load(): NativeAddon {
  const root = path.join(__dirname, '..', '..');
  // An explicit PEFTKIT_ADDON wins; then the CUDA build (`npm run build:cuda`) when it was made;
  // then node-gyp-build's search (prebuilds/, build/Release).
  const cudaBuild = path.join(root, 'build-cuda', 'Release', 'peftkit.node');
  const explicit = process.env.PEFTKIT_ADDON || (fs.existsSync(cudaBuild) ? cudaBuild : undefined);
  let addon: NativeAddon;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    addon = (explicit ? require(explicit) : require('node-gyp-build')(root)) as NativeAddon;
  } catch (e) {
    throw new PeftkitError(
      'E_ADDON',
      `could not load the peftkit native addon from ${root}: ${(e as Error).message}. ` +
        'Run `npm install` (it builds the addon with node-gyp when no prebuild fits this platform).',
    );
  }
  addon.setErrorClass(PeftkitError);
  return addon;
}

/** The addon, loaded once per thread (each worker gets its own instance data). */
export const native: NativeAddon = load();
