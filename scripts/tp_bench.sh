#!/usr/bin/env bash
# Tensor parallelism against one process on one machine (issue 30's measurement): TP = 1 with
# --threads T against TP = 2 with T / 2 threads per rank over each transport, interleaved,
# REPS repetitions, medians. Prints decode and prefill tokens/s, the weights each rank reads per
# token, the all-reduce bytes and time per decode step, and an 8 KiB all-reduce alone.
# Usage: scripts/tp_bench.sh [SHAPE=llama-1b] [DTYPE=bf16] [REPS=3] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-llama-1b} dtype=${2:-bf16} reps=${3:-3} threads=${4:-2}
RT=build/bin/shrink-rt
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
configs=("1 shm" "2 shm" "2 gloo")
for rep in $(seq "$reps"); do
  for c in "${configs[@]}"; do
    set -- $c
    "$RT" --threads "$threads" --tp "$1" --tp-transport "$2" --json bench --shape "$shape" \
      --dtype "$dtype" --prompt-len 64 --gen-len 32 >"$out/$1-$2-$rep.json"
  done
done
node -e '
const fs = require("fs");
const [dir, reps, ...configs] = process.argv.slice(1);
const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
console.log("| TP | transport | decode tok/s (median; runs) | prefill tok/s (median) | weight MiB per rank | all-reduce per step | 8 KiB all-reduce alone, median us |");
console.log("| ---: | --- | --- | ---: | ---: | --- | ---: |");
for (const c of configs) {
  const [tp, tr] = c.split(" ");
  const js = []; for (let r = 1; r <= +reps; r++) js.push(JSON.parse(fs.readFileSync(`${dir}/${tp}-${tr}-${r}.json`)));
  const rows = js.map((j) => j.results[0]);
  const d = rows.map((r) => r.decode_tok_s), p = rows.map((r) => r.prefill_tok_s);
  const ar = tp === "1" ? "-" : `${rows[0].tp_allreduce_bytes_per_step / 1024} KiB, ${med(rows.map((r) => r.tp_allreduce_us_per_step / 1000)).toFixed(1)} ms`;
  const alone = tp === "1" ? "-" : med(js.map((j) => j.tp_allreduce_alone.allreduce_us_median)).toFixed(1);
  console.log(`| ${tp} | ${tp === "1" ? "-" : tr} | ${med(d).toFixed(2)} (${d.map((x) => x.toFixed(2)).join(", ")}) | ${med(p).toFixed(0)} | ${rows[0].weight_mib.toFixed(0)} | ${ar} | ${alone} |`);
}' "$out" "$reps" "${configs[@]}"
