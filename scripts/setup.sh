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
  liblapack-dev                               # links GPTQ/SparseGPT's ssyrk/spotrf/strtri (OpenBLAS at run time)
  libgloo-dev                                 # Gloo: c10d data-parallel training, shrink-rt --tp across machines
  libdnnl-dev                                 # oneDNN: CPU GEMMs of the runtime
  libonnx-dev libprotobuf-dev protobuf-compiler
  libcli11-dev libyaml-cpp-dev nlohmann-json3-dev
  libcpp-httplib-dev                          # HTTP of `shrink-rt serve` and `bench-serve`
  libxxhash-dev                               # content hashes of the recipe runner's stage cache
  libgtest-dev libgmock-dev libbenchmark-dev
  fortunes                                    # the built-in default corpus
  time                                        # GNU time: scripts/scale_check.sh measures peak RSS
  clang libclang-rt-14-dev libfuzzer-14-dev   # scripts/fuzz.sh: clang, libFuzzer, ASan/UBSan
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

# npm peers, installed into .npm-ort/: ONNX Runtime for the export check (ctest ort_check,
# scripts/ort_check.mjs; onnxruntime-node ships its CPU library, so --ignore-scripts, i.e. no
# download at install time, is enough) and Hugging Face's Tokenizers.js for the tokenizer check
# (ctest tokenizer_peer_check, scripts/tokenizer_check.mjs), and Transformers.js (on the same
# onnxruntime-node) for the loader check of pruned models (ctest transformers_js_check), and
# node-llama-cpp, whose packages carry llama.cpp's prebuilt CPU libraries (--ignore-scripts: no
# download or build at install time), for the GGUF check (ctest llamacpp_check). Node
# comes from Debian (nodejs + npm) when missing. Required: if they cannot be installed, setup
# fails here, as those ctests would (a broken install must not pass as skipped checks). On a
# machine without npm access, SHRINK_SKIP_NPM_PEERS=1 installs none of them; the configure below
# sees the variable (tests/CMakeLists.txt), and the three checks are then reported as skipped.
export SHRINK_SKIP_NPM_PEERS=${SHRINK_SKIP_NPM_PEERS:-0}
ORT_NODE_VERSION=1.30.0
HF_TOKENIZERS_VERSION=0.2.0
HF_TRANSFORMERS_VERSION=4.3.2
NODE_LLAMA_CPP_VERSION=3.21.1
OPENAI_VERSION=4.104.0          # the official OpenAI client: the serve check (scripts/serve_check.mjs)
HF_JINJA_VERSION=0.5.13         # Hugging Face's chat-template renderer: the jinja check
npm_peers_present() {
  grep -qs "\"version\": \"$ORT_NODE_VERSION\"" .npm-ort/node_modules/onnxruntime-node/package.json &&
    grep -qs "\"version\": \"$HF_TOKENIZERS_VERSION\"" .npm-ort/node_modules/@huggingface/tokenizers/package.json &&
    grep -qs "\"version\": \"$HF_TRANSFORMERS_VERSION\"" .npm-ort/node_modules/@huggingface/transformers/package.json &&
    grep -qs "\"version\": \"$NODE_LLAMA_CPP_VERSION\"" .npm-ort/node_modules/node-llama-cpp/package.json &&
    grep -qs "\"version\": \"$OPENAI_VERSION\"" .npm-ort/node_modules/openai/package.json &&
    grep -qs "\"version\": \"$HF_JINJA_VERSION\"" .npm-ort/node_modules/@huggingface/jinja/package.json &&
    [ -f .npm-ort/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node ]
}
NPM_HINT="or set SHRINK_SKIP_NPM_PEERS=1 to skip ort_check, tokenizer_peer_check, transformers_js_check and llamacpp_check"
if [ "$SHRINK_SKIP_NPM_PEERS" = 1 ]; then
  step "SHRINK_SKIP_NPM_PEERS=1: no npm peers; ort_check, tokenizer_peer_check, transformers_js_check and llamacpp_check will be skipped"
else
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    step "installing nodejs npm (for the ONNX Runtime, Tokenizers.js and Transformers.js peer checks)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null || fail "need root (or sudo) to install nodejs npm; $NPM_HINT"
      SUDO=sudo
    fi
    { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends nodejs npm >/dev/null; } || fail "could not install nodejs npm; $NPM_HINT"
  fi
  if ! npm_peers_present; then
    step "installing onnxruntime-node $ORT_NODE_VERSION, @huggingface/tokenizers $HF_TOKENIZERS_VERSION, @huggingface/transformers $HF_TRANSFORMERS_VERSION and node-llama-cpp $NODE_LLAMA_CPP_VERSION (llama.cpp's prebuilt binaries) into .npm-ort/"
    npm_log=$(mktemp)
    npm install --prefix .npm-ort --ignore-scripts --no-audit --no-fund \
      "onnxruntime-node@$ORT_NODE_VERSION" "@huggingface/tokenizers@$HF_TOKENIZERS_VERSION" \
      "@huggingface/transformers@$HF_TRANSFORMERS_VERSION" "node-llama-cpp@$NODE_LLAMA_CPP_VERSION" \
      "openai@$OPENAI_VERSION" "@huggingface/jinja@$HF_JINJA_VERSION" \
      >"$npm_log" 2>&1 \
      || { tail -20 "$npm_log" >&2; rm -f "$npm_log"; fail "npm install into .npm-ort failed; $NPM_HINT"; }
    rm -f "$npm_log"
    npm_peers_present || fail "npm install did not leave the pinned versions in .npm-ort/; $NPM_HINT"
  fi
fi

JOBS=${SHRINK_BUILD_JOBS:-$(nproc)}
step "configuring build/ (Ninja, Release, ccache)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >build-configure.log 2>&1 \
  || { tail -40 build-configure.log >&2; fail "cmake configure failed (full log: build-configure.log)"; }
step "building with $JOBS jobs"
start=$(date +%s)
cmake --build build -j "$JOBS" || fail "build failed"
step "built in $(( $(date +%s) - start )) s; binaries in build/bin/"
