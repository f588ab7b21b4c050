#!/usr/bin/env bash
# Serving benchmarks of `shrink-rt serve`, measured with `shrink-rt bench-serve` on this machine
# (not part of ctest). For one model directory it runs:
#   batching  output tokens/s and latencies at concurrency 1, 4, 16, 64 (synthetic prompts of
#             PROMPT_LEN tokens, GEN_LEN greedy tokens each, ignore_eos); concurrency 1 is the
#             same requests sent one at a time.
#   prefix    every request shares a SHARED-token system prompt and adds 32 of its own, with the
#             prefix cache on (--prefix-cache-mb) and off (0): TTFT and throughput.
#   response  a repeated deterministic request: latency of a miss (first) and of hits.
# Usage: scripts/serve_bench.sh MODEL_DIR [--threads N] [--slots N] [--out DIR] [--reps N]
#   MODEL_DIR  a model directory, or a shape name (smollm-135m, llama-1b: random f32 weights
#              made with `shrink init --streaming`, kept in runs/serve-bench/)
# Env: PROMPT_LEN (128), GEN_LEN (64), SHARED (1024), LEVELS ("1 4 16 64"), CONCURRENCY_PREFIX (4)
# Results: OUT/*.json (bench-serve --format json) and OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
model=${1:?usage: scripts/serve_bench.sh MODEL_DIR [--threads N] [--slots N] [--out DIR]}
shift
threads=2 slots=64 out="" reps=1
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift ;;
    --slots) slots=$2; shift ;;
    --out) out=$2; shift ;;
    --reps) reps=$2; shift ;;
    *) echo "serve_bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
RT=$ROOT/build/bin/shrink-rt
S=$ROOT/build/bin/shrink
PROMPT_LEN=${PROMPT_LEN:-128} GEN_LEN=${GEN_LEN:-64} SHARED=${SHARED:-1024}
LEVELS=${LEVELS:-"1 4 16 64"} CONCURRENCY_PREFIX=${CONCURRENCY_PREFIX:-4}

case "$model" in
  smollm-135m|llama-1b)
    shape=$model
    model=$ROOT/runs/serve-bench/$shape/f32
    if [ ! -f "$model/config.json" ]; then
      mkdir -p "$ROOT/runs/serve-bench/$shape"
      if [ "$shape" = smollm-135m ]; then
        echo '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu", "torch_dtype": "float32"}' >"$ROOT/runs/serve-bench/$shape/config.json"
      else
        echo '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true, "hidden_act": "silu", "torch_dtype": "float32"}' >"$ROOT/runs/serve-bench/$shape/config.json"
      fi
      "$S" -q init --streaming --config "$ROOT/runs/serve-bench/$shape/config.json" --dtype float32 --out "$model" >/dev/null
    fi
    ;;
esac
[ -f "$model/config.json" ] || { echo "serve_bench: $model: no config.json" >&2; exit 2; }
name=$(basename "$(dirname "$model")")/$(basename "$model")
out=${out:-$ROOT/runs/serve-bench/$(echo "$name" | tr '/' '-')}
mkdir -p "$out"
vocab=$(python3 -c "import json,sys; print(min(json.load(open(sys.argv[1]))['vocab_size'], 4096))" "$model/config.json")
# Each phase's context: what its requests need (the KV cache is slots x context).
ctx_batching=$((PROMPT_LEN + GEN_LEN))
ctx_prefix=$((SHARED + 32 + 16))

server_pid=""
start_server() {  # start_server SLOTS CTX EXTRA_ARGS...: sets url
  local log=$out/server.log n=$1 c=$2
  shift 2
  "$RT" --threads "$threads" serve "$model" --port 0 --slots "$n" --ctx "$c" "$@" >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1 || true)
    [ -n "$url" ] && return 0
    kill -0 $server_pid 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "serve_bench: the server did not start" >&2; exit 1
}
stop_server() { [ -n "$server_pid" ] && kill -TERM $server_pid && wait $server_pid || true; server_pid=""; }
trap stop_server EXIT

summary=$out/summary.md
{ echo "# shrink-rt serve on $name ($threads threads, $slots slots, $(date -u +%F))"; echo; } >"$summary"

