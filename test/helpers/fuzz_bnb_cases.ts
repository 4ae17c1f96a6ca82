import type { FuzzCase } from './fuzz_case';
export const BNB_CASES: Record<string, FuzzCase> = {};
