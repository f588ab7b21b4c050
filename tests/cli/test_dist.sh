#!/usr/bin/env bash
# End-to-end tests of data-parallel distillation (c10d/Gloo on loopback), all bounded in time:
# - equivalence: `--nproc 2 --batch 4` logs the same losses and validation figures as one process
#   at `--batch 8` (float tolerance), with disjoint data shards per rank;
# - a rank killed with SIGKILL (test hook) makes the launcher stop the other rank and exit 1
#   with a message naming the rank and the signal; `--resume` then finishes, and the final
#   weights are byte-identical to an uninterrupted 2-rank run;
# - torchrun-style manual launch (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT): killing rank 1 makes
#   rank 0 fail with a clear error within --dist-timeout, never hang;
# - bad launch settings exit 2 with a clear message.
# Usage: test_dist.sh SHRINK REPO
set -u
SHRINK=$1
REPO=$2
T=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$T"' EXIT
source "$(dirname "$0")/lib.sh"
[ -d /usr/share/games/fortunes ] || {
  echo "FAIL - the default corpus /usr/share/games/fortunes is missing: run scripts/setup.sh (Debian package fortunes)"
  exit 1
}
TEACHER=$REPO/models/teacher
cd "$T"
"$SHRINK" data prepare --tokenizer "$TEACHER/tokenizer.json" --out shards --max-tokens 60000 >/dev/null \
  || { echo "FAIL - data prepare"; exit 1; }
COMMON=(distill --teacher "$TEACHER" --student-layers 0,4 --data shards --seq-len 64 --log-every 1
        --eval-every 3 --eval-tokens 2048 --save-every 2 --seed 3)

# 1. Equivalence: 2 ranks x batch 4 == 1 process x batch 8 (1 thread per process).
"$SHRINK" --threads 1 -q "${COMMON[@]}" --steps 6 --batch 8 --out one >one.log 2>&1 \
  || { bad "single-process run"; cat one.log; }
"$SHRINK" --threads 2 -q "${COMMON[@]}" --steps 6 --batch 4 --nproc 2 --out two >two.log 2>&1 \
  || { bad "2-rank run"; cat two.log; }
