/** Stable error codes. Native errors carry the same codes. */
export type PeftkitErrorCode =
  | 'E_ARG'
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_DEVICE'
  | 'E_DISPOSED'
  | 'E_OOM'
  | 'E_CUDA'
  | 'E_INTERNAL'
  | 'E_ADDON'
  | 'E_IO'
  | 'E_FORMAT'
  | 'E_MISSING'
  | 'E_CONFIG'
  | 'E_UNSUPPORTED'
  | 'E_DATA'
  | (string & {});

/** Every error peftkit raises on purpose: `code` tells programs what went wrong, the message tells people. */
export class PeftkitError extends Error {
  readonly code: PeftkitErrorCode;
  constructor(code: PeftkitErrorCode, message: string) {
    super(message);
    this.name = 'PeftkitError';
    this.code = code;
  }
}
