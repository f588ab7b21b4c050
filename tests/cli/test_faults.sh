#!/usr/bin/env bash
# Faults (issue #25): `kill -9` in the middle of each stage (prune, quantize, convert, export,
# distill), then a rerun; and a full disk during each stage's write.
#
# After a kill: nothing under the final output name (or, when it replaced an older output, the
# older output intact), the killed run's partial temporary beside it, a rerun that succeeds, that
# removes the temporary, and whose output is byte-identical to an uninterrupted run's (distill
# through --resume; timing fields such as "seconds" excepted). After a full disk (a small tmpfs
# when this user may mount one, and always a file-size limit, `ulimit -f`): exit 1, an error that
# names the cause, no output and no temporary left. The inputs' sha256 never change.
#
# Kills land at deterministic points through the test hooks of lib/core/fs.h
# (SHRINK_TEST_KILL_AFTER_BYTES: mid-write; SHRINK_TEST_KILL_IN_COMMIT: inside the rename into
# place) and lib/train/trainer.cpp (SHRINK_TEST_KILL_STEP: between optimizer steps); one distill
# run is also killed from outside with `kill -9`, as a user would. Each hook raises SIGKILL, so
# exit status 137 proves the process died there.
#
# Runs on the default teacher (models/teacher) and corpus (fortunes) at 1 thread, where every
# stage is deterministic. Usage: test_faults.sh SHRINK REPO_DIR [WITH_ONNX=0|1]
set -u
SHRINK=$1; REPO=$2; WITH_ONNX=${3:-0}
TEACHER=$REPO/models/teacher
CORPUS=/usr/share/games/fortunes
T=$(mktemp -d)
MNT=""
cleanup() {
  if [ -n "$MNT" ]; then umount "$MNT" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM  # a ctest timeout still unmounts the tmpfs (through the EXIT trap)
export SHRINK_THREADS=1 OMP_WAIT_POLICY=passive
unset SHRINK_TEST_KILL_AFTER_BYTES SHRINK_TEST_KILL_IN_COMMIT SHRINK_TEST_KILL_STEP SHRINK_TEST_KILL_RANK
source "$(dirname "$0")/lib.sh"
ERR_LINES=8  # a stage fails with its error last, after its progress lines
hashes() { find "$@" -type f -print0 | sort -z | xargs -0 sha256sum; }
# Timing and memory figures differ between any two runs; everything else must not.
normalize() {
  sed -E 's/"(seconds|peak_rss_mb|tokens_per_second|calibration_seconds|teacher_cache_build_seconds|[a-z_]*_seconds|[a-z_]*_time_s)": *-?[0-9][-+0-9.eE]*/"\1": T/g' "$1"
}
# same_dir NAME A B [SKIP]: the same file names, and the same bytes (JSON reports normalized),
# except for the file named SKIP.
same_dir() {
  local name=$1 a=$2 b=$3 skip=${4:-} f diffs=""
  if ! diff <(cd "$a" && find . -type f | sort) <(cd "$b" && find . -type f | sort) >"$T/ls.diff"; then
    bad "$name: the file lists differ"; sed 's/^/    /' "$T/ls.diff" | head; return
  fi
  while read -r f; do
    [ "$f" = "./$skip" ] && continue
    case "$f" in
      *.json|*.jsonl) cmp -s <(normalize "$a/$f") <(normalize "$b/$f") || diffs="$diffs $f" ;;
      *) cmp -s "$a/$f" "$b/$f" || diffs="$diffs $f" ;;
    esac
  done < <(cd "$a" && find . -type f | sort)
  if [ -z "$diffs" ]; then ok "$name: byte-identical to the uninterrupted run"; else bad "$name: differs in$diffs"; fi
}
temporaries() { ls -d "$1".tmp-* "$1".old-* 2>/dev/null; }

[ -d "$CORPUS" ] || { echo "FAIL - the default corpus $CORPUS is missing (scripts/setup.sh installs fortunes)"; exit 1; }
[ -f "$TEACHER/config.json" ] || { echo "FAIL - no default teacher at $TEACHER"; exit 1; }
t0=$(date +%s)
expect_rc "prepare token shards from the default corpus" 0 "$SHRINK" -q data prepare \
  --tokenizer "$TEACHER/tokenizer.json" --out "$T/shards" --max-tokens 20000
