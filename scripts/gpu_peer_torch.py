#!/usr/bin/env python3
"""PyTorch eager fp16 peer of `shrink-rt bench --shape llama-1b` (run by scripts/gpu_check.sh).

Builds transformers' LlamaForCausalLM from the llama-1b shape of lib/runtime/api.cpp
(bench_shape: vocab 128256, hidden 2048, MLP 8192, 16 layers, 32 heads, 8 KV heads, tied
embeddings, rope_theta 5e5) with random weights in fp16 on the GPU, and measures what
shrink-rt bench measures: decode tok/s at batch 1, 8, 32 after a 512-token prompt (greedy,
KV cache, one forward per step, argmax on the GPU), and prefill tok/s at 512 and 2048 tokens
(batch 1). Eager means no torch.compile and no CUDA graphs; attention is transformers' default
(SDPA). Timings use torch.cuda.synchronize around host clocks, after warm-up.
Writes JSON: {"engine": ..., "results": [{"metric", "batch", "tokens", "tok_s", ...}]}.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, head_dim=64)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # bytes read per decode step: every linear + the lm_head (tied: the embedding matrix) + one
    # embedding row, as shrink counts (the embedding table itself is not streamed).
    emb = model.model.embed_tokens.weight
    step_bytes = weight_bytes + cfg.hidden_size * emb.element_size()
    results = []
    g = torch.Generator(device="cuda").manual_seed(0)

    @torch.no_grad()
    def decode(batch):
        ids = torch.randint(0, cfg.vocab_size, (batch, a.prompt_len), device="cuda", generator=g)
        out = model(input_ids=ids, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(a.warmup):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        lat = []
        t0 = time.perf_counter()
        for _ in range(a.gen_len):
            ts = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            lat.append(time.perf_counter() - ts)
        total = time.perf_counter() - t0
        return batch * a.gen_len / total, step_bytes * a.gen_len / total / 1e9, statistics.median(lat) * 1e3

    @torch.no_grad()
    def prefill(n):
        ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda", generator=g)
        for _ in range(2):
            model(input_ids=ids, use_cache=True)
        torch.cuda.synchronize()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            out.logits[:, -1].argmax(-1)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return n / statistics.median(times)

    for b in [int(x) for x in a.batches.split(",")]:
        tok_s, gbs, p50 = decode(b)
        results.append({"metric": "decode", "batch": b, "tokens": a.prompt_len, "tok_s": tok_s,
                        "weight_gb_s": gbs, "latency_p50_ms": p50})
        print(f"torch decode batch {b}: {tok_s:.1f} tok/s, {gbs:.0f} GB/s, p50 {p50:.3f} ms", flush=True)
    for n in [512, 2048]:
        tok_s = prefill(n)
        results.append({"metric": "prefill", "batch": 1, "tokens": n, "tok_s": tok_s})
        print(f"torch prefill {n}: {tok_s:.1f} tok/s", flush=True)
    import transformers
    engine = (f"torch {torch.__version__} eager fp16, transformers {transformers.__version__}, "
              f"attn {model.config._attn_implementation}, {torch.cuda.get_device_name()}")
    with open(a.out, "w") as f:
        json.dump({"engine": engine, "weight_bytes": weight_bytes, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
