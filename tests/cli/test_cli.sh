#!/usr/bin/env bash
# End-to-end tests of the `shrink` binary: exit codes (0/2), error messages that name the
# problem, inspect/eval/generate on checkpoints written by other tools (transformers fixtures
# and, when present, the pretrained stories260K), the tokenizer -> init -> eval path on the
# default corpus (required: scripts/setup.sh installs it), and that successful prune, quantize,
# distill and export runs leave every input file byte for byte as it was (sha256).
# Exit 0 when every check passed; 1 when one failed; 77 (ctest: skipped) when none failed but
# some could not run on this machine (no ../shared, no reference BLAS, a build without ONNX):
# each prints "SKIP: <reason>". Usage: test_cli.sh SHRINK FIXTURES_DIR SHARED_DIR
set -u
SHRINK=$1; FIX=$2; SHARED=$3
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
export SHRINK_THREADS=2
source "$(dirname "$0")/lib.sh"

expect_rc "help lists subcommands" 0 "$SHRINK" --help
for c in inspect eval generate tokenizer data init train distill prune convert quantize; do expect_grep "help mentions $c" "$T/out" "$c"; done
expect_rc "eval --help shows defaults" 0 "$SHRINK" eval --help
expect_grep "eval help shows the seq-len default" "$T/out" "seq-len"
expect_rc "unknown subcommand is a usage error" 2 "$SHRINK" frobnicate
expect_rc "unknown flag is a usage error" 2 "$SHRINK" eval "$FIX/hf/llama_gqa_llama3rope" --no-such-flag

# inspect on checkpoints written by transformers (not by shrink).
for m in llama_gqa_llama3rope qwen2_bias_tied_bf16 mistral_mqa_linearrope llama_mha_sharded_f16; do
  expect_rc "inspect $m" 0 "$SHRINK" --json inspect "$FIX/hf/$m"
  expect_grep "inspect $m reports valid" "$T/out" '"valid": true'
done
expect_rc "inspect text" 0 "$SHRINK" inspect "$FIX/hf/qwen2_bias_tied_bf16" --tensors
expect_grep "inspect shows the architecture" "$T/out" "Qwen2ForCausalLM"
expect_grep "inspect shows q/k/v bias" "$T/out" "q/k/v bias"
expect_grep "inspect shows per-tensor sparsity" "$T/out" "model.layers.1.mlp.down_proj.weight"

# Malformed checkpoints and configs exit 2 and name the problem.
cp -r "$FIX/hf/llama_gqa_llama3rope" "$T/trunc"
truncate -s 5000 "$T/trunc/model.safetensors"
expect_rc "truncated safetensors exits 2" 2 "$SHRINK" inspect "$T/trunc"
expect_grep "truncated error names the file" "$T/err" "model.safetensors"
cp -r "$FIX/hf/llama_gqa_llama3rope" "$T/badcfg"
sed -i 's/"hidden_size": 64/"hidden_size": "sixty-four"/' "$T/badcfg/config.json"
expect_rc "bad config exits 2" 2 "$SHRINK" inspect "$T/badcfg"
expect_grep "bad config names the field" "$T/err" "field 'hidden_size'"
cp -r "$FIX/hf/llama_gqa_llama3rope" "$T/arch"
sed -i 's/LlamaForCausalLM/GPT2LMHeadModel/' "$T/arch/config.json"
expect_rc "unsupported architecture exits 2" 2 "$SHRINK" inspect "$T/arch"
expect_grep "architecture is named" "$T/err" "GPT2LMHeadModel"
cp -r "$FIX/hf/qwen2_bias_tied_bf16" "$T/shape"
sed -i 's/"intermediate_size": 96/"intermediate_size": 95/' "$T/shape/config.json"
expect_rc "shape mismatch exits 2" 2 "$SHRINK" inspect "$T/shape"
expect_grep "shape mismatch names the tensor" "$T/err" "model.layers.0.mlp.down_proj.weight has shape"
expect_rc "missing model dir exits 2" 2 "$SHRINK" inspect "$T/nope"
# The review's inputs (issue 25): one unknown config field nested 200,000 arrays deep (was a
# SIGSEGV, exit 139, in inspect and in shrink-rt eval), an integral-looking 1e300, and --set
# through a scalar recipe value (was exit 1 with a raw yaml-cpp message).
cp -r "$FIX/hf/llama_gqa_llama3rope" "$T/deep"
python3 - "$T/deep/config.json" <<'PY'
import sys
p = sys.argv[1]
t = open(p).read().rstrip()
open(p, "w").write(t[:-1] + ', "x": ' + "[" * 200000 + "]" * 200000 + "}\n")
PY
expect_rc "config nested 200,000 deep exits 2" 2 "$SHRINK" inspect "$T/deep"
expect_grep "deep config names file:line:col" "$T/err" "config.json:[0-9]*:[0-9]*: JSON nested deeper than 64 levels"
RT_BIN="$(dirname "$SHRINK")/shrink-rt"
if [ -x "$RT_BIN" ]; then
  expect_rc "shrink-rt eval on the deep config exits 2" 2 "$RT_BIN" eval "$T/deep" --data "$FIX"
  expect_grep "shrink-rt names the depth" "$T/err" "nested deeper than 64 levels"
