#!/usr/bin/env bash
# The ctest `tokenizer_peer_check`: shrink's tokenizer against Hugging Face's Tokenizers.js over
# the tokenizer.json layouts of Llama 3, Qwen2, SmolLM, GPT-2/NeoX and SentencePiece BPE
# (Llama 2, Mistral); see scripts/tokenizer_check.mjs.
# Usage: scripts/tokenizer_check.sh SHRINK_BIN WORK_DIR
# 0 pass; 1 fail, also when node or @huggingface/tokenizers is missing; 77 (ctest: skipped)
# instead when SHRINK_SKIP_NPM_PEERS=1 (scripts/npm_peers.sh).
set -euo pipefail
SHRINK=$1 WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/npm_peers.sh"
command -v node >/dev/null || npm_peer_missing tokenizer_check "node not found"
NPM_DIR=${SHRINK_ORT_NODE_DIR:-$HERE/../.npm-ort}
[ -d "$NPM_DIR/node_modules/@huggingface/tokenizers" ] ||
  npm_peer_missing tokenizer_check "@huggingface/tokenizers not installed in $NPM_DIR"
rm -rf "$WORK"
npm_peer_run tokenizer_check "$HERE/tokenizer_check.mjs" --shrink "$SHRINK" --work "$WORK" --json "$WORK/report.json"
