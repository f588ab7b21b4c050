#!/usr/bin/env bash
# End-to-end tests of the `shrink-rt` binary: exit codes (0/2), error messages that name the
# problem, bench output formats on random-weight shapes, greedy ids (plain and speculative)
# against transformers' own greedy_ids for the fixtures it wrote, and, with the LibTorch `shrink`
# binary: greedy ids, stop ids and perplexity equal to shrink's, and verify on token shards that
# shrink prepares (verify's perplexity against shrink eval's; a quantized head against the float
# model: gates that pass and gates that fail).
# Usage: test_rt_cli.sh SHRINK_RT FIXTURES_DIR [SHRINK [required]]
# With "required" (a build with LibTorch) a missing SHRINK fails; without it (the sanitizer build
# has no LibTorch and borrows build/bin/shrink when it exists) the checks that need it are
# skipped, which prints "SKIP: <reason>" and, when nothing failed, exits 77 (ctest: skipped).
set -u
RT=$1; FIX=$2; SHRINK=${3:-}; SHRINK_REQUIRED=${4:-}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
export SHRINK_THREADS=1
source "$(dirname "$0")/lib.sh"
# lt NAME OUT ARGS...: run the LibTorch shrink with ARGS, stdout to OUT; a failure is reported
# with its stderr (the comparison that follows then fails too).
lt() {
  local name=$1 out=$2; shift 2
  "$SHRINK" "$@" >"$out" 2>"$T/lt_err" && return 0
  bad "$name: shrink $* exited $?"; sed 's/^/    /' "$T/lt_err" | tail -20; return 1
}
have_shrink=0
if [ -n "$SHRINK" ] && [ -x "$SHRINK" ]; then
  have_shrink=1
elif [ "$SHRINK_REQUIRED" = required ]; then
  bad "the LibTorch shrink '$SHRINK' is not built, although this build has LibTorch"
else
  skip "no LibTorch shrink binary ('${SHRINK:-none given}'; this build has no LibTorch and build/bin/shrink is not built): the parity checks with shrink and verify on token shards do not run"
fi
# Transformers' greedy ids for each fixture (tests/fixtures/hf/*/reference.safetensors:
# greedy_prompt, then greedy_ids = the prompt and 24 generated ids, eos ignored): an independent
# reference for shrink-rt's greedy decoding, plain and speculative.
declare -A HF_GREEDY=(
  [llama_gqa_llama3rope]=141,279,120,227,233,250,196,196,196,288,9,9,9,9,9,9,9,9,73,159,113,250,250,250,250,250,250,250,250
  [qwen2_bias_tied_bf16]=153,243,36,208,96,112,112,112,112,112,112,112,112,112,112,112,112,112,112,112,112,112,230,230,230,230,230,230,230
  [mistral_mqa_linearrope]=26,275,180,282,134,272,211,119,272,62,13,224,289,100,246,197,62,87,117,87,117,6,86,214,117,6,245,191,248
  [llama_mha_sharded_f16]=136,203,144,10,232,197,197,197,197,197,197,197,197,197,197,197,197,197,197,197,197,197,197,69,69,69,69,69,13
)
hf_prompt() { echo "$1" | cut -d, -f1-5; }

expect_rc "help lists subcommands" 0 "$RT" --help
for c in bench eval generate; do expect_grep "help mentions $c" "$T/out" "$c"; done
expect_rc "version names the GEMM backend" 0 "$RT" --version
expect_grep "version shows gemm" "$T/out" "gemm"
expect_rc "unknown subcommand is a usage error" 2 "$RT" frobnicate
expect_rc "unknown flag is a usage error" 2 "$RT" generate "$FIX/hf/llama_gqa_llama3rope" --no-such-flag

