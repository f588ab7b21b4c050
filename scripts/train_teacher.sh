#!/usr/bin/env bash
# Trains the built-in default teacher from nothing but the fortunes corpus, exactly as the
# committed models/teacher was made. Usage: scripts/train_teacher.sh [OUT_DIR] (default
# /tmp/shrink-teacher). Takes about 30 min on 2 cores. Deterministic for a fixed thread count.
#
#   tokenizer  byte-level BPE, vocab 4096, trained on fortunes
#   data       fortunes, 5% held out by document hash (split seed 0)
#   model      `small` preset: Llama, hidden 256, 8 layers, 8 heads / 4 KV heads (GQA), MLP 704,
#              tied embeddings, 6.95M parameters, seed 1
#   training   1000 steps x 16 sequences x 256 tokens (4.1M tokens), AdamW lr 2e-3, warmup 50,
#              cosine to 2e-4, weight decay 0.1, clip 1.0, seed 1, 2 threads
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/shrink-teacher}; shift $(( $# > 0 ? 1 : 0 ))
BIN=${SHRINK_BIN:-build/bin/shrink}
THREADS=${SHRINK_THREADS:-2}
mkdir -p "$OUT"
"$BIN" tokenizer train --data /usr/share/games/fortunes --vocab-size 4096 --out "$OUT/tokenizer.json"
"$BIN" data prepare --data /usr/share/games/fortunes --tokenizer "$OUT/tokenizer.json" \
  --val-fraction 0.05 --seed 0 --out "$OUT/data"
"$BIN" init --preset small --tokenizer "$OUT/tokenizer.json" --seed 1 --out "$OUT/init"
"$BIN" --threads "$THREADS" train --model "$OUT/init" --data "$OUT/data" --out "$OUT/run" \
  --steps 1000 --seq-len 256 --batch 16 --lr 2e-3 --min-lr-ratio 0.1 --warmup 50 \
  --schedule cosine --weight-decay 0.1 --clip 1.0 --seed 1 --eval-every 250 --save-every 100 \
  --eval-tokens 0 "$@"
# The committed teacher is the best-validation model, stored in bf16.
"$BIN" convert "$OUT/run/best" --dtype bf16 --max-shard-mb 7 --out "$OUT/teacher" 2>/dev/null \
  || echo "train_teacher.sh: 'shrink convert' unavailable; the float32 teacher is $OUT/run/best"
