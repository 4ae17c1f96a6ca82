/** What the loaded engine can do on this machine. */
import { DeviceCopyCounts, native, RuntimeInfo } from './native';

export type { DeviceCopyCounts, RuntimeInfo };

export function runtimeInfo(): RuntimeInfo {
  return native.runtimeInfo();
}

/** Caps the threads CPU kernels use (0 restores the default: PEFTKIT_NUM_THREADS, else all cores). */
export function setNumThreads(n: number): void {
  native.setNumThreads(n);
}

/**
 * Host↔GPU copies made since the engine loaded, counted where each copy is made (tensor reads
 * and writes, and the kernels that read a result back such as the gradient norm). Read it
 * before and after some work to see what crossed: a training step on CUDA should bring back
 * only scalars. All zeros without a CUDA build.
 */
export function deviceCopyCounts(): DeviceCopyCounts {
  return native.deviceCopyCounts();
}