# Bad input exits 2 and names the problem.
expect_rc "missing model dir exits 2" 2 "$RT" generate "$T/nope" --prompt-ids 1,2
cp -r "$FIX/hf/llama_gqa_llama3rope" "$T/trunc"
truncate -s 5000 "$T/trunc/model.safetensors"
expect_rc "truncated safetensors exits 2" 2 "$RT" generate "$T/trunc" --prompt-ids 1,2
expect_grep "truncated error names the file" "$T/err" "model.safetensors"
cp -r "$FIX/hf/llama_gqa_llama3rope" "$T/q4"
sed -i 's/"vocab_size": 300/"vocab_size": 300, "quantization_config": {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "channel"}}}}/' "$T/q4/config.json"
expect_rc "4-bit quantization exits 2" 2 "$RT" generate "$T/q4" --prompt-ids 1,2
expect_grep "4-bit error names the field" "$T/err" "num_bits: 4 is not supported"
expect_rc "out-of-vocabulary prompt exits 2" 2 "$RT" generate "$FIX/hf/llama_gqa_llama3rope" --prompt-ids 1,300
expect_grep "vocabulary error" "$T/err" "outside the vocabulary"
expect_rc "bad prompt ids exit 2" 2 "$RT" generate "$FIX/hf/llama_gqa_llama3rope" --prompt-ids 1,x
expect_rc "no prompt exits 2" 2 "$RT" generate "$FIX/hf/llama_gqa_llama3rope"
expect_rc "unknown shape exits 2" 2 "$RT" bench --shape gpt-5
expect_grep "shape error lists shapes" "$T/err" "smollm-135m"
expect_rc "bad isa exits 2" 2 "$RT" --isa sse9 generate "$FIX/hf/llama_gqa_llama3rope" --prompt-ids 1
# OpenMP's wait: without a user setting the tools run themselves again with GOMP_SPINCOUNT=10000
# (tools/cli_main.h); a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT stands.
expect_rc "bench with no OpenMP setting" 0 env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$RT" --json bench --shape smollm-135m --prompt-len 4 --gen-len 1
expect_grep "it sets the spin count itself" "$T/out" '"openmp_wait": "GOMP_SPINCOUNT=10000"'
expect_rc "bench with OMP_WAIT_POLICY=passive" 0 env -u GOMP_SPINCOUNT OMP_WAIT_POLICY=passive "$RT" --json bench --shape smollm-135m --prompt-len 4 --gen-len 1
expect_grep "the user's wait policy stands" "$T/out" '"openmp_wait": "OMP_WAIT_POLICY=passive"'

# generate: greedy ids equal transformers' on its prompt, and `shrink generate --ids` on another.
for m in llama_gqa_llama3rope qwen2_bias_tied_bf16 mistral_mqa_linearrope llama_mha_sharded_f16; do
  # --cpu-weights exact: transformers computed the fixtures in float32 (a bf16 model upcast).
  expect_rc "generate $m (transformers' prompt)" 0 "$RT" --cpu-weights exact generate "$FIX/hf/$m" --prompt-ids "$(hf_prompt "${HF_GREEDY[$m]}")" --max-new-tokens 24 --ids --ignore-eos
  if [ "$(cat "$T/out")" = "${HF_GREEDY[$m]}" ]; then ok "greedy $m equals transformers' greedy_ids"; else bad "greedy $m: $(cat "$T/out"), transformers: ${HF_GREEDY[$m]}"; fi
  expect_rc "generate $m" 0 "$RT" generate "$FIX/hf/$m" --prompt-ids 1,5,9 --max-new-tokens 24 --ids --ignore-eos
  cp "$T/out" "$T/rt_$m"
  if [ "$have_shrink" = 1 ] && lt "shrink generate $m" "$T/lt_$m" generate "$FIX/hf/$m" --prompt-ids 1,5,9 --max-new-tokens 24 --ids --ignore-eos; then
    if cmp -s "$T/rt_$m" "$T/lt_$m"; then ok "greedy $m equals shrink generate"; else bad "greedy $m differs: $(cat "$T/rt_$m") vs $(cat "$T/lt_$m")"; fi
  fi