else
  skip "shrink-rt is not built beside $SHRINK: the deep-config check of shrink-rt eval"
fi
cp -r "$FIX/hf/llama_gqa_llama3rope" "$T/huge"
sed -i 's/"hidden_size": 64/"hidden_size": 1e300/' "$T/huge/config.json"
expect_rc "hidden_size 1e300 exits 2" 2 "$SHRINK" inspect "$T/huge"
expect_grep "1e300 is named" "$T/err" "field 'hidden_size': expected an integer in"
cat >"$T/set.yaml" <<'YAML'
version: 1
teacher: models/teacher
stages:
  - eval: {}
YAML
expect_rc "--set through a scalar exits 2" 2 "$SHRINK" run "$T/set.yaml" --set teacher.x=1 --dry-run
expect_grep "--set error names file:line:col" "$T/err" "'teacher' is a value ($T/set.yaml:2:10), not a mapping"
md5_before=$(md5sum "$T/trunc/model.safetensors")
"$SHRINK" eval "$T/trunc" --data "$FIX" >/dev/null 2>&1
[ "$(md5sum "$T/trunc/model.safetensors")" = "$md5_before" ] && ok "inputs are never modified" || bad "input modified"

# generate with ids on a transformers-made checkpoint; greedy is deterministic.
expect_rc "generate ids" 0 "$SHRINK" generate "$FIX/hf/mistral_mqa_linearrope" --prompt-ids 5,6,7 --max-new-tokens 8 --ids
a=$(cat "$T/out")
"$SHRINK" generate "$FIX/hf/mistral_mqa_linearrope" --prompt-ids 5,6,7 --max-new-tokens 8 --ids >"$T/out2"
[ "$a" = "$(cat "$T/out2")" ] && ok "greedy generate is deterministic" || bad "greedy differs"
[ "$(echo "$a" | tr ',' '\n' | wc -l)" = 11 ] && ok "generate printed 3+8 ids" || bad "generate printed: $a"
expect_rc "bad prompt ids exit 2" 2 "$SHRINK" generate "$FIX/hf/mistral_mqa_linearrope" --prompt-ids 5,x
expect_rc "prompt text without a tokenizer exits 2" 2 "$SHRINK" generate "$FIX/hf/mistral_mqa_linearrope" --prompt hi
expect_grep "missing tokenizer is explained" "$T/err" "tokenizer"

