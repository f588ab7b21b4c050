#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-quantize, llama-perplexity) natively from the
# source that node-llama-cpp ships (.npm-ort/node_modules/node-llama-cpp/llama/gitRelease.bundle,
# installed by scripts/setup.sh), into build-llamacpp/: the peer the issue tables measure
# ("llama.cpp built from source, native"), with no download. Not part of setup or the tests
# (about 10 minutes on 2 cores); scripts/llamacpp_bench.sh native runs it when needed.
# Usage: scripts/llamacpp_build.sh [DEST]   (default: build-llamacpp in the repository)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/build-llamacpp}
NPM_DIR=${SHRINK_ORT_NODE_DIR:-$ROOT/.npm-ort}
BUNDLE=$NPM_DIR/node_modules/node-llama-cpp/llama/gitRelease.bundle
[ -f "$BUNDLE" ] || { echo "llamacpp_build: $BUNDLE not found (run scripts/setup.sh)" >&2; exit 1; }
if [ -x "$DEST/bin/llama-bench" ] && [ -x "$DEST/bin/llama-quantize" ]; then
  echo "llamacpp_build: $DEST/bin already holds llama-bench and llama-quantize"
  exit 0
fi
mkdir -p "$DEST"
[ -d "$DEST/src/.git" ] || git clone -q "$BUNDLE" "$DEST/src"
cmake -S "$DEST/src" -B "$DEST/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$DEST/bin" >"$DEST/configure.log" 2>&1 \
  || { tail -20 "$DEST/configure.log" >&2; exit 1; }
ninja -C "$DEST/build" llama-bench llama-quantize llama-perplexity >"$DEST/build.log" 2>&1 \
  || { tail -20 "$DEST/build.log" >&2; exit 1; }
# llama.cpp sets its own output directory (build/bin), overriding the one given above.
if [ ! -x "$DEST/bin/llama-bench" ] && [ -x "$DEST/build/bin/llama-bench" ]; then
  rm -rf "$DEST/bin"
  ln -s build/bin "$DEST/bin"
fi
echo "llamacpp_build: $DEST/bin: $(ls "$DEST/bin" | tr '\n' ' ')"
