import type { FuzzCase } from './fuzz_case';
export const RESUME_CASES: Record<string, FuzzCase> = {};
