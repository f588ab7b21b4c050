#!/usr/bin/env bash
# One command for the GPU (device) machine: build the runtime-only configuration with CUDA
# (no LibTorch, no apt packages: header-only deps and GoogleTest come from .carry/third_party,
# made here by scripts/gpu_carry.sh), run every test including the GPU ones, cross-check
# shrink's tokenizer against Hugging Face `tokenizers`, and write results to $OUT.
# Benchmarks join here as the runtime issues land.
# Usage (device machine, repo root): scripts/gpu_check.sh   -> $OUT/gpu_check.{md,json}, logs
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
TP=.carry/third_party
status=0
declare -A result

run_step() {  # NAME CMD...: run, log to $OUT/NAME.log, record pass/fail
  local name=$1; shift
  local t0=$(date +%s.%N)
  if "$@" >"$OUT/$name.log" 2>&1; then result[$name]=pass; else result[$name]=FAIL; status=1; fi
  local t1=$(date +%s.%N)
  result[${name}_s]=$(python3 -c "print(round($t1-$t0,1))")
  echo "$name: ${result[$name]} (${result[${name}_s]} s)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/device.txt" 2>&1
nvcc --version | tail -2 >> "$OUT/device.txt"

run_step configure cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSHRINK_WITH_TORCH=OFF -DSHRINK_WITH_ONNX=OFF -DSHRINK_WITH_CUDA=ON -DSHRINK_CUDA_ARCHS=90 \
  -DSHRINK_THIRD_PARTY_DIR="$PWD/$TP/include" -DSHRINK_GTEST_SOURCE_DIR="$PWD/$TP/googletest"
run_step build cmake --build build-gpu -j "$(nproc)"
run_step ctest ctest --test-dir build-gpu --output-on-failure -j 8
# GPU tests must have run on this machine, not skipped.
if grep -q "Skipped" "$OUT/ctest.log" && grep "Skipped" "$OUT/ctest.log" | grep -q Cuda; then
  result[gpu_tests_ran]=FAIL; status=1
else
  result[gpu_tests_ran]=pass
fi
if [ -f .carry/gpu_inputs/tokenizer.json ]; then
  run_step hf_tokenizer python3 scripts/hf_tokenizer_check.py .carry/gpu_inputs
fi

{
  echo "# shrink gpu_check"
  echo; echo '```'; cat "$OUT/device.txt"; echo '```'; echo
  echo "| step | result | seconds |"; echo "| --- | --- | --- |"
  for k in configure build ctest gpu_tests_ran hf_tokenizer; do
    [ -n "${result[$k]:-}" ] && echo "| $k | ${result[$k]} | ${result[${k}_s]:-} |"
  done
  echo; echo '```'; grep -E "tests passed|tests failed|Total Test time" "$OUT/ctest.log"; echo '```'
  [ -f "$OUT/hf_tokenizer.log" ] && { echo; echo '```json'; cat "$OUT/hf_tokenizer.log"; echo '```'; }
} > "$OUT/gpu_check.md"
python3 - "$OUT" <<'PY'
import json, re, sys, pathlib
out = pathlib.Path(sys.argv[1])
md = (out / "gpu_check.md").read_text()
rows = dict(re.findall(r"^\| (\w+) \| (\w+) \|", md, re.M))
rows.pop("step", None)
(out / "gpu_check.json").write_text(json.dumps({"steps": rows}, indent=2))
PY
cat "$OUT/gpu_check.md"
exit $status
