#!/usr/bin/python3
"""Peer figure for `shrink train`: the same Llama training step in PyTorch eager.

Builds a Llama-family decoder in plain PyTorch from a shrink/HF config.json (RMSNorm, rotate-half
RoPE, GQA, SwiGLU, tied head: the same math as lib/train/model.cpp), then times AdamW training
steps of batch x seq-len random tokens at a fixed thread count and prints tokens/s as JSON.
Runs with Debian's python3-torch (apt install python3-torch), so no network is needed:

    /usr/bin/python3 scripts/bench_torch_train.py CONFIG.json --threads 2 --batch 16 --seq-len 256

Compare with: build/bin/shrink --threads 2 --json train --config CONFIG.json --steps 12 ...
"""
import argparse, json, math, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, hd = c["hidden_size"], c["head_dim"]
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], hd
        self.q = nn.Linear(H, self.nh * hd, bias=False)
        self.k = nn.Linear(H, self.nkv * hd, bias=False)
        self.v = nn.Linear(H, self.nkv * hd, bias=False)
        self.o = nn.Linear(self.nh * hd, H, bias=False)
        I = c["intermediate_size"]
        self.gate = nn.Linear(H, I, bias=False)
        self.up = nn.Linear(H, I, bias=False)
        self.down = nn.Linear(I, H, bias=False)
        self.n1 = RMSNorm(H, c["rms_norm_eps"])
        self.n2 = RMSNorm(H, c["rms_norm_eps"])

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        h = self.n1(x)
        q = self.q(h).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, 1)
        v = v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)
        p = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
        x = x + self.o((p @ v).transpose(1, 2).reshape(B, T, -1))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        hd = c["head_dim"]
        self.inv_freq = 1.0 / (c.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2).float() / hd))

    def forward(self, ids):
        T = ids.shape[1]
        ang = torch.arange(T).float()[:, None] * self.inv_freq[None]
        emb = torch.cat((ang, ang), -1)
        cos, sin = emb.cos(), emb.sin()
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        x = self.embed(ids)
        for l in self.layers:
            x = l(x, cos, sin, mask)
        return self.norm(x) @ self.embed.weight.t()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c = json.load(open(a.config))
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    m = Model(c)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    V = c["vocab_size"]
    times = []
    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, V, (a.batch, a.seq_len + 1))
        t0 = time.perf_counter()
        logits = m(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    tok = a.batch * a.seq_len * len(times)
    print(json.dumps({"peer": "pytorch-eager", "torch": torch.__version__, "threads": a.threads,
                      "params": sum(p.numel() for p in m.parameters()), "batch": a.batch,
                      "seq_len": a.seq_len, "steps_timed": len(times),
                      "tokens_per_second": tok / sum(times)}))


if __name__ == "__main__":
    main()
