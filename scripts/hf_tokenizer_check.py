#!/usr/bin/env python3
"""Check shrink's tokenizer against the Hugging Face `tokenizers` library (the Rust crate).

Each DIR holds a tokenizer.json and shrink's own encodings of sample texts: encodings.jsonl
({"text", "ids"[, "decoded"]}, encoded without special tokens) and, when present,
encodings_special.jsonl (with them). The HF library must load the file, produce the same ids for
every text, and decode them to shrink's "decoded" text (or, without it, back to the text).
Made by scripts/gpu_carry.sh: the trained tokenizer, and the Llama-family variants of
scripts/tokenizer_check.mjs. Writes a JSON summary to stdout; exit 1 on any mismatch.
Usage: python3 scripts/hf_tokenizer_check.py DIR [DIR...]
"""
import json
import os
import sys

from tokenizers import Tokenizer
import tokenizers


def check(d):
    tok = Tokenizer.from_file(f"{d}/tokenizer.json")
    n = mismatch = bad_decode = 0
    examples = []
    for name, special in (("encodings.jsonl", False), ("encodings_special.jsonl", True)):
        path = f"{d}/{name}"
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                n += 1
                hf = tok.encode(rec["text"], add_special_tokens=special).ids
                if hf != rec["ids"]:
                    mismatch += 1
                    if len(examples) < 5:
                        examples.append({"text": rec["text"][:200], "special": special,
                                         "shrink": rec["ids"][:40], "hf": hf[:40]})
                    continue
                if special:
                    continue
                want = rec.get("decoded", rec["text"])
                got = tok.decode(rec["ids"], skip_special_tokens=False)
                if got != want:
                    bad_decode += 1
                    if len(examples) < 5:
                        examples.append({"text": rec["text"][:200], "decoded_shrink": want[:200],
                                         "decoded_hf": got[:200]})
    return {"dir": d, "vocab_size": tok.get_vocab_size(), "texts": n, "id_mismatches": mismatch,
            "decode_mismatches": bad_decode, "examples": examples}


def main():
    results = [check(d) for d in sys.argv[1:]]
    ok = all(r["texts"] > 0 and r["id_mismatches"] == 0 and r["decode_mismatches"] == 0
             for r in results)
    print(json.dumps({"tokenizers_version": tokenizers.__version__, "results": results}, indent=2))
    sys.exit(0 if ok and results else 1)


if __name__ == "__main__":
    main()
