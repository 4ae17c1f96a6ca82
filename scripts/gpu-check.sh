#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU (offline: node_modules travels with
# the tree, run's `carry`). Each step has its own timeout (585 s in all with the default steps, under run's 600 s cap); a
# step that fails or times out is reported and the later steps still run; a summary of every
# step, then one table of the training benchmarks, is printed last.
#   1. the device and toolchain (nvidia-smi, nvcc, node, cmake),
#   2. the CUDA build: cmake-js (node_modules/.bin, so nothing is downloaded) with PEFTKIT_CUDA=ON,
#      for this GPU's architecture only, in parallel on every core. It writes
#      build/Release/peftkit.node, replacing a CPU build there: the loader (src/native.ts) takes
#      PEFTKIT_ADDON when set, else node-gyp-build's search, which tries build/Release before
#      prebuilds/. (It does not look in build-cuda/, where CI's compile-only check puts its build.)
#   3. fails unless that addon sees the GPU (otherwise the cuda rows would all be skipped),
#   4. the whole ava suite once: with the CUDA build every kernel test loops over devices() and
#      every model-level test has a cpu and a cuda row (test/helpers/check.ts deviceTest), so this
#      one run is the suite on cpu and on cuda; the skipped rows are listed with their reasons
#      (NCCL's group, test/nccl.test.ts, with the system's libnccl.so.2 or PyTorch's),
#   5. npm run bench:train -- --device cuda on the SmolLM2-135M and TinyLlama-1.1B shapes (batch
#      8 × 512: LoRA bf16, QLoRA NF4 bf16) beside the PyTorch peer (bench/peers/
#      torch_lora_train_gpu.py; bitsandbytes / PEFT said absent where they are), and the
#      SmolLM2 shape again with our own GEMM kernels (PEFTKIT_CUBLASLT=0, no peer): the A/B of
#      cuBLASLt against them, so the faster is kept as the default. libcublasLt is looked for on
#      the loader's path, in /usr/local/cuda/lib64, then in the pip wheel PyTorch brings
#      (nvidia-cublas); the table's GEMM column says which one ran,
#   6. the summary and the table: tokens/s, peak GPU memory, ratios to the peer.
# Options:
#   --no-gpu      a dry run of the plumbing on a machine without a GPU: no nvidia-smi, no build
#                 (the existing build/Release addon), the benchmark on cpu with a tiny shape.
#   --tests "F"   only these test files (dist/test/x.test.js ...) instead of the whole suite.
#   --kernels     also npm run bench:kernels (and, on an AMX host, the GEMM rows without AMX).
#   --sanitize    also the test files under compute-sanitizer memcheck (several minutes more).
set -uo pipefail
cd "$(dirname "$0")/.."

gpu=1 sanitize=0 kernels=0 tests=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-gpu) gpu=0 ;;
    --sanitize) sanitize=1 ;;
    --kernels) kernels=1 ;;
    --tests) tests="$2"; shift ;;
    *) echo "gpu-check.sh: unknown option '$1' (--no-gpu, --tests \"FILES\", --kernels, --sanitize)"; exit 2 ;;
  esac
  shift
done
cores=$(nproc 2>/dev/null || echo 4)
# Where the dynamic loader would not find libcublasLt by itself, name the file (cublaslt.cu).
if [ -z "${PEFTKIT_CUBLASLT_PATH:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so'; then
  lt=$(ls /usr/local/cuda/lib64/libcublasLt.so.* 2>/dev/null | head -n 1)
  [ -z "$lt" ] && lt=$(python3 -c "import glob, os, nvidia.cublas as c; print((sorted(glob.glob(os.path.join(list(c.__path__)[0], 'lib', 'libcublasLt.so*'))) or [''])[0])" 2>/dev/null)
  [ -n "$lt" ] && export PEFTKIT_CUBLASLT_PATH="$lt"
fi
export PEFTKIT_TEST_SEED="${PEFTKIT_TEST_SEED:-20261206}"
summary=()

# run_step NAME TIMEOUT_S COMMAND...: runs it under `timeout`, records ok / FAILED (rc) / TIMED OUT.
run_step() {
  local name="$1" limit="$2" start=$SECONDS rc
  shift 2
  printf '\n== %s == (t=%ss, limit %ss)\n' "$name" "$SECONDS" "$limit"
  # Through bash -c, so that a step may be one of the functions below (exported).
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@"
  rc=$?
  local took=$((SECONDS - start)) status="ok"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMED OUT after ${limit}s"; elif [ "$rc" != 0 ]; then status="FAILED (exit $rc)"; fi
  summary+=("$(printf '%-46s %-24s %4ss' "$name" "$status" "$took")")
  return "$rc"
}

toolchain() {
  nvidia-smi || return 1
  nvcc --version | tail -n 2
  node --version
  cmake --version | head -n 1
  [ -d node_modules ] || { echo "node_modules is missing (the device machine cannot npm install): carry it"; return 1; }
}

cuda_build() {
  # This GPU's compute capability only (9.0 -> 90): half the work of the default 80;90.
  local arch
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '. ')
  echo "architecture sm_${arch:-?}, $cores parallel jobs"
  CMAKE_BUILD_PARALLEL_LEVEL="$cores" node_modules/.bin/cmake-js rebuild --CDPEFTKIT_CUDA=ON \
    ${arch:+--CDCMAKE_CUDA_ARCHITECTURES="$arch"} --parallel "$cores" 2>&1 | tail -n 25
  return "${PIPESTATUS[0]}"
}

