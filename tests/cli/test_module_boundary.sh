#!/usr/bin/env bash
# The deployable runtime (shrink-rt) links neither LibTorch nor lib/pipeline (ARCHITECTURE.md,
# issue 26): no shrink::train or shrink::pipeline symbol in the binary, and no LibTorch or
# yaml-cpp among its shared libraries. The runtime's own symbols must be visible, so that a
# stripped or wrong binary cannot pass by showing nothing.
# Usage: test_module_boundary.sh SHRINK_RT
set -u
bin=$1
symbols=$(nm -C "$bin" 2>/dev/null) || { echo "FAIL: nm cannot read $bin"; exit 1; }
grep -q 'shrink::runtime::' <<<"$symbols" || { echo "FAIL: no shrink::runtime symbols in $bin"; exit 1; }
leaked=$(grep -oE 'shrink::(train|pipeline)::[A-Za-z_0-9]+' <<<"$symbols" | sort -u | head -5)
if [ -n "$leaked" ]; then
  echo "FAIL: $bin links ahead-of-time code: $leaked"
  exit 1
fi
libs=$(ldd "$bin" 2>/dev/null | grep -oE 'lib(torch[a-z_]*|c10|yaml-cpp)\.so[^ ]*' | sort -u)
if [ -n "$libs" ]; then
  echo "FAIL: $bin needs $libs"
  exit 1
fi
echo "ok: $bin links only runtime, kernels and core"
