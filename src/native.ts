/**
 * The native addon's surface, typed by hand in this one file. The addon is found by
 * node-gyp-build: a matching prebuild in prebuilds/<platform>-<arch>/, else build/Release.
 * Everything here is internal; the public API wraps it (src/tensor.ts, src/ops/*).
 */
import * as path from 'path';
import { PeftkitError } from './errors';

/** A handle to engine memory. Use the public `Tensor` class instead. */
export interface NativeTensor {
  readonly shape: number[];
  readonly dtype: string;
  readonly device: string;
  readonly disposed: boolean;
  /** Held in paged memory: a mapped file on cpu, managed memory on cuda. */
  readonly paged: boolean;
  read(): ArrayBuffer;
  write(data: ArrayBufferView | ArrayBuffer): void;
  dispose(): void;
  view(offset: number, shape: number[]): NativeTensor;
  copyFrom(src: NativeTensor): void;
  /** Fills the tensor from `bytes` bytes of `file` at `offset`, stored there as `srcDtype`; `what` names it in errors. */
  readFile(file: string, offset: number, bytes: number, srcDtype: string, what: string): void;
  /** Sets every element to 0 in place. */
  zero(): void;
}

export interface RuntimeInfo {
  /**
   * The SIMD path the CPU kernels use: 'avx512', 'avx512+amx-bf16', 'avx2', 'neon' or 'portable'
   * ('avx512+amx-bf16-emulated' under PEFTKIT_ISA=amx-emulated, a test mode).
   */
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
  /** CUDA devices this process sees (CUDA_VISIBLE_DEVICES); 0 without a CUDA build or a device. */
  cudaDeviceCount: number;
  /**
   * The index, among those, of the device this process works on: a distributed rank's own GPU
   * (chosen by its LOCAL_RANK when training starts), else 0 once CUDA work has run; null before
   * either, and without a CUDA build.
   */
  cudaDevice: number | null;
  /** That device's name and PCI bus id, e.g. `'NVIDIA H100 80GB HBM3 (PCI 0000:1B:00.0)'`; null when cudaDevice is. */
  cudaDeviceName: string | null;
  /**
   * The libcublasLt the dense GEMMs on the GPU use (loaded at run time), or null where our own
   * kernels do them all: no CUDA build or device, no libcublasLt, or `PEFTKIT_CUBLASLT=0`.
   */
  cublasLt: string | null;
}

/** Copies between host and GPU memory since the engine loaded (all 0 without a CUDA build). */
export interface DeviceCopyCounts {
  /** GPU → host copies, and their bytes. */
  toHost: number;
  toHostBytes: number;
  /** Host → GPU copies, and their bytes. */
  toDevice: number;
  toDeviceBytes: number;
}

type T = NativeTensor;
/** Every op comes as a sync call and an `...Async` twin that runs on the libuv pool. */
type WithAsync<O> = O & { [K in keyof O as K extends string ? `${K}Async` : never]: O[K] extends (...a: infer A) => infer R ? (...a: A) => Promise<R> : never };

// ---- ops: gemm -------------------------------------------------------------------------------
/** The precision the big products run in: f32, or bf16 operands with f32 sums. */
type ComputeArg = 'f32' | 'bf16';

interface GemmOps {
  /** C = alpha·op(A)·op(B) + beta·C; compute 'bf16' reads f32 operands rounded to bf16. */
  gemm(C: T, A: T, B: T, transA: boolean, transB: boolean, alpha: number, beta: number, compute: ComputeArg): void;
  /** C = Σ alpha·op(A)·op(B) + beta·C; `terms` repeats (A, B, transA, transB, alpha). */
  gemmSum(C: T, beta: number, ...terms: Array<T | boolean | number>): void;
}

// ---- ops: the Linear op (every weight storage, optional low-rank term) ------------------------
/** The frozen weight: a tensor, or (null, then) a quantized one's six arguments, then its LLM.int8 threshold or null. */
type LinearWeightArgs = [W: T | null, format: 'nf4' | 'fp4' | 'int8' | null, codes: T | null, scales: T | null, blocksize: number,
  rows: number, cols: number, threshold: number | null];
