/** peftkit: parameter-efficient fine-tuning of LLMs from Node.js. */
export { PeftkitError } from './errors';
export type { PeftkitErrorCode } from './errors';
export { Tensor, resolveDevice, f32ToBf16, bf16ToF32 } from './tensor';
export type { DType, Device, DeviceOption, TensorOptions, MappedTensorOptions, TensorData } from './tensor';
export { runtimeInfo, setNumThreads } from './runtime';
export type { RuntimeInfo } from './runtime';
export * as ops from './ops';

// Training and inference
export { train, TrainRun } from './train/train';
export type { TrainRunOptions, TrainRunEvents, TrainRunEventName } from './train/train';
export type { TrainOptions, OptimName } from './train/options';
export type { TrainEvent, TrainResult } from './train/run';
export { loadModel, Model } from './inference/model';
export type { LoadOptions, ModelGenerateOptions, Generation } from './inference/model';
export { mergeAdapter } from './peft/merge';
export type { MergeOptions, MergeResult } from './peft/merge';
export { LoraAdapter } from './peft/lora';
export { Ia3Adapter } from './peft/ia3/adapter';
export type { Ia3Config } from './peft/ia3/adapter';
export { LnTuningAdapter } from './peft/ln_tuning/adapter';
export type { LnTuningConfig } from './peft/ln_tuning/adapter';
export { BitFitAdapter } from './peft/bitfit/adapter';
export type { BitFitConfig } from './peft/bitfit/adapter';
export { adapterMethodOf, createAdapter, loadAdapter, ADAPTER_METHODS } from './peft/registry';
export type { AdapterMethod, CreateAdapterOptions } from './peft/registry';
export type { PeftMethod, TrainableParam, MergeEdit } from './peft/method';
export type { LoraConfig } from './peft/lora/config';
export { readModelConfig, SUPPORTED_ARCHITECTURES } from './model/config';
export type { ModelConfig } from './model/config';
export { writeRandomModel } from './model/random_model';
export type { RandomModelOptions } from './model/random_model';
export { quantizeModel } from './quant';
export type { QuantizeModelOptions, QuantizeModelResult, QuantFormat } from './quant';
