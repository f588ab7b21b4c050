#!/usr/bin/env bash
# The ctest `serve_check`: `shrink-rt serve` on the default teacher, driven by the official
# `openai` npm client (scripts/serve_check.mjs), checked against `shrink-rt generate`.
# Usage: scripts/serve_check.sh SHRINK_RT [MODEL_DIR]
# 0 pass; 1 fail, also when node or the openai package is missing; 77 (ctest: skipped) instead
# when SHRINK_SKIP_NPM_PEERS=1 (scripts/npm_peers.sh).
set -euo pipefail
RT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=${2:-$HERE/../models/teacher}
. "$HERE/npm_peers.sh"
command -v node >/dev/null || npm_peer_missing serve_check "node not found"
NPM_DIR=${SHRINK_ORT_NODE_DIR:-$HERE/../.npm-ort}
[ -d "$NPM_DIR/node_modules/openai" ] || npm_peer_missing serve_check "openai not installed in $NPM_DIR"
npm_peer_run serve_check "$HERE/serve_check.mjs" --rt "$RT" --model "$MODEL"