# stories260K: a real pretrained checkpoint nobody here trained.
if [ -f "$SHARED/models/stories260K/model.safetensors" ]; then
  expect_rc "inspect stories260K" 0 "$SHRINK" inspect "$SHARED/models/stories260K"
  expect_grep "stories260K is GQA" "$T/out" "GQA: 8 heads, 4 kv heads"
  expect_rc "generate stories260K" 0 "$SHRINK" generate "$SHARED/models/stories260K" --prompt-ids 1,403,407 --max-new-tokens 40 --ids --ignore-eos
  expect_grep "stories260K greedy equals transformers" "$T/out" "^1,403,407,405,292,303,416,377,482,482,482,466,466,288,292,330,283,427,427,460,473,465,466"
else
  skip "$SHARED/models/stories260K is not present (a clone without ../shared): 4 pretrained-checkpoint checks not run"
fi

# The default-corpus path: tokenizer -> random model -> eval -> generate text. The corpus is
# required (the Debian package fortunes, installed by scripts/setup.sh): without it every check
# below would fail, so say why once and stop.
if [ ! -d /usr/share/games/fortunes ]; then
  bad "the default corpus /usr/share/games/fortunes is missing: run scripts/setup.sh (Debian package fortunes)"
  echo "$pass passed, $fail failed, $skipped skipped"
  exit 1
fi
expect_rc "tokenizer train on the default corpus" 0 "$SHRINK" tokenizer train --vocab-size 512 --max-bytes 400000 --out "$T/tok.json"
expect_rc "init a random model" 0 "$SHRINK" init --preset tiny --tokenizer "$T/tok.json" --out "$T/rand" --seed 1
expect_rc "eval on the default corpus" 0 "$SHRINK" --json eval "$T/rand" --max-tokens 4096 --seq-len 128
expect_grep "eval reports perplexity" "$T/out" '"perplexity"'
ppl=$(grep '"perplexity"' "$T/out" | tr -dc '0-9.')
awk -v p="$ppl" 'BEGIN{exit !(p > 300 && p < 900)}' && ok "random-init perplexity $ppl ~ vocab 512" || bad "random-init perplexity $ppl"
expect_grep "eval streams the model layer by layer" "$T/out" '"streamed": true'
expect_grep "eval reports the bytes it read" "$T/out" '"bytes_read": [1-9]'
# Its hidden states spilled to a file under a tiny --max-memory, and the whole-model path: the
# same perplexity (to float rounding; the NLL sums are printed to 4 decimals).
expect_rc "eval with spilled states" 0 "$SHRINK" --json eval "$T/rand" --max-tokens 4096 --seq-len 128 --max-memory 1k
expect_grep "eval reports the spill" "$T/out" '"states_spilled": true'
ppl_spill=$(grep '"perplexity"' "$T/out" | tr -dc '0-9.')
expect_rc "eval --load-model" 0 "$SHRINK" --json eval "$T/rand" --max-tokens 4096 --seq-len 128 --load-model
ppl_whole=$(grep '"perplexity"' "$T/out" | tr -dc '0-9.')
awk -v a="$ppl" -v b="$ppl_spill" -v c="$ppl_whole" 'BEGIN{d1=a-b; d2=a-c; if (d1<0) d1=-d1; if (d2<0) d2=-d2; exit !(d1 <= 1e-6*a && d2 <= 1e-5*a)}' \
  && ok "streamed, spilled and whole-model perplexity agree ($ppl, $ppl_spill, $ppl_whole)" \
  || bad "perplexities differ: streamed $ppl, spilled $ppl_spill, whole model $ppl_whole"
