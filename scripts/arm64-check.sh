#!/usr/bin/env bash
# Cross-builds the addon for Linux arm64 into build-arm64/ and runs test files under qemu-user,
# so an x86-64 machine can check the arm64 (portable/NEON) path. Slow (emulation): not run by CI.
#
#   scripts/arm64-check.sh                      # build, then the kernel tests
#   scripts/arm64-check.sh gemm lora attention  # build, then dist/test/<name>.test.js for each
#   ARM64_SKIP_BUILD=1 scripts/arm64-check.sh all
#
# Installs nothing. What it needs (Debian bookworm host, as root):
#   apt-get install -y g++-aarch64-linux-gnu qemu-user
# and an arm64 Node >= 20 (ava 7 needs it; bookworm's arm64 nodejs is 18) unpacked into a
# sysroot, here from Debian trixie with a private apt state so the host's apt is untouched:
#   A=/opt/arm64-apt; mkdir -p $A/lists/partial $A/cache/archives/partial $A/debs
#   echo 'deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' > $A/sources.list
#   O="-o Dir::Etc::SourceList=$A/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$A/lists
#      -o Dir::Cache=$A/cache -o APT::Architectures::=arm64 -o APT::Architecture=arm64"
#   apt-get $O update
#   cd $A/debs && apt-get $O download $(apt-cache $O depends --recurse --no-recommends --no-suggests \
#      --no-conflicts --no-breaks --no-replaces --no-enhances nodejs libgomp1 | grep '^[a-z]' | sort -u)
#   mkdir -p /opt/arm64-root && for d in *.deb; do dpkg -x $d /opt/arm64-root; done
#   ln -s usr/lib /opt/arm64-root/lib   # merged /usr: the loader is looked up at /lib
# Under emulation two tests of `all` fail for reasons of qemu, not arm64: cli's bundled demo
# (about 150 s under qemu, past the test's 120 s spawn timeout; run alone it trains and answers
# right), and optim8's paged child (qemu + Node hold about 115 MiB before any work, over the
# test's 96 MiB cgroup; without the cgroup the child finishes with exact numbers).
# ARM64_ROOT names another sysroot; ARM64_JOBS (default 2) the build's jobs; ARM64_CONCURRENCY
# (default 2) ava's files at once.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${ARM64_ROOT:-/opt/arm64-root}"
OUT="$PWD/build-arm64"

for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "arm64-check: $tool not found (see the apt commands in $0)" >&2; exit 1; }
done
[ -x "$ROOT/usr/bin/node" ] || { echo "arm64-check: no arm64 node at $ROOT/usr/bin/node (see $0)" >&2; exit 1; }

# The build tree links to the sources, so build/ (the host's x86-64 addon) is left alone.
if [ -z "${ARM64_SKIP_BUILD:-}" ]; then
  mkdir -p "$OUT"
  for p in binding.gyp native bindings scripts node_modules; do ln -sfn "../$p" "$OUT/$p"; done
  # PEFTKIT_GLOO=0: the host's Gloo is an x86-64 library.
  (cd "$OUT" && CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ PEFTKIT_GLOO=0 \
     npx node-gyp rebuild --arch=arm64 -j "${ARM64_JOBS:-2}")
fi
ADDON="$OUT/build/Release/peftkit.node"
file "$ADDON" | grep -q 'ARM aarch64' || { echo "arm64-check: $ADDON is not an arm64 binary" >&2; exit 1; }
npx tsc -p .

# Tests spawn process.execPath (CLI, ISA children). The kernel cannot run an arm64 ELF here
# (no binfmt_misc), so every Node, parent or child, is this wrapper, and a preload points
# process.execPath at it (qemu passes a path that is not in the sysroot through to the host).
NODE="$OUT/node"
printf '#!/bin/sh\nexec qemu-aarch64 -L "%s" "%s/usr/bin/node" "$@"\n' "$ROOT" "$ROOT" > "$NODE"
chmod +x "$NODE"
printf 'process.execPath = %s;\n' "\"$NODE\"" > "$OUT/exec-path.cjs"
export PEFTKIT_ADDON="$ADDON"
export NODE_OPTIONS="--require $OUT/exec-path.cjs${NODE_OPTIONS:+ $NODE_OPTIONS}"
"$NODE" -e 'const i = require("./dist/src/native.js").native.runtimeInfo();
  console.log(`arm64-check: ${process.arch} node ${process.version}, isa ${i.cpuIsa}, ${i.threads} threads`);
  if (process.arch !== "arm64") process.exit(1);'

KERNELS="gemm gemm_quant lora lora_quant attention transformer bias loss quant optim optim8 llm_int8 tensor"
names=("$@")
[ ${#names[@]} -eq 0 ] && read -r -a names <<< "$KERNELS"
files=()
if [ "${names[0]}" = all ]; then
  files=(dist/test/*.test.js)
else
  for n in "${names[@]}"; do files+=("dist/test/$n.test.js"); done
fi
time "$NODE" node_modules/ava/entrypoints/cli.mjs --timeout 30m --concurrency "${ARM64_CONCURRENCY:-2}" "${files[@]}"
