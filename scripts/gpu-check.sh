#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU (a few minutes; the step timeouts
# add up to 8):
#   1. shows the device (nvidia-smi) and toolchain,
#   2. builds the CUDA addon (npm run build:cuda -> build-cuda/Release/peftkit.node, which the
#      loader prefers to the CPU build),
#   3. fails unless that addon sees the GPU (otherwise the tests would quietly run on cpu only),
#   4. runs npm test: every kernel test loops over devices(), so each runs on cpu and on cuda,
#   5. runs npm run bench:kernels (and, on an AMX host, the GEMM rows again without AMX).
# Optional: scripts/gpu-check.sh --sanitize also runs the test files under compute-sanitizer
# (memcheck), which finds out-of-bounds and misaligned accesses; it takes several minutes more.
# The device machine is offline: node_modules must travel with the tree (run's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0
[ "${1:-}" = "--sanitize" ] && sanitize=1

step() { printf '\n== %s == (t=%ss)\n' "$*" "$SECONDS"; }

step "device and toolchain"
nvidia-smi
nvcc --version | tail -n 2
node --version
cmake --version | head -n 1
[ -d node_modules ] || { echo "node_modules is missing (the device machine cannot npm install): carry it"; exit 1; }

step "CUDA build: npm run build:cuda"
timeout 180 npm run build:cuda 2>&1 | tail -n 25

step "the CUDA addon sees the GPU"
npx tsc -p tsconfig.json
node -e "
const { runtimeInfo } = require('./dist/src/index');
const info = runtimeInfo();
console.log(JSON.stringify(info));
if (!info.cudaBuild || !info.cudaAvailable) { console.error('CUDA build not loaded or no device visible'); process.exit(1); }
"

step "npm test (cpu and cuda)"
timeout 200 npm test

step "kernel benchmarks"
timeout 100 npm run bench:kernels

# GPU hosts are often AMX CPUs (Sapphire Rapids and later): then the tests above ran the AMX
# GEMM kernel on the tiles, and this gives the bf16 GEMM without it, for the AMX ratio.
step "AMX: bf16 GEMM with the tiles off (PEFTKIT_ISA=avx512), when the host has them"
if node -e "process.exit(require('./dist/src/index').runtimeInfo().amxBf16 ? 0 : 1)"; then
  PEFTKIT_ISA=avx512 timeout 90 npm run bench:kernels -- gemm
else
  echo "no AMX on this host"
fi

if [ "$sanitize" = 1 ]; then
  step "compute-sanitizer memcheck over the test files"
  # ava runs test files in worker threads of one process, which the sanitizer follows.
  PEFTKIT_TEST_SEED=1 timeout 900 compute-sanitizer --tool memcheck --error-exitcode 1 npx ava
fi

step "done"