done
# Speculative decoding: a Qwen2 draft for the Llama target (same vocabulary, a different model)
# gives the target's greedy ids, here transformers' own; the JSON reports the rounds and
# acceptance; sampling with a draft exits 2.
L=llama_gqa_llama3rope
expect_rc "generate with a draft" 0 "$RT" generate "$FIX/hf/$L" --prompt-ids "$(hf_prompt "${HF_GREEDY[$L]}")" --max-new-tokens 24 --ids --ignore-eos --draft "$FIX/hf/qwen2_bias_tied_bf16" --draft-tokens 3
if [ "$(cat "$T/out")" = "${HF_GREEDY[$L]}" ]; then ok "speculative ids equal transformers' greedy ids"; else bad "speculative ids: $(cat "$T/out"), transformers: ${HF_GREEDY[$L]}"; fi
expect_grep "generate with a draft reports acceptance" "$T/err" "draft tokens accepted"
expect_rc "generate --json with a draft" 0 "$RT" --json generate "$FIX/hf/llama_gqa_llama3rope" --prompt-ids 1,5,9 --max-new-tokens 24 --ignore-eos --draft "$FIX/hf/llama_gqa_llama3rope"
expect_grep "a model drafting for itself has every proposal accepted" "$T/out" '"acceptance_rate": 1.0'
expect_rc "sampling with a draft exits 2" 2 "$RT" generate "$FIX/hf/llama_gqa_llama3rope" --prompt-ids 1,5 --temperature 0.8 --draft "$FIX/hf/qwen2_bias_tied_bf16"
expect_grep "sampling with a draft says greedy only" "$T/err" "greedy only"
# Stop ids: generation ends at any id of config.json's or generation_config.json's
# eos_token_id (a list, as Llama 3 Instruct's), for shrink-rt and shrink alike.
cp -r "$FIX/hf/llama_gqa_llama3rope" "$T/stop"
read -r -a full <<<"$(tr ',' ' ' <"$T/rt_llama_gqa_llama3rope")"
stop_id=${full[6]}   # the 4th generated token
echo "{\"eos_token_id\": [299, $stop_id]}" >"$T/stop/generation_config.json"
want=$(IFS=,; echo "${full[*]:0:7}")
expect_rc "generate stops at a generation_config.json id" 0 "$RT" generate "$T/stop" --prompt-ids 1,5,9 --max-new-tokens 24 --ids
if [ "$(cat "$T/out")" = "$want" ]; then ok "shrink-rt stopped after $stop_id"; else bad "shrink-rt stop: $(cat "$T/out"), want $want"; fi
if [ "$have_shrink" = 1 ] && lt "shrink generate with stop ids" "$T/lt_stop" generate "$T/stop" --prompt-ids 1,5,9 --max-new-tokens 24 --ids; then
  if [ "$(cat "$T/lt_stop")" = "$want" ]; then ok "shrink stopped after $stop_id"; else bad "shrink stop: $(cat "$T/lt_stop"), want $want"; fi
fi
echo '{"eos_token_id": "two"}' >"$T/stop/generation_config.json"
expect_rc "malformed generation_config.json exits 2" 2 "$RT" generate "$T/stop" --prompt-ids 1,5 --max-new-tokens 4
expect_grep "its error names the file" "$T/err" "generation_config.json: field 'eos_token_id'"
expect_rc "sampled generate" 0 "$RT" --json generate "$FIX/hf/llama_gqa_llama3rope" --prompt-ids 1,5 --max-new-tokens 8 --temperature 0.8 --top-k 20 --top-p 0.9 --seed 3
cp "$T/out" "$T/s1"
"$RT" --json generate "$FIX/hf/llama_gqa_llama3rope" --prompt-ids 1,5 --max-new-tokens 8 --temperature 0.8 --top-k 20 --top-p 0.9 --seed 3 >"$T/s2" 2>/dev/null
if [ "$(grep -A30 '"ids"' "$T/s1" | grep -v seconds | grep -v per_second)" = "$(grep -A30 '"ids"' "$T/s2" | grep -v seconds | grep -v per_second)" ]; then ok "same seed, same sample"; else bad "sampling not deterministic"; fi

# Multiple-choice tasks (ids, since the fixture has no tokenizer): eval --task, a bad item
# names file:line, a task gate without a task exits 2 (verify --task runs with the shards below).
M="$FIX/hf/llama_gqa_llama3rope"
for i in $(seq 1 12); do
  echo "{\"context_ids\": [$((i * 7 % 300)), $((i * 13 % 300))], \"choices_ids\": [[$((i % 300))], [$((i * 3 % 300)), 4], [$((i * 11 % 300))]], \"label\": $((i % 3))}"
done >"$T/task.jsonl"
expect_rc "eval --task" 0 "$RT" --json eval "$M" --task "$T/task.jsonl"
expect_grep "eval --task reports acc_norm" "$T/out" '"acc_norm"'
expect_grep "eval --task counts the items" "$T/out" '"items": 12'
{ head -2 "$T/task.jsonl"; echo '{"context_ids": [1], "choices_ids": [[2], [3]], "label": 5}'; } >"$T/badtask.jsonl"
expect_rc "eval --task with a bad label exits 2" 2 "$RT" eval "$M" --task "$T/badtask.jsonl"
expect_grep "the task error names file:line" "$T/err" "badtask.jsonl:3: label 5 is not a choice index"
expect_rc "verify --max-acc-drop without --task exits 2" 2 "$RT" verify "$M" --reference "$M" --no-bench --max-acc-drop 0.01
expect_grep "the gate error asks for --task" "$T/err" "expected --task FILE"

