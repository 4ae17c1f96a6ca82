/**
 * The engine's kernels as typed functions over Tensors. Each has an `...Async` twin that runs
 * on the libuv thread pool and resolves when done, so a caller's event loop stays free.
 */
export * from './attention';
export * from './bias';
export * from './colscale';
export * from './gemm';
export * from './gemm_quant';
export * from './index_fault';
export * from './linear';
export * from './llm_int8';
export * from './lora';
export * from './loss';
export * from './optim';
export * from './optim8';
export * from './quant';
export * from './transformer';