expect_rc "eval --max-memory with a bad size exits 2" 2 "$SHRINK" eval "$T/rand" --max-memory 4Q
expect_grep "the bad --max-memory is named" "$T/err" "\-\-max-memory: size '4Q'"
expect_rc "generate text" 0 "$SHRINK" generate "$T/rand" --prompt "Hello" --max-new-tokens 5 --temperature 0.8 --seed 3
expect_rc "data prepare" 0 "$SHRINK" data prepare --tokenizer "$T/tok.json" --out "$T/shards" --max-tokens 20000
expect_rc "eval on shards" 0 "$SHRINK" eval "$T/rand" --data "$T/shards" --seq-len 64
expect_grep "eval on shards uses val" "$T/out" "split val"
# Inputs are never modified: every file of the model and the data, hashed now and after each
# successful prune, quantize, distill and export below.
input_hashes() { find "$T/rand" "$T/shards" -type f -print0 | sort -z | xargs -0 sha256sum; }
input_hashes >"$T/inputs.sha256"
inputs_unchanged() {  # NAME
  if input_hashes | cmp -s - "$T/inputs.sha256"; then
    ok "$1 leaves its inputs unmodified ($(wc -l <"$T/inputs.sha256") files, sha256)"
  else
    bad "$1 modified its inputs:"; input_hashes | diff "$T/inputs.sha256" - | sed 's/^/    /' | head -10
  fi
}
expect_rc "data stats" 0 "$SHRINK" --json data stats "$T/shards" --seq-len 64
expect_grep "data stats reports the unigram baseline" "$T/out" '"unigram_val_perplexity"'
expect_rc "data make-task" 0 "$SHRINK" --json data make-task --out "$T/task.jsonl"
if cmp -s "$T/task.jsonl" "$FIX/../../tasks/fortunes-cloze.jsonl"; then ok "make-task rebuilds tasks/fortunes-cloze.jsonl byte for byte"; else bad "make-task differs from tasks/fortunes-cloze.jsonl"; fi
expect_rc "make-task with one choice exits 2" 2 "$SHRINK" data make-task --out "$T/t1.jsonl" --choices 1
expect_grep "the choices error names the range" "$T/err" "expected 2..16"
[ ! -e "$T/t1.jsonl" ] && ok "a failed make-task writes nothing" || bad "a failed make-task left a file"
printf '%s\n' '{"qID": "a-1", "sentence": "The cup fell off the shelf because _ was unsteady.", "option1": "the cup", "option2": "the shelf", "answer": "2"}' >"$T/wino.jsonl"
expect_rc "data convert-task winogrande" 0 "$SHRINK" data convert-task "$T/wino.jsonl" --format winogrande --out "$T/wino-task.jsonl"
expect_grep "convert-task writes a context per option" "$T/wino-task.jsonl" '"contexts":\["The cup fell off the shelf because the cup ","The cup fell off the shelf because the shelf "\]'
printf '%s\n' '{"sentence": "x _ y", "option1": "a", "option2": "b", "answer": ""}' >>"$T/wino.jsonl"
expect_rc "convert-task of an unlabelled record exits 2" 2 "$SHRINK" data convert-task "$T/wino.jsonl" --format winogrande --out "$T/wino2.jsonl"
expect_grep "the convert error names file:line and the field" "$T/err" 'wino.jsonl:2: "answer" is empty'
[ ! -e "$T/wino2.jsonl" ] && ok "a failed convert-task writes nothing" || bad "a failed convert-task left a file"
expect_rc "convert to bfloat16" 0 "$SHRINK" convert "$T/rand" --dtype bf16 --out "$T/rand-bf16"
expect_grep "convert writes bfloat16" "$T/rand-bf16/config.json" '"bfloat16"'
expect_rc "eval the bfloat16 copy" 0 "$SHRINK" --json eval "$T/rand-bf16" --data "$T/shards" --seq-len 64
expect_rc "convert to an unknown dtype exits 2" 2 "$SHRINK" convert "$T/rand" --dtype int3 --out "$T/x"
expect_grep "convert names the bad dtype" "$T/err" "int3"

