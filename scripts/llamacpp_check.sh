#!/usr/bin/env bash
# llama.cpp peer check of the GGUF export (the ctest `llamacpp_check`): for the HF fixtures in
# float (Llama GQA with Llama 3 RoPE, whose scaling goes to rope_freqs; Qwen2 with q/k/v biases
# and a tied head, bf16; Mistral MQA with linear RoPE; Llama MHA sharded f16), each as stored
# (--type auto) and as f16, plus integer variants of the Llama fixture (export_peer quantize, what
# `shrink quantize` writes): W8A16 per channel -> Q8_0 and W4A16 group 32 -> Q4_0 and asymmetric
# -> Q4_1, mapped exactly; W8A16 group 16 and act-order W4A16 requantized; a float model
# quantized to q8_0 by the exporter; and the default teacher (byte-level BPE tokenizer: llama.cpp's
# tokenization of the prompt text compared with shrink's) as stored and, when the shrink binary is
# given, GPTQ W4A16 group 32 of it (`shrink quantize --method gptq`) -> Q4_0. export_peer writes each GGUF and shrink-rt's reference
# (logits at every prompt position, greedy ids); scripts/llamacpp_check.mjs runs the file in
# llama.cpp (node-llama-cpp's prebuilt CPU binaries) and compares.
# Usage: scripts/llamacpp_check.sh EXPORT_PEER FIXTURES_HF_DIR WORK_DIR [TEACHER_DIR [SHRINK]]
# (shrink-rt is taken from EXPORT_PEER's directory.) Tolerances: float files of float32 weights
# within 2e-4 in probability and 1e-4 in perplexity, greedy ids equal; bf16/f16 files (llama.cpp
# rounds the activations to that type too) 2e-2 and 2e-2, greedy ids equal; integer files
# (llama.cpp quantizes activations to 8 bits) mean KL <= 5e-3, top-1 >= 0.9, perplexity within 5%;
# requantized files (a second rounding) KL <= 2e-2, top-1 >= 0.6, perplexity within 10%.
# 0 pass; 1 fail, also when node or node-llama-cpp is missing; 77 (ctest: skipped) instead when
# SHRINK_SKIP_NPM_PEERS=1 (scripts/npm_peers.sh).
set -euo pipefail
PEER=$1 FIX=$2 WORK=$3 TEACHER=${4:-} SHRINK=${5:-}
RT=$(dirname "$PEER")/shrink-rt
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/npm_peers.sh"
command -v node >/dev/null || npm_peer_missing llamacpp_check "node not found"
NPM_DIR=${SHRINK_ORT_NODE_DIR:-$HERE/../.npm-ort}
[ -d "$NPM_DIR/node_modules/node-llama-cpp" ] ||
  npm_peer_missing llamacpp_check "node-llama-cpp not installed in $NPM_DIR"
rm -rf "$WORK"
mkdir -p "$WORK/models"
PROMPT=$(seq 0 47 | awk '{print ($1 * 37 + 11) % 64}' | paste -sd,)
cases=()
# add_case NAME MODEL_DIR TYPE KIND LIMITS_JSON [PROMPT_IDS [PROMPT_TEXT]]
add_case() {
  local dir=$WORK/$1 prompt=${6:-$PROMPT} text=${7:-}
  mkdir -p "$dir"
  "$PEER" gguf "$2" "$dir/model.gguf" "$3" >"$dir/export.json"
  "$PEER" ref "$2" "$dir" --prompt "$prompt" --gen 32 >/dev/null
  echo "{\"type\": \"$3\", \"kind\": \"$4\", $5, \"text\": $(printf '%s' "$text" | node -e 'process.stdout.write(JSON.stringify(require("fs").readFileSync(0, "utf8")))'), \"export\": $(cat "$dir/export.json")}" >"$dir/case.json"
  cases+=("$dir")
}
FLOAT='"maxProbDiff": 2e-4, "pplRel": 1e-4'
HALF='"maxProbDiff": 2e-2, "pplRel": 2e-2'
INT='"maxKl": 5e-3, "minTop1": 0.9, "pplRel": 5e-2'
REQUANT='"maxKl": 2e-2, "minTop1": 0.6, "pplRel": 1e-1'
add_case llama_gqa_llama3rope-auto "$FIX/llama_gqa_llama3rope" auto float "$FLOAT"
add_case mistral_mqa_linearrope-auto "$FIX/mistral_mqa_linearrope" auto float "$FLOAT"
add_case qwen2_bias_tied_bf16-auto "$FIX/qwen2_bias_tied_bf16" auto float "$HALF"
add_case llama_mha_sharded_f16-auto "$FIX/llama_mha_sharded_f16" auto float "$HALF"
for f in llama_gqa_llama3rope qwen2_bias_tied_bf16 mistral_mqa_linearrope; do
  add_case "$f-f16" "$FIX/$f" f16 float "$HALF"
done
add_case llama_gqa_llama3rope-f32 "$FIX/llama_gqa_llama3rope" f32 float "$FLOAT"
src=$FIX/llama_gqa_llama3rope
"$PEER" quantize "$src" "$WORK/models/w8a16" none
"$PEER" quantize "$src" "$WORK/models/w8a16_g16" none 16
"$PEER" quantize "$src" "$WORK/models/w4a16_g32" none4 32
"$PEER" quantize "$src" "$WORK/models/w4a16_asym_g32" none4asym 32
"$PEER" quantize "$src" "$WORK/models/w4a16_g32_gidx" none4-gidx 32
add_case llama_gqa-w8a16-q8_0 "$WORK/models/w8a16" auto int "$INT"
add_case llama_gqa-w8a16_g16-q8_0 "$WORK/models/w8a16_g16" auto int "$REQUANT"
add_case llama_gqa-w4a16_g32-q4_0 "$WORK/models/w4a16_g32" auto int "$INT"
add_case llama_gqa-w4a16_asym_g32-q4_1 "$WORK/models/w4a16_asym_g32" auto int "$INT"
add_case llama_gqa-w4a16_g32_gidx-q4_0 "$WORK/models/w4a16_g32_gidx" auto int "$REQUANT"
add_case llama_gqa-float-q8_0 "$src" q8_0 int "$INT"
add_case llama_gqa-float-q4_0 "$src" q4_0 int "$REQUANT"
add_case llama_gqa-float-q4_1 "$src" q4_1 int "$REQUANT"
if [ -n "$TEACHER" ] && [ -f "$TEACHER/config.json" ]; then
  text="Q: How many programmers does it take to change a light bulb? A: None, that is a hardware problem. You will be successful in your work."
  ids=$("$RT" --threads 1 generate "$TEACHER" --prompt "$text" --max-new-tokens 1 --ignore-eos --ids | tail -1)
  ids=${ids%,*}  # the prompt's ids, without the generated one
  add_case teacher-auto "$TEACHER" auto float "$HALF" "$ids" "$text"
  if [ -n "$SHRINK" ] && [ -x "$SHRINK" ]; then
    "$SHRINK" -q --threads 2 quantize "$TEACHER" --out "$WORK/models/teacher-gptq" --scheme w4a16 \
      --group-size 32 --method gptq --calib-samples 16 --eval-tokens 0 >/dev/null
    add_case teacher-gptq-q4_0 "$WORK/models/teacher-gptq" auto int "$INT" "$ids" "$text"
  fi
fi
npm_peer_run llamacpp_check "$HERE/llamacpp_check.mjs" --threads 1 --json "$WORK/results.json" "${cases[@]}"