python3 - one/metrics.jsonl two/metrics.jsonl >cmp.log 2>&1 <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and len(a) >= 8, (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    assert x["step"] == y["step"]
    for k in ("loss", "kd", "ce", "val_loss", "val_kl"):
        if k in x:
            worst = max(worst, abs(x[k] - y[k]) / max(1e-12, abs(x[k])))
print("max relative difference", worst)
assert worst < 1e-5, worst
PY
if [ $? = 0 ]; then ok "2 ranks at batch 4 = 1 process at batch 8 ($(cat cmp.log))"; else bad "equivalence: $(cat cmp.log)"; fi
# With gradient accumulation (DDP's no_sync: only the last micro-batch all-reduces).
"$SHRINK" --threads 1 -q "${COMMON[@]}" --steps 4 --batch 8 --grad-accum 2 --out one_acc >/dev/null 2>&1 \
  || bad "single-process run with --grad-accum 2"
"$SHRINK" --threads 2 -q "${COMMON[@]}" --steps 4 --batch 4 --grad-accum 2 --nproc 2 --out two_acc >/dev/null 2>&1 \
  || bad "2-rank run with --grad-accum 2"
python3 - one_acc/metrics.jsonl two_acc/metrics.jsonl >cmp_acc.log 2>&1 <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and len(a) >= 5, (len(a), len(b))
worst = max(abs(x[k] - y[k]) / max(1e-12, abs(x[k])) for x, y in zip(a, b)
            for k in ("loss", "val_loss") if k in x)
print("max relative difference", worst)
assert worst < 1e-5, worst
PY
if [ $? = 0 ]; then ok "with --grad-accum 2 too ($(cat cmp_acc.log))"; else bad "equivalence with --grad-accum: $(cat cmp_acc.log)"; fi
python3 -c "
import json; d = json.load(open('two/distill.json'))['data_parallel']
assert d['world_size'] == 2 and d['global_batch'] == 8 and d['gradient_bytes_per_step'] > 0, d
assert abs(d['ring_allreduce_bytes_sent_per_rank_per_step'] - d['gradient_bytes_per_step']) < 1, d
" 2>cmp.err && ok "distill.json records world size, global batch and bytes per step" \
  || { bad "distill.json data_parallel"; cat cmp.err; }

# 2. A dead rank under the launcher: rank 1 SIGKILLs itself after step 5.
start=$SECONDS
SHRINK_TEST_KILL_RANK=1 SHRINK_TEST_KILL_STEP=5 timeout 120 "$SHRINK" --threads 2 -q "${COMMON[@]}" \
  --steps 8 --batch 4 --nproc 2 --out dead >dead.log 2>&1
rc=$?
if [ "$rc" = 1 ]; then ok "launcher exits 1 when a rank dies ($((SECONDS - start)) s)"; else bad "dead rank: rc $rc"; cat dead.log; fi
expect_grep "the error names the rank and the signal" dead.log "rank 1 (pid [0-9]*) was killed by signal 9"
expect_grep "the error says how to continue" dead.log "Rerun with --resume"
"$SHRINK" --threads 2 -q "${COMMON[@]}" --steps 8 --batch 4 --nproc 2 --out dead --resume >resume.log 2>&1 \
  && ok "--resume finishes the run" || { bad "--resume"; cat resume.log; }
"$SHRINK" --threads 2 -q "${COMMON[@]}" --steps 8 --batch 4 --nproc 2 --out clean >clean.log 2>&1 \
  || { bad "uninterrupted 2-rank run"; cat clean.log; }
if cmp -s dead/model/model.safetensors clean/model/model.safetensors; then
  ok "killed + resumed weights are byte-identical to an uninterrupted run"
else
  bad "resumed weights differ from the uninterrupted run"
fi

# 3. Manual (multi-machine style) launch; rank 1 is killed from outside.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT WORLD_SIZE=2 RANK=0 timeout 120 "$SHRINK" --threads 1 -q \
  "${COMMON[@]}" --steps 400 --batch 4 --dist-timeout 20 --out manual >r0.log 2>&1 &
p0=$!
# No `timeout` wrapper here: $! must be shrink itself for the kill below (it is killed anyway).
env MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT WORLD_SIZE=2 RANK=1 "$SHRINK" --threads 1 -q \
  "${COMMON[@]}" --steps 400 --batch 4 --dist-timeout 20 --out manual >r1.log 2>&1 &
p1=$!
for _ in $(seq 1 600); do  # until training has started (first metrics line), at most 60 s
  [ -s manual/metrics.jsonl ] && break; sleep 0.1
done
kill -9 $p1 2>/dev/null
start=$SECONDS
wait $p0; rc=$?
wait $p1 2>/dev/null
if [ "$rc" = 1 ]; then ok "rank 0 fails (rc 1) $((SECONDS - start)) s after rank 1 is killed"; else bad "manual launch: rank 0 rc $rc (124 = hung until timeout)"; cat r0.log; fi
expect_grep "rank 0 explains the lost peer" r0.log "data-parallel: .* failed"

# 4. A recipe stage takes the same key; a first distill stage from --student-layers starts
#    (the runner passes --resume, which must not need a checkpoint then).
cat >dp.yaml <<Y
version: 1
teacher: $TEACHER
data:
  train: $T/shards
output: $T/rrun
stages:
  - distill: {student-layers: "0,4", steps: 3, seq-len: 64, batch: 4, nproc: 2, eval-tokens: 2048}
Y
"$SHRINK" --threads 2 run dp.yaml >recipe.log 2>&1 && ok "recipe stage with nproc: 2 runs" || { bad "recipe with nproc"; tail -5 recipe.log; }
python3 -c "import json; assert json.load(open('rrun/00-distill/distill.json'))['data_parallel']['world_size'] == 2" 2>/dev/null \
  && ok "the recipe's distill ran on 2 ranks" || bad "recipe distill.json has no 2-rank data_parallel block"

# 5. Bad settings.
"$SHRINK" -q "${COMMON[@]}" --steps 2 --batch 4 --nproc 0 --out x >bad1.log 2>&1; rc=$?
[ "$rc" = 2 ] && ok "--nproc 0 exits 2" || bad "--nproc 0: rc $rc"
expect_grep "--nproc 0 message" bad1.log "nproc 0: expected 1..256"
env WORLD_SIZE=2 RANK=5 "$SHRINK" -q "${COMMON[@]}" --steps 2 --batch 4 --out x >bad2.log 2>&1; rc=$?
[ "$rc" = 2 ] && ok "RANK >= WORLD_SIZE exits 2" || bad "RANK 5 of 2: rc $rc"
expect_grep "RANK message" bad2.log "RANK=5 is out of range for WORLD_SIZE=2"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
