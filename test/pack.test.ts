/**
 * The release tarball: `npm pack` output holding prebuilds installs into a fresh app with install
 * scripts blocked (`--ignore-scripts`, as pnpm, bun and npm's strict settings do), imports and
 * trains a tiny model: no compiler involved. The prebuild here is this checkout's addon placed
 * where `npm pack`'s prepack (scripts/prebuild.js, prebuildify) puts it, unless that already ran;
 * the dependencies come from the npm cache (`npm ci` filled it), else the registry.
 */
import test from 'ava';
import { spawnSync, SpawnSyncReturns } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const ROOT = path.join(__dirname, '..', '..');
const HOST = `${process.platform}-${process.arch}`;
const env = { ...process.env, PEFTKIT_ADDON: '', npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' };
const sh = (cmd: string, args: string[], cwd: string): SpawnSyncReturns<string> =>
  spawnSync(cmd, args, { cwd, encoding: 'utf8', env, timeout: 150_000 });

const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

/**
 * `npm run build:cuda` works in an installed package: its script fetches the pinned cmake-js
 * with npx (no devDependency needed), and CMake configures the CUDA build from the installed
 * files alone (node-addon-api found beside it). The compile itself is CI's (.ci/run) and
 * scripts/gpu-check.sh's; without CMake and nvcc only the script is checked.
 */
function checkBuildCuda(t: import('ava').ExecutionContext, installed: string, work: string): void {
  const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const cmakeJs = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }).devDependencies['cmake-js'];
  t.regex(manifest.scripts['build:cuda'], new RegExp(`^npx --yes cmake-js@${cmakeJs.replace(/\./g, '\\.')} rebuild --CDPEFTKIT_CUDA=ON$`), 'build:cuda fetches the pinned cmake-js');
  if (!has('cmake') || !has('nvcc')) return t.log('build:cuda configure not checked: no cmake or nvcc on this machine');
  const out = path.join(work, 'build-cuda-configure');
  const cfg = sh(process.execPath, [path.join(ROOT, 'node_modules', 'cmake-js', 'bin', 'cmake-js'), 'configure', '--out', out, '--CDPEFTKIT_CUDA=ON'], installed);
  t.is(cfg.status, 0, `${cfg.stdout}\n${cfg.stderr}`);
  t.regex(cfg.stdout, /peftkit: CUDA backend ON/);
  // The generated build names every CUDA source of the installed package.
  const cuda = fs.readdirSync(path.join(installed, 'native', 'cuda')).filter((f) => f.endsWith('.cu'));
  const generated = sh('grep', ['-rl', '--include=*.make', '--include=*.ninja', '--include=Makefile', cuda[0], out], work).stdout;
  t.not(generated.trim(), '', `${cuda[0]} is in the configured build`);
}

// Something to package as this platform's prebuild: a prebuild, or this checkout's build.
const noAddon = !fs.existsSync(path.join(ROOT, 'prebuilds', HOST)) && !fs.existsSync(path.join(ROOT, 'build', 'Release', 'peftkit.node'));

