#!/usr/bin/env bash
# The measurements quoted in the README and the issue notes, on the committed default teacher.
# Usage: scripts/experiments.sh kd|prune|quant|gptq|w4|awq|asym|actorder|spec|task|throughput [OUT_DIR]   (default OUT_DIR /tmp/shrink-exp)
# Every run is seeded; threads come from $SHRINK_THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:?usage: experiments.sh kd|prune|quant|gptq|w4|awq|asym|actorder|spec|task|throughput [OUT_DIR]}
OUT=${2:-/tmp/shrink-exp}
BIN=${SHRINK_BIN:-build/bin/shrink}
TH=${SHRINK_THREADS:-2}
T=models/teacher
STEPS=${STEPS:-200}
mkdir -p "$OUT"
DATA="$OUT/data"
[ -d "$DATA" ] || "$BIN" data prepare --tokenizer "$T/tokenizer.json" --out "$DATA" --val-fraction 0.05 --seed 0 >/dev/null
COMMON=(--data "$DATA" --steps "$STEPS" --seq-len 256 --batch 16 --lr 2e-3 --warmup 20 --seed 7
        --eval-every 0 --eval-tokens 0 --save-every 0 --log-every 10)
summary() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'val_ppl=%.3f' % d['val_perplexity'], 'tok/s=%.0f' % d['tokens_per_second'], 'seconds=%.0f' % d['seconds'])" "$1" "$2"; }
# One quantization, then the runtime's perplexity and KL against the float teacher over every
# held-out token.
run() { "$BIN" --threads "$TH" --json quantize "$T" --out "$OUT/q-$1" "${@:2}" --data "$DATA" --calib-samples 64 --eval-tokens 0 >"$OUT/q-$1.json"
        "$BIN" --threads "$TH" --json verify "$OUT/q-$1" --reference "$T" --data "$DATA" --max-tokens 0 --no-bench \
          | python3 -c "import json,sys; d=json.load(sys.stdin); q=json.load(open('$OUT/q-$1.json')); print('%-30s ppl %.3f (float %.3f, %+.4f%%) KL %.6f top1 %.4f calib %.1f s%s' % ('$1', d['perplexity_compact'], d['perplexity_reference'], 100*d['perplexity_increase'], d['kl'], d['top1_agreement'], q['calibration']['seconds'], ' output error vs rtn %.3f' % q['gptq']['output_error_ratio'] if 'gptq' in q else ''))"; }