echo "==> batching"
start_server "$slots" $ctx_batching --prefix-cache-mb 0
for rep in $(seq 1 "$reps"); do
  "$RT" bench-serve --url "$url" --synthetic --concurrency "$(echo $LEVELS | tr ' ' ',')" \
    --prompt-len "$PROMPT_LEN" --gen-len "$GEN_LEN" --vocab "$vocab" --seed "$rep" --format json \
    >"$out/batching-$rep.json"
done
stop_server
{ echo "## batching: $PROMPT_LEN prompt tokens, $GEN_LEN generated, prefix cache off"; echo;
  python3 - "$out" "$reps" <<'EOF'
import json, sys, statistics as st
out, reps = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{out}/batching-{r}.json")) for r in range(1, reps + 1)]
base = None
print("| concurrency | output tok/s | x one at a time | req/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms | errors |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for i, lv in enumerate(runs[0]["levels"]):
    tps = st.median(r["levels"][i]["output_tokens_per_s"] for r in runs)
    base = base or tps
    l = lv
    print(f"| {l['concurrency']} | {tps:.1f} | {tps / base:.2f} | {l['requests_per_s']:.2f} | "
          f"{l['ttft_ms']['p50']:.1f} / {l['ttft_ms']['p99']:.1f} | {l['itl_ms']['p50']:.2f} / {l['itl_ms']['p99']:.2f} | "
          f"{l['e2e_ms']['p50']:.0f} / {l['e2e_ms']['p99']:.0f} | {sum(r['levels'][i]['errors'] for r in runs)} |")
EOF
  echo; } >>"$summary"

echo "==> prefix cache"
for mode in off on; do
  mb=0; [ $mode = on ] && mb=1024
  start_server "$CONCURRENCY_PREFIX" $ctx_prefix --prefix-cache-mb $mb
  "$RT" bench-serve --url "$url" --synthetic --concurrency "$CONCURRENCY_PREFIX" --requests 32 \
    --shared-prefix "$SHARED" --prompt-len 32 --gen-len 16 --vocab "$vocab" --format json \
    >"$out/prefix-$mode.json"
  stop_server
done
{ echo "## prefix cache: a $SHARED-token shared prompt + 32 own tokens, 16 generated, concurrency $CONCURRENCY_PREFIX"; echo;
  python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
r = {m: json.load(open(f"{out}/prefix-{m}.json"))["levels"][0] for m in ("off", "on")}
print("| prefix cache | TTFT p50 / p90 ms | output tok/s | req/s | cached prompt tokens |")
print("| --- | ---: | ---: | ---: | ---: |")
for m in ("off", "on"):
    l = r[m]
    print(f"| {m} | {l['ttft_ms']['p50']:.1f} / {l['ttft_ms']['p90']:.1f} | {l['output_tokens_per_s']:.1f} | {l['requests_per_s']:.2f} | {l['cached_tokens']} of {l['prompt_tokens']} |")
print(f"\nmedian TTFT {r['off']['ttft_ms']['p50'] / r['on']['ttft_ms']['p50']:.1f}x lower with the cache; "
      f"throughput {r['on']['output_tokens_per_s'] / r['off']['output_tokens_per_s']:.2f}x")
EOF
  echo; } >>"$summary"

echo "==> response cache"
start_server 1 $ctx_batching --prefix-cache-mb 0 --response-cache 64
python3 - "$url" "$vocab" "$PROMPT_LEN" "$GEN_LEN" >>"$summary" <<'EOF'
import json, sys, time, urllib.request, random, statistics as st
url, vocab, plen, glen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(0)
def call(prompt):
    body = json.dumps({"prompt": prompt, "max_tokens": glen, "temperature": 0, "ignore_eos": True}).encode()
    t = time.perf_counter()
    r = json.load(urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})))
    return (time.perf_counter() - t) * 1000, "shrink" in r
miss, hit = [], []
for i in range(5):
    p = [random.randrange(1, vocab) for _ in range(plen)]
    ms, h = call(p); assert not h; miss.append(ms)
    for _ in range(3):
        ms, h = call(p); assert h; hit.append(ms)
print(f"## response cache: the same greedy request ({plen} prompt tokens, {glen} generated)\n")
print("| | median ms | requests |\n| --- | ---: | ---: |")
print(f"| miss (runs the model) | {st.median(miss):.1f} | {len(miss)} |")
print(f"| hit | {st.median(hit):.2f} | {len(hit)} |")
print(f"\nhit {st.median(miss) / st.median(hit):.0f}x faster\n")
EOF
stop_server
cat "$summary"
