#!/usr/bin/python3
"""Peer for `npm run bench:methods`: one training step per PEFT method in plain PyTorch on CPU.

The model is ../shared/bench/torch_lora_ref.py's Llama (same shapes, same unfused attention,
tied embeddings, f32), with each method written from its definition:
  lora    A, B (r=16, alpha=32) on q,k,v,o,gate,up,down; B zero-init
  dora    lora + a magnitude m per output row (init ||W|| per row); as PEFT's use_dora: the
          base product is computed once, ||W + s.B.A|| per row is recomputed every forward and
          detached, out = xW^T + (m/||.|| - 1).xW^T + (m/||.||).s.(xA^T)B^T
  ia3     a vector scaling k_proj and v_proj outputs and down_proj's input (ones-init)
  ln      every RMSNorm scale (2 per layer + the final norm)
  bitfit  a bias on each of the 7 Linears of every layer (zero-init; the model has none)
  diff    a dense difference delta on each of the 7 Linears (zero-init), out = x(W + delta)^T:
          diff pruning's dense phase (base frozen, delta trained)
  full    every weight: embeddings (tied with the head), norms, all Linears
  adapter Houlsby bottlenecks after each attention and MLP block, before the residual add:
          z + up(relu(down(z))), down hidden -> hidden/16 and up back, with biases, up zero-init
  prompt  20 virtual token embeddings (N(0,1)) before each sequence (PEFT's PROMPT_TUNING):
          a causal sequence of 20 + T positions, the virtual ones without labels
  p-tuning the same 20 embeddings produced by PEFT's MLP prompt encoder (Linear-ReLU-Linear-ReLU-
          Linear, hidden = hidden size) from a trained embedding table
  prefix  per-layer key/value prefixes of 20 positions (PEFT's PREFIX_TUNING without projection:
          one table of 20 x layers*2*kv_heads*head_dim), entering as a cache: not rotated, the
          real tokens at positions 20..; every query attends to all 20
  frozen  no trainable parameter: the forward and the backward down to the input embeddings
          (what a prompt's gradient needs), no optimizer: the yardstick of the soft prompts
Then the causal LM loss, backward, global-norm clipping at 1 (as peftkit and transformers'
Trainer do), AdamW (lr 2e-4, weight decay 0, as peftkit's default) on the trainable tensors.
usage: torch_methods_ref.py METHOD [smol135|tiny] [batch] [seq] [steps]
Prints one line: ... trainable=N step_median=Xs tokens_per_s=N loss=X blas=LIBRARY (the BLAS
library the process loaded: Debian's torch calls whatever libblas.so.3 resolves to, and the
reference BLAS there is single-threaded: 4.6 GFLOP/s against OpenBLAS's 114 on a
1024x1536x576 product on the bench machine)
"""
import math, os, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    # SmolLM2-135M shape
    "smol135": dict(hidden=576, inter=1536, layers=30, heads=9, kv=3, vocab=49152, theta=100000.0),
    "tiny": dict(hidden=256, inter=688, layers=4, heads=4, kv=2, vocab=4096, theta=10000.0),
}
METHODS = ("lora", "dora", "ia3", "ln", "bitfit", "diff", "full", "adapter", "prompt", "p-tuning", "prefix", "frozen")
VIRTUAL = 20
R, ALPHA = 16, 32


