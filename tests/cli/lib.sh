# Helpers shared by the end-to-end CLI test scripts (tests/cli/test_*.sh), which source this file
# with `source "$(dirname "$0")/lib.sh"` (ctest runs them by absolute path, so that resolves from
# any working directory). Each check prints one line, "ok   - NAME" or "FAIL - NAME: why", and
# counts itself in pass/fail; a group of checks that cannot run here prints "SKIP: reason" and
# counts in skipped. The scripts print the totals and pick their exit code themselves.
# The helpers that run a command keep its stdout and stderr in $T/out and $T/err, so the caller
# sets T (a scratch directory) before calling them. ERR_LINES (default 20) is how many of the last
# lines of a failed command's stderr are shown.
pass=0; fail=0; skipped=0
ok()   { pass=$((pass+1)); echo "ok   - $1"; }
bad()  { fail=$((fail+1)); echo "FAIL - $1"; }
skip() { skipped=$((skipped+1)); echo "SKIP: $1"; }
# show_err: the last ERR_LINES lines of $T/err, indented under the FAIL line.
show_err() { sed 's/^/    /' "$T/err" | tail -n "${ERR_LINES:-20}"; }
# expect_rc NAME RC CMD...: run CMD, check its exit code, keep stdout/stderr in $T/out, $T/err.
expect_rc() {
  local name=$1 want=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" = "$want" ]; then ok "$name (rc $rc)"; else bad "$name: rc $rc, want $want"; show_err; fi
}
# expect_grep NAME FILE PATTERN: FILE contains PATTERN; if not, show the start of FILE.
expect_grep() {
  if grep -q -- "$3" "$2"; then ok "$1"; else bad "$1: '$3' not in $2"; sed 's/^/    /' "$2" | head -20; fi
}