# kill -9 in the middle of a run, then --resume: bitwise the same weights as a run left alone.
# (--threads 1 because the bitwise guarantee is per thread count.)
kill9_resume() {  # NAME ARGS... (the run's --out is $T/k9-NAME/{a,b})
  local name=$1; shift
  local d="$T/k9-$name"
  expect_rc "$name: uninterrupted run" 0 "$SHRINK" --threads 1 -q "$@" --out "$d/a"
  "$SHRINK" --threads 1 -q "$@" --out "$d/b" >/dev/null 2>&1 & local pid=$!
  for _ in $(seq 1 600); do [ -f "$d/b/checkpoint/state.json" ] && break; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  if [ -d "$d/b/model" ]; then bad "$name: the run finished before kill -9 (make it longer)"; return; fi
  ok "$name: killed with -9 after checkpoint step $(grep -o '"step": *[0-9]*' "$d/b/checkpoint/state.json" | tr -dc 0-9)"
  expect_rc "$name: --resume after kill -9" 0 "$SHRINK" --threads 1 -q "$@" --out "$d/b" --resume
  if cmp -s "$d/a/model/model.safetensors" "$d/b/model/model.safetensors"; then ok "$name: resumed weights are bitwise identical"; else bad "$name: resumed weights differ"; fi
}
kill9_resume train train --model "$T/rand" --data "$T/shards" --steps 300 --seq-len 32 --batch 4 --save-every 10 --eval-every 0 --seed 4
kill9_resume distill distill --teacher "$T/rand" --student-layers 0,2 --hidden-loss cosine --alpha 0.7 --data "$T/shards" --steps 200 --seq-len 32 --batch 4 --save-every 10 --eval-every 0 --seed 4
inputs_unchanged "distill (run, killed, resumed)"
expect_rc "distill with a bad layer list exits 2" 2 "$SHRINK" distill --teacher "$T/rand" --student-layers 0,9 --data "$T/shards" --out "$T/bad" --steps 1
expect_grep "the layer error names the range" "$T/err" "layer 9 is out of range: the model has 4 layers"
expect_rc "prune wanda 2:4" 0 "$SHRINK" --json prune "$T/rand" --out "$T/pr" --method wanda --pattern 2:4 --data "$T/shards" --calib-samples 4 --calib-len 64 --eval-tokens 2048 --eval-seq-len 64
expect_grep "prune reports the sparsity" "$T/out" '"targeted_sparsity": 0.5'
expect_grep "prune.json is written" "$T/pr/prune.json" '"perplexity_after"'
inputs_unchanged "prune wanda 2:4"
expect_rc "prune structured to half the parameters" 0 "$SHRINK" --json prune "$T/rand" --out "$T/ps" --method structured --target-params 0.5 --data "$T/shards" --calib-samples 4 --calib-len 64 --eval-tokens 0
expect_rc "the structured-pruned model evaluates" 0 "$SHRINK" eval "$T/ps" --data "$T/shards" --seq-len 64
inputs_unchanged "prune structured"
expect_rc "prune --sparsity 1.5 exits 2" 2 "$SHRINK" prune "$T/rand" --out "$T/x" --sparsity 1.5
expect_grep "the sparsity error names the value" "$T/err" "sparsity 1.5"
expect_rc "prune --pattern 5:4 exits 2" 2 "$SHRINK" prune "$T/rand" --out "$T/x" --pattern 5:4
expect_grep "the pattern error explains N:M" "$T/err" "1 <= N < M"
expect_rc "prune with an unknown method exits 2" 2 "$SHRINK" prune "$T/rand" --out "$T/x" --method lottery
expect_grep "the method error lists the methods" "$T/err" "expected magnitude, wanda, sparsegpt or structured"
if [ -e "$T/x" ]; then bad "a failed prune left output behind"; else ok "a failed prune leaves no output"; fi
expect_rc "quantize w8a8 static entropy" 0 "$SHRINK" --json quantize "$T/rand" --out "$T/q8" --scheme w8a8 --activations static --observer entropy --data "$T/shards" --calib-samples 4 --calib-len 64 --eval-tokens 1024 --eval-seq-len 64
expect_grep "quantize reports KL" "$T/out" '"kl_vs_float"'
inputs_unchanged "quantize w8a8 static"
expect_rc "the int8 model evaluates" 0 "$SHRINK" eval "$T/q8" --data "$T/shards" --seq-len 64
expect_rc "quantize w4a16" 0 "$SHRINK" --json quantize "$T/rand" --out "$T/q4" --scheme w4a16 --data "$T/shards" --calib-samples 4 --calib-len 64 --eval-tokens 1024 --eval-seq-len 64
expect_grep "w4a16 picks groups of 32 (K = 352 here)" "$T/q4/config.json" '"group_size": *32'
expect_grep "w4a16 writes pack-quantized" "$T/q4/config.json" '"pack-quantized"'
expect_rc "inspect the w4a16 model" 0 "$SHRINK" inspect "$T/q4"
expect_grep "inspect reports 4-bit weights" "$T/out" "I4"
if grep -aq 'weight_packed' "$T/q4/model.safetensors"; then ok "w4a16 stores weight_packed"; else bad "no weight_packed in the w4a16 file"; fi
expect_rc "the w4a16 model evaluates" 0 "$SHRINK" eval "$T/q4" --data "$T/shards" --seq-len 64
expect_rc "quantize w4a16 --awq" 0 "$SHRINK" --json quantize "$T/rand" --out "$T/q4awq" --scheme w4a16 --awq --data "$T/shards" --calib-samples 4 --calib-len 64 --eval-tokens 1024 --eval-seq-len 64
expect_grep "--awq reports its scale search" "$T/out" '"scale_error_ratio"'
expect_rc "the AWQ model verifies in the runtime" 0 "$SHRINK" verify "$T/q4awq" --reference "$T/rand" --data "$T/shards" --max-tokens 1024 --no-bench
expect_rc "quantize w4a16 --asym --awq" 0 "$SHRINK" --json quantize "$T/rand" --out "$T/q4asym" --scheme w4a16 --asym --awq --data "$T/shards" --calib-samples 4 --calib-len 64 --eval-tokens 1024 --eval-seq-len 64
expect_grep "--asym writes symmetric: false" "$T/q4asym/config.json" '"symmetric": *false'
if grep -aq 'weight_zero_point' "$T/q4asym/model.safetensors"; then ok "w4a16 --asym stores zero points"; else bad "no weight_zero_point in the --asym file"; fi
expect_rc "the asymmetric model verifies in the runtime" 0 "$SHRINK" --json verify "$T/q4asym" --reference "$T/rand" --data "$T/shards" --max-tokens 1024 --no-bench
expect_grep "the runtime names the asymmetric scheme" "$T/out" 'w4a16-asym/g32'
expect_rc "quantize w4a16 gptq --act-order-groups" 0 "$SHRINK" --json quantize "$T/rand" --out "$T/q4g" --scheme w4a16 --method gptq --act-order --act-order-groups --data "$T/shards" --calib-samples 4 --calib-len 64 --eval-tokens 1024 --eval-seq-len 64
if grep -aq 'weight_g_idx' "$T/q4g/model.safetensors"; then ok "--act-order-groups stores weight_g_idx"; else bad "no weight_g_idx in the --act-order-groups file"; fi
expect_grep "--act-order-groups writes actorder: group" "$T/q4g/config.json" '"actorder": *"group"'
inputs_unchanged "quantize w4a16 gptq"
expect_rc "the act-order-groups model verifies in the runtime" 0 "$SHRINK" verify "$T/q4g" --reference "$T/rand" --data "$T/shards" --max-tokens 1024 --no-bench
expect_rc "quantize w8a16 --asym exits 2" 2 "$SHRINK" quantize "$T/rand" --out "$T/x" --scheme w8a16 --asym
expect_grep "--asym with w8a16 says why" "$T/err" 'is for --scheme w4a16'
expect_rc "quantize w8a8 --awq exits 2" 2 "$SHRINK" quantize "$T/rand" --out "$T/x" --awq
expect_grep "--awq with w8a8 says why" "$T/err" 'weight-only schemes'
expect_rc "quantize --bits 5 exits 2" 2 "$SHRINK" quantize "$T/rand" --out "$T/x" --bits 5
expect_grep "the bits error names the value" "$T/err" "bits 5 is not supported"
expect_rc "quantize with an unknown observer exits 2" 2 "$SHRINK" quantize "$T/rand" --out "$T/x" --activations static --observer vibes
expect_grep "the observer error lists observers" "$T/err" "expected minmax, ema, percentile, mse or entropy"
expect_rc "quantize with a group size that does not divide K exits 2" 2 "$SHRINK" quantize "$T/rand" --out "$T/x" --scheme w8a16 --group-size 64 --data "$T/shards" --eval-tokens 0
expect_grep "the group error names K" "$T/err" "does not divide the input width K = 352"
expect_rc "quantizing an int8 model again exits 2" 2 "$SHRINK" quantize "$T/q8" --out "$T/x" --data "$T/shards"
expect_rc "distill without a student exits 2" 2 "$SHRINK" distill --teacher "$T/rand" --data "$T/shards" --out "$T/bad" --steps 1
expect_grep "the student error lists the choices" "$T/err" "give exactly one student"
"$SHRINK" export "$T/rand" --format onnx --out "$T/onnx" >"$T/out" 2>"$T/err"; rc=$?
if [ "$rc" = 2 ] && grep -q "built without ONNX" "$T/err"; then
  skip "this shrink was built without ONNX: export and its input check not run"