class Linear(nn.Module):
    """A bias-free Linear of the base model, adapted by `method` (name: q, k, v, o, g, u, d)."""

    def __init__(self, fin, fout, method, name):
        super().__init__()
        self.method, self.name = method, name
        self.weight = nn.Parameter(torch.empty(fout, fin), requires_grad=(method == "full"))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's init
        if method in ("lora", "dora"):
            self.A = nn.Parameter(torch.empty(R, fin)); nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            self.B = nn.Parameter(torch.zeros(fout, R))
            self.s = ALPHA / R
            if method == "dora":
                self.m = nn.Parameter(self.weight.detach().norm(dim=1))
        elif method == "ia3" and name in ("k", "v"):
            self.l = nn.Parameter(torch.ones(fout))
        elif method == "ia3" and name == "d":
            self.l = nn.Parameter(torch.ones(fin))  # feedforward module: scales the input
        elif method == "bitfit":
            self.b = nn.Parameter(torch.zeros(fout))
        elif method == "diff":
            self.delta = nn.Parameter(torch.zeros(fout, fin))

    def forward(self, x):
        m = self.method
        if m == "lora":
            return F.linear(x, self.weight) + (x @ self.A.t() @ self.B.t()) * self.s
        if m == "dora":
            base = F.linear(x, self.weight)
            lora = x @ self.A.t() @ self.B.t()
            norm = (self.weight + self.s * (self.B @ self.A).detach()).norm(dim=1).detach()
            scale = (self.m / norm).view(1, -1)
            return base + (scale - 1) * base + scale * lora * self.s
        if m == "ia3" and hasattr(self, "l"):
            return F.linear(x * self.l, self.weight) if self.name == "d" else F.linear(x, self.weight) * self.l
        if m == "bitfit":
            return F.linear(x, self.weight, self.b)
        if m == "diff":
            return F.linear(x, self.weight + self.delta)
        return F.linear(x, self.weight)


def rope(x, cos, sin):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return x * cos + torch.cat((-x2, x1), -1) * sin


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