interface LinearOps {
  /** Y = X·Wᵀ (+ bias) (+ scale·(Xa·Aᵀ)·Bᵀ, XA = Xa·Aᵀ saved, Xa null meaning X), W in any storage. */
  linearForward(Y: T, X: T, ...rest: [...LinearWeightArgs, bias: T | null, A: T | null, B: T | null, XA: T | null, Xa: T | null,
    scale: number, compute: ComputeArg]): void;
  /** dX = dY·W (+ scale·(dY·B)·A when dXa is null); dXa = scale·(dY·B)·A; dA, dB accumulate. */
  linearBackward(dX: T | null, dY: T, ...rest: [...LinearWeightArgs, A: T | null, B: T | null, XA: T | null, Xa: T | null,
    dA: T | null, dB: T | null, dXa: T | null, scale: number, compute: ComputeArg]): void;
}

// ---- ops: transformer (embedding, norms, rope, activations, dropout, cast) ------------------
interface TransformerOps {
  embeddingForward(out: T, ids: T, table: T, fault?: T | null): void;
  embeddingBackward(dtable: T, dout: T, ids: T, fault?: T | null): void;
  rmsnormForward(out: T, rstd: T, x: T, w: T, eps: number): void;
  rmsnormBackward(dx: T, dw: T | null, dout: T, x: T, w: T, rstd: T): void;
  layernormForward(out: T, mean: T, rstd: T, x: T, w: T, b: T | null, eps: number): void;
  layernormBackward(dx: T, dw: T | null, db: T | null, dout: T, x: T, w: T, mean: T, rstd: T): void;
  /** `factor` 0 means no llama3 scaling. */
  ropeTable(
    cos: T, sin: T, positions: T, theta: number,
    factor: number, lowFreqFactor: number, highFreqFactor: number, originalMaxPositionEmbeddings: number,
  ): void;
  ropeForward(out: T, x: T, cos: T, sin: T): void;
  ropeBackward(dx: T, dout: T, cos: T, sin: T): void;
  siluForward(out: T, x: T): void;
  siluBackward(dx: T, dout: T, x: T): void;
  geluForward(out: T, x: T, tanhApprox: boolean): void;
  geluBackward(dx: T, dout: T, x: T, tanhApprox: boolean): void;
  reluForward(out: T, x: T): void;
  reluBackward(dx: T, dout: T, x: T): void;
  tanhForward(out: T, x: T): void;
  tanhBackward(dx: T, dout: T, out: T): void;
  copyCols(dst: T, dstCol: number, src: T, srcCol: number, width: number): void;
  swigluForward(out: T, gate: T, up: T): void;
  swigluBackward(dgate: T, dup: T, dout: T, gate: T, up: T): void;
  add(out: T, a: T, b: T): void;
  axpy(y: T, x: T, a: number): void;
  keepMasked(x: T, keep: T): void;
  cast(out: T, x: T): void;
  /** `seed` and `offset`: integers >= 0 (numbers up to 2^53, or BigInts up to 2^64). */
  dropoutForward(out: T, x: T, p: number, seed: number | bigint, offset: number | bigint): void;
  dropoutBackward(dx: T, dout: T, p: number, seed: number | bigint, offset: number | bigint): void;
}

// ---- ops: attention --------------------------------------------------------------------------
interface AttentionOps {
  /** Causal GQA attention: out [B,Tq,Hq,D] and lse [B,Hq,Tq] from q [B,Tq,Hq,D], k/v [B,Tk,Hkv,D]. */
  attentionForward(out: T, lse: T, q: T, k: T, v: T, scale: number): void;
  /** dq, dk, dv overwritten; recomputes the probabilities from q, k and lse. */
  attentionBackward(dq: T, dk: T, dv: T, dout: T, q: T, k: T, v: T, out: T, lse: T, scale: number): void;
}

