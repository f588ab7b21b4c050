#!/usr/bin/env bash
# llama.cpp as a peer, from node-llama-cpp's prebuilt binaries (scripts/setup.sh installs them in
# .npm-ort/): not a ctest (minutes).
#
#   scripts/llamacpp_bench.sh quality [TEACHER] [--threads N] [--max-tokens N] [--seq-len N]
#     Perplexity in llama.cpp (scripts/llamacpp_ppl.mjs, shrink's window definition) of the same
#     teacher as GGUF files made three ways: shrink's GPTQ and RTN W4A16 (group 32) exported to
#     Q4_0 exactly, shrink's W8A16 to Q8_0, and llama.cpp's own quantizer (llama_model_quantize,
#     what llama-quantize runs: build/bin/llamacpp_quantize) to Q4_0, Q4_K_M and Q8_0 from the
#     f32 export; beside each shrink checkpoint, its perplexity in shrink-rt on the same windows.
#
#   scripts/llamacpp_bench.sh quantize-speed MODEL_DIR [--threads N] [--reps N]
#     Round-to-nearest quantization of one model by both tools at the same thread count, runs
#     interleaved, wall seconds (GNU time, process start included), medians: shrink quantize
#     --scheme w4a16 --group-size 32 and --scheme w8a16 (model-free, from the safetensors) against
#     llama.cpp's Q4_0 and Q8_0 (llama_model_quantize, from the same weights exported as GGUF in
#     their stored type, the file llama-quantize starts from).
#
#   scripts/llamacpp_bench.sh speed [smollm-135m|llama-1b] [--threads "1 2"] [--reps N]
#     shrink-rt bench against llama.cpp (scripts/llamacpp_speed.mjs) on the same random weights
#     of the shape (shrink init --streaming), batch 1, 64 prompt tokens, 32 decode steps, runs
#     interleaved, medians of --reps. Each tool as a user gets it by default: shrink-rt on shrink's
#     f32 and bf16 checkpoints, W8A16 (per channel) and W4A16 (group 32, RTN), with its defaults
#     (--lm-head auto: an int8 head for the quantized ones); llama.cpp on the f32 and bf16 GGUF
#     exports and on its own Q8_0 and Q4_0 of the f32 one (llama_model_quantize: its default
#     choices for the embedding and output tensors).
#
#   scripts/llamacpp_bench.sh native [smollm-135m|llama-1b] [--threads "1 2"] [--reps N]
#     The same models against llama.cpp's own llama-bench built natively from node-llama-cpp's
#     source bundle (scripts/llamacpp_build.sh; no JavaScript in the loop): prefill of 64 tokens
#     (pp64) and 32 decode steps after 64 tokens of context (tg32 at depth 64), runs interleaved
#     with shrink-rt bench --prompt-len 64 --gen-len 32 --warmup 1, medians of --reps. Both warm up
#     first (llama-bench runs an untimed prompt and a decode step; so does shrink-rt bench).
#
#   speed and native also take --kinds "f32 bf16 w8 w4" (the weights compared; only those are
#   made) and --act-quant "auto" (shrink-rt's --act-quant values, each a row of its own for the
#   quantized kinds, interleaved in the same repetitions) and --cpu-weights "auto" (likewise for
#   the bf16 kind: "exact auto" adds shrink-rt's fp32 arithmetic beside the default, which rounds
#   the activations to bf16 as llama.cpp's BF16 does): e.g. --kinds "w8 w4" --act-quant
#   "none auto" compares float and int8 activations against llama.cpp in one run.
#
# Output: a Markdown table and $OUT/results.jsonl (default runs/llamacpp-bench). The machine's
# load is not controlled: run it alone.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${SHRINK_BIN:-$ROOT/build/bin}
mode=${1:-}
shift || true
teacher=$ROOT/models/teacher threads=2 max_tokens=8192 seq_len=256 reps=3
kinds="f32 bf16 w8 w4" acts="auto" cpu_weights="auto"
{ [ "$mode" = speed ] || [ "$mode" = native ]; } && threads="1 2"
OUT=${OUT:-$ROOT/runs/llamacpp-bench}
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift ;;
    --max-tokens) max_tokens=$2; shift ;;
    --seq-len) seq_len=$2; shift ;;
    --reps) reps=$2; shift ;;
    --kinds) kinds=$2; shift ;;
    --act-quant) acts=$2; shift ;;
    --cpu-weights) cpu_weights=$2; shift ;;
    -*) echo "llamacpp_bench: unknown option $1" >&2; exit 2 ;;
    *) teacher=$1 ;;
  esac
  shift
