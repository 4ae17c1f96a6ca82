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
  [ "$name" = nccl_group ] && continue  # host code over NCCL and streams, no kernel: nothing to emulate
  # Rewritten only when the translation changed, so an unchanged file is not compiled again.
  python3 "$here/translate.py" "$cu" > "$out/$name.cc.new"
  if cmp -s "$out/$name.cc.new" "$out/$name.cc"; then rm "$out/$name.cc.new"; else mv "$out/$name.cc.new" "$out/$name.cc"; fi
  stale=0
  for dep in "$out/$name.cc" "$root"/native/cuda/*.cuh "$here/include/emu.h"; do [ "$dep" -nt "$out/$name.o" ] && stale=1; done
  if [ ! -f "$out/$name.o" ] || [ "$stale" = 1 ]; then
    g++ "${flags[@]}" -c "$out/$name.cc" -o "$out/$name.o"
  fi
  objs+=("$out/$name.o")
done
# The CPU kernels the quantization and optimizer checks compare bits with (single-threaded: no OpenMP).
for cc in core/parallel cpu/quant_4bit cpu/quant_8bit_dynamic cpu/quant_int8 cpu/adamw8bit cpu/adamw; do
  name="cpu_$(basename "$cc")"
  if [ ! -f "$out/$name.o" ] || [ "$root/native/$cc.cc" -nt "$out/$name.o" ]; then
    g++ "${flags[@]}" -I"$root/native/cpu" -c "$root/native/$cc.cc" -o "$out/$name.o"
  fi
  objs+=("$out/$name.o")
done
g++ "${flags[@]}" "$here/check.cc" "$here/check_quant.cc" "${objs[@]}" -o "$out/check"
"$out/check" "$@"
