/**
 * Child process of the paged-optimizer test: two AdamW steps over one parameter of n elements
 * whose param and grad live in mapped files, with the optimizer kind from argv (`paged_adamw`:
 * states in a mapped file; `adamw`: states in RAM). Prints a JSON line with the checks.
 * Usage: node paged_child.js <optim> <n> <dir>
 */
import { Tensor } from '../../src/index';
import { AdamW, OptimName } from '../../src/train/optimizer';

const [optim, nArg, dir] = process.argv.slice(2);
const n = Number(nArg);
const param = Tensor.mapped([n], { dir });
const grad = Tensor.mapped([n], { dir });
// g = 1 everywhere, written 1 MiB at a time (a whole-tensor array would itself need the RAM).
const chunk = 1 << 18;
const ones = new Float32Array(chunk).fill(1);
for (let at = 0; at < n; at += chunk) {
  const len = Math.min(chunk, n - at);
  const v = grad.view(at, [len]);
  v.write(ones.subarray(0, len));
  v.dispose();
}
const opt = new AdamW([{ name: 'w', param, grad }], { optim: optim as OptimName, pagedDir: dir });
const lr = 0.01;
opt.update(lr);
opt.update(lr);
// With g = 1 every step: m̂ = v̂ = 1 after bias correction, so each step moves p by -lr/(1 + eps).
const at = (t: Tensor, i: number) => {
  const v = t.view(i, [1]);
  const x = v.toFloat32Array()[0];
  v.dispose();
  return x;
};
let bad = 0;
for (let k = 0; k < 257; k++) {
  const i = k === 256 ? n - 1 : Math.floor((k / 256) * n);
  if (Math.abs(at(param, i) + 2 * lr) > 1e-6 || Math.abs(at(opt.m[0], i) - 0.19) > 1e-6 || Math.abs(at(opt.v[0], i) - 0.001999) > 1e-8) bad++;
}
console.log(JSON.stringify({ optim, n, stateBytes: opt.stateBytes, paged: opt.m[0].paged, bad }));
