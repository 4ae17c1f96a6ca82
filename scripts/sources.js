// Lists the engine's source files for binding.gyp (gyp has no globs). A file's ISA is its
// suffix: gemm_avx512.cc is compiled with AVX-512 flags, gemm.cc with the portable ones.
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const isaSuffix = /_(avx2|avx512|amx|neon)\.cc$/;

function list(dir, filter) {
  const abs = path.join(root, dir);
  if (!fs.existsSync(abs)) return [];
  return fs.readdirSync(abs).filter((f) => f.endsWith('.cc') && filter(f)).sort().map((f) => `${dir}/${f}`);
}

const group = process.argv[2];
let files;
if (group === 'generic') {
  files = [
    ...list('native/core', () => true),
    ...list('native/ops', () => true),
    ...list('native/cpu', (f) => !isaSuffix.test(f)),
    // Always built: without Gloo, group.cc reports distributed support absent.
    ...list('native/distributed', () => true),
    ...list('bindings', () => true),
  ];
} else {
  files = list('native/cpu', (f) => f.endsWith(`_${group}.cc`));
}
process.stdout.write(files.join('\n'));
