/** peftkit: parameter-efficient fine-tuning of LLMs from Node.js. */
export { PeftkitError } from './errors';
export type { PeftkitErrorCode } from './errors';
export { Tensor, resolveDevice, f32ToBf16, bf16ToF32 } from './tensor';
export type { DType, Device, DeviceOption, TensorOptions, TensorData } from './tensor';
export { runtimeInfo, setNumThreads } from './runtime';
export type { RuntimeInfo } from './runtime';
export * as ops from './ops';
