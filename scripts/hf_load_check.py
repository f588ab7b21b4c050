#!/usr/bin/env python3
"""Check that model directories written by shrink load in Hugging Face transformers and compute
what shrink computes. Run on a machine with torch + transformers (e.g. the GPU machine):

    scripts/hf_load_check.py DIR [DIR ...]

Each DIR needs `reference.json` next to its weights: the JSON that
`shrink --json generate DIR --prompt-ids 1,2,3 --max-new-tokens 16 --ids --ignore-eos` prints
(its "ids" are the prompt followed by shrink's greedy continuation, "prompt_len" the prompt). Pruned (smaller dense) models and
float models must load with AutoModelForCausalLM with no missing, unexpected or mismatched
tensors, and reproduce the greedy ids; int8
compressed-tensors directories need the `compressed-tensors` package and are reported as skipped
when it is missing. Exit 1 on any mismatch.
"""
import json, sys

import torch
from transformers import AutoModelForCausalLM


def main():
    bad = 0
    for d in sys.argv[1:]:
        ref = json.load(open(f"{d}/reference.json"))
        cfg = json.load(open(f"{d}/config.json"))
        if "quantization_config" in cfg:
            try:
                import compressed_tensors  # noqa: F401
            except ImportError:
                print(f"{d}: skipped (int8; needs the compressed-tensors package)")
                continue
        m, info = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32,
                                                       output_loading_info=True)
        m = m.eval()
        # Loading must be exact: transformers only warns about missing (randomly initialised),
        # unexpected or shape-mismatched tensors, so treat any of them as a failure.
        strict = {k: v for k, v in info.items() if v}
        if strict:
            print(f"{d}: loading was not exact: {strict}")
            bad += 1
            continue
        want = ref["ids"]
        ids = torch.tensor([want[:ref["prompt_len"]]])
        with torch.no_grad():
            out = m.generate(ids, max_new_tokens=len(want) - ref["prompt_len"], do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        got = out[0].tolist()
        same = got == want
        bad += not same
        print(f"{d}: {type(m).__name__}, {sum(p.numel() for p in m.parameters())} params, "
              f"greedy ids {'match' if same else 'DIFFER'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
