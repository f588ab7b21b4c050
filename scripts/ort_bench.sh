#!/usr/bin/env bash
# shrink-rt against ONNX Runtime on the same exported models, same thread count: prefill tokens/s
# (batch 1, PROMPT_LEN tokens) and decode tokens/s (batch 1, GEN_LEN steps after the prompt, ORT
# through the KV-cache inputs). Prints a Markdown table. A benchmark, never a test.
# Usage: scripts/ort_bench.sh SHRINK_RT THREADS CASE_DIR...
#   CASE_DIR as made by export_peer case (CASE_DIR/ref.json names the model directory,
#   CASE_DIR/onnx holds the export). Env: PROMPT_LEN (512), GEN_LEN (128), REPS (3, best of),
#   ORT_ACCURACY (1: MatMulNBits in float32, the graph's own numbers; 4: ORT's default, int8
#   activations per block, faster but a different model).
set -euo pipefail
RT=$1 THREADS=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
PL=${PROMPT_LEN:-512} GL=${GEN_LEN:-128} REPS=${REPS:-3} ACC=${ORT_ACCURACY:-1}
echo "| model | scheme | threads | shrink-rt prefill tok/s | ORT prefill tok/s | shrink-rt decode tok/s | ORT decode tok/s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for c in "$@"; do
  model=$(node -e "console.log(JSON.parse(require('fs').readFileSync('$c/ref.json','utf8')).model)")
  best_p=0 best_d=0
  for _ in $(seq "$REPS"); do
    read -r p d < <("$RT" --threads "$THREADS" bench "$model" --prompt-len "$PL" --gen-len "$GL" \
      --format json | node -e "let s='';process.stdin.on('data',x=>s+=x).on('end',()=>{
        const r=JSON.parse(s).results[0]; console.log(r.prefill_tok_s, r.decode_tok_s)})")
    best_p=$(node -e "console.log(Math.max($best_p,$p))") best_d=$(node -e "console.log(Math.max($best_d,$d))")
  done
  ort=$(node "$HERE/ort_check.mjs" --bench --threads "$THREADS" --prompt-len "$PL" --gen-len "$GL" \
        --reps "$REPS" --matmulnbits-accuracy "$ACC" "$c")
  read -r op od scheme < <(node -e "const r=JSON.parse(process.argv[1]);
    console.log(r.prefill_tokens_per_second, r.decode_tokens_per_second, r.scheme)" "$ort")
  printf '| %s | %s | %s | %.0f | %.0f | %.0f | %.0f |\n' "$model" "$scheme" "$THREADS" \
    "$best_p" "$op" "$best_d" "$od"
done
