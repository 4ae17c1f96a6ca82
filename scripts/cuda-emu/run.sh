#!/usr/bin/env bash
# Runs the CUDA kernels on the CPU under the emulation in include/emu.h and checks them
# against float64 references (check.cc). For machines without a GPU; slow (one OS thread per
# CUDA thread), so the shapes are small. Usage: scripts/cuda-emu/run.sh [family]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# EMU_ASAN=1 builds with AddressSanitizer: any global or dynamic-shared read or write out of
# bounds aborts with its kernel and line. EMU_TSAN=1 builds with ThreadSanitizer: a shared-memory
# race (a missing __syncthreads or __syncwarp) is reported with both accesses.
asan="${EMU_ASAN:-0}"
tsan="${EMU_TSAN:-0}"
out="${EMU_BUILD:-/tmp/peftkit-cuda-emu}"
[ "$asan" = 1 ] && out="$out-asan"
[ "$tsan" = 1 ] && out="$out-tsan"
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -pthread -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -DPEFTKIT_CUDA
       -I"$here/include" -I"$root/native/include" -I"$root/native/cuda")
[ "$asan" = 1 ] && flags+=(-fsanitize=address -fno-omit-frame-pointer)
[ "$tsan" = 1 ] && flags+=(-fsanitize=thread)
objs=()
for cu in "$root"/native/cuda/*.cu; do
  name="$(basename "$cu" .cu)"
  [ "$name" = memory ] && continue  # device memory: the checks use host memory directly
  # Kernels check.cc does not cover yet (they use stream-ordered allocation the emulator lacks).
  case "$name" in adamw8bit|quant|gemm_quant|lora_quant|bias) continue ;; esac
  python3 "$here/translate.py" "$cu" > "$out/$name.cc"
  if [ ! -f "$out/$name.o" ] || [ "$out/$name.cc" -nt "$out/$name.o" ] || [ "$root/native/cuda/common.cuh" -nt "$out/$name.o" ] \
     || [ "$here/include/emu.h" -nt "$out/$name.o" ]; then
    g++ "${flags[@]}" -c "$out/$name.cc" -o "$out/$name.o"
  fi
  objs+=("$out/$name.o")
done
g++ "${flags[@]}" "$here/check.cc" "${objs[@]}" -o "$out/check"
"$out/check" "$@"
