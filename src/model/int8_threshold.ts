/**
 * The LLM.int8 outlier threshold of a loaded base: which int8 Linear weights multiply their inputs
 * as bitsandbytes' MatMul8bitLt does (int8 activations, outlier columns in f32).
 */
import { PeftkitError } from '../errors';
import { checkInt8Threshold, QuantWeight } from '../ops/gemm_quant';

/** Checks a threshold before anything is read: its value, and that the quantization asked for is int8. */
export function checkInt8ThresholdOption(threshold: number | undefined, quantize: string | undefined): void {
  if (threshold === undefined) return;
  checkInt8Threshold(threshold, 'int8Threshold');
  if (quantize !== undefined && quantize !== 'int8') {
    throw new PeftkitError('E_UNSUPPORTED', `int8Threshold applies to an int8 base (LLM.int8), not to quantize '${quantize}'`);
  }
}

/** Gives every int8 Linear weight the threshold; a base without int8 weights refuses it. */
export function applyInt8Threshold(quantized: Map<string, QuantWeight>, threshold: number | undefined, dir: string): void {
  if (threshold === undefined) return;
  const formats = new Set([...quantized.values()].map((q) => q.format));
  if (formats.size === 0 || [...formats].some((f) => f !== 'int8')) {
    const kept = formats.size ? `${[...formats].join('/')} weights` : 'unquantized weights';
    throw new PeftkitError('E_UNSUPPORTED', `${dir}: int8Threshold applies to an int8 base (quantize 'int8' or a bitsandbytes 8-bit folder), but this one has ${kept}`);
  }
  for (const q of quantized.values()) if (q.format === 'int8') q.threshold = threshold;
}