done
NPM_DIR=${SHRINK_ORT_NODE_DIR:-$ROOT/.npm-ort}
LIBDIR=$NPM_DIR/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
[ -f "$LIBDIR/libllama.v0.4.0.so" ] || { echo "llamacpp_bench: node-llama-cpp's libllama not in $LIBDIR (run scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$OUT"
: >"$OUT/results.jsonl"

llama_quantize() {  # IN OUT TYPE
  LD_LIBRARY_PATH=$LIBDIR "$BIN/llamacpp_quantize" "$LIBDIR/libllama.v0.4.0.so" "$1" "$2" "$3" 2 2>/dev/null
}
ppl_llamacpp() {  # GGUF
  node "$HERE/llamacpp_ppl.mjs" "$1" "$OUT/shards/val-00000.tok" --seq-len "$seq_len" \
    --max-tokens "$max_tokens" --threads "$threads" | sed 's/.*"perplexity":\([0-9.e+-]*\).*/\1/'
}
ppl_shrink_rt() {  # MODEL_DIR
  "$BIN/shrink-rt" --threads "$threads" --json eval "$1" --data "$OUT/shards" --split val \
    --max-tokens "$max_tokens" --seq-len "$seq_len" | sed -n 's/^ *"perplexity": \([0-9.e+-]*\),*/\1/p'
}
row() {  # NAME SIZE_BYTES PPL_LLAMACPP PPL_SHRINK_RT
  printf '| %s | %.2f | %s | %s |\n' "$1" "$(echo "$2 / 1048576" | bc -l)" "$3" "${4:--}"
  echo "{\"file\": \"$1\", \"bytes\": $2, \"ppl_llamacpp\": $3, \"ppl_shrink_rt\": ${4:-null}}" >>"$OUT/results.jsonl"
}

quality() {
  local S=$BIN/shrink q=(-q --threads "$threads")
  echo "==> shards, exports and quantizations of $teacher" >&2
  rm -rf "$OUT/shards" "$OUT/m"
  mkdir -p "$OUT/m"
  "$S" "${q[@]}" data prepare --tokenizer "$teacher/tokenizer.json" --out "$OUT/shards" >/dev/null
  "$S" "${q[@]}" export "$teacher" --format gguf --type f32 --out "$OUT/m/teacher-f32.gguf" >/dev/null
  "$S" "${q[@]}" export "$teacher" --format gguf --out "$OUT/m/teacher-auto.gguf" >/dev/null
  for t in q4_0 q4_k_m q8_0; do llama_quantize "$OUT/m/teacher-f32.gguf" "$OUT/m/llamacpp-$t.gguf" "$t" >/dev/null; done
  "$S" "${q[@]}" quantize "$teacher" --out "$OUT/m/gptq" --scheme w4a16 --group-size 32 --method gptq --eval-tokens 0 >/dev/null
  "$S" "${q[@]}" quantize "$teacher" --out "$OUT/m/rtn" --scheme w4a16 --group-size 32 --eval-tokens 0 >/dev/null
  "$S" "${q[@]}" quantize "$teacher" --out "$OUT/m/w8" --scheme w8a16 --eval-tokens 0 >/dev/null
  for m in gptq rtn w8; do "$S" "${q[@]}" export "$OUT/m/$m" --format gguf --out "$OUT/m/shrink-$m.gguf" >/dev/null; done
  echo "==> perplexity ($max_tokens validation tokens in windows of $seq_len, $threads threads)" >&2
  echo
  echo "| GGUF file | MiB | perplexity in llama.cpp | the checkpoint in shrink-rt |"
  echo "| --- | ---: | ---: | ---: |"
  row "teacher, as stored (shrink export)" "$(stat -c %s "$OUT/m/teacher-auto.gguf")" "$(ppl_llamacpp "$OUT/m/teacher-auto.gguf")" "$(ppl_shrink_rt "$teacher")"
  row "shrink GPTQ W4A16 g32 -> Q4_0 (exact)" "$(stat -c %s "$OUT/m/shrink-gptq.gguf")" "$(ppl_llamacpp "$OUT/m/shrink-gptq.gguf")" "$(ppl_shrink_rt "$OUT/m/gptq")"
  row "shrink RTN W4A16 g32 -> Q4_0 (exact)" "$(stat -c %s "$OUT/m/shrink-rtn.gguf")" "$(ppl_llamacpp "$OUT/m/shrink-rtn.gguf")" "$(ppl_shrink_rt "$OUT/m/rtn")"
  row "llama.cpp Q4_0 (llama_model_quantize)" "$(stat -c %s "$OUT/m/llamacpp-q4_0.gguf")" "$(ppl_llamacpp "$OUT/m/llamacpp-q4_0.gguf")"
  row "llama.cpp Q4_K_M (llama_model_quantize)" "$(stat -c %s "$OUT/m/llamacpp-q4_k_m.gguf")" "$(ppl_llamacpp "$OUT/m/llamacpp-q4_k_m.gguf")"
  row "shrink W8A16 -> Q8_0 (exact)" "$(stat -c %s "$OUT/m/shrink-w8.gguf")" "$(ppl_llamacpp "$OUT/m/shrink-w8.gguf")" "$(ppl_shrink_rt "$OUT/m/w8")"
  row "llama.cpp Q8_0 (llama_model_quantize)" "$(stat -c %s "$OUT/m/llamacpp-q8_0.gguf")" "$(ppl_llamacpp "$OUT/m/llamacpp-q8_0.gguf")"
}

wall() {  # CMD...: wall seconds of one run (GNU time), output discarded
  /usr/bin/time -f %e -o "$OUT/time.txt" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  cat "$OUT/time.txt"
}
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

quantize_speed() {
  local M=$teacher S=$BIN/shrink
  echo "==> $M as GGUF (stored type) for llama.cpp" >&2
  "$S" -q --threads "$threads" export "$M" --format gguf --out "$OUT/model.gguf" >/dev/null
  local -A t
  for r in $(seq "$reps"); do
    for k in llama-q4_0 shrink-w4a16 llama-q8_0 shrink-w8a16; do
      rm -rf "$OUT/q" "$OUT/q.gguf"
      case "$k" in
        llama-q4_0) s=$(wall env LD_LIBRARY_PATH="$LIBDIR" "$BIN/llamacpp_quantize" "$LIBDIR/libllama.v0.4.0.so" "$OUT/model.gguf" "$OUT/q.gguf" q4_0 "$threads") ;;
        llama-q8_0) s=$(wall env LD_LIBRARY_PATH="$LIBDIR" "$BIN/llamacpp_quantize" "$LIBDIR/libllama.v0.4.0.so" "$OUT/model.gguf" "$OUT/q.gguf" q8_0 "$threads") ;;
        shrink-w4a16) s=$(wall "$S" -q --threads "$threads" quantize "$M" --out "$OUT/q" --scheme w4a16 --group-size 32 --eval-tokens 0) ;;
        shrink-w8a16) s=$(wall "$S" -q --threads "$threads" quantize "$M" --out "$OUT/q" --scheme w8a16 --eval-tokens 0) ;;
      esac
      t[$k]+="$s "
      echo "rep $r: $k ${s} s" >&2
      echo "{\"rep\": $r, \"run\": \"$k\", \"seconds\": $s, \"threads\": $threads}" >>"$OUT/results.jsonl"
    done
  done
  rm -rf "$OUT/q" "$OUT/q.gguf" "$OUT/model.gguf"
  local a b
  echo
  echo "| bits | shrink (model-free RTN) s | llama.cpp s | shrink's speed-up |"
  echo "| --- | ---: | ---: | ---: |"
  a=$(echo "${t[shrink-w4a16]}" | tr ' ' '\n' | grep . | median); b=$(echo "${t[llama-q4_0]}" | tr ' ' '\n' | grep . | median)
  printf '| W4A16 group 32 vs Q4_0 | %s (%s) | %s (%s) | %.2fx |\n' "$a" "${t[shrink-w4a16]% }" "$b" "${t[llama-q4_0]% }" "$(echo "$b / $a" | bc -l)"
  a=$(echo "${t[shrink-w8a16]}" | tr ' ' '\n' | grep . | median); b=$(echo "${t[llama-q8_0]}" | tr ' ' '\n' | grep . | median)
  printf '| W8A16 per channel vs Q8_0 | %s (%s) | %s (%s) | %.2fx |\n' "$a" "${t[shrink-w8a16]% }" "$b" "${t[llama-q8_0]% }" "$(echo "$b / $a" | bc -l)"
}

