#!/usr/bin/env bash
# Memory cap (issue 27): a model made for the test, 8 layers whose float32 weights (~740 MiB) are
# about 1.3 times a memory cap of 576 MiB, while one layer (~84 MiB) fits well under it. (The cap
# was 512 MiB until the tools' allocator kept up to 128 MiB of freed blocks for reuse, which
# made Wanda 20% faster and its peak 37 MB higher: tools/cli_main.h.) The stages
# that stream must complete under the cap, and their outputs must be whole: model-free
# round-to-nearest quantization and magnitude pruning, convert, inspect, ONNX export with external
# data, and the calibrated ones
# that hold one layer at a time (Wanda here) on token shards of the default corpus. GPTQ and
# SparseGPT also hold one layer at a time, but their float64 Hessian working set (several in x in
# copies per input group) needs more than this cap on this model (peak RSS 1,052 and 896 MiB
# against 376 MiB for convert), so they are not asserted here; issue 27 records the gap. The cap is a cgroup v1 memory limit (memory and
# memory+swap, so nothing escapes to swap), not `ulimit -v`: LibTorch alone reserves more address
# space than the cap, and the input is memory-mapped, so an address-space limit would measure the
# mappings instead of the memory used. As a check that the cap binds, the same quantization
# through the LibTorch model (--load-model) must be killed under it.
# Skips (exit 77) where no memory cgroup can be made (not root, cgroup v2 only, no controller).
# Usage: test_memory_cap.sh SHRINK REPO
source "$(dirname "$0")/lib.sh"
SHRINK=$1 REPO=$2
T=$(mktemp -d)
CAP=$((576 << 20))
parent=/sys/fs/cgroup/memory$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup 2>/dev/null)
CG=$parent/shrink-memcap-$$
cleanup() {
  [ -d "$CG" ] && rmdir "$CG" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
if ! mkdir "$CG" 2>/dev/null || ! echo "$CAP" >"$CG/memory.limit_in_bytes" 2>/dev/null; then
  echo "SKIP: cannot make a cgroup v1 memory group under '$parent' (needs root and the v1 memory controller)"
  exit 77
fi
# Without swap accounting (memory.memsw), a capped process may swap instead of failing: the cap
# then still bounds resident memory, but the check that it binds cannot be made.
swap_capped=0
if [ -f "$CG/memory.memsw.limit_in_bytes" ] && echo "$CAP" >"$CG/memory.memsw.limit_in_bytes" 2>/dev/null; then
  swap_capped=1
fi
# capped CMD...: CMD in the capped group (a subshell moves itself in, then execs CMD).
capped() { ( echo "$BASHPID" >"$CG/cgroup.procs" && exec "$@" ); }
# expect_capped NAME CMD...: CMD succeeds under the cap; its peak (the group's max usage, page
# cache included, which the kernel reclaims as the cap nears) is shown.
expect_capped() {
  local name=$1; shift
  echo 0 >"$CG/memory.max_usage_in_bytes" 2>/dev/null
  capped "$@" >"$T/out" 2>"$T/err"; local rc=$?
  local peak=$(( $(cat "$CG/memory.max_usage_in_bytes") >> 20 ))
  if [ "$rc" = 0 ]; then ok "$name under a $((CAP >> 20)) MiB cap (group peak $peak MiB)"; else bad "$name under the cap: rc $rc (group peak $peak MiB)"; show_err; fi
}

cat >"$T/config.json" <<'J'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096,
 "hidden_size": 2048, "intermediate_size": 2048, "num_hidden_layers": 8,
 "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128,
 "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
 "tie_word_embeddings": true, "hidden_act": "silu", "torch_dtype": "float32"}
J
M=$T/model
expect_rc "make an 8-layer float32 model tensor by tensor" 0 "$SHRINK" -q init --streaming --config "$T/config.json" --out "$M"
size=$(du -sm "$M/model.safetensors" 2>/dev/null | cut -f1)
if [ "${size:-0}" -gt $((CAP >> 20)) ]; then ok "the model's f32 weights ($size MiB) exceed the cap"; else bad "the model ($size MiB) does not exceed the cap"; fi

expect_capped "quantize w8a16 (rtn, model-free)" "$SHRINK" --threads 2 --json quantize "$M" --out "$T/q8" --scheme w8a16 --eval-tokens 0
expect_grep "w8a16 output has int8 weights" "$T/q8/config.json" '"int-quantized"'
expect_capped "quantize w4a16 asym (rtn, model-free)" "$SHRINK" --threads 2 --json quantize "$M" --out "$T/q4" --scheme w4a16 --asym --eval-tokens 0
expect_grep "w4a16 output is pack-quantized" "$T/q4/config.json" '"pack-quantized"'
expect_capped "prune magnitude 2:4 (model-free)" "$SHRINK" --threads 2 --json prune "$M" --out "$T/p" --method magnitude --pattern 2:4 --eval-tokens 0
expect_grep "prune reports half the targeted weights zeroed" "$T/out" '"targeted_sparsity": 0.5'
expect_rc "prepare token shards from the default corpus" 0 "$SHRINK" -q data prepare \
  --tokenizer "$REPO/models/teacher/tokenizer.json" --out "$T/shards" --max-tokens 20000
calib=(--data "$T/shards" --calib-samples 8 --calib-len 128 --eval-tokens 0)
expect_capped "prune Wanda 50% (layer by layer)" "$SHRINK" --threads 2 --json prune "$M" --out "$T/w" --method wanda --sparsity 0.5 "${calib[@]}"
expect_grep "Wanda reports each layer's time" "$T/out" '"layer_seconds"'
expect_grep "Wanda zeroes half the targeted weights" "$T/out" '"targeted_sparsity": 0.5'
expect_capped "convert to bfloat16" "$SHRINK" --threads 2 convert "$M" --dtype bf16 --out "$T/c"
expect_capped "inspect" "$SHRINK" inspect "$M"
expect_capped "export onnx (external data)" "$SHRINK" --threads 2 export "$M" --format onnx --external-data always --out "$T/o"
size=$(du -sm "$T/o/model.onnx.data" 2>/dev/null | cut -f1)
if [ "${size:-0}" -gt $((CAP >> 20)) ]; then ok "the exported weights ($size MiB) exceed the cap too"; else bad "the exported weights are $size MiB"; fi
# The outputs are whole: the runtime-free inspect reads every tensor of each.
for d in q8 q4 p c w; do
  expect_rc "inspect $d after the capped run" 0 "$SHRINK" -q inspect "$T/$d"
done

# The cap binds: loading the whole model into LibTorch does not fit under it.
if [ "$swap_capped" = 1 ]; then
  capped "$SHRINK" --threads 2 quantize "$M" --out "$T/x" --scheme w8a16 --eval-tokens 0 --load-model >"$T/out" 2>"$T/err"
  rc=$?
  if [ "$rc" != 0 ] && [ ! -d "$T/x" ]; then ok "the LibTorch path fails under the same cap (rc $rc), and leaves no output"; else bad "the LibTorch path ran under the cap (rc $rc): the cap does not bind"; fi
else
  skip "no swap accounting (memory.memsw): whether the cap binds is not checked"
fi

echo "memory cap: $pass passed, $fail failed, $skipped skipped"
[ "$fail" = 0 ]