INPUTS=("$TEACHER" "$T/shards")
hashes "${INPUTS[@]}" >"$T/inputs.sha256"

PRUNE=(prune "$TEACHER" --method magnitude --sparsity 0.5 --eval-tokens 0)
QUANT=(quantize "$TEACHER" --scheme w8a8 --data "$T/shards" --calib-samples 4 --calib-len 64 --eval-tokens 0)
CONVERT=(convert "$TEACHER" --dtype float32 --max-shard-mb 8)
EXPORT=(export "$TEACHER" --format onnx --external-data always)

# kill_rerun NAME BYTES ARGS...: a run killed after BYTES bytes of output, then a rerun.
kill_rerun() {
  local name=$1 bytes=$2; shift 2
  local d="$T/$name"; mkdir -p "$d"
  expect_rc "$name: uninterrupted run" 0 "$SHRINK" -q "$@" --out "$d/a"
  SHRINK_TEST_KILL_AFTER_BYTES=$bytes "$SHRINK" -q "$@" --out "$d/b" >"$T/out" 2>"$T/err"
  local rc=$?
  if [ "$rc" = 137 ]; then ok "$name: killed with SIGKILL after $bytes bytes of output"; else bad "$name: rc $rc, want 137 (killed mid-write)"; show_err; fi
  if [ -e "$d/b" ]; then bad "$name: a partial output exists under the final name"; else ok "$name: nothing under the final name"; fi
  local tmp; tmp=$(temporaries "$d/b")
  if [ -n "$tmp" ] && [ -n "$(find $tmp -type f -size +0)" ]; then ok "$name: the killed run's partial temporary is beside it"; else bad "$name: no partial temporary: was it killed mid-write?"; fi
  expect_rc "$name: rerun" 0 "$SHRINK" -q "$@" --out "$d/b"
  tmp=$(temporaries "$d/b")
  if [ -z "$tmp" ]; then ok "$name: the rerun removed the killed run's temporary"; else bad "$name: left behind: $tmp"; fi
  same_dir "$name: rerun" "$d/a" "$d/b"
  # A kill while replacing an existing output leaves the older output whole.
  SHRINK_TEST_KILL_AFTER_BYTES=$bytes "$SHRINK" -q "$@" --out "$d/b" >"$T/out" 2>"$T/err"
  rc=$?; [ "$rc" = 137 ] || { bad "$name: rc $rc, want 137 (killed mid-write over an older output)"; show_err; }
  same_dir "$name: the older output after a kill mid-write over it" "$d/a" "$d/b"
  # A kill inside the commit, between the renames: the output name must still hold a whole output.
  SHRINK_TEST_KILL_IN_COMMIT=1 "$SHRINK" -q "$@" --out "$d/b" >"$T/out" 2>"$T/err"
  rc=$?; [ "$rc" = 137 ] || { bad "$name: rc $rc, want 137 (killed in the commit)"; show_err; }
  if [ -d "$d/b" ]; then same_dir "$name: the output after a kill inside the commit" "$d/a" "$d/b"; else bad "$name: a kill inside the commit left no output at the final name: $(temporaries "$d/b")"; fi
  expect_rc "$name: rerun after the kill in the commit" 0 "$SHRINK" -q "$@" --out "$d/b"
  tmp=$(temporaries "$d/b")
  if [ -z "$tmp" ]; then ok "$name: nothing left beside the output"; else bad "$name: left behind: $tmp"; fi
}

kill_rerun prune 3000000 "${PRUNE[@]}"
kill_rerun quantize 3000000 "${QUANT[@]}"
kill_rerun convert 12000000 "${CONVERT[@]}"   # in the second of four shards
if [ "$WITH_ONNX" = 1 ]; then kill_rerun export 6000000 "${EXPORT[@]}"; fi

