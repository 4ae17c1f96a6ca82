/** What the loaded engine can do on this machine. */
import { native, RuntimeInfo } from './native';

export type { RuntimeInfo };

export function runtimeInfo(): RuntimeInfo {
  return native.runtimeInfo();
}

/** Caps the threads CPU kernels use (0 restores the default: PEFTKIT_NUM_THREADS, else all cores). */
export function setNumThreads(n: number): void {
  native.setNumThreads(n);
}
