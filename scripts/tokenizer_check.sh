#!/usr/bin/env bash
# The ctest `tokenizer_peer_check`: shrink's tokenizer against Hugging Face's Tokenizers.js over
# the tokenizer.json layouts of Llama 3, Qwen2, SmolLM, GPT-2/NeoX and SentencePiece BPE
# (Llama 2, Mistral); see scripts/tokenizer_check.mjs.
# Usage: scripts/tokenizer_check.sh SHRINK_BIN WORK_DIR
# Exit 77 (ctest: skipped) when node or the npm package is missing; 0 pass; 1 fail.
set -euo pipefail
SHRINK=$1 WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null || { echo "tokenizer_check: node not found; skipping"; exit 77; }
rm -rf "$WORK"
exec node "$HERE/tokenizer_check.mjs" --shrink "$SHRINK" --work "$WORK" --json "$WORK/report.json"
