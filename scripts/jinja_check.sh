#!/usr/bin/env bash
# The ctest `jinja_check`: shrink's chat-template renderer against Hugging Face's
# @huggingface/jinja on five real chat templates and many message lists
# (scripts/jinja_check.mjs).
# Usage: scripts/jinja_check.sh SHRINK_RT WORK_DIR
# 0 pass; 1 fail, also when node or the package is missing; 77 (ctest: skipped) instead when
# SHRINK_SKIP_NPM_PEERS=1 (scripts/npm_peers.sh).
set -euo pipefail
RT=$1 WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/npm_peers.sh"
command -v node >/dev/null || npm_peer_missing jinja_check "node not found"
NPM_DIR=${SHRINK_ORT_NODE_DIR:-$HERE/../.npm-ort}
[ -d "$NPM_DIR/node_modules/@huggingface/jinja" ] ||
  npm_peer_missing jinja_check "@huggingface/jinja not installed in $NPM_DIR"
rm -rf "$WORK"
npm_peer_run jinja_check "$HERE/jinja_check.mjs" --rt "$RT" --work "$WORK"
