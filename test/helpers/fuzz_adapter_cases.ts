import type { FuzzCase } from './fuzz_case';
export const ADAPTER_CASES: Record<string, FuzzCase> = {};