// ---- ops: loss -------------------------------------------------------------------------------
interface LossOps {
  /** losses[n] = -log softmax(logits[n])[targets[n]]; dlogits (may be logits, or null) = gradScale·(softmax - onehot). */
  crossEntropy(losses: T, dlogits: T | null, logits: T, targets: T, ignoreIndex: number, gradScale: number): void;
  /** Cross-entropy of H·Wᵀ, chunkRows rows at a time (0 = automatic); dH overwritten, dW accumulated, either may be null. */
  linearCrossEntropy(
    losses: T, dH: T | null, dW: T | null, H: T, W: T, targets: T, ignoreIndex: number, gradScale: number, chunkRows: number,
    compute: ComputeArg, fault?: T | null,
  ): void;
  /** acc[0] += Σ x (acc f64 [1], x f32, one device), summed in f64. */
  sumInto(acc: T, x: T): void;
}

// ---- ops: optimizer --------------------------------------------------------------------------
/** One trainable tensor with its AdamW moments, all f32 of one shape. */
export interface NativeAdamWParam {
  param: T;
  grad: T;
  m: T;
  v: T;
  weightDecay: number;
}

interface OptimOps {
  /** One torch.optim.AdamW step over every tensor; step is 1-based and includes this one. */
  adamw(params: NativeAdamWParam[], lr: number, beta1: number, beta2: number, eps: number, step: number): void;
  /** The L2 norm of all grads together; `undefined` stands for NaN (the addon's "no result"). */
  gradNorm(grads: T[]): number | undefined;
  /** As gradNorm, then grads *= maxNorm/(norm + 1e-6) when norm > maxNorm and finite. */
  clipGradNorm(grads: T[], maxNorm: number): number | undefined;
  /** out[0] = Σ g² over every tensor (out f64 [1] on their device); nothing comes back. */
  gradSumsqInto(out: T, tensors: T[]): void;
  /** clipGradNorm's scaling, for a norm already known. */
  clipGradsTo(grads: T[], maxNorm: number, norm: number): void;
}

// ---- ops: 8-bit optimizer ----------------------------------------------------------------------
/**
 * One trainable tensor with 8-bit AdamW state: m, v u8 codes of the param's shape with
 * mAbsmax, vAbsmax f32 [ceil(numel/256)]; or m, v f32 and no absmax (small tensors).
 */
export interface NativeAdamW8bitParam {
  param: T;
  grad: T;
  m: T;
  v: T;
  mAbsmax: T | null;
  vAbsmax: T | null;
  weightDecay: number;
}

interface Optim8Ops {
  /** One blockwise 8-bit AdamW step; returns how many tensors were skipped for a NaN/Inf gradient. */
  /** Returns the tensors skipped; `undefined` when countSkipped is false (not brought back). */
  adamw8bit(params: NativeAdamW8bitParam[], lr: number, beta1: number, beta2: number, eps: number, step: number, countSkipped?: boolean): number | undefined;
}

// ---- ops: bias -------------------------------------------------------------------------------
interface BiasOps {
  biasAdd(y: T, bias: T): void;
  biasBackward(dbias: T, dy: T): void;
}

// ---- ops: column scales and row norms (IA3, DoRA) --------------------------------------------
interface ColscaleOps {
  /** y[..., C] = x·s[C]; y may be x. */
  mulCols(y: T, x: T, s: T): void;
  /** dx = dy·s (dx may be dy or x, or null); ds[C] += Σ_rows dy·x (or null). */
  mulColsBackward(dx: T | null, ds: T | null, dy: T, x: T, s: T): void;
  /** out[R] = ‖w[r, :]‖₂ for w [R, C] f32 or bf16. */
  rowNorms(out: T, w: T): void;
  doraScale(g: T, gMinus1: T, m: T, norms: T): void;
  doraMagnitudeBackward(dm: T, dg: T, norms: T): void;
}