shape_config() {  # SHAPE
  case "$1" in
    smollm-135m) echo '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu", "torch_dtype": "float32"}' ;;
    llama-1b) echo '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true, "hidden_act": "silu", "torch_dtype": "float32"}' ;;
    *) echo "llamacpp_bench: shape '$1': expected smollm-135m or llama-1b" >&2; exit 2 ;;
  esac
}

# Random weights of the shape, shrink's checkpoints (f32, bf16, w8 = W8A16, w4 = W4A16 group 32)
# and the GGUF files llama.cpp runs (f32 and bf16 exports; its own Q8_0 and Q4_0 of the f32 one)
# in $W.
models_make() {  # SHAPE
  local S=$BIN/shrink
  echo "==> $1: random weights, checkpoints and GGUF files in $W" >&2
  mkdir -p "$W"
  shape_config "$1" >"$W/config.json"
  rm -rf "$W/f32" "$W/bf16" "$W/w8" "$W/w4"
  has() { case " $kinds " in *" $1 "*) return 0 ;; esac; return 1; }
  "$S" -q init --streaming --config "$W/config.json" --dtype float32 --out "$W/f32" >/dev/null
  "$S" -q export "$W/f32" --format gguf --out "$W/f32.gguf" >/dev/null
  if has bf16; then
    "$S" -q init --streaming --config "$W/config.json" --dtype bfloat16 --out "$W/bf16" >/dev/null
    "$S" -q export "$W/bf16" --format gguf --out "$W/bf16.gguf" >/dev/null
  fi
  if has w8; then
    "$S" -q --threads 2 quantize "$W/f32" --out "$W/w8" --scheme w8a16 --eval-tokens 0 >/dev/null
    llama_quantize "$W/f32.gguf" "$W/w8.gguf" q8_0 >/dev/null
  fi
  if has w4; then
    "$S" -q --threads 2 quantize "$W/f32" --out "$W/w4" --scheme w4a16 --group-size 32 --eval-tokens 0 >/dev/null
    llama_quantize "$W/f32.gguf" "$W/w4.gguf" q4_0 >/dev/null
  fi
}