# ---- distill: a kill during training, during a checkpoint write and inside its commit, then --resume.
DISTILL_BASE=(distill --teacher "$TEACHER" --student-layers 0,4 --data "$T/shards" --seq-len 32
              --batch 4 --save-every 5 --log-every 10 --eval-every 0 --eval-tokens 2048 --seed 4)
DISTILL=("${DISTILL_BASE[@]}" --steps 20)
D=$T/distill
expect_rc "distill: uninterrupted run" 0 "$SHRINK" -q "${DISTILL[@]}" --out "$D/a"
ckpt_step() { grep -o '"step": *[0-9]*' "$1/checkpoint/state.json" 2>/dev/null | tr -dc 0-9; }
# The bytes one checkpoint writes through core (the weights and small files; torch writes the
# optimizer state), and where the second checkpoint's weights are half written.
ckpt_bytes=$(find "$D/a/checkpoint" -type f ! -name '*.pt' -printf '%s\n' | awk '{s += $1} END {print s}')
weights=$(stat -c %s "$D/a/checkpoint/model.safetensors")
# distill_resume NAME WANT_STEP: after the killed run in $D/NAME, --resume and compare.
distill_resume() {
  local name=$1 want=$2 out="$D/$1"
  if [ -d "$out/model" ]; then bad "distill $name: the run finished before the kill"; return; fi
  local step; step=$(ckpt_step "$out")
  if [ "$step" = "$want" ]; then ok "distill $name: a whole checkpoint of step $step is in place"; else bad "distill $name: checkpoint step '$step', want $want ($(ls "$out" | tr '\n' ' '))"; fi
  expect_rc "distill $name: --resume" 0 "$SHRINK" -q "${DISTILL[@]}" --out "$out" --resume
  local tmp; tmp=$(temporaries "$out/checkpoint"; temporaries "$out/model"; temporaries "$out/best")
  if [ -z "$tmp" ]; then ok "distill $name: nothing left beside the checkpoint"; else bad "distill $name: left behind: $tmp"; fi
  same_dir "distill $name: resumed model" "$D/a/model" "$out/model"
  same_dir "distill $name: resumed best" "$D/a/best" "$out/best"
  # optimizer.pt is torch::save's archive, which orders the state by tensor address: it differs
  # between any two runs (the identical weights above show that the state itself resumed exactly).
  same_dir "distill $name: resumed checkpoint" "$D/a/checkpoint" "$out/checkpoint" optimizer.pt
  if cmp -s <(normalize "$D/a/metrics.jsonl") <(normalize "$out/metrics.jsonl"); then ok "distill $name: metrics.jsonl is the same"; else bad "distill $name: metrics.jsonl differs"; diff <(normalize "$D/a/metrics.jsonl") <(normalize "$out/metrics.jsonl") | head -6 | sed 's/^/    /'; fi
}
SHRINK_TEST_KILL_RANK=0 SHRINK_TEST_KILL_STEP=13 "$SHRINK" -q "${DISTILL[@]}" --out "$D/step" >"$T/out" 2>"$T/err"
rc=$?; [ "$rc" = 137 ] && ok "distill: killed after step 13 (rc 137)" || { bad "distill: rc $rc, want 137"; show_err; }
distill_resume step 10
SHRINK_TEST_KILL_AFTER_BYTES=$((ckpt_bytes + weights / 2)) "$SHRINK" -q "${DISTILL[@]}" --out "$D/write" >"$T/out" 2>"$T/err"
rc=$?; [ "$rc" = 137 ] && ok "distill: killed while writing the second checkpoint (rc 137)" || { bad "distill: rc $rc, want 137"; show_err; }
[ -n "$(temporaries "$D/write/checkpoint")" ] && ok "distill: the half-written checkpoint is a temporary" || bad "distill: no temporary checkpoint: was it killed mid-write?"
distill_resume write 5
SHRINK_TEST_KILL_IN_COMMIT=2 "$SHRINK" -q "${DISTILL[@]}" --out "$D/commit" >"$T/out" 2>"$T/err"
rc=$?; [ "$rc" = 137 ] && ok "distill: killed inside the second checkpoint's commit (rc 137)" || { bad "distill: rc $rc, want 137"; show_err; }
distill_resume commit 10
# From outside, as a user would: kill -9 once the first checkpoint is in place, while it runs.
LONG=("${DISTILL_BASE[@]}" --steps 400)  # still running when killed
"$SHRINK" -q "${LONG[@]}" --out "$D/ext" >/dev/null 2>&1 & pid=$!
for _ in $(seq 1 1200); do [ -f "$D/ext/checkpoint/state.json" ] && break; sleep 0.05; done
if kill -9 "$pid" 2>/dev/null; then ok "distill: kill -9 from outside while it ran (checkpoint step $(ckpt_step "$D/ext"))"; else bad "distill: the process was gone before kill -9"; fi
wait "$pid" 2>/dev/null
expect_rc "distill: --resume after kill -9" 0 "$SHRINK" -q "${LONG[@]}" --out "$D/ext" --resume
[ -f "$D/ext/model/model.safetensors" ] && [ -z "$(temporaries "$D/ext/checkpoint")" ] && ok "distill: the resumed run finished cleanly" || bad "distill: the resumed run left no model or a temporary"

