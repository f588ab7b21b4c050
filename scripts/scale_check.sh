#!/usr/bin/env bash
# Scale check (issue 27): makes a random model of a real shape, written tensor by tensor
# (`shrink init --streaming`, bf16, no f32 copy in memory), then runs every stage on it under
# /usr/bin/time -v and prints a Markdown table of wall time and peak RSS per stage (and
# OUT/results.jsonl). Not part of ctest: on the 1B and 8B shapes it takes long.
#
# Usage: scripts/scale_check.sh [SHAPE] [--layers N] [--stages a,b,..] [--out DIR]
#                               [--timeout SECONDS] [--threads N]
#   SHAPE   llama-1b  Llama-3.2-1B: hidden 2048, MLP 8192, 16 layers, 32 heads, 8 KV heads,
#                     vocab 128256, tied embeddings (1.24B parameters, 2.5 GB in bf16)
#           llama-8b  Llama-3.1-8B: hidden 4096, MLP 14336, 32 layers, 32 heads, 8 KV heads,
#                     vocab 128256 (8.0B parameters, 16 GB in bf16)
#           tiny      a 4-layer model for a quick run of the script itself (the default)
#   --layers N        the shape with N decoder layers (peak memory against depth: 2 and 8)
#   --stages          a subset of: inspect convert eval quantize-w8a16-rtn quantize-w4a16-rtn
#                     quantize-w4a16-gptq quantize-w8a8-sq-gptq quantize-w4a16-gptq-sensitivity
#                     prune-magnitude
#                     prune-magnitude-global prune-wanda prune-sparsegpt-2of4 prune-structured
#                     prune-structured-depth-ppl export-onnx verify verify-rt disk-bound
#                     (verify: `shrink verify`, which links LibTorch; verify-rt: the same
#                     check in the runtime's own binary, `shrink-rt verify`, as a CI job runs it)
#                     (default: all, in this order). disk-bound times `dd` reading the model's
#                     weights and writing as many bytes (fdatasync): the speed of this disk.
#   --timeout         per stage (default 7200); a stage past it is reported as "timeout"
# KEEP_OUTPUTS=0 removes each stage's output after it is measured.
# Calibration: CALIB_SAMPLES x CALIB_LEN tokens (default 128 x 2048) of the fortunes corpus
# (the sensitivity stage probes SENSITIVITY_TOKENS validation tokens, default 1024); MAX_MEMORY
# (e.g. 512M) sets the calibrated stages' --max-memory, beyond which their states spill to disk.
# tokenized with the default teacher's tokenizer (ids below every shape's vocabulary).
# Needs a built tree (scripts/setup.sh) and GNU time (Debian's `time`, which setup.sh installs).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
shape=tiny layers="" stages="" out="" timeout_s=7200 threads=""
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers="$2"; shift ;;
    --stages) stages="$2"; shift ;;
    --out) out="$2"; shift ;;
    --timeout) timeout_s="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    llama-1b|llama-8b|tiny) shape="$1" ;;
    *) echo "scale_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
SHRINK=$REPO/build/bin/shrink
SHRINK_RT=$REPO/build/bin/shrink-rt
[ -x "$SHRINK" ] || { echo "scale_check.sh: $SHRINK not found; run scripts/setup.sh" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "scale_check.sh: /usr/bin/time not found (apt install time)" >&2; exit 1; }
ALL_STAGES="inspect convert eval quantize-w8a16-rtn quantize-w4a16-rtn quantize-w4a16-gptq quantize-w8a8-sq-gptq quantize-w4a16-gptq-sensitivity prune-magnitude prune-magnitude-global prune-wanda prune-sparsegpt-2of4 prune-structured prune-structured-depth-ppl export-onnx verify verify-rt disk-bound"
stages=${stages:-$ALL_STAGES}
stages=${stages//,/ }
for s in $stages; do
  case " $ALL_STAGES " in *" $s "*) ;; *) echo "scale_check.sh: unknown stage '$s'" >&2; exit 2 ;; esac
done
CALIB_SAMPLES=${CALIB_SAMPLES:-128} CALIB_LEN=${CALIB_LEN:-2048}
tag=$shape${layers:+-${layers}l}
out=${out:-runs/scale-$tag}
mkdir -p "$out"
out=$(cd "$out" && pwd)
global=(-q)
[ -n "$threads" ] && global+=(--threads "$threads")