# One table row from the per-rep figures: NAME THREADS "shrink decodes" "peer decodes"
# "shrink prefills" "peer prefills".
speed_row() {
  local md mp nd np
  md=$(echo $3 | tr ' ' '\n' | median); nd=$(echo $4 | tr ' ' '\n' | median)
  mp=$(echo $5 | tr ' ' '\n' | median); np=$(echo $6 | tr ' ' '\n' | median)
  printf '| %s | %s | %.1f | %.1f | %.2f | %.0f | %.0f | %.2f |\n' "$1" "$2" "$md" "$nd" \
    "$(echo "$md / $nd" | bc -l)" "$mp" "$np" "$(echo "$mp / $np" | bc -l)"
}

# llama.cpp's decode and prefill tokens/s of one GGUF file at a thread count, "DECODE PREFILL":
# through node-llama-cpp (speed), or llama.cpp's own llama-bench (native; $LB).
peer_node() {  # GGUF THREADS
  local b
  b=$(node "$HERE/llamacpp_speed.mjs" "$1" --prompt-len 64 --gen-len 32 --threads "$2")
  echo "$(echo "$b" | sed 's/.*"decode_tok_s":\([0-9.e+-]*\).*/\1/') $(echo "$b" | sed 's/.*"prefill_tok_s":\([0-9.e+-]*\).*/\1/')"
}
peer_native() {  # GGUF THREADS
  local pp tg
  pp=$("$LB/llama-bench" -m "$1" -t "$2" -r 1 -p 64 -n 0 -o jsonl 2>/dev/null)
  tg=$("$LB/llama-bench" -m "$1" -t "$2" -r 1 -p 0 -n 32 -d 64 -o jsonl 2>/dev/null)
  echo "$(echo "$tg" | sed 's/.*"avg_ts": *\([0-9.e+-]*\).*/\1/') $(echo "$pp" | sed 's/.*"avg_ts": *\([0-9.e+-]*\).*/\1/')"
}