elif [ "$rc" = 0 ] && [ -n "$(find "$T/onnx" -name '*.onnx')" ]; then
  ok "export to ONNX (rc 0)"
  inputs_unchanged "export onnx"
else
  bad "export to ONNX: rc $rc, want 0 and an .onnx file"; show_err
fi
expect_rc "export to GGUF (the W4A16 act-order model) exits 0" 0 "$SHRINK" --json export "$T/q4g" --format gguf --out "$T/q4g.gguf"
expect_grep "the GGUF export says it requantized act-order groups" "$T/out" 'requantized to q4_0'
inputs_unchanged "export gguf"
expect_rc "export --format gguf --type q3_k exits 2" 2 "$SHRINK" export "$T/rand" --format gguf --out "$T/x.gguf" --type q3_k
expect_grep "the GGUF type error lists the types" "$T/err" "expected auto, f32, f16, bf16, q8_0, q4_0 or q4_1"
if [ -e "$T/x.gguf" ]; then bad "a refused GGUF export left a file"; else ok "a refused GGUF export leaves no file"; fi
expect_rc "export --format tflite exits 2" 2 "$SHRINK" export "$T/rand" --format tflite --out "$T/x"
expect_grep "the format error lists the formats" "$T/err" "expected onnx or gguf"
expect_rc "eval with a bad --seq-len exits 2" 2 "$SHRINK" eval "$FIX/hf/llama_gqa_llama3rope" --seq-len 1 --data "$FIX"

# The reference-BLAS warning: force Debian's reference BLAS in front of LibTorch's.
REF=/usr/lib/x86_64-linux-gnu/blas/libblas.so.3
if [ -f "$REF" ]; then
  expect_rc "runs on the reference BLAS" 0 env LD_PRELOAD="$REF" "$SHRINK" generate "$FIX/hf/mistral_mqa_linearrope" --prompt-ids 1,2 --max-new-tokens 1 --ids
  expect_grep "warns about the reference BLAS" "$T/err" "reference BLAS"
  expect_rc "no warning on the optimized BLAS" 0 "$SHRINK" generate "$FIX/hf/mistral_mqa_linearrope" --prompt-ids 1,2 --max-new-tokens 1 --ids
  if grep -q "reference BLAS" "$T/err"; then bad "warned although the BLAS is optimized"; else ok "no BLAS warning"; fi
else
  skip "$REF (Debian's reference BLAS, package libblas3) is not installed: 4 BLAS-warning checks not run"
fi

echo "$pass passed, $fail failed, $skipped skipped"
[ "$fail" = 0 ] || exit 1
[ "$skipped" = 0 ] || { echo "SKIP: $skipped group(s) of checks did not run here (see SKIP: above)"; exit 77; }
exit 0
