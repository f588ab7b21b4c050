#!/usr/bin/env bash
# ctest tp_check: shrink-rt's tensor parallelism end to end, as a user launches it.
#   1. `--tp 2` and `--tp 4` (local ranks) give the greedy ids of one process and its perplexity
#      to 1e-6 relative, on the default teacher;
#   2. a rank killed mid-run (SIGKILL) fails the launch with exit 1, naming the rank, at once;
#   3. ranks launched by hand (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT, as on several
#      machines), one of them stalled (SIGSTOP): the other fails within --dist-timeout with exit
#      1 and a message saying so (shm: naming the stalled rank), on both transports; no hang.
# Usage: scripts/tp_check.sh [SHRINK_RT]
set -euo pipefail
cd "$(dirname "$0")/.."
RT=${1:-build/bin/shrink-rt}
# The default teacher is bf16: compared in fp32 arithmetic (--cpu-weights exact), since with its
# default bf16 activations a split's other summation order flips some bf16 roundings.
RTX=("$RT" --cpu-weights exact)
M=models/teacher
out=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$out"
}
trap cleanup EXIT
fail() { echo "tp_check: FAIL: $*" >&2; exit 1; }
# reap PID SECONDS WHAT: wait up to SECONDS for PID to exit (else fail: WHAT); its code in $rc.
reap() {
  rc=0
  timeout "$2" tail --pid="$1" -f /dev/null || fail "$3"
  wait "$1" || rc=$?
}

# 1. Equal results.
prompt="The meaning of life is"
ids1=$("${RTX[@]}" --threads 2 generate "$M" --prompt "$prompt" --max-new-tokens 32 --ids)
ppl() { "${RTX[@]}" --threads 2 --tp "$1" --json eval "$M" --max-tokens 8192 --seq-len 256 |
          grep -o '"perplexity": [0-9.e+-]*' | head -1 | awk '{print $2}'; }
p1=$(ppl 1)
for n in 2 4; do
  idsn=$("${RTX[@]}" --threads 2 --tp "$n" generate "$M" --prompt "$prompt" --max-new-tokens 32 --ids)
  [ "$idsn" = "$ids1" ] || fail "--tp $n greedy ids differ from one process: $idsn vs $ids1"
  pn=$(ppl "$n")
  awk -v a="$p1" -v b="$pn" 'BEGIN { d = (b - a) / a; if (d < 0) d = -d; exit !(d <= 1e-6) }' ||
    fail "--tp $n perplexity $pn vs one process $p1 (more than 1e-6 relative)"
  echo "tp_check: --tp $n: greedy ids equal (32 tokens), perplexity $pn vs $p1"
done

# verify's gate leaves through the ranks: exit 3 under --tp as in one process.
rc=0
"${RTX[@]}" --threads 2 --tp 2 verify "$M" --reference "$M" --max-tokens 1024 --seq-len 128 \
  --min-speedup 100 >/dev/null 2>"$out/gate.err" || rc=$?
[ "$rc" = 3 ] || fail "verify --tp 2 with a failing gate exited $rc, expected 3: $(cat "$out/gate.err")"
echo "tp_check: verify --tp 2, failing gate: exit 3"

# 2. A killed rank under the local launcher.
"${RTX[@]}" --threads 2 --tp 2 eval "$M" --seq-len 256 >"$out/kill.out" 2>"$out/kill.err" &
launcher=$!
pids+=("$launcher")
victim=""
for _ in $(seq 100); do
  sleep 0.1
  kids=$(pgrep -P "$launcher" || true)
  [ "$(echo "$kids" | grep -c .)" -ge 2 ] && { victim=$(echo "$kids" | tail -1); break; }
done
[ -n "$victim" ] || fail "the launcher did not start 2 ranks"
sleep 2
kill -9 "$victim"
t0=$(date +%s)
reap "$launcher" 60 "the launch hung after a rank was killed"
t1=$(date +%s)
[ "$rc" = 1 ] || fail "a killed rank: exit $rc, expected 1 ($(cat "$out/kill.err"))"
grep -q "killed by signal 9" "$out/kill.err" || fail "no 'killed by signal 9' in: $(cat "$out/kill.err")"
grep -Eq "rank [01] \\(pid $victim\\)" "$out/kill.err" || fail "the killed rank is not named: $(cat "$out/kill.err")"
echo "tp_check: killed rank: exit 1 after $((t1 - t0)) s: $(grep -o 'rank [01] (pid [0-9]*) was killed by signal 9' "$out/kill.err")"

