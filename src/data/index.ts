/** The data pipeline: dataset files -> rows -> tokens (+ loss masks) -> padded, resumable batches. */
export { readRows, parseRows, parseRow, CHAT_ROLES, IGNORE_INDEX } from './rows';
export type { DataRow, TextRow, PromptCompletionRow, ChatPromptCompletionRow, MessagesRow, TokensRow, ChatMessage, ChatRole, RowSource } from './rows';
export { Tokenizer, loadTokenizer } from './tokenizer';
export type { EncodeTextOptions, DecodeOptions, ChatTemplateOptions } from './tokenizer';
export { encodeRow, encodeRows } from './encode';
export type { EncodeOptions, Example } from './encode';
export { epochPermutation, epochSeed, mulberry32 } from './shuffle';
export { packLayout, packedRow } from './packing';
export type { PackedLayout, PackedRow } from './packing';
export { BatchIterator, evalBatches, collate, shardBatch } from './batches';
export type { Batch, BatchOptions, EvalBatchOptions, DataPosition } from './batches';
export { loadDataset, splitTail, datasetStats } from './dataset';
export type { Dataset, DatasetOptions, DatasetStats } from './dataset';
export { writeByteTokenizer, byteLevelAlphabet, BYTE_CHAT_TEMPLATE, BYTE_TOKENIZER_SPECIALS, DEFAULT_BYTE_MERGES } from './byte_tokenizer';
export type { ByteTokenizerOptions, ByteTokenizerInfo } from './byte_tokenizer';
