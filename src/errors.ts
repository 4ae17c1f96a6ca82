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
  | 'E_NAN'
  | 'E_DATA'
  | 'E_ABORTED'
  | 'E_BUSY'
  | 'E_MEMORY'
  | 'E_DIST'
  | (string & {});

/** What an E_IO error knows about the system call that failed. */
export interface PeftkitErrorDetails {
  /** The system's error code: 'ENOSPC', 'EROFS', 'EACCES', ... */
  errno?: string;
  /** The file or folder the call was about. */
  path?: string;
  /** The call: 'open', 'write', 'mkdir', 'rename', ... */
  syscall?: string;
}

/** Every error peftkit raises on purpose: `code` tells programs what went wrong, the message tells people. */
export class PeftkitError extends Error {
  readonly code: PeftkitErrorCode;
  /** E_IO: the system's error code ('ENOSPC', 'EROFS', 'EACCES', ...), when a system call failed. */
  readonly errno?: string;
  /** E_IO: the file or folder concerned. */
  readonly path?: string;
  /** E_IO: the system call that failed. */
  readonly syscall?: string;
  constructor(code: PeftkitErrorCode, message: string, details: PeftkitErrorDetails = {}) {
    super(message);
    this.name = 'PeftkitError';
    this.code = code;
    if (details.errno !== undefined) this.errno = details.errno;
    if (details.path !== undefined) this.path = details.path;
    if (details.syscall !== undefined) this.syscall = details.syscall;
  }
}