// ---- ops: quantization (bitsandbytes formats) ------------------------------------------------
interface QuantOps {
  /** Blockwise 4-bit: x f32 (n elements) -> packed u8 ((n+1)/2), absmax f32 (ceil(n/blocksize)). */
  quantize4bit(packed: T, absmax: T, x: T, blocksize: number, quantType: 'nf4' | 'fp4'): void;
  /** out (f32 or bf16, n elements) = code · absmax of its block. */
  dequantize4bit(out: T, packed: T, absmax: T, blocksize: number, quantType: 'nf4' | 'fp4'): void;
  /** absmax f32 [nb] -> q u8 [nb], absmax2 f32 [ceil(nb/blocksize)]; returns the offset (mean of absmax). */
  doubleQuant(q: T, absmax2: T, absmax: T, blocksize: number): number;
  /** absmax = code[q]·absmax2 + offset. */
  doubleDequant(absmax: T, q: T, absmax2: T, offset: number, blocksize: number): void;
  /** LLM.int8 rows: w f32 [rows, cols] -> cb i8 [rows, cols], scb f32 [rows]. */
  quantizeInt8Rowwise(cb: T, scb: T, w: T): void;
  /** out (f32 or bf16) [rows, cols] = cb·scb/127. */
  dequantizeInt8Rowwise(out: T, cb: T, scb: T): void;
}

// ---- ops: GEMM with a quantized weight -----------------------------------------------------------
interface GemmQuantOps {
  /**
   * C f32 [M, N] = alpha·X·op(W) + beta·C, W [rows, cols] quantized: nf4/fp4 (codes u8 packed,
   * scales f32 absmax per block) or int8 (codes i8 CB, scales f32 SCB per row). transW: op(W) = Wᵀ.
   */
  gemmQuant(C: T, X: T, format: 'nf4' | 'fp4' | 'int8', codes: T, scales: T, blocksize: number, rows: number, cols: number,
    transW: boolean, alpha: number, beta: number, compute: ComputeArg): void;
}

// ---- ops: LLM.int8 matmul (int8 activations with outlier columns) ---------------------------
interface LlmInt8Ops {
  /** X f32 [M, K] -> CA i8 [M, K], SCA f32 [M], outlierCols u8 [K] (bitsandbytes' int8_vectorwise_quant). */
  quantizeInt8Vectorwise(CA: T, SCA: T, outlierCols: T, X: T, threshold: number): void;
}

export type NativeOps = WithAsync<GemmOps & LinearOps & TransformerOps & AttentionOps & LossOps & OptimOps & BiasOps & ColscaleOps & Optim8Ops & QuantOps & GemmQuantOps & LlmInt8Ops>;

// ---- distributed (bindings/distributed.cc): a process group over Gloo (CPU) or NCCL (CUDA) ------
/** A process group's native handle (filled in by distConnectAsync). */
export type NativeGroup = { readonly __group: unique symbol };
interface DistOps {
  /** Whether the addon was built with Gloo (libgloo-dev found at build time), and with NCCL support (the CUDA build; libnccl.so.2 is opened when a group connects). */
  distInfo(): { gloo: boolean; nccl: boolean };
  distNewGroup(): NativeGroup;
  /** Rendezvous through the store at masterAddr:masterPort, full-mesh TCP, a barrier. Run it async on rank 0 (its event loop serves the store). */
  distConnectAsync(g: NativeGroup, backend: 'gloo' | 'nccl', rank: number, size: number, masterAddr: string, masterPort: number, prefix: string, localAddr: string, timeoutMs: number, ncclLibrary: string): Promise<void>;
  /** Sums an f32 CPU tensor over the ranks, in place. */
  distAllReduceSum(g: NativeGroup, t: T, what: string): void;
  distAllReduceSumAsync(g: NativeGroup, t: T, what: string): Promise<void>;
  /** Starts summing a tensor in place (Gloo: on the group's thread; NCCL: on the op stream); in the same order on every rank. */
  distAllReduceSumStart(g: NativeGroup, t: T, what: string): void;
  /** Waits for every sum started; the first failure throws (E_DIST). */
  distWaitStarted(g: NativeGroup): void;
  /** Sums a Float64Array over the ranks, in place (synchronous). */
  distAllReduceSumF64(g: NativeGroup, values: Float64Array, what: string): void;
  distBarrier(g: NativeGroup): void;
  distBarrierAsync(g: NativeGroup): Promise<void>;
  distLocalAddr(g: NativeGroup): string;
  /** Closes the connections to every peer now (a rank stopping on an error): theirs fail at once. */
  distAbort(g: NativeGroup): void;
  distClose(g: NativeGroup): void;
}

