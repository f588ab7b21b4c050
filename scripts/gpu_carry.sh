#!/usr/bin/env bash
# Run HERE (the CPU machine with apt packages) before a device run: copies the header-only
# dependencies, cpp-httplib (header and libraries) and GoogleTest sources into
# .carry/third_party (ignored by git; name `.carry` in
# the device tool's carry list), and prepares inputs for the Hugging Face cross-checks: a
# tokenizer trained by `shrink tokenizer train` and shrink's own encodings of sample texts; and
# structured-pruned models (Llama, Qwen2, Mistral; physically smaller, with shrink's greedy ids
# in reference.json) that scripts/hf_load_check.py loads in transformers. About 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.carry/third_party
rm -rf "$C" .carry/gpu_inputs
mkdir -p "$C/include" .carry/gpu_inputs
cp -r /usr/include/nlohmann /usr/include/CLI "$C/include/"
cp -r /usr/src/googletest "$C/googletest"
# cpp-httplib (the server and the --tp rendezvous): Debian splits it into a header and a library
# that loads OpenSSL, zlib and brotli. The GPU machine has no apt: carry the header with the
# headers it includes, and the libraries under lib/ (CMakeLists.txt links them with an rpath).
cp /usr/include/httplib.h /usr/include/zlib.h /usr/include/zconf.h "$C/include/"
cp -r /usr/include/brotli "$C/include/"
mkdir -p "$C/include/openssl" "$C/lib"
cp -r /usr/include/openssl/. /usr/include/x86_64-linux-gnu/openssl/. "$C/include/openssl/"
L=/usr/lib/x86_64-linux-gnu
for so in libcpp-httplib.so.0.11 libssl.so.3 libcrypto.so.3 libz.so.1 libbrotlidec.so.1 \
          libbrotlienc.so.1 libbrotlicommon.so.1; do
  cp -L "$L/$so" "$C/lib/$so"
done
ln -sf libcpp-httplib.so.0.11 "$C/lib/libcpp-httplib.so"
SHRINK=build/bin/shrink
[ -x "$SHRINK" ] || { echo "gpu_carry.sh: build shrink first (scripts/setup.sh)" >&2; exit 1; }
"$SHRINK" -q tokenizer train --vocab-size 4096 --out .carry/gpu_inputs/tokenizer.json
# Samples: 3000 fortunes, each line of them on its own, and hand-picked hard cases.
python3 - <<'PY'
import json, glob, os
docs = []
for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
    if f.endswith(".dat") or os.path.islink(f) or not os.path.isfile(f):
        continue
    text = open(f, encoding="utf-8", errors="replace").read()
    docs += [d.lstrip("\n") for d in text.split("\n%\n") if d.strip()]
docs = docs[:3000]
lines = [l for d in docs[:500] for l in d.split("\n") if l]
hard = ["Hello world's  123 foo!!\n\n  bar", "naïve café — déjà vu", "日本語のテキスト", "emoji 🙂👍🏽 ok",
        "tabs\tand\r\nCRLF", "   leading and trailing   ", "I'm you're we've they'll he'd",
        "<|endoftext|>special<|endoftext|>", "x" * 300, "12345678901234567890", "a\u0301 combining",
        "Ω≈ç√∫˜µ≤≥÷", "\u00a0nbsp\u2003em space", ""]
with open(".carry/gpu_inputs/samples.jsonl", "w", encoding="utf-8") as f:
    for t in docs + lines + hard:
        f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
PY
"$SHRINK" -q tokenizer encode --tokenizer .carry/gpu_inputs/tokenizer.json \
  --jsonl .carry/gpu_inputs/samples.jsonl > .carry/gpu_inputs/encodings.jsonl
# The Llama-family tokenizer.json layouts (Llama 3, Qwen2, SmolLM, SentencePiece BPE...) with
# shrink's encodings, for the Rust crate (and checked against Tokenizers.js here on the way).
if command -v node >/dev/null; then
  node scripts/tokenizer_check.mjs --shrink "$SHRINK" --work .carry/gpu_inputs/tokenizers --docs 500 \
    || [ $? -eq 77 ] || { echo "gpu_carry.sh: tokenizer_check failed" >&2; exit 1; }
  rm -f .carry/gpu_inputs/tokenizers/samples.jsonl
fi
# Structured-pruned models with shrink's greedy ids (see the script).
scripts/pruned_models.sh .carry/gpu_inputs/pruned
du -sh .carry
