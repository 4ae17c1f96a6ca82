// Whether to build the addon's Gloo part (binding.gyp and CMakeLists.txt ask): "1" when Gloo's
// headers and library are found, else "0". PEFTKIT_GLOO=0 forces it off (to check the build
// without it on a machine that has it), PEFTKIT_GLOO=1 makes a missing Gloo an error;
// GLOO_PREFIX points at a Gloo installed elsewhere than /usr or /usr/local.
// `node scripts/gloo.js include|lib` prints the compiler / linker flags for a non-standard prefix.
const fs = require('fs');
const path = require('path');

const force = process.env.PEFTKIT_GLOO;
const prefixes = [process.env.GLOO_PREFIX, '/usr', '/usr/local'].filter(Boolean);
const libNames = ['libgloo.so', 'libgloo.a', 'libgloo.dylib'];

function find() {
  if (process.platform === 'win32') return null; // Gloo's TCP transport and our store client are POSIX
  for (const p of prefixes) {
    const inc = path.join(p, 'include');
    if (!fs.existsSync(path.join(inc, 'gloo', 'transport', 'tcp', 'device.h'))) continue;
    for (const libDir of [path.join(p, 'lib'), path.join(p, 'lib64'), path.join(p, 'lib', `${process.arch === 'x64' ? 'x86_64' : 'aarch64'}-linux-gnu`)]) {
      if (libNames.some((n) => fs.existsSync(path.join(libDir, n)))) return { inc, libDir };
    }
  }
  return null;
}

const found = force === '0' ? null : find();
if (force === '1' && !found) {
  process.stderr.write(`PEFTKIT_GLOO=1 but no Gloo found under ${prefixes.join(', ')} (include/gloo/transport/tcp/device.h and lib/libgloo.*): apt-get install libgloo-dev, or set GLOO_PREFIX\n`);
  process.exit(1);
}
// The compiler and linker search /usr and /usr/local already; naming /usr/include with -I would
// even break libstdc++'s #include_next, so only another prefix is printed.
const standard = (dir) => /^\/usr(\/local)?\/(include|lib|lib64|lib\/[a-z0-9_]+-linux-gnu)$/.test(dir);
const what = process.argv[2];
if (what === 'include') process.stdout.write(found && !standard(found.inc) ? `-I${found.inc}` : '');
else if (what === 'lib') process.stdout.write(found && !standard(found.libDir) ? `-L${found.libDir} -Wl,-rpath,${found.libDir}` : '');
else process.stdout.write(found ? '1' : '0');
