#!/usr/bin/env bash
# What shrink's allocator settings give (tools/cli_main.h: blocks up to 64 MiB stay on the heap,
# trimmed past 128 MiB free; train/distill keep blocks up to 1 GiB and never trim), against
# glibc's own thresholds (SHRINK_MALLOC=glibc), for every LibTorch stage and the runtime on the
# built-in default teacher. Runs interleaved (default, glibc, default, glibc, ...), GNU time:
# wall, kernel (system) seconds, minor page faults and peak RSS per run; medians of --reps.
# Not a ctest (minutes). The machine's load is not controlled: run it alone.
#
#   scripts/allocator_check.sh [--reps 3] [--threads 2] [--stages a,b,..] [--out DIR]
#
# Stages: gptq (quantize w4a16 GPTQ), smoothquant (w8a8 SmoothQuant 0.5 + GPTQ), awq (w4a16
# AWQ), wanda (prune 50%), sparsegpt (prune 2:4), structured (prune to half the parameters),
# eval (4,096 tokens), distill (10 steps of seq 256 x batch 16 into the teacher's even layers),
# rt-bench (shrink-rt bench, prompt 128, 32 decode steps).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=3
THREADS=2
STAGES=gptq,smoothquant,awq,wanda,sparsegpt,structured,eval,distill,rt-bench
OUT=runs/allocator-check
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "allocator_check.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
BIN=${SHRINK_BIN:-build/bin/shrink}
RT=${SHRINK_RT_BIN:-build/bin/shrink-rt}
TEACHER=models/teacher
DATA=/usr/share/games/fortunes
command -v /usr/bin/time >/dev/null || { echo "allocator_check.sh: GNU time is missing" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

stage_cmd() {  # the command of stage $1, writing under $2
  local s=$1 o=$2
  local common=(--threads "$THREADS" -q)
  case "$s" in
    gptq) echo "$BIN ${common[*]} quantize $TEACHER --out $o --scheme w4a16 --method gptq --eval-tokens 0" ;;
    smoothquant) echo "$BIN ${common[*]} quantize $TEACHER --out $o --scheme w8a8 --smoothquant 0.5 --method gptq --eval-tokens 0" ;;
    awq) echo "$BIN ${common[*]} quantize $TEACHER --out $o --scheme w4a16 --awq --eval-tokens 0" ;;
    wanda) echo "$BIN ${common[*]} prune $TEACHER --out $o --method wanda --sparsity 0.5 --eval-tokens 0" ;;
    sparsegpt) echo "$BIN ${common[*]} prune $TEACHER --out $o --method sparsegpt --pattern 2:4 --eval-tokens 0" ;;
    structured) echo "$BIN ${common[*]} prune $TEACHER --out $o --method structured --target-params 0.5 --eval-tokens 0" ;;
    eval) echo "$BIN ${common[*]} eval $TEACHER --data $DATA --max-tokens 4096" ;;
    distill) echo "$BIN ${common[*]} distill --teacher $TEACHER --student-layers ::2 --data $DATA --out $o --steps 10 --seq-len 256 --batch 16 --eval-tokens 0" ;;
    rt-bench) echo "$RT bench $TEACHER --threads $THREADS --prompt-len 128 --gen-len 32 --batch 1 --format json" ;;
    *) echo "allocator_check.sh: unknown stage '$s'" >&2; exit 2 ;;
  esac
}

run_one() {  # stage, setting (shrink|glibc), rep
  local s=$1 setting=$2 rep=$3 o="$WORK/$1-$2-$3"
  local cmd; cmd=$(stage_cmd "$s" "$o")
  local env=()
  [ "$setting" = glibc ] && env=(SHRINK_MALLOC=glibc)
  if ! env "${env[@]}" /usr/bin/time -f '%e %S %R %M' -o "$WORK/time" $cmd > "$WORK/log" 2>&1; then
    echo "allocator_check.sh: $s ($setting) failed:" >&2
    tail -5 "$WORK/log" >&2
    exit 1
  fi
  read -r wall sys faults rss < "$WORK/time"
  printf '{"stage":"%s","allocator":"%s","rep":%d,"wall_s":%s,"sys_s":%s,"minor_faults":%s,"peak_rss_mib":%d}\n' \
    "$s" "$setting" "$rep" "$wall" "$sys" "$faults" "$((rss / 1024))" >> "$RESULTS"
  rm -rf "$o"
}

IFS=, read -ra STAGE_LIST <<< "$STAGES"
for s in "${STAGE_LIST[@]}"; do stage_cmd "$s" x > /dev/null; done
for s in "${STAGE_LIST[@]}"; do
  for rep in $(seq 1 "$REPS"); do
    for setting in shrink glibc; do
      echo "==> $s, $setting allocator, run $rep of $REPS" >&2
      run_one "$s" "$setting" "$rep"
    done
  done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
stages = list(dict.fromkeys(r["stage"] for r in rows))
def med(s, a, k):
    return statistics.median(r[k] for r in rows if r["stage"] == s and r["allocator"] == a)
print("| stage | wall s: shrink / glibc (ratio) | kernel s | minor faults | peak RSS MiB |")
print("| --- | ---: | ---: | ---: | ---: |")
for s in stages:
    w = (med(s, "shrink", "wall_s"), med(s, "glibc", "wall_s"))
    k = (med(s, "shrink", "sys_s"), med(s, "glibc", "sys_s"))
    f = (med(s, "shrink", "minor_faults"), med(s, "glibc", "minor_faults"))
    m = (med(s, "shrink", "peak_rss_mib"), med(s, "glibc", "peak_rss_mib"))
    print(f"| {s} | {w[0]:.2f} / {w[1]:.2f} ({w[1] / w[0]:.2f}x) | {k[0]:.2f} / {k[1]:.2f} "
          f"| {f[0]:,.0f} / {f[1]:,.0f} | {m[0]:,.0f} / {m[1]:,.0f} |")
EOF
