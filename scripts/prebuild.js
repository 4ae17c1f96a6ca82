#!/usr/bin/env node
// Builds the release prebuilds into prebuilds/<platform>-<arch>/peftkit[.glibc].node with
// prebuildify (N-API, stripped, tagged with the C library on Linux), each in its own folder under build-prebuilds/ (symlinks to the
// sources, as scripts/arm64-check.sh does), so the developer's build/ is never touched.
// `npm pack` runs it (prepack): the tarball then carries the addon, and `npm install` of it needs
// no compiler, also with install scripts blocked.
//
//   node scripts/prebuild.js                      # this platform; on linux-x64 also linux-arm64 (cross)
//   PEFTKIT_PREBUILDS="linux-x64" node scripts/prebuild.js
//   PEFTKIT_PREBUILDS_FORCE=1 ...                 # rebuild even when a prebuild is newer than the sources
//
// linux-arm64 on an x86-64 host cross-compiles with Debian's g++-aarch64-linux-gnu
// (`apt-get install g++-aarch64-linux-gnu`). darwin-arm64 and win32-x64 are built on their own CI
// runners (.github/workflows/prebuilds.yml) and copied into prebuilds/ before publishing.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const host = `${process.platform}-${process.arch}`;
const targets = (process.env.PEFTKIT_PREBUILDS || (host === 'linux-x64' ? 'linux-x64 linux-arm64' : host)).split(/[\s,]+/).filter(Boolean);
const SOURCES = ['binding.gyp', 'native', 'bindings', 'scripts/sources.js', 'scripts/gloo.js'];

function newest(p) {
  const st = fs.statSync(p);
  if (!st.isDirectory()) return st.mtimeMs;
  return fs.readdirSync(p).reduce((m, f) => Math.max(m, newest(path.join(p, f))), st.mtimeMs);
}

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

const sourcesTime = Math.max(...SOURCES.map((s) => newest(path.join(root, s))));
let failed = false;
for (const target of targets) {
  const [platform, arch] = target.split('-');
  const dir = path.join(root, 'prebuilds', target);
  const built = () => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.node')).map((f) => path.join(dir, f)) : []);
  const file = built()[0];
  if (!process.env.PEFTKIT_PREBUILDS_FORCE && file && fs.statSync(file).mtimeMs > sourcesTime) {
    console.log(`prebuild ${target}: up to date (${path.relative(root, file)})`);
    continue;
  }
  fs.rmSync(dir, { recursive: true, force: true });
  // Without Gloo: an addon linked to libgloo.so.0 would not load at all where libgloo0 is not
  // installed (and a cross build would find the host's). Distributed training needs a build from
  // source where libgloo-dev is installed.
  const env = { ...process.env, PEFTKIT_GLOO: '0' };
  // N-API: one binary for every Node >= 20; built against this Node's headers (prebuildify would
  // otherwise fetch the newest Node's), from the local install when it ships them.
  const args = ['--napi', '--strip', '--tag-libc', '--out', root, '--arch', arch, '--platform', platform, '--target', process.versions.node];
  const prefix = path.join(path.dirname(process.execPath), '..');
  if (!env.npm_config_nodedir && fs.existsSync(path.join(prefix, 'include', 'node', 'node.h'))) env.npm_config_nodedir = path.resolve(prefix);
  if (target !== host) {
    if (!(host === 'linux-x64' && target === 'linux-arm64')) {
      console.error(`prebuild ${target}: cannot be built on ${host}; build it on its own machine (.github/workflows/prebuilds.yml)`);
      failed = true;
      continue;
    }
    if (!have('aarch64-linux-gnu-g++')) {
      console.error(`prebuild ${target}: needs the cross compiler: apt-get install g++-aarch64-linux-gnu (or PEFTKIT_PREBUILDS=${host} to leave arm64 out)`);
      failed = true;
      continue;
    }
    Object.assign(env, { CC: 'aarch64-linux-gnu-gcc', CXX: 'aarch64-linux-gnu-g++', LINK: 'aarch64-linux-gnu-g++', AR: 'aarch64-linux-gnu-ar' });
    args.push('--strip-bin', 'aarch64-linux-gnu-strip');
  }
  // A folder of links to the sources: prebuildify builds in <cwd>/build, which is not the developer's build/.
  const stage = path.join(root, 'build-prebuilds', target);
  fs.rmSync(stage, { recursive: true, force: true });
  fs.mkdirSync(path.join(stage, 'scripts'), { recursive: true });
  // Windows: junctions for folders (no privilege needed), copies for files.
  const link = (rel) => {
    const from = path.join(root, rel);
    const to = path.join(stage, rel);
    if (process.platform !== 'win32') fs.symlinkSync(from, to);
    else if (fs.statSync(from).isDirectory()) fs.symlinkSync(from, to, 'junction');
    else fs.copyFileSync(from, to);
  };
  for (const p of ['binding.gyp', 'native', 'bindings', 'node_modules', 'package.json', path.join('scripts', 'sources.js'), path.join('scripts', 'gloo.js')]) link(p);
  console.log(`prebuild ${target}: building (a few minutes)...`);
  const prebuildify = require.resolve('prebuildify/bin.js', { paths: [root] });
  env.JOBS = env.JOBS || String(Math.max(1, require('os').cpus().length));
  const r = spawnSync(process.execPath, [prebuildify, ...args, '--cwd', stage], { cwd: stage, env, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`prebuild ${target}: prebuildify failed (exit ${r.status})`);
    failed = true;
    continue;
  }
  fs.rmSync(stage, { recursive: true, force: true });
  for (const f of built()) console.log(`prebuild ${target}: ${path.relative(root, f)} (${(fs.statSync(f).size / 2 ** 20).toFixed(1)} MiB)`);
}
if (failed) process.exit(1);