# eval on a token file (bytes of a small text as ids < 300 would need a tokenizer: use a .tok
# file written by python-free means: shrink-rt cannot write shards, so use the fixture ids).
if [ "$have_shrink" = 1 ]; then
  printf 'the quick brown fox jumps over the lazy dog\n%.0s' {1..40} >"$T/text.txt"
  if lt "shrink tokenizer train" "$T/lt_out" tokenizer train --data "$T/text.txt" --vocab-size 280 --out "$T/tok.json" &&
     lt "shrink data prepare" "$T/lt_out" data prepare --data "$T/text.txt" --tokenizer "$T/tok.json" --out "$T/shards" --val-fraction 0.5; then
    M="$FIX/hf/llama_gqa_llama3rope"
    expect_rc "eval on shards" 0 "$RT" --json eval "$M" --data "$T/shards" --split all --seq-len 32
    a=$(grep '"perplexity"' "$T/out" | tr -dc '0-9.'); b=
    lt "shrink eval" "$T/lt_eval" --json eval "$M" --data "$T/shards" --split all --seq-len 32 &&
      b=$(grep '"perplexity"' "$T/lt_eval" | tr -dc '0-9.')
    # 1e-4 relative: f32 logits from two implementations (oneDNN vs LibTorch GEMMs) over ~600
    # tokens; measured ~1e-8.
    close() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN{d=a-b; if(d<0)d=-d; exit !(d <= 1e-4*b)}'; }
    if close "$a" "$b"; then ok "eval perplexity equals shrink eval ($a vs $b)"; else bad "eval perplexity '$a' vs shrink eval '$b'"; fi
    # verify: a model against itself agrees exactly (and both perplexities are shrink eval's);
    # an impossible speed gate exits 3.
    expect_rc "verify a model against itself" 0 "$RT" --json verify "$M" --reference "$M" --data "$T/shards" --split all --seq-len 32 --prompt-len 8 --gen-len 4 --max-ppl-increase 0
    expect_grep "verify reports full agreement" "$T/out" '"top1_agreement": 1.0'
    c=$(grep '"perplexity_reference"' "$T/out" | tr -dc '0-9.')
    if close "$c" "$b"; then ok "verify's reference perplexity equals shrink eval ($c vs $b)"; else bad "verify's reference perplexity '$c' vs shrink eval '$b'"; fi
    expect_rc "verify --task against itself passes a zero-drop gate" 0 "$RT" --json verify "$M" --reference "$M" --data "$T/shards" --split all --seq-len 32 --no-bench --task "$T/task.jsonl" --max-acc-drop 0
    expect_grep "verify --task reports the agreement" "$T/out" '"agreement": 1.0'
    expect_rc "verify against itself passes the KL and top-1 gates" 0 "$RT" --json verify "$M" --reference "$M" --data "$T/shards" --split all --seq-len 32 --no-bench --max-kl 0 --min-top1 1
    expect_grep "verify reports the KL distribution" "$T/out" '"p99": 0.0'
    expect_rc "verify --min-top1 above 1 exits 2" 2 "$RT" verify "$M" --reference "$M" --data "$T/shards" --split all --seq-len 32 --no-bench --min-top1 2
    expect_grep "verify names --min-top1" "$T/err" "min-top1 2: expected an agreement in"
    expect_rc "verify with a failing gate exits 3" 3 "$RT" verify "$M" --reference "$M" --data "$T/shards" --split all --seq-len 32 --prompt-len 8 --gen-len 4 --min-speedup 100
    expect_grep "verify names the failed gate" "$T/out" "decode speed-up"
    # A compact model that differs: the lm_head quantized to int8 at load (verify keeps the
    # reference's head in f32). Measured: perplexity +0.018%, mean KL 7.8e-6, top-1 0.9946. Gates
    # with room (1%, 1e-3, 0.95) pass; a 0.001% perplexity gate and a top-1 gate of 1 fail.
    V=(verify "$M" --reference "$M" --data "$T/shards" --split all --seq-len 32 --no-bench)
    expect_rc "verify an int8 head against the float model passes realistic gates" 0 "$RT" --json --lm-head int8 "${V[@]}" --max-ppl-increase 0.01 --max-kl 0.001 --min-top1 0.95
    jnum() { sed -n "s/^ *\"$1\": *\([-+0-9.eE]*\).*/\1/p" "$2" | head -1; }  # KEY FILE
    d=$(jnum perplexity_increase "$T/out"); k=$(jnum kl "$T/out")
    if awk -v d="$d" -v k="$k" 'BEGIN{exit !(d > 0 && d < 0.01 && k > 0 && k < 0.001)}'; then ok "the int8 head moves perplexity (+$d) and KL ($k) a little"; else bad "int8 head: perplexity increase '$d', KL '$k'"; fi
    expect_rc "verify an int8 head fails a 0.001% perplexity gate" 3 "$RT" --lm-head int8 "${V[@]}" --max-ppl-increase 0.00001
    expect_grep "the failed perplexity gate is named" "$T/out" "fail: perplexity +"
    expect_rc "verify an int8 head fails a top-1 gate of 1" 3 "$RT" --lm-head int8 "${V[@]}" --min-top1 1
    # The compact side's f16 KV cache: close to its f32 self (the reference keeps f32).
    expect_rc "verify with an f16 kv cache" 0 "$RT" --json --kv-cache f16 "${V[@]}" --max-ppl-increase 0.001
    expect_grep "verify f16 kv names the cache" "$T/out" "f16 kv cache"
    expect_rc "verify against another vocabulary exits 2" 2 "$RT" verify "$FIX/hf/qwen2_bias_tied_bf16" --reference "$M" --data "$T/shards" --seq-len 32 --no-bench
  fi
