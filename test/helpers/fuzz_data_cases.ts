import type { FuzzCase } from './fuzz_case';
export const DATA_CASES: Record<string, FuzzCase> = {};