export interface NativeAddon extends NativeOps, DistOps {
  NativeTensor: {
    new (shape: number[], dtype: string, device: string): NativeTensor;
    /** Zeroed paged memory: cpu maps `file` (created, deleted at dispose) or an unnamed file in `dir`. */
    new (shape: number[], dtype: string, device: string, paged: { file?: string; dir?: string }): NativeTensor;
  };
  /** The 8-bit optimizer's compiled code tables (bitsandbytes' dynamic maps), 256 values each. */
  dynamicMap(kind: 'signed' | 'unsigned'): Float32Array;
  setErrorClass(cls: typeof PeftkitError): void;
  runtimeInfo(): RuntimeInfo;
  setNumThreads(n: number): void;
  /** Makes CUDA device `index` the device of every thread of this process (once, before any CUDA work); E_UNSUPPORTED without CUDA. */
  cudaUseDevice(index: number): void;
  deviceCopyCounts(): DeviceCopyCounts;
  /** Throws the E_ARG error a set index-fault record stands for; returns when it is clear. */
  raiseIndexFault(record: Float64Array): void;
}

/** How to get an addon, for the one-line error a missing or broken one raises. */
function addonHelp(root: string, why: string): string {
  const where = `${process.platform}-${process.arch}`;
  const first = why.split('\n')[0];
  const get = 'Install a peftkit release that ships a ' + where + ' prebuild, or build the addon with `npm rebuild peftkit` ' +
    '(install scripts allowed; needs a C++17 compiler with OpenMP, Python 3 and make), or set PEFTKIT_ADDON to a peftkit.node';
  if (/^No native build was found/.test(first)) {
    return `the peftkit native addon is missing: no prebuild in ${path.join(root, 'prebuilds', where)} and no build in ${path.join(root, 'build', 'Release')}. ${get}`;
  }
  // Found but not loadable: most often a shared library it links (libgomp, OpenMP's runtime) is absent.
  // An addon built with Gloo (distributed training) needs its runtime too.
  const lib = /libgomp|libomp/.test(first) ? ' (install the OpenMP runtime: libgomp1 on Debian/Ubuntu)' : /libgloo/.test(first) ? ' (it was built with Gloo: install its runtime, libgloo0 on Debian/Ubuntu, or rebuild without it)' : '';
  return `the peftkit native addon could not be loaded: ${first}${lib}. ${get}`;
}

function load(): NativeAddon {
  const root = path.join(__dirname, '..', '..');
  // PEFTKIT_ADDON (a path to a .node file) wins; else node-gyp-build's search: build/Release
  // (where both `npm install` and `npm run build:cuda` put the addon), then prebuilds/.
  const explicit = process.env.PEFTKIT_ADDON;
  let addon: NativeAddon;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    addon = (explicit ? require(explicit) : require('node-gyp-build')(root)) as NativeAddon;
  } catch (e) {
    throw new PeftkitError('E_ADDON', explicit ? `PEFTKIT_ADDON=${explicit} could not be loaded: ${(e as Error).message.split('\n')[0]}; unset it to use the package's own addon (or \`npm rebuild peftkit\` to build one)` : addonHelp(root, (e as Error).message));
  }
  addon.setErrorClass(PeftkitError);
  return addon;
}

let loaded: NativeAddon | null = null;

/** The addon, loaded once per thread (each worker gets its own instance data). */
export function loadNative(): NativeAddon {
  return (loaded ??= load());
}

/**
 * The addon, loaded on first use (not at import): `require('peftkit')`, `peftkit --help`,
 * `--version` and option errors work without it, and a missing one fails where an op is first
 * needed, with one line saying how to get it.
 */
export const native: NativeAddon = new Proxy({} as NativeAddon, {
  get: (_t, key) => Reflect.get(loadNative(), key),
  has: (_t, key) => Reflect.has(loadNative(), key),
});
