# Sourced by the npm peer checks (ort_check.sh, tokenizer_check.sh, transformers_js_check.sh):
# what to do when node or an npm package is missing. scripts/setup.sh installs them and fails when
# it cannot, so on a set-up machine a missing peer is a broken install and the check fails (exit
# 1). Only when skipping was asked for (SHRINK_SKIP_NPM_PEERS=1: set for these ctests by a build
# configured with it, see tests/CMakeLists.txt, or in the caller's environment) does a check
# exit 77, which ctest reports as skipped, with the reason.

# npm_peer_missing CHECK REASON: exit 77 when skipping is allowed, else 1; says which and why.
npm_peer_missing() {
  if [ "${SHRINK_SKIP_NPM_PEERS:-0}" = 1 ]; then
    echo "SKIP: $1: $2 (SHRINK_SKIP_NPM_PEERS=1)"
    exit 77
  fi
  echo "$1: error: $2; run scripts/setup.sh to install the npm peers, or set" \
       "SHRINK_SKIP_NPM_PEERS=1 (at configure time) to skip this check" >&2
  exit 1
}

# npm_peer_run CHECK NODE_ARGS...: run node; its exit 77 (a package it could not load) goes
# through npm_peer_missing like a missing directory.
npm_peer_run() {
  local check=$1 rc=0
  shift
  node "$@" || rc=$?
  [ "$rc" = 77 ] && npm_peer_missing "$check" "node could not load its npm package (see above)"
  exit "$rc"
}