# 3. Ranks launched by hand; rank 1 stalls. Both transports: gloo (TCP, as across machines) and
#    shm (auto here: every rank on this machine), which names the rank that did not arrive.
for transport in gloo shm; do
  port=$(( 20000 + RANDOM % 20000 ))
  for r in 0 1; do
    WORLD_SIZE=2 RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "${RTX[@]}" --threads 1 --tp 2 --tp-transport $transport --dist-timeout 5 eval "$M" --seq-len 256 \
      >"$out/r$r.out" 2>"$out/r$r.err" &
    pids+=("$!")
  done
  r0=${pids[-2]} r1=${pids[-1]}
  sleep 3
  kill -STOP "$r1"
  t0=$(date +%s)
  reap "$r0" 60 "$transport: rank 0 hung on a stalled rank 1"
  t1=$(date +%s)
  kill -9 "$r1" 2>/dev/null || true
  wait "$r1" 2>/dev/null || true
  [ "$rc" = 1 ] || fail "$transport: a stalled rank: rank 0 exited $rc, expected 1 ($(cat "$out/r0.err"))"
  if [ "$transport" = gloo ]; then
    grep -q "rank 1 died or stalled past --dist-timeout 5 s" "$out/r0.err" || fail "gloo: no timeout message naming rank 1: $(cat "$out/r0.err")"
  else
    grep -q "rank 1 did not arrive within --dist-timeout 5 s" "$out/r0.err" || fail "shm: the stalled rank is not named: $(cat "$out/r0.err")"
  fi
  [ $((t1 - t0)) -le 30 ] || fail "$transport: rank 0 took $((t1 - t0)) s to fail (--dist-timeout 5)"
  echo "tp_check: $transport, stalled rank: rank 0 exit 1 after $((t1 - t0)) s: $(head -c 300 "$out/r0.err")"
done
# 3b. Four ranks over Gloo, rank 2 stalled: Gloo's ring timeout names no rank; the heartbeats
#     in rank 0's store do, on every surviving rank.
port=$(( 20000 + RANDOM % 20000 ))
g4=()
for r in 0 1 2 3; do
  WORLD_SIZE=4 RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "${RTX[@]}" --threads 1 --tp 4 --tp-transport gloo --dist-timeout 5 eval "$M" --seq-len 256 \
    >"$out/g$r.out" 2>"$out/g$r.err" &
  g4+=("$!")
  pids+=("$!")
done
sleep 4
kill -STOP "${g4[2]}"
for r in 0 1 3; do
  reap "${g4[$r]}" 60 "gloo x4: rank $r hung on a stalled rank 2"
  [ "$rc" = 1 ] || fail "gloo x4: rank $r exited $rc, expected 1 ($(cat "$out/g$r.err"))"
  grep -q "rank 2 died or stalled past --dist-timeout 5 s" "$out/g$r.err" ||
    fail "gloo x4: rank $r does not name rank 2: $(cat "$out/g$r.err")"
done
kill -9 "${g4[2]}" 2>/dev/null || true
wait "${g4[2]}" 2>/dev/null || true
echo "tp_check: gloo, 4 ranks, rank 2 stalled: ranks 0, 1, 3 exit 1 naming rank 2"

# 4. serve --tp 2: rank 0 serves HTTP, rank 1 follows its steps. A greedy completion equals
#    generate in one process; SIGTERM drains and stops both ranks (exit 0); a killed follower
#    makes the server exit 1 within --dist-timeout, naming the rank.
serve_up() {  # OUT_PREFIX: starts a server, sets $srv and $port
  "${RTX[@]}" --threads 2 --tp 2 --dist-timeout 5 serve "$M" --port 0 >"$1.out" 2>"$1.err" &
  srv=$!
  pids+=("$srv")
  port=""
  for _ in $(seq 300); do
    sleep 0.1
    port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$1.out" 2>/dev/null | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
  done
  [ -n "$port" ] || fail "serve --tp 2 did not start: $(cat "$1.err")"
}
if ! command -v node >/dev/null; then
  echo "tp_check: SKIPPED serve --tp 2 (node, the HTTP client here, is not installed)"
  echo "tp_check: ok"
  exit 0
fi
serve_up "$out/serve"
text=$(node -e '
  const body = JSON.stringify({prompt: process.argv[2], max_tokens: 32, temperature: 0});
  const req = require("http").request({host: "127.0.0.1", port: +process.argv[1], method: "POST",
      path: "/v1/completions", headers: {"Content-Type": "application/json"}}, (res) => {
    let d = "";
    res.on("data", (c) => (d += c));
    res.on("end", () => { if (res.statusCode !== 200) process.exit(1);
                          process.stdout.write(JSON.parse(d).choices[0].text); });
  });
  req.on("error", () => process.exit(1));
  req.end(body);' "$port" "$prompt") ||
  fail "serve --tp 2: the completion request failed: $(cat "$out/serve.err")"
one=$("${RTX[@]}" --threads 2 generate "$M" --prompt "$prompt" --max-new-tokens 32)
[ "$prompt$text" = "$one" ] || fail "serve --tp 2 completion differs from generate: '$prompt$text' vs '$one'"
kill -TERM "$srv"
reap "$srv" 30 "serve --tp 2 did not stop on SIGTERM"
[ "$rc" = 0 ] || fail "serve --tp 2 exited $rc on SIGTERM, expected 0: $(cat "$out/serve.err")"
echo "tp_check: serve --tp 2: the greedy completion equals generate; SIGTERM: exit 0"
serve_up "$out/serve2"
victim=$(pgrep -P "$srv" | tail -1)
[ -n "$victim" ] || fail "serve --tp 2: no rank processes"
kill -9 "$victim"
t0=$(date +%s)
reap "$srv" 60 "serve --tp 2 hung after a rank was killed"
t1=$(date +%s)
[ "$rc" = 1 ] || fail "serve --tp 2, killed rank: exit $rc, expected 1: $(cat "$out/serve2.err")"
grep -Eq "rank 1 \(pid $victim\) was killed by signal 9" "$out/serve2.err" ||
  fail "serve --tp 2: the killed rank is not named: $(cat "$out/serve2.err")"
echo "tp_check: serve --tp 2, killed rank: exit 1 after $((t1 - t0)) s"
echo "tp_check: ok"
