#!/usr/bin/env python3
"""Check a shrink-trained tokenizer.json against the Hugging Face `tokenizers` library.

Inputs (made by scripts/gpu_carry.sh): DIR/tokenizer.json and DIR/encodings.jsonl, shrink's
own encodings {"text", "ids"}. The HF library must load the file, produce the same ids for
every text, and decode them back to the text. Writes a JSON summary to stdout; exit 1 on any
mismatch.
Usage: python3 scripts/hf_tokenizer_check.py DIR
"""
import json
import sys

from tokenizers import Tokenizer
import tokenizers


def main():
    d = sys.argv[1]
    tok = Tokenizer.from_file(f"{d}/tokenizer.json")
    n = mismatch = bad_decode = 0
    examples = []
    with open(f"{d}/encodings.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            n += 1
            hf = tok.encode(rec["text"], add_special_tokens=False).ids
            if hf != rec["ids"]:
                mismatch += 1
                if len(examples) < 5:
                    examples.append({"text": rec["text"][:200], "shrink": rec["ids"][:40],
                                     "hf": hf[:40]})
            if tok.decode(rec["ids"], skip_special_tokens=False) != rec["text"]:
                bad_decode += 1
    out = {"tokenizers_version": tokenizers.__version__, "vocab_size": tok.get_vocab_size(),
           "texts": n, "id_mismatches": mismatch, "decode_mismatches": bad_decode,
           "examples": examples}
    print(json.dumps(out, indent=2))
    sys.exit(0 if mismatch == 0 and bad_decode == 0 and n > 0 else 1)


if __name__ == "__main__":
    main()