# The shape's config.json (HF layout; the Llama 3 RoPE scaling of both models).
shape_config() {
  local hidden inter n_layers heads kv head_dim vocab tie
  case "$shape" in
    llama-1b) hidden=2048 inter=8192 n_layers=16 heads=32 kv=8 head_dim=64 vocab=128256 tie=true ;;
    llama-8b) hidden=4096 inter=14336 n_layers=32 heads=32 kv=8 head_dim=128 vocab=128256 tie=false ;;
    tiny) hidden=256 inter=704 n_layers=4 heads=4 kv=2 head_dim=64 vocab=4096 tie=true ;;
  esac
  n_layers=${layers:-$n_layers}
  cat <<J
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": $vocab,
 "hidden_size": $hidden, "intermediate_size": $inter, "num_hidden_layers": $n_layers,
 "num_attention_heads": $heads, "num_key_value_heads": $kv, "head_dim": $head_dim,
 "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
 "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
 "tie_word_embeddings": $tie, "hidden_act": "silu", "torch_dtype": "bfloat16",
 "bos_token_id": 1, "eos_token_id": 2}
J
}

declare -a rows
# run NAME CMD...: the command under GNU time; a row of the table and a line of results.jsonl.
run() {
  local name=$1; shift
  local log=$out/$name.log tv=$out/$name.time rc=0
  echo "==> scale_check: $name" >&2
  timeout "$timeout_s" /usr/bin/time -v -o "$tv" "$@" >"$log" 2>&1 || rc=$?
  local wall rss_kb status=ok
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$tv" 2>/dev/null | awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv" 2>/dev/null)
  [ "$rc" = 124 ] && status=timeout
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="exit $rc"
  local rss_mb
  rss_mb=$(awk -v k="${rss_kb:-0}" 'BEGIN { printf "%.0f", k / 1024 }')
  rows+=("| $name | ${wall:-?} | $rss_mb | $status |")
  printf '{"shape": "%s", "layers": "%s", "stage": "%s", "seconds": %s, "peak_rss_mb": %s, "status": "%s"}\n' \
    "$shape" "${layers:-all}" "$name" "${wall:-null}" "$rss_mb" "$status" >>"$out/results.jsonl"
  [ "$status" = ok ] || { echo "    $name: $status (log: $log)" >&2; tail -3 "$log" >&2; }
}

: >"$out/results.jsonl"
M=$out/model
if [ ! -f "$M/config.json" ]; then
  shape_config >"$out/config.json"
  run make-model "$SHRINK" "${global[@]}" init --streaming --config "$out/config.json" \
    --dtype bfloat16 --out "$M"
fi
if [ ! -d "$out/shards" ]; then
  "$SHRINK" -q data prepare --data /usr/share/games/fortunes --tokenizer "$REPO/models/teacher/tokenizer.json" \
    --out "$out/shards" >/dev/null
