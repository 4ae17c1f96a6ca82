/** BottleneckConfig: peftkit's adapter_config.json for bottleneck adapters (PEFT has no such method). */
import { PeftkitError } from '../../errors';
import { commonConfigFields } from '../method';

export interface BottleneckConfig {
  peft_type: 'BOTTLENECK';
  /** Defaults to `'CAUSAL_LM'`. */
  task_type: string;
  base_model_name_or_path: string | null;
  /** 'houlsby': after the attention block and after the MLP (Houlsby et al. 2019); 'pfeiffer': after the MLP only (Pfeiffer et al. 2020). Defaults to `'houlsby'`. */
  adapter_type: 'houlsby' | 'pfeiffer';
  /** hidden_size / bottleneck size. Defaults to `16`. */
  reduction_factor: number;
  /** The bottleneck's activation. Defaults to `'relu'`. */
  non_linearity: 'relu';
  inference_mode: boolean;
}

export function defaultBottleneckConfig(over: Partial<BottleneckConfig> = {}): BottleneckConfig {
  return {
    peft_type: 'BOTTLENECK', task_type: 'CAUSAL_LM', base_model_name_or_path: null, adapter_type: 'houlsby', reduction_factor: 16,
    non_linearity: 'relu', inference_mode: false, ...over,
  };
}

export function parseBottleneckConfig(raw: Record<string, unknown>, file: string): BottleneckConfig {
  const d = defaultBottleneckConfig();
  const type = raw.adapter_type ?? d.adapter_type;
  if (type !== 'houlsby' && type !== 'pfeiffer') throw new PeftkitError('E_CONFIG', `${file}: "adapter_type" is ${JSON.stringify(type)}, expected "houlsby" or "pfeiffer"`);
  const rf = raw.reduction_factor ?? d.reduction_factor;
  if (!Number.isInteger(rf) || (rf as number) < 1) throw new PeftkitError('E_CONFIG', `${file}: "reduction_factor" is ${JSON.stringify(rf)}, expected a positive integer`);
  const act = raw.non_linearity ?? d.non_linearity;
  if (act !== 'relu') throw new PeftkitError('E_UNSUPPORTED', `${file}: "non_linearity" = ${JSON.stringify(act)} is not supported by peftkit (only "relu")`);
  return { ...commonConfigFields(raw, d, 'BOTTLENECK', file), adapter_type: type, reduction_factor: rf as number, non_linearity: 'relu' };
}