fi
expect_rc "eval text without tokenizer exits 2" 2 "$RT" eval "$FIX/hf/llama_gqa_llama3rope" --data "$FIX/hf/VERSIONS.json" --seq-len 16
expect_grep "eval names the tokenizer" "$T/err" "tokenizer"
expect_rc "eval missing data exits 2" 2 "$RT" eval "$FIX/hf/llama_gqa_llama3rope" --data "$T/none"

# bench: every format on a small random shape run and a fixture.
for f in md csv json; do
  expect_rc "bench --format $f" 0 "$RT" bench "$FIX/hf/llama_gqa_llama3rope" --prompt-len 16 --gen-len 4 --batch 1,2 --format $f
  expect_grep "bench $f reports decode" "$T/out" "decode_tok_s"
done
expect_rc "bench shape w8a8" 0 "$RT" bench --shape smollm-135m --dtype w8a8 --prompt-len 8 --gen-len 2 --format json
expect_grep "bench names the engine" "$T/out" "w8a8-dynamic"
expect_rc "bench f16 kv cache" 0 "$RT" --kv-cache f16 bench --shape smollm-135m --dtype w8a8 --prompt-len 8 --gen-len 2 --format json
expect_grep "bench names the f16 kv cache" "$T/out" "f16 kv cache"
expect_rc "an unknown kv cache on cuda exits 2" 2 "$RT" --device cuda --kv-cache q4 bench --shape smollm-135m --prompt-len 8 --gen-len 2
expect_grep "the cuda kv error says why" "$T/err" "q4 not in {f32,f16,int8}"
expect_rc "bench int8 kv cache" 0 "$RT" --kv-cache int8 bench --shape smollm-135m --dtype w8a8 --prompt-len 20 --gen-len 2 --format json
expect_grep "bench names the int8 kv cache" "$T/out" "int8 kv cache"
expect_rc "unknown kv cache exits 2" 2 "$RT" --kv-cache q4 bench --shape smollm-135m --prompt-len 8 --gen-len 2

# The CUDA backend is a plugin beside the programs, loaded on the first --device cuda: shrink-rt
# itself does not link the CUDA libraries, and a plugin that cannot be loaded is named.
if ldd "$RT" | grep -q "libcublasLt\|libcudart"; then
  bad "shrink-rt links the CUDA libraries: $(ldd "$RT" | grep -o 'libcu[a-zA-Z]*\.so[.0-9]*' | tr '\n' ' ')"
else
  ok "shrink-rt does not link the CUDA libraries"
fi
if [ -f "$(dirname "$RT")/libshrink_backend_cuda.so" ]; then
  expect_rc "a missing cuda plugin exits 2" 2 env SHRINK_CUDA_BACKEND="$T/no_such_plugin.so" "$RT" --device cuda bench --shape smollm-135m --prompt-len 8 --gen-len 2
  expect_grep "the missing plugin is named" "$T/err" "could not be loaded ($T/no_such_plugin.so: not found)"
  if ! command -v nvidia-smi >/dev/null; then
    expect_rc "cuda without a device exits 2" 2 "$RT" --device cuda bench --shape smollm-135m --prompt-len 8 --gen-len 2
    expect_grep "the plugin loaded and found no device" "$T/err" "no CUDA device"
  else
    skip "a GPU is present: the plugin's no-device error is not checked"
  fi
else
  expect_rc "cuda in a build without CUDA exits 2" 2 "$RT" --device cuda bench --shape smollm-135m --prompt-len 8 --gen-len 2
  expect_grep "the build without CUDA says so" "$T/err" "this build has no CUDA support"
fi

echo "# $pass passed, $fail failed, $skipped skipped"
[ "$fail" = 0 ] || exit 1
[ "$skipped" = 0 ] || { echo "SKIP: $skipped group(s) of checks did not run here (see SKIP: above)"; exit 77; }
exit 0