# ---- Disk full: a tmpfs too small for the output, and a file-size limit.
# disk_full NAME WHAT OUT_PARENT PATTERN ARGS...: the stage writing under OUT_PARENT must fail.
disk_full() {
  local name=$1 what=$2 parent=$3 pattern=$4; shift 4
  local out="$parent/$name"
  if [ "$what" = ulimit ]; then
    (ulimit -f 2048; exec "$SHRINK" -q "$@" --out "$out") >"$T/out" 2>"$T/err"
  else
    "$SHRINK" -q "$@" --out "$out" >"$T/out" 2>"$T/err"
  fi
  local rc=$?
  if [ "$rc" = 1 ]; then ok "$name on a full disk ($what): exit 1"; else bad "$name on a full disk ($what): rc $rc, want 1"; show_err; fi
  if grep -q "$pattern" "$T/err"; then ok "$name ($what): the error names the cause: $(grep -o "[^:]*: [^:]*: $pattern" "$T/err" | head -1)"; else bad "$name ($what): '$pattern' not in the error"; show_err; fi
  local left
  if [ "$name" = distill ]; then
    left=$(ls -d "$out"/model "$out"/best "$out"/checkpoint "$out"/*.tmp-* "$out"/*.old-* 2>/dev/null)
  else
    left=$(ls -d "$out" "$out".tmp-* "$out".old-* 2>/dev/null)
  fi
  if [ -z "$left" ]; then ok "$name ($what): no output and no temporary left"; else bad "$name ($what): left behind: $left"; fi
  rm -rf "$out"
}
STAGES=(prune quantize convert distill)
[ "$WITH_ONNX" = 1 ] && STAGES+=(export)
args_of() {
  case $1 in
    prune) echo PRUNE ;; quantize) echo QUANT ;; convert) echo CONVERT ;; export) echo EXPORT ;;
    distill) echo DISTILL ;;
  esac
}
mkdir -p "$T/big"
for s in "${STAGES[@]}"; do
  declare -n argv="$(args_of "$s")"
  disk_full "$s" ulimit "$T/big" "File too large" "${argv[@]}"
  unset -n argv
done
mkdir -p "$T/small"
if mount -t tmpfs -o size=3m shrink-faults "$T/small" 2>/dev/null; then
  MNT=$T/small
  for s in "${STAGES[@]}"; do
    declare -n argv="$(args_of "$s")"
    disk_full "$s" tmpfs "$T/small" "No space left on device" "${argv[@]}"
    unset -n argv
  done
  [ -z "$(ls -A "$T/small")" ] && ok "the full tmpfs is empty again" || bad "left on the tmpfs: $(ls -A "$T/small")"
else
  echo "skip - cannot mount a tmpfs here (not root?); the file-size limit covered the full disk"
fi

if hashes "${INPUTS[@]}" | cmp -s - "$T/inputs.sha256"; then ok "no input file changed (sha256)"; else bad "an input file changed"; fi
echo "$pass passed, $fail failed in $(( $(date +%s) - t0 )) s"
[ "$fail" = 0 ]