case "$WHAT" in
  kd)  # 1. KD vs CE (same student shape, data, steps, seed); 2. layer-drop vs scratch init.
    "$BIN" --threads "$TH" -q train --config recipes/configs/student-4l.json --tokenizer "$T/tokenizer.json" --out "$OUT/ce-scratch" "${COMMON[@]}" >/dev/null
    summary "$OUT/ce-scratch/train.json" "CE, scratch init:"
    "$BIN" --threads "$TH" -q distill --teacher "$T" --student-config recipes/configs/student-4l.json --out "$OUT/kd-scratch" --alpha 1 --temperature 1 "${COMMON[@]}" >/dev/null
    summary "$OUT/kd-scratch/distill.json" "KD (alpha 1, T 1), scratch init:"
    "$BIN" --threads "$TH" -q distill --teacher "$T" --student-layers ::2 --out "$OUT/kd-layerdrop" --alpha 1 --temperature 1 "${COMMON[@]}" >/dev/null
    summary "$OUT/kd-layerdrop/distill.json" "KD (alpha 1, T 1), layer-drop init (0,2,4,6):"
    ;;
  prune)  # 50% unstructured and 2:4 for magnitude, Wanda, SparseGPT; perplexity on val.
    for m in magnitude wanda sparsegpt; do
      for p in "" 2:4; do
        "$BIN" --threads "$TH" --json prune "$T" --out "$OUT/prune-$m${p:+-24}" --method "$m" --sparsity 0.5 ${p:+--pattern $p} \
          --data "$DATA" --calib-samples 64 --calib-len 256 --eval-tokens 0 >/dev/null
        echo "$m ${p:-50%}: $("$BIN" --threads "$TH" --json eval "$OUT/prune-$m${p:+-24}" --data "$DATA" --seq-len 256 | grep '"perplexity"')"
      done
    done
    ;;
  quant)  # Perplexity and KL against the float teacher per scheme and observer, +/- SmoothQuant.
    run w8a16 --scheme w8a16
    run w8a8-dynamic --scheme w8a8 --activations dynamic
    for o in minmax ema percentile mse entropy; do run "w8a8-static-$o" --scheme w8a8 --activations static --observer $o; done
    run w8a16-sq --scheme w8a16 --smoothquant auto
    run w8a8-dynamic-sq --scheme w8a8 --activations dynamic --smoothquant auto
    for o in minmax ema percentile mse entropy; do run "w8a8-static-$o-sq" --scheme w8a8 --activations static --observer $o --smoothquant auto; done
    ;;
  gptq)  # Round-to-nearest against GPTQ weights (and GPTQ with act-order) at the same scheme.
    for v in "w8a16:--scheme w8a16" "w8a16-g32:--scheme w8a16 --group-size 32" "w8a8-dynamic:--scheme w8a8" \
             "w8a8-dynamic-sq:--scheme w8a8 --smoothquant auto" \
             "w8a8-static-mse-sq:--scheme w8a8 --activations static --observer mse --smoothquant auto"; do
      name=${v%%:*}
      read -r -a args <<<"${v#*:}"
      run "$name" "${args[@]}"
      run "$name-gptq" "${args[@]}" --method gptq
      run "$name-gptq-ao" "${args[@]}" --method gptq --act-order
    done
    ;;
  w4)  # 4-bit weights (W4A16, pack-quantized): round-to-nearest against GPTQ, groups of 64 and 32,
       # next to W8A16; then each one's multiple-choice accuracy (tasks/fortunes-cloze.jsonl).
    RT=${SHRINK_RT_BIN:-build/bin/shrink-rt}
    run w8a16 --scheme w8a16
    for g in 64 32; do
      run "w4a16-g$g" --scheme w4a16 --group-size $g
      run "w4a16-g$g-gptq" --scheme w4a16 --group-size $g --method gptq
      run "w4a16-g$g-gptq-ao" --scheme w4a16 --group-size $g --method gptq --act-order
    done
    for m in w8a16 w4a16-g64 w4a16-g64-gptq w4a16-g64-gptq-ao w4a16-g32 w4a16-g32-gptq w4a16-g32-gptq-ao; do
      "$RT" --threads "$TH" --json eval "$OUT/q-$m" --task tasks/fortunes-cloze.jsonl \
        | python3 -c "import json,sys; d=json.load(sys.stdin); print('%-30s acc %.4f acc_norm %.4f' % ('$m', d['acc'], d['acc_norm']))"
    done
    ;;
  asym)  # Asymmetric 4-bit weights (zero points, --asym) against symmetric, for round to nearest,
         # AWQ (scales + clipping), GPTQ and AWQ + GPTQ, groups of 64 and 32.
    for g in 64 32; do
      for z in "" "-asym"; do
        a=(--scheme w4a16 --group-size $g ${z:+--asym})
        run "w4a16-g$g$z" "${a[@]}"
        run "w4a16-g$g$z-awq" "${a[@]}" --awq
        run "w4a16-g$g$z-gptq" "${a[@]}" --method gptq
        run "w4a16-g$g$z-awq-gptq" "${a[@]}" --awq --method gptq
      done
    done ;;
  actorder)  # GPTQ act-order: static groups (scales fixed up front) against groups formed in the
             # activation order (--act-order-groups, weight_g_idx), 4-bit groups of 64 and 32.
    for g in 64 32; do
      for z in "" "-asym"; do
        a=(--scheme w4a16 --group-size $g ${z:+--asym} --method gptq --act-order)
        run "w4a16-g$g$z-gptq-ao" "${a[@]}"
        run "w4a16-g$g$z-gptq-aog" "${a[@]}" --act-order-groups
      done
    done ;;
  awq)  # AWQ (activation-aware scales, clipping) against round-to-nearest and GPTQ, 4-bit groups
        # of 64 and 32 and 8-bit per channel; then each one's multiple-choice accuracy.
    RT=${SHRINK_RT_BIN:-build/bin/shrink-rt}
    runs=()
    for g in 64 32; do
      run "w4a16-g$g" --scheme w4a16 --group-size $g
      run "w4a16-g$g-awq-noclip" --scheme w4a16 --group-size $g --awq --awq-no-clip
      run "w4a16-g$g-awq" --scheme w4a16 --group-size $g --awq
      run "w4a16-g$g-gptq" --scheme w4a16 --group-size $g --method gptq
      run "w4a16-g$g-awq-gptq" --scheme w4a16 --group-size $g --awq --method gptq
      runs+=("w4a16-g$g" "w4a16-g$g-awq-noclip" "w4a16-g$g-awq" "w4a16-g$g-gptq" "w4a16-g$g-awq-gptq")
    done
    run w8a16 --scheme w8a16
    run w8a16-awq --scheme w8a16 --awq
    runs+=(w8a16 w8a16-awq)
    for m in "${runs[@]}"; do
      python3 -c "import json; a=json.load(open('$OUT/q-$m.json')).get('awq'); print('%-30s' % '$m', 'scale error ratio %.4f' % a['scale_error_ratio'] if a else '', 'clip error ratio %.4f' % a['clip_error_ratio'] if a and 'clip_error_ratio' in a else '')"
      "$RT" --threads "$TH" --json eval "$OUT/q-$m" --task tasks/fortunes-cloze.jsonl \
        | python3 -c "import json,sys; d=json.load(sys.stdin); print('%-30s acc %.4f acc_norm %.4f' % ('$m', d['acc'], d['acc_norm']))"
    done
    ;;
  spec)  # Speculative decoding on the teacher: a distilled 2-layer draft and a W8A8 draft, against plain greedy.
    RT=${SHRINK_RT_BIN:-build/bin/shrink-rt}
    [ -d "$OUT/draft-2l/model" ] || "$BIN" --threads "$TH" -q distill --teacher "$T" --student-layers ::4 --data "$DATA" \
      --out "$OUT/draft-2l" --steps 250 --seq-len 256 --batch 16 --lr 2e-3 --warmup 20 --seed 7 --eval-every 0 \
      --eval-tokens 0 --save-every 0 --log-every 50 >/dev/null
    [ -d "$OUT/draft-w8a8" ] || "$BIN" --threads "$TH" -q quantize "$T" --out "$OUT/draft-w8a8" --scheme w8a8 --smoothquant auto \
      --data "$DATA" --eval-tokens 0 >/dev/null
    PROMPTS=("The secret of success is" "A man who" "Q: What is the difference between" "Never trust" "It was a dark and stormy night")
    # Median decode tokens/s over 3 runs per prompt, and the acceptance rate.
    gen() { for p in "${PROMPTS[@]}"; do for rep in 1 2 3; do
              "$RT" --threads "$TH" --json generate "$T" --prompt "$p" --max-new-tokens 128 --ignore-eos "$@"; done; done \
            | python3 -c "
import json,sys
text, dec, rows, i = sys.stdin.read(), json.JSONDecoder(), [], 0
while text[i:].strip():
    o, i = dec.raw_decode(text, i + len(text[i:]) - len(text[i:].lstrip()))
    rows.append(o)
tps=sorted(r['decode_tokens_per_second'] for r in rows)
acc=[r['speculative']['acceptance_rate'] for r in rows if 'speculative' in r]
tpr=[r['speculative']['tokens_per_round'] for r in rows if 'speculative' in r]
print('%-34s decode tok/s median %.0f (min %.0f, max %.0f)%s' % (sys.argv[1], tps[len(tps)//2], tps[0], tps[-1],
      ', acceptance %.3f, %.2f tokens per round' % (sum(acc)/len(acc), sum(tpr)/len(tpr)) if acc else ''))" "$*"; }
    gen
    "$RT" --threads "$TH" --json generate "$OUT/draft-2l/model" --prompt "${PROMPTS[0]}" --max-new-tokens 128 --ignore-eos \
      | python3 -c "import json,sys; print('draft-2l alone: decode tok/s %.0f' % json.load(sys.stdin)['decode_tokens_per_second'])"
    "$RT" --threads "$TH" --json generate "$OUT/draft-w8a8" --prompt "${PROMPTS[0]}" --max-new-tokens 128 --ignore-eos \
      | python3 -c "import json,sys; print('draft-w8a8 alone: decode tok/s %.0f' % json.load(sys.stdin)['decode_tokens_per_second'])"
    for k in 2 4 6; do gen --draft "$OUT/draft-2l/model" --draft-tokens $k; done
    for k in 2 4 6; do gen --draft "$OUT/draft-w8a8" --draft-tokens $k; done
    ;;
  task)  # Multiple-choice accuracy (tasks/fortunes-cloze.jsonl) of a random init, the teacher, its RTN
         # int8 versions and, when a quickstart run exists (QS=runs/quickstart), its stages.
    TASK=tasks/fortunes-cloze.jsonl
    acc() { "${BIN}-rt" --threads "$TH" --json eval "$2" --task "$TASK" --batch 8 \
              | python3 -c "import json,sys; j=json.load(sys.stdin); print('%-44s acc %.4f +- %.4f  acc_norm %.4f +- %.4f' % (sys.argv[1], j['acc'], j['acc_stderr'], j['acc_norm'], j['acc_norm_stderr']))" "$1"; }
    "$BIN" -q init --config "$T/config.json" --tokenizer "$T/tokenizer.json" --out "$OUT/random-init" --seed 1 >/dev/null
    for s in w8a16 w8a8; do "$BIN" --threads "$TH" -q quantize "$T" --out "$OUT/rtn-$s" --scheme "$s" --data "$DATA" --eval-tokens 0 >/dev/null; done
    acc "random init, the teacher's config" "$OUT/random-init"
    acc "teacher" "$T"
    acc "teacher, W8A16" "$OUT/rtn-w8a16"
    acc "teacher, W8A8 dynamic" "$OUT/rtn-w8a8"
    QS=${QS:-runs/quickstart}
    for st in 00-prune 01-distill 02-quantize; do [ -d "$QS/$st/model" ] && acc "quickstart $st" "$QS/$st/model"; done
    ;;
  throughput)  # Training tokens/s of the teacher config: shrink vs PyTorch eager (Debian python3-torch).
    "$BIN" --threads "$TH" --json train --config recipes/configs/teacher.json --tokenizer "$T/tokenizer.json" --data "$DATA" \
      --out "$OUT/tp" --steps 12 --seq-len 256 --batch 16 --eval-every 0 --eval-tokens 0 --save-every 0 --log-every 2 >/dev/null
    python3 -c "import json; l=[json.loads(x) for x in open('$OUT/tp/metrics.jsonl') if 'tokens_per_second' in x]; t=[x['tokens_per_second'] for x in l[1:]]; print('shrink train: %.0f tokens/s (median of %d windows after the first)' % (sorted(t)[len(t)//2], len(t)))"
    /usr/bin/python3 scripts/bench_torch_train.py recipes/configs/teacher.json --threads "$TH" --batch 16 --seq-len 256 --steps 10
    ;;
  *) echo "unknown experiment $WHAT" >&2; exit 2 ;;
esac
