#!/usr/bin/env bash
# Run the whole test suite through ctest; exits non-zero on any failure.
# Usage: scripts/test.sh [extra ctest args, e.g. -L unit or -R Tokenizer]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build ] || { echo "test.sh: error: no build/ directory; run scripts/setup.sh first" >&2; exit 1; }
cmake --build build -j "${SHRINK_BUILD_JOBS:-$(nproc)}"
# Each test process gets one thread so that ctest can run $(nproc) of them side by side.
export SHRINK_THREADS=${SHRINK_THREADS:-1}
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 900 "$@"
