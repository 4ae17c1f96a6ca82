/**
 * Quantized base weights in bitsandbytes' formats (QLoRA NF4/FP4 with double quantization, and
 * LLM.int8): quantize and dequantize tensors, read and write the checkpoint layout, and quantize
 * a whole model folder.
 */
export { DYNAMIC_SIGNED_CODE, FP4_CODE, NF4_CODE } from './codes';
export {
  quantize4bit, quantize4bitTensors, dequantize4bit, recoverAbsmax, recoverAbsmaxTensor, validateQuant4State, QUANT_BLOCKSIZES, NESTED_BLOCKSIZE,
} from './quant4';
export type { Quant4State, Quant4Tensors, Quant4Type, NestedAbsmax, Quantize4bitOptions, DequantizeOptions, TorchFloatDType } from './quant4';
export { quantizeInt8Rowwise, quantizeInt8Tensors, dequantizeInt8, validateInt8State } from './int8';
export type { Int8State } from './int8';
export {
  quant4Entries, int8Entries, readQuant4State, readQuant4Meta, readInt8State, readInt8Meta, detectQuantFormat, entriesReader, quantStateSuffix,
} from './bnb_layout';
export type { TensorSource, Quant4Meta } from './bnb_layout';
export { quantizeBnb, readBnbWeight, dequantizeBnb, bnbEntries, bnbEntryNames, specOf, describeSpec } from './bnb_weight';
export type { BnbSpec, BnbWeight, Quant4Spec } from './bnb_weight';
export { quantizeModelSync, bnbQuantizationConfig } from './quantize_model';
export type { QuantizeModelOptions, QuantizeModelResult, QuantFormat } from './quantize_model';
