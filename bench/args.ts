/** `--name VALUE` from the command line, or `dflt` when it is not given (the benches' flags). */
export function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}
