#!/usr/bin/env bash
# ONNX Runtime peer check of the ONNX export (the ctest `ort_check`): for each HF fixture (Llama
# GQA + llama3 RoPE, Qwen2 bias + tied, Mistral MQA + linear RoPE with an 8-token sliding window,
# Llama MHA sharded f16) in float, plus int8 variants of the Llama fixture (W8A16 per channel and
# per group, W8A8 static, W8A8 dynamic per token, W4A16 per group of 32: its 4-bit values go to
# ONNX as int8 DequantizeLinear inputs), export_peer exports the model and records
# shrink-rt's logits and 32 greedy ids; scripts/ort_check.mjs runs the exported graph in
# onnxruntime-node and compares (float logits within tolerance, greedy ids equal, KV cache used).
# Usage: scripts/ort_check.sh EXPORT_PEER FIXTURES_HF_DIR WORK_DIR
# 0 pass; 1 fail, also when node or onnxruntime-node is missing; 77 (ctest: skipped) instead
# when SHRINK_SKIP_NPM_PEERS=1 (scripts/npm_peers.sh).
set -euo pipefail
PEER=$1 FIX=$2 WORK=$3
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/npm_peers.sh"
command -v node >/dev/null || npm_peer_missing ort_check "node not found"
ORT_DIR=${SHRINK_ORT_NODE_DIR:-$HERE/../.npm-ort}
[ -d "$ORT_DIR/node_modules/onnxruntime-node" ] ||
  npm_peer_missing ort_check "onnxruntime-node not installed in $ORT_DIR"
rm -rf "$WORK"
mkdir -p "$WORK/models"
cases=()
for f in llama_gqa_llama3rope qwen2_bias_tied_bf16 llama_mha_sharded_f16; do
  "$PEER" case "$FIX/$f" "$WORK/$f-f32" >/dev/null
  cases+=("$WORK/$f-f32")
done
"$PEER" window "$FIX/mistral_mqa_linearrope" "$WORK/models/mistral_window8" 8
"$PEER" case "$WORK/models/mistral_window8" "$WORK/mistral_window8-f32" >/dev/null
cases+=("$WORK/mistral_window8-f32")
src=$FIX/llama_gqa_llama3rope
"$PEER" quantize "$src" "$WORK/models/w8a16" none
"$PEER" quantize "$src" "$WORK/models/w8a16_g16" none 16
"$PEER" quantize "$src" "$WORK/models/w8a8_static" static 0 0.02
"$PEER" quantize "$src" "$WORK/models/w8a8_dynamic" dynamic
"$PEER" quantize "$src" "$WORK/models/w4a16_g32" none4 32
"$PEER" quantize "$src" "$WORK/models/w4a16_asym_g32" none4asym 32
"$PEER" quantize "$src" "$WORK/models/w4a16_asym_g32_gidx" none4asym-gidx 32
"$PEER" quantize "$src" "$WORK/models/w8a16_g16_gidx" none-gidx 16
for q in w8a16 w8a16_g16 w8a8_static w8a8_dynamic w4a16_g32 w4a16_asym_g32 w4a16_asym_g32_gidx w8a16_g16_gidx; do
  "$PEER" case "$WORK/models/$q" "$WORK/llama_gqa-$q" >/dev/null
  cases+=("$WORK/llama_gqa-$q")
done
npm_peer_run ort_check "$HERE/ort_check.mjs" --threads 1 "${cases[@]}"
