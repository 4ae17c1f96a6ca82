#!/usr/bin/env node
// The last table of scripts/gpu-check.sh: bench/results/train-<device>-<shape>.json (written by
// `npm run bench:train -- --device ... [--tag T]`) as one row per (shape, run): peftkit's and the
// PyTorch peer's tokens/s and peak GPU memory, the ratios (peftkit / PyTorch), and which GEMM ran
// (libcublasLt or our kernels). A run that is missing shows '-' (its failure is above, in the
// benchmark's own output).
'use strict';
const fs = require('fs');
const path = require('path');

const dir = process.argv[2] || path.join(__dirname, '..', 'bench', 'results');
const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^train-(cuda|cpu)-.+\.json$/.test(f)).sort() : [];
const fmt = (x, d = 0) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(d) : '-');
const lines = [['device', 'shape', 'B×T', 'GEMM', 'run', 'peftkit tok/s', 'PyTorch tok/s', 'tok/s ratio', 'peftkit GPU MiB', 'PyTorch GPU MiB', 'memory ratio']];
for (const f of files) {
  const r = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
  for (const run of ['LoRA bf16', 'QLoRA NF4 bf16']) {
    const ours = r.rows.find((x) => x.who === `peftkit ${run}`);
    const peer = r.rows.find((x) => x.who === `PyTorch ${run}`);
    lines.push([r.device, r.tag ? `${r.shape} (${r.tag})` : r.shape, `${r.B}×${r.T}`, r.gemm ?? '-', run, fmt(ours?.tokensPerS), fmt(peer?.tokensPerS),
      ours && peer ? fmt(ours.tokensPerS / peer.tokensPerS, 2) : '-', fmt(ours?.peakGpuMb), fmt(peer?.peakGpuMb),
      ours?.peakGpuMb != null && peer?.peakGpuMb != null ? fmt(ours.peakGpuMb / peer.peakGpuMb, 2) : '-']);
  }
  for (const row of r.rows.filter((x) => x.note)) console.log(`(${r.shape}) ${row.who}: ${row.note}`);
}
console.log('\n== training benchmarks ==');
if (files.length === 0) console.log('no benchmark results (see the bench:train steps above)');
else {
  const w = lines[0].map((_, i) => Math.max(...lines.map((l) => String(l[i]).length)));
  for (const l of lines) console.log(l.map((c, i) => String(c).padEnd(w[i])).join(' | '));
}
