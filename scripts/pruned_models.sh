#!/usr/bin/env bash
# Structured-pruned models for the loader cross-checks (scripts/hf_load_check.py in Python
# transformers, scripts/transformers_js_check.sh in Transformers.js): the default teacher to
# half its parameters (budget) and with only its hidden size halved (so q_dim != hidden and
# config.json carries head_dim), and Qwen2 (q/k/v biases, tied) and Mistral (sliding window)
# models trained briefly from configs, then pruned in heads (whole KV groups), hidden, MLP and
# depth. Each OUT_DIR/NAME gets reference.json: shrink's greedy continuation of a fixed prompt
# (`shrink --json generate --prompt-ids $PROMPT --max-new-tokens 16 --ids --ignore-eos`).
# Usage: scripts/pruned_models.sh OUT_DIR [TRAIN_STEPS (default 150)]   ($SHRINK_BIN: shrink)
set -euo pipefail
cd "$(dirname "$0")/.."
P=${1:?usage: pruned_models.sh OUT_DIR [TRAIN_STEPS]}
STEPS=${2:-150}
SHRINK=${SHRINK_BIN:-build/bin/shrink}
# "You will be successful in your work, and the people" in the default teacher's tokenizer.
PROMPT=478,447,308,4037,296,401,634,45,303,264,547
[ -x "$SHRINK" ] || { echo "pruned_models.sh: build shrink first (scripts/setup.sh)" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$P"
"$SHRINK" -q data prepare --tokenizer models/teacher/tokenizer.json --out "$W/data" > /dev/null
prune() {  # NAME MODEL_DIR PRUNE_ARGS...
  local name=$1 model=$2
  shift 2
  rm -rf "${P:?}/$name"
  "$SHRINK" -q --threads 2 prune "$model" --out "$P/$name" --method structured --data "$W/data" \
    --calib-samples 8 --calib-len 128 --eval-tokens 0 "$@" > /dev/null
  "$SHRINK" -q --json generate "$P/$name" --prompt-ids "$PROMPT" --max-new-tokens 16 --ids \
    --ignore-eos > "$P/$name/reference.json"
}
prune llama_half models/teacher --target-params 0.5
prune llama_hidden models/teacher --keep-hidden 0.5
common='"vocab_size": 4096, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
  "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 512,
  "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu"'
echo "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"tie_word_embeddings\": true, $common}" > "$W/qwen2.json"
echo "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", \"sliding_window\": 64, \"tie_word_embeddings\": false, $common}" > "$W/mistral.json"
for a in qwen2 mistral; do
  "$SHRINK" -q init --out "$W/$a" --config "$W/$a.json" --seed 3 > /dev/null
  "$SHRINK" -q --threads 2 train --model "$W/$a" --data "$W/data" --out "$W/${a}_t" --steps "$STEPS" \
    --seq-len 128 --batch 8 --lr 3e-3 > /dev/null
  prune "$a" "$W/${a}_t/model" --keep-heads 0.5 --keep-hidden 0.75 --keep-mlp 0.5 --keep-layers 0.75
done
