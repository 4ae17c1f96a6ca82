/**
 * One test row per device for model-level tests. Its own file because it registers tests: a
 * module that imports ava's runner cannot be loaded outside the AVA CLI, and check.ts is also
 * loaded by child processes (the fuzz and ISA children).
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import type { Device } from '../../src/index';
import { deviceAbsence } from './check';

/**
 * One test row on `device`, titled `<title> (<device>)`: a test where the device is here, else
 * test.skip naming the reason (never a silent pass). scripts/gpu-check.sh runs the cuda rows.
 */
export function deviceTest(device: Device, title: string, impl: (t: ExecutionContext, device: Device) => unknown): void {
  const name = `${title} (${device})`;
  const absent = deviceAbsence(device);
  if (absent) test.skip(`${name}: ${absent} (scripts/gpu-check.sh runs it on a GPU)`, () => {});
  else test(name, (t) => impl(t, device) as never);
}
