#!/usr/bin/env bash
# Install every Debian package shrink needs, then configure (Ninja, Release, ccache) and build
# into build/ (binaries in build/bin/). Idempotent: packages already present are not
# reinstalled, and an existing build directory is reused (incremental build).
# Usage: scripts/setup.sh [extra cmake -D options...]
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "==> setup: $*"; }
fail() { echo "setup.sh: error: $*" >&2; exit 1; }

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-openmp            # LibTorch + an optimized BLAS (else 15-30x slower)
  libdnnl-dev                                 # oneDNN: CPU GEMMs of the runtime
  libonnx-dev libprotobuf-dev protobuf-compiler
  libcli11-dev libyaml-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  fortunes                                    # the built-in default corpus
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "need root (or sudo) to install: ${missing[*]}"
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || fail "apt-get update failed"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install failed for: ${missing[*]}"
else
  step "all ${#PACKAGES[@]} Debian packages present"
fi
[ -d /usr/share/games/fortunes ] || fail "the default corpus /usr/share/games/fortunes is missing"

JOBS=${SHRINK_BUILD_JOBS:-$(nproc)}
step "configuring build/ (Ninja, Release, ccache)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >build-configure.log 2>&1 \
  || { tail -40 build-configure.log >&2; fail "cmake configure failed (full log: build-configure.log)"; }
step "building with $JOBS jobs"
start=$(date +%s)
cmake --build build -j "$JOBS" || fail "build failed"
step "built in $(( $(date +%s) - start )) s; binaries in build/bin/"