fi
D=$out/shards
group=128
[ "$shape" = tiny ] && group=32  # 704 inputs: 128 does not divide them
calib=(--data "$D" --calib-samples "$CALIB_SAMPLES" --calib-len "$CALIB_LEN" --eval-tokens 0)
[ -z "${MAX_MEMORY:-}" ] || calib+=(--max-memory "$MAX_MEMORY")
for s in $stages; do
  rm -rf "${out:?}/$s"
  case "$s" in
    inspect) run "$s" "$SHRINK" "${global[@]}" inspect "$M" ;;
    convert) run "$s" "$SHRINK" "${global[@]}" convert "$M" --dtype float16 --out "$out/$s" ;;
    eval) run "$s" "$SHRINK" "${global[@]}" eval "$M" --data "$D" --max-tokens 4096 --seq-len 512 --batch 1 ;;
    quantize-w8a16-rtn) run "$s" "$SHRINK" "${global[@]}" quantize "$M" --out "$out/$s" --scheme w8a16 --method rtn "${calib[@]}" ;;
    quantize-w4a16-rtn) run "$s" "$SHRINK" "${global[@]}" quantize "$M" --out "$out/$s" --scheme w4a16 --group-size "$group" --method rtn "${calib[@]}" ;;
    quantize-w4a16-gptq) run "$s" "$SHRINK" "${global[@]}" quantize "$M" --out "$out/$s" --scheme w4a16 --group-size "$group" --method gptq "${calib[@]}" ;;
    quantize-w8a8-sq-gptq) run "$s" "$SHRINK" "${global[@]}" quantize "$M" --out "$out/$s" --scheme w8a8 --smoothquant 0.5 --method gptq "${calib[@]}" ;;
    quantize-w4a16-gptq-sensitivity) run "$s" "$SHRINK" "${global[@]}" quantize "$M" --out "$out/$s" --scheme w4a16 --group-size "$group" --method gptq --sensitivity --keep-float 2 --sensitivity-tokens "${SENSITIVITY_TOKENS:-1024}" "${calib[@]}" ;;
    prune-magnitude) run "$s" "$SHRINK" "${global[@]}" prune "$M" --out "$out/$s" --method magnitude --sparsity 0.5 "${calib[@]}" ;;
    prune-magnitude-global) run "$s" "$SHRINK" "${global[@]}" prune "$M" --out "$out/$s" --method magnitude --scope global --sparsity 0.5 "${calib[@]}" ;;
    prune-wanda) run "$s" "$SHRINK" "${global[@]}" prune "$M" --out "$out/$s" --method wanda --sparsity 0.5 "${calib[@]}" ;;
    prune-sparsegpt-2of4) run "$s" "$SHRINK" "${global[@]}" prune "$M" --out "$out/$s" --method sparsegpt --pattern 2:4 "${calib[@]}" ;;
    prune-structured) run "$s" "$SHRINK" "${global[@]}" prune "$M" --out "$out/$s" --method structured --target-params 0.5 "${calib[@]}" ;;
    prune-structured-depth-ppl) run "$s" "$SHRINK" "${global[@]}" prune "$M" --out "$out/$s" --method structured --keep-layers 0.5 --depth-metric ppl "${calib[@]}" ;;
    export-onnx) run "$s" "$SHRINK" "${global[@]}" export "$M" --format onnx --out "$out/$s" ;;
    disk-bound)
      # Read every weight file once (from the page cache if it holds them, as the stages above
      # may have left it) and write as many bytes to this disk, flushed.
      mkdir -p "$out/$s"
      run "$s" bash -c 'cat "$1"/*.safetensors | dd of="$2/bytes" bs=16M iflag=fullblock oflag=direct conv=fdatasync status=none' _ "$M" "$out/$s"
      rm -rf "${out:?}/$s" ;;
    verify|verify-rt)
      q=$out/quantize-w8a16-rtn
      [ -f "$q/config.json" ] || run quantize-w8a16-rtn "$SHRINK" "${global[@]}" quantize "$M" --out "$q" --scheme w8a16 --method rtn "${calib[@]}"
      bin=$SHRINK
      [ "$s" = verify-rt ] && bin=$SHRINK_RT
      run "$s" "$bin" "${global[@]}" verify "$q" --reference "$M" --data "$D" --max-tokens 4096 --seq-len 512 \
        --prompt-len 64 --gen-len 16 ;;
  esac
  # KEEP_OUTPUTS=0: drop each stage's output once measured (an 8B shape's outputs outgrow a disk),
  # but for the W8A16 model that verify reads; its JSON reports (per-layer seconds) stay beside
  # it as STAGE.REPORT.json.
  if [ "${KEEP_OUTPUTS:-1}" = 0 ] && [ "$s" != quantize-w8a16-rtn ]; then
    for f in "$out/$s"/*.json; do [ -f "$f" ] && cp "$f" "$out/$s.$(basename "$f")"; done
    rm -rf "${out:?}/$s"
  fi
done

n_layers=$(grep -o '"num_hidden_layers": [0-9]*' "$out/config.json" | grep -o '[0-9]*$')
echo
echo "scale check: $shape, $n_layers layers, model $(du -sh "$M" | cut -f1) on disk, $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), threads ${threads:-default}, calibration ${CALIB_SAMPLES}x${CALIB_LEN}"
echo
echo "| stage | wall s | peak RSS MiB | status |"
echo "| --- | ---: | ---: | --- |"
for r in "${rows[@]}"; do echo "$r"; done