addon_check() {
  npx tsc -p tsconfig.json || return 1
  node -e "
const info = require('./dist/src/index').runtimeInfo();
console.log(JSON.stringify(info));
const want = process.argv[1] === '1';
if (want && (!info.cudaBuild || !info.cudaAvailable)) { console.error('CUDA build not loaded or no device visible'); process.exit(1); }
if (!want && !info.cpuIsa) process.exit(1);
" "$gpu"
}

test_suite() {
  local log rc
  log=$(mktemp)
  # shellcheck disable=SC2086 # $tests is a list of files
  npx ava $tests 2>&1 | tee "$log" | grep -vE '^\s+✔' | tail -n 200
  rc=${PIPESTATUS[0]}
  echo "-- counts: $(grep -Ec '^\s+✔' "$log") passed, $(grep -Ec '^\s+✘' "$log") failed, $(grep -Ec '^\s+- \[skip\]' "$log") skipped"
  echo "-- skipped rows by reason:"
  grep -E '^\s+- \[skip\]' "$log" | sed -E 's/.*\((cpu|cuda)\): /\1: /; s/.*› //' | sed -E 's/^(cpu|cuda): (.*)$/\1: \2/' | sort | uniq -c | sort -rn | head -n 20
  rm -f "$log"
  return "$rc"
}

bench_train() { # SHAPE DEVICE [extra args]
  local shape="$1" device="$2"
  shift 2
  node dist/bench/train.js --device "$device" --shape "$shape" "$@"
}

bench_train_own_gemm() { # SHAPE: the same run with our GEMM kernels instead of cuBLASLt
  PEFTKIT_CUBLASLT=0 bench_train "$1" cuda --batch 8 --seq 512 --steps 3 --tag own-gemm --no-peer
}

export -f toolchain cuda_build addon_check test_suite bench_train bench_train_own_gemm
export gpu tests cores
rm -f bench/results/train-cuda-*.json bench/results/train-cpu-*.json
if [ "$gpu" = 1 ]; then
  run_step "device and toolchain" 15 toolchain
  run_step "CUDA build (cmake-js, parallel)" 150 cuda_build
else
  echo "--no-gpu: no nvidia-smi and no CUDA build; the tests and benchmarks run on the cpu addon in build/"
fi
# NCCL for test/nccl.test.ts (1 rank; 2 ranks with 2 GPUs): the system's libnccl.so.2, else the
# one PyTorch's pip wheels carry (nvidia-nccl-cu*), else its tests fail naming the library.
if [ "$gpu" = 1 ] && [ -z "${PEFTKIT_NCCL_LIBRARY:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2'; then
  nccl=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib', 'libnccl.so.2'))" 2>/dev/null)
  if [ -f "$nccl" ]; then export PEFTKIT_NCCL_LIBRARY="$nccl"; echo "NCCL: $nccl"; else echo "NCCL: no libnccl.so.2 found"; fi
fi
run_step "the addon loads$([ "$gpu" = 1 ] && echo ' and sees the GPU')" 30 addon_check
run_step "ava: ${tests:-the whole suite} (cpu and cuda rows)" 205 test_suite
if [ "$gpu" = 1 ]; then
  echo "libcublasLt: ${PEFTKIT_CUBLASLT_PATH:-found by the dynamic loader, if anywhere}"
  run_step "bench:train cuda smol135 8x512" 55 bench_train smol135 cuda --batch 8 --seq 512 --steps 3
  run_step "bench:train cuda smol135 8x512, own GEMM kernels" 40 bench_train_own_gemm smol135
  run_step "bench:train cuda tinyllama 8x512" 90 bench_train tinyllama cuda --batch 8 --seq 512 --steps 2
else
  run_step "bench:train cpu tiny 2x32 (plumbing)" 120 bench_train tiny cpu --batch 2 --seq 32 --steps 1
fi
if [ "$kernels" = 1 ]; then
  run_step "kernel benchmarks" 100 npm run bench:kernels
  # GPU hosts are often AMX CPUs: the bf16 GEMM without the tiles, for the AMX ratio.
  if node -e "process.exit(require('./dist/src/index').runtimeInfo().amxBf16 ? 0 : 1)"; then
    run_step "AMX off: bf16 GEMM (PEFTKIT_ISA=avx512)" 90 env PEFTKIT_ISA=avx512 npm run bench:kernels -- gemm
  fi
fi
if [ "$sanitize" = 1 ]; then
  # ava runs test files in worker threads of one process, which the sanitizer follows.
  run_step "compute-sanitizer memcheck over the test files" 900 compute-sanitizer --tool memcheck --error-exitcode 1 npx ava $tests
fi

printf '\n== summary == (t=%ss)\n' "$SECONDS"
printf '%s\n' "${summary[@]}"
failed=$(printf '%s\n' "${summary[@]}" | grep -cE 'FAILED|TIMED OUT')
echo "$failed of ${#summary[@]} steps failed"
node scripts/gpu-check-table.js bench/results
exit $((failed > 0))
