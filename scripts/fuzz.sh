#!/usr/bin/env bash
# libFuzzer pass over every parser of untrusted bytes (tests/fuzz/fuzz_*.cpp): builds the
# harnesses with clang into build-fuzz/ (-fsanitize=fuzzer on the harness, the library with
# -fsanitize=fuzzer-no-link,address,undefined; no LibTorch, ONNX or CUDA), runs each for
# SECONDS on a copy of its seed corpus (build-fuzz/corpus-work/<h>: the repository's
# tests/fuzz/corpus is never written) with its dictionary, and prints a table of executions,
# coverage (edges) and findings per harness. Any crash, leak, timeout, out-of-memory or
# sanitizer report fails the run (exit 1); its input is in build-fuzz/artifacts/<h>/, to be
# minimized (-minimize_crash=1) and saved under tests/fuzz/regressions/<h>/, where the normal
# build's ctest fuzz_replay_<h> replays it.
# Usage: scripts/fuzz.sh [SECONDS] [--json] [--runs N] [--only h1,h2] (SECONDS default 60, per
# harness; SHRINK_BUILD_JOBS sets the build's -j, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=60 json=0 runs="" only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json=1 ;;
    --runs) runs="$2"; shift ;;
    --only) only="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    [0-9]*) secs="$1" ;;
    *) echo "fuzz.sh: unknown argument '$1' (usage: scripts/fuzz.sh [SECONDS] [--json] [--runs N] [--only h1,h2])" >&2; exit 2 ;;
  esac
  shift
done

CC=${SHRINK_FUZZ_CC:-clang} CXX=${SHRINK_FUZZ_CXX:-clang++}
command -v "$CXX" >/dev/null || { echo "fuzz.sh: $CXX not found; scripts/setup.sh installs clang and libclang-rt-14-dev" >&2; exit 1; }
B=build-fuzz
mkdir -p $B
SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_C_FLAGS="$SAN" -DCMAKE_CXX_FLAGS="$SAN" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DSHRINK_WITH_TORCH=OFF -DSHRINK_WITH_ONNX=OFF -DSHRINK_WITH_CUDA=OFF \
  -DSHRINK_BUILD_TESTS=OFF -DSHRINK_BUILD_FUZZERS=ON >$B/configure.log 2>&1 \
  || { tail -30 $B/configure.log >&2; echo "fuzz.sh: configure failed (log: $B/configure.log)" >&2; exit 1; }

# The harnesses this configuration has (recipe only with yaml-cpp).
harnesses=()
for t in $(ninja -C $B -t targets all | sed -n 's/^\(fuzz_[a-z0-9]*\): phony$/\1/p' | sort -u); do
  h=${t#fuzz_}
  if [ -n "$only" ] && [[ ",$only," != *",$h,"* ]]; then continue; fi
  harnesses+=("$h")
done
[ ${#harnesses[@]} -gt 0 ] || { echo "fuzz.sh: no harness selected" >&2; exit 2; }
cmake --build $B -j "${SHRINK_BUILD_JOBS:-2}" --target "${harnesses[@]/#/fuzz_}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
failed=0 rows=()
mkdir -p $B/logs
for h in "${harnesses[@]}"; do
  work=$B/corpus-work/$h art=$B/artifacts/$h log=$B/logs/$h.log
  mkdir -p "$work" "$art"
  cp -n tests/fuzz/corpus/$h/* "$work"/ 2>/dev/null || true
  if [ -d tests/fuzz/regressions/$h ]; then cp -n tests/fuzz/regressions/$h/* "$work"/ 2>/dev/null || true; fi
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$art/")
  [ -f tests/fuzz/dict/$h.dict ] && args+=(-dict=tests/fuzz/dict/$h.dict)
  [ -n "$runs" ] && args+=(-runs="$runs")
  echo "fuzz.sh: fuzz_$h for ${secs}s (log: $log)" >&2
  rc=0
  $B/bin/fuzz_$h "${args[@]}" "$work" >"$log" 2>&1 || rc=$?
  last() { { grep -o "$1" "$log" || true; } | tail -1 | sed 's/^[^0-9]*//'; }
  execs=$(last 'stat::number_of_executed_units: *[0-9]*')
  rate=$(last 'stat::average_exec_per_sec: *[0-9]*')
  edges=$(last 'cov: [0-9]*')
  feats=$(last 'ft: [0-9]*')
  corp=$(ls "$work" | wc -l)
  new_art=$({ grep 'Test unit written to' "$log" || true; } | grep -cv 'slow-unit-' || true)
  reports=$(grep -cE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|==[0-9]+== ?ERROR' "$log" || true)
  status=ok
  if [ "$rc" != 0 ] || [ "$reports" != 0 ] || [ "$new_art" -gt 0 ]; then
    status=FAIL failed=1
    echo "fuzz.sh: fuzz_$h failed (exit $rc): $(grep -m1 -E 'ERROR|runtime error|invariant failed|deadly signal' "$log" || echo 'see log')" >&2
    grep -E '^artifact_prefix|Test unit written to' "$log" >&2 || true
  fi
  rows+=("$h|${execs:-0}|${rate:-0}|${edges:-0}|${feats:-0}|$corp|$new_art|$reports|$status")
done

if [ $json = 1 ]; then
  printf '['
  sep=""
  for r in "${rows[@]}"; do
    IFS='|' read -r h e r2 c f n a s st <<<"$r"
    printf '%s{"harness":"%s","seconds":%s,"executions":%s,"exec_per_sec":%s,"edges":%s,"features":%s,"corpus":%s,"crashes":%s,"sanitizer_reports":%s,"status":"%s"}' \
      "$sep" "$h" "$secs" "$e" "$r2" "$c" "$f" "$n" "$a" "$s" "$st"
    sep=","
  done
  printf ']\n'
else
  printf '| harness | seconds | executions | exec/s | edges (cov) | features | corpus | crashes | sanitizer reports | status |\n'
  printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n'
  for r in "${rows[@]}"; do
    IFS='|' read -r h e r2 c f n a s st <<<"$r"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$h" "$secs" "$e" "$r2" "$c" "$f" "$n" "$a" "$s" "$st"
  done
fi
[ $failed = 0 ] || echo "fuzz.sh: findings: inputs in $B/artifacts/<harness>/, logs in $B/logs/" >&2
exit $failed