class Block(nn.Module):
    def __init__(self, c, method):
        super().__init__()
        h, hd = c["hidden"], c["hidden"] // c["heads"]
        self.c, self.hd = c, hd
        norms = method in ("ln", "full")
        self.w1 = nn.Parameter(torch.ones(h), requires_grad=norms)
        self.w2 = nn.Parameter(torch.ones(h), requires_grad=norms)
        self.q = Linear(h, c["heads"] * hd, method, "q")
        self.k = Linear(h, c["kv"] * hd, method, "k")
        self.v = Linear(h, c["kv"] * hd, method, "v")
        self.o = Linear(c["heads"] * hd, h, method, "o")
        self.g = Linear(h, c["inter"], method, "g")
        self.u = Linear(h, c["inter"], method, "u")
        self.d = Linear(c["inter"], h, method, "d")
        if method == "adapter":
            self.adapters = nn.ModuleList(Bottleneck(h, h // 16) for _ in range(2))

    def block_out(self, i, z):
        return self.adapters[i](z) if hasattr(self, "adapters") else z

    def forward(self, x, cos, sin, prefix=None):
        B, T, _ = x.shape
        c, hd = self.c, self.hd
        y = rms(x, self.w1)
        q = self.q(y).view(B, T, c["heads"], hd).transpose(1, 2)
        k = self.k(y).view(B, T, c["kv"], hd).transpose(1, 2)
        v = self.v(y).view(B, T, c["kv"], hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        P = 0
        if prefix is not None:  # [2, kv, P, hd], already in the cache: not rotated
            P = prefix.shape[2]
            k = torch.cat((prefix[0].unsqueeze(0).expand(B, -1, -1, -1), k), 2)
            v = torch.cat((prefix[1].unsqueeze(0).expand(B, -1, -1, -1), v), 2)
        rep = c["heads"] // c["kv"]
        k = k.repeat_interleave(rep, 1); v = v.repeat_interleave(rep, 1)
        mask = torch.triu(torch.ones(T, T + P, dtype=torch.bool), 1 + P)
        if hasattr(F, "scaled_dot_product_attention"):
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
        else:  # PyTorch < 2.0 (Debian's 1.13): the attention written out
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            att = att.masked_fill(mask, float("-inf"))
            a = att.softmax(-1) @ v
        x = x + self.block_out(0, self.o(a.transpose(1, 2).reshape(B, T, -1)))
        y = rms(x, self.w2)
        return x + self.block_out(1, self.d(F.silu(self.g(y)) * self.u(y)))


class Bottleneck(nn.Module):
    def __init__(self, h, b):
        super().__init__()
        self.down, self.up = nn.Linear(h, b), nn.Linear(b, h)
        nn.init.zeros_(self.up.weight); nn.init.zeros_(self.up.bias)

    def forward(self, z):
        return z + self.up(F.relu(self.down(z)))


class Model(nn.Module):
    def __init__(self, c, method):
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c["vocab"], c["hidden"]); nn.init.normal_(self.emb.weight, std=0.02)
        self.emb.weight.requires_grad_(method == "full")  # tied: also the LM head
        self.blocks = nn.ModuleList(Block(c, method) for _ in range(c["layers"]))
        self.wf = nn.Parameter(torch.ones(c["hidden"]), requires_grad=method in ("ln", "full"))
        self.method = method
        h, hd = c["hidden"], c["hidden"] // c["heads"]
        if method == "prompt":
            self.virtual = nn.Parameter(torch.randn(VIRTUAL, h))
        elif method == "p-tuning":
            self.virtual_in = nn.Embedding(VIRTUAL, h)
            self.encoder = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        elif method == "prefix":
            self.prefix = nn.Parameter(torch.randn(VIRTUAL, c["layers"] * 2 * c["kv"] * hd))

    def forward(self, ids, labels):
        B, T = ids.shape; c = self.c; hd = c["hidden"] // c["heads"]
        x = self.emb(ids)
        if self.method == "frozen":
            x = x.detach().requires_grad_()
        virtual = self.virtual if self.method == "prompt" else \
            self.encoder(self.virtual_in.weight) if self.method == "p-tuning" else None
        if virtual is not None:
            x = torch.cat((virtual.unsqueeze(0).expand(B, -1, -1), x), 1)
            labels = torch.cat((torch.full((B, VIRTUAL), -100, dtype=labels.dtype), labels), 1)
        P = VIRTUAL if self.method == "prefix" else 0
        n = x.shape[1]
        inv = 1.0 / (c["theta"] ** (torch.arange(0, hd, 2).float() / hd))
        f = torch.outer(torch.arange(P, P + n).float(), inv); f = torch.cat((f, f), -1)
        cos, sin = f.cos(), f.sin()
        kv = self.prefix.view(VIRTUAL, c["layers"], 2, c["kv"], hd).permute(1, 2, 3, 0, 4) if P else None
        for i, b in enumerate(self.blocks):
            x = b(x, cos, sin, kv[i] if P else None)
        x = rms(x, self.wf)
        logits = x @ self.emb.weight.t()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def blas_library():
    try:
        with open("/proc/self/maps") as f:
            libs = {l.split()[-1] for l in f if "blas" in l.lower()}
        return ",".join(sorted(os.path.realpath(x) for x in libs)) or "none"
    except OSError:
        return "unknown"


def main():
    method = sys.argv[1] if len(sys.argv) > 1 else "lora"
    name = sys.argv[2] if len(sys.argv) > 2 else "tiny"
    B = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    T = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    if method not in METHODS:
        sys.exit(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    c = CONFIGS[name]
    m = Model(c, method)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0) if params else None
    ids = torch.randint(0, c["vocab"], (B, T))
    times, losses = [], []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss = m(ids, ids)
        loss.backward()
        if opt:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(); opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
        losses.append(loss.item())
    times.sort(); med = times[len(times) // 2]
    ntrain = sum(p.numel() for p in params)
    ntotal = sum(p.numel() for p in m.parameters())
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} {name} {method} fp32 B={B} T={T} params={ntotal} "
          f"trainable={ntrain} step_median={med:.3f}s tokens_per_s={B*T/med:.1f} "
          f"loss_first={losses[0]:.4f} loss={losses[-1]:.4f} blas={blas_library()}")


if __name__ == "__main__":
    main()
