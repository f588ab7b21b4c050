#!/usr/bin/env bash
# Hugging Face Transformers.js peer check (the ctest `transformers_js_check`): structured-pruned
# models (scripts/pruned_models.sh: the default teacher to half its parameters, the teacher with
# its hidden size halved so config.json carries head_dim, Qwen2 and Mistral pruned in heads,
# hidden, MLP and depth) plus a W8A16 quantization of the first, each exported with
# `shrink export --format onnx`; scripts/transformers_js_check.mjs loads them with
# AutoModelForCausalLM and checks the class and the greedy ids against shrink's.
# Usage: scripts/transformers_js_check.sh SHRINK WORK_DIR [TRAIN_STEPS (default 100)]
# 0 pass; 1 fail, also when node or @huggingface/transformers is missing; 77 (ctest: skipped)
# instead when SHRINK_SKIP_NPM_PEERS=1 (scripts/npm_peers.sh).
set -euo pipefail
SHRINK=$(realpath "$1") WORK=$2 STEPS=${3:-100}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/npm_peers.sh"
command -v node >/dev/null || npm_peer_missing transformers_js_check "node not found"
NPM_DIR=${SHRINK_ORT_NODE_DIR:-$HERE/../.npm-ort}
[ -d "$NPM_DIR/node_modules/@huggingface/transformers" ] ||
  npm_peer_missing transformers_js_check "@huggingface/transformers not installed in $NPM_DIR"
rm -rf "$WORK"
mkdir -p "$WORK/onnx"
SHRINK_BIN=$SHRINK "$HERE/pruned_models.sh" "$WORK/pruned" "$STEPS"
P=$WORK/pruned
PROMPT=478,447,308,4037,296,401,634,45,303,264,547  # as pruned_models.sh
"$SHRINK" -q data prepare --tokenizer "$HERE/../models/teacher/tokenizer.json" --out "$WORK/data" > /dev/null
"$SHRINK" -q --threads 2 quantize "$P/llama_half" --out "$P/llama_half_w8a16" --scheme w8a16 \
  --data "$WORK/data" --calib-samples 8 --calib-len 128 --eval-tokens 0 > /dev/null
"$SHRINK" -q --json generate "$P/llama_half_w8a16" --prompt-ids "$PROMPT" --max-new-tokens 16 \
  --ids --ignore-eos > "$P/llama_half_w8a16/reference.json"
dirs=()
for m in "$P"/*/; do
  m=${m%/}
  n=$(basename "$m")
  "$SHRINK" -q export "$m" --format onnx --out "$WORK/onnx/$n" > /dev/null
  cp "$m/reference.json" "$WORK/onnx/$n/"
  dirs+=("$WORK/onnx/$n")
done
npm_peer_run transformers_js_check "$HERE/transformers_js_check.mjs" --threads 2 "${dirs[@]}"
