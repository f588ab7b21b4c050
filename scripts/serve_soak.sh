#!/usr/bin/env bash
# The ctest `serve_soak`: scripts/serve_soak.mjs on the default teacher (node's fetch; no npm
# package needed). Usage: scripts/serve_soak.sh SHRINK_RT [REQUESTS] [CONCURRENCY]
# 0 pass, 1 fail (also without node).
set -euo pipefail
RT=$1 REQUESTS=${2:-2000} CONCURRENCY=${3:-32}
HERE=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null || { echo "serve_soak: node not found (scripts/setup.sh installs it)" >&2; exit 1; }
exec node "$HERE/serve_soak.mjs" --rt "$RT" --model "$HERE/../models/teacher" --requests "$REQUESTS" \
  --concurrency "$CONCURRENCY"