(noAddon ? test.skip : test)(`npm pack: a tarball with prebuilds that installs with --ignore-scripts, imports and trains${noAddon ? `: no ${HOST} prebuild and no build/Release/peftkit.node to stand for one` : ''}`, (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { files: string[]; version: string };
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-pack-'));
  // A copy of what the package publishes (the `files` list), so the checkout's build/ cannot leak in.
  const stage = path.join(work, 'stage');
  fs.mkdirSync(stage);
  for (const f of [...pkg.files, 'package.json', 'README.md']) {
    if (f === 'prebuilds' || !fs.existsSync(path.join(ROOT, f))) continue;
    fs.cpSync(path.join(ROOT, f), path.join(stage, f), { recursive: true });
  }
  const prebuilt = path.join(ROOT, 'prebuilds');
  if (fs.existsSync(path.join(prebuilt, HOST))) fs.cpSync(prebuilt, path.join(stage, 'prebuilds'), { recursive: true });
  else {
    const addon = path.join(ROOT, 'build', 'Release', 'peftkit.node');
    fs.mkdirSync(path.join(stage, 'prebuilds', HOST), { recursive: true });
    fs.copyFileSync(addon, path.join(stage, 'prebuilds', HOST, `peftkit${process.platform === 'linux' ? '.glibc' : ''}.node`));
  }
  const packed = sh('npm', ['pack', '--ignore-scripts', '--pack-destination', work], stage);
  t.is(packed.status, 0, packed.stderr);
  const tarball = path.join(work, packed.stdout.trim().split('\n').pop()!);
  const list = sh('tar', ['tzf', tarball], work).stdout.split('\n');
  for (const f of ['package/LICENSE', 'package/dist/src/index.js', 'package/bin/peftkit.js', 'package/binding.gyp', 'package/demo/data.jsonl']) t.true(list.includes(f), f);
  t.true(list.some((f) => f.startsWith(`package/prebuilds/${HOST}/`) && f.endsWith('.node')), `a ${HOST} prebuild in the tarball`);
  t.false(list.some((f) => f.startsWith('package/build/') || f.startsWith('package/test/') || f.startsWith('package/dist/test/')), 'no build or test files');
  // `npm run build:cuda` in the installed package compiles what CMakeLists.txt globs: every
  // native and binding source and header of the checkout must be in the tarball.
  const sources = sh('git', ['ls-files', 'CMakeLists.txt', 'native', 'bindings'], ROOT).stdout.split('\n').filter((f) => /\.(cc|cu|cuh|h|inc|txt)$/.test(f));
  t.true(sources.some((f) => f.startsWith('native/cuda/') && f.endsWith('.cu')), 'git lists the CUDA sources');
  const missing = sources.filter((f) => !list.includes(`package/${f}`));
  t.deepEqual(missing, [], 'build:cuda needs these files, absent from the tarball');

  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  let inst = sh('npm', ['install', tarball, '--ignore-scripts', '--offline'], app);
  if (inst.status !== 0 && /ENOTCACHED/.test(inst.stderr)) inst = sh('npm', ['install', tarball, '--ignore-scripts', '--prefer-offline'], app);
  if (inst.status !== 0 && /ENOTFOUND|EAI_AGAIN|ENOTCACHED|ECONNREFUSED|ETIMEDOUT/.test(inst.stderr)) {
    return t.pass(`skipped: the dependencies are neither in the npm cache nor reachable: ${inst.stderr.split('\n').find((l) => /ERR/.test(l))}`);
  }
  t.is(inst.status, 0, inst.stderr);
  const installed = path.join(app, 'node_modules', 'peftkit');
  t.false(fs.existsSync(path.join(installed, 'build')), 'nothing was compiled');
  checkBuildCuda(t, installed, work);

  const script = `
    const { train, writeRandomModel } = require('peftkit');
    const fs = require('fs'), path = require('path');
    const found = require('node-gyp-build').path(path.dirname(require.resolve('peftkit/package.json')));
    writeRandomModel('model', { hiddenSize: 32, numHeads: 2, numLayers: 1, seed: 3 });
    fs.writeFileSync('d.jsonl', Array.from({ length: 6 }, (_, i) => JSON.stringify({ text: 'row ' + i + ' says hi' })).join('\\n'));
    train({ model: 'model', data: 'd.jsonl', out: 'adapter', steps: 2, batchSize: 2 }).then((r) => {
      console.log(JSON.stringify({ steps: r.steps, loss: r.finalLoss, found }));
    });`;
  const trained = sh(process.execPath, ['-e', script], app);
  t.is(trained.status, 0, trained.stderr);
  const out = JSON.parse(trained.stdout.trim().split('\n').pop()!) as { steps: number; loss: number; found: string };
  t.is(out.steps, 2);
  t.true(Number.isFinite(out.loss));
  t.true(out.found.includes(`${path.sep}prebuilds${path.sep}${HOST}${path.sep}`), `the addon came from the prebuild: ${out.found}`);
  t.true(fs.existsSync(path.join(app, 'adapter', 'adapter_model.safetensors')));
  const version = sh(path.join(app, 'node_modules', '.bin', 'peftkit'), ['--version'], app);
  t.is(version.stdout, `peftkit ${pkg.version}\n`, version.stderr);
  fs.rmSync(work, { recursive: true, force: true });
});