# shrink-rt bench against PEER_FN on the shape's four weight kinds at every thread count, runs
# interleaved, medians of $reps; a table with the peer's column names.
speed_compare() {  # PEER_FN PEER_NAME DECODE_COLUMN PREFILL_COLUMN
  local shape=$teacher
  [ "$shape" = "$ROOT/models/teacher" ] && shape=smollm-135m
  W=$OUT/$shape
  models_make "$shape"
  local -A names=([f32]="f32 / F32" [bf16]="bf16 / BF16" [w8]="W8A16 / Q8_0" [w4]="W4A16 g32 / Q4_0")
  echo
  echo "| shrink-rt / llama.cpp | threads | shrink-rt decode tok/s | $3 | decode ratio | shrink-rt prefill tok/s | $4 | prefill ratio |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  local m th r a b_dec b_pre aq
  for m in $kinds; do
    local m_acts=auto flag=--act-quant
    case "$m" in w8|w4) m_acts=$acts ;; bf16) m_acts=$cpu_weights flag=--cpu-weights ;; esac
    local key=${flag#--}
    key=${key//-/_}
    for th in $threads; do
      local -A rd=() rp=()
      local ld="" lp=""
      for r in $(seq "$reps"); do
        for aq in $m_acts; do
          a=$("$BIN/shrink-rt" --threads "$th" "$flag" "$aq" bench "$W/$m" --prompt-len 64 --gen-len 32 --warmup 1 --format json)
          rd[$aq]+="$(echo "$a" | sed -n 's/^ *"decode_tok_s": \([0-9.e+-]*\),*/\1/p') "
          rp[$aq]+="$(echo "$a" | sed -n 's/^ *"prefill_tok_s": \([0-9.e+-]*\),*/\1/p') "
          echo "{\"shape\": \"$shape\", \"weights\": \"$m\", \"$key\": \"$aq\", \"threads\": $th, \"rep\": $r, \"shrink_rt\": $(echo "$a" | tr -d '\n')}" >>"$OUT/results.jsonl"
        done
        read -r b_dec b_pre <<<"$("$1" "$W/$m.gguf" "$th")"
        ld+="$b_dec "
        lp+="$b_pre "
        echo "{\"shape\": \"$shape\", \"weights\": \"$m\", \"threads\": $th, \"rep\": $r, \"peer\": \"$2\", \"peer_decode_tok_s\": $b_dec, \"peer_prefill_tok_s\": $b_pre}" >>"$OUT/results.jsonl"
      done
      for aq in $m_acts; do
        local label=${names[$m]}
        [ "$m_acts" = auto ] || label="${names[$m]}, $flag $aq"
        speed_row "$label" "$th" "${rd[$aq]}" "$ld" "${rp[$aq]}" "$lp"
      done
    done
  done
}

native() {
  LB=${LLAMACPP_BIN:-$ROOT/build-llamacpp/bin}
  [ -x "$LB/llama-bench" ] || "$HERE/llamacpp_build.sh" >&2
  speed_compare peer_native llama-bench "llama-bench tg32@d64 tok/s" "llama-bench pp64 tok/s"
}

speed() {
  speed_compare peer_node node-llama-cpp "llama.cpp decode tok/s" "llama.cpp prefill tok/s"
}

case "$mode" in
  quality) quality ;;
  speed) speed ;;
  native) native ;;
  quantize-speed) quantize_speed ;;
  *) echo "usage: scripts/llamacpp_bench.sh quality [TEACHER] [--threads N] [--max-tokens N] [--seq-len N]" >&2
     echo "       scripts/llamacpp_bench.sh quantize-speed MODEL_DIR [--threads N] [--reps N]" >&2
     echo "       scripts/llamacpp_bench.sh speed|native [smollm-135m|llama-1b] [--threads \"1 2\"] [--reps N]" >&2; exit 2 ;;
esac
