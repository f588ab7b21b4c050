#!/usr/bin/env python3
"""Make reference fixtures with Hugging Face transformers (run on a machine that has it).

shrink's own model must agree with the implementation that defines the format. This script
builds tiny random Llama / Qwen2 / Mistral models with transformers, saves them with
save_pretrained (so the checkpoints are written by another tool, not by shrink), and records
the float32 reference outputs next to them:

  DIR/<name>/config.json, model.safetensors (or shards + index), reference.safetensors
    reference.safetensors: input_ids (I32 [B,T]), logits (F32 [B,T,V]),
                           hidden_states (F32 [L+1,B,T,H], HF's output_hidden_states),
                           greedy_prompt (I32 [P]), greedy_ids (I32 [P+N]) from generate()

Usage: python3 scripts/hf_reference.py OUT_DIR [--stories PATH_TO_stories260K]
The tests in tests/train read tests/fixtures/hf/. Regenerate only when the cases change.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)


def reference(model, out_dir, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 9), generator=g)
    model = model.float().eval()
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        logits = out.logits.float().contiguous()
        hs = torch.stack([h.float() for h in out.hidden_states]).contiguous()
        prompt = ids[0, :5]
        gen = model.generate(prompt[None], max_new_tokens=24, do_sample=False,
                             min_new_tokens=24, pad_token_id=0)[0]
    save_file({
        "input_ids": ids.to(torch.int32).contiguous(),
        "logits": logits,
        "hidden_states": hs,
        "greedy_prompt": prompt.to(torch.int32).contiguous(),
        "greedy_ids": gen.to(torch.int32).contiguous(),
    }, os.path.join(out_dir, "reference.safetensors"))


def make(name, cls, cfg, root, seed, dtype=torch.float32, shard=None):
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    # Spread the weights so that logits are not all near zero and errors show.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    model = model.to(dtype)
    kw = {"safe_serialization": True}
    if shard:
        kw["max_shard_size"] = shard
    model.save_pretrained(out, **kw)
    # The reference runs in float32 on the weights exactly as saved (bf16-rounded if bf16).
    reference(cls.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager"),
              out, cfg.vocab_size, seed + 1)
    print("wrote", out, sorted(os.listdir(out)))


def main():
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  max_position_embeddings=256, rms_norm_eps=1e-5)
    make("llama_gqa_llama3rope", LlamaForCausalLM, LlamaConfig(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_theta=50000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        **common), root, 10)
    make("qwen2_bias_tied_bf16", Qwen2ForCausalLM, Qwen2Config(
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
        rope_theta=1000000.0, use_sliding_window=False, **common), root, 20, dtype=torch.bfloat16)
    make("mistral_mqa_linearrope", MistralForCausalLM, MistralConfig(
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
        sliding_window=None, rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0}, **common), root, 30)
    make("llama_mha_sharded_f16", LlamaForCausalLM, LlamaConfig(
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
        attention_bias=False, **common), root, 40, dtype=torch.float16, shard="60KB")
    if len(sys.argv) > 3 and sys.argv[2] == "--stories":
        src = sys.argv[3]
        m = LlamaForCausalLM.from_pretrained(src, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
        out = os.path.join(root, "stories260K")
        os.makedirs(out, exist_ok=True)
        ids = torch.tensor([[1, 403, 407, 261, 378, 365, 261, 484, 1, 350],
                            [1, 70, 296, 285, 400, 420, 261, 288, 300, 301]])
        with torch.no_grad():
            lo = m(input_ids=ids).logits.float().contiguous()
            gen = m.generate(ids[0:1, :3], max_new_tokens=40, do_sample=False,
                             min_new_tokens=40, pad_token_id=0)[0]
            # Perplexity over non-overlapping windows, as shrink eval defines it.
            nll = torch.nn.functional.cross_entropy(lo[:, :-1].reshape(-1, lo.shape[-1]),
                                                    ids[:, 1:].reshape(-1))
        save_file({"input_ids": ids.to(torch.int32).contiguous(), "logits": lo,
                   "greedy_prompt": ids[0, :3].to(torch.int32).contiguous(),
                   "greedy_ids": gen.to(torch.int32).contiguous(),
                   "mean_nll": nll.reshape(1).contiguous()},
                  os.path.join(out, "reference.safetensors"))
        print("stories260K mean nll", float(nll), "greedy", gen.tolist())
    with open(os.path.join(root, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)


if __name__ == "__main__":
    main()
