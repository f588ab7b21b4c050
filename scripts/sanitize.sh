#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the deployable half (runtime, CPU
# kernels, shrink-rt; no LibTorch, no ONNX, no CUDA) into build-asan/, then its tests:
# test_core, test_pipeline, test_runtime (every kernel against its reference, engine, batching,
# KV cache, int8, the serving scheduler), the shrink-rt CLI test, the server's checks (the
# openai client's serve_check and a 200-request serve_soak) and the fuzz corpus replays
# (tests/fuzz). Any report fails the
# run (halt_on_error, leaks included).
# Usage: scripts/sanitize.sh [extra ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSHRINK_WITH_TORCH=OFF -DSHRINK_WITH_ONNX=OFF -DSHRINK_WITH_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_C_FLAGS="$SAN" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >build-asan-configure.log 2>&1 \
  || { tail -30 build-asan-configure.log >&2; echo "sanitize.sh: configure failed" >&2; exit 1; }
# test_pipeline (recipes, the runner, content hashes) exists when lib/pipeline is built, i.e.
# with yaml-cpp and xxHash, which setup.sh installs.
targets=(test_core test_runtime shrink-rt fuzz_replay)
ninja -C build-asan -t targets all 2>/dev/null | grep -q '^test_pipeline:' && targets+=(test_pipeline)
cmake --build build-asan -j "${SHRINK_BUILD_JOBS:-$(nproc)}" --target "${targets[@]}"
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export SHRINK_THREADS=${SHRINK_THREADS:-1}
# Without LibTorch and ONNX only these suites are registered: core, pipeline, runtime, rt_cli_e2e,
# runtime_module_boundary, and the fuzz harnesses' corpus replays (fuzz_replay_*, here under
# ASan/UBSan).
ctest --test-dir build-asan --output-on-failure -j "$(nproc)" --timeout 900 "$@"
