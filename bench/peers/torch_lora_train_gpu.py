"""PyTorch peer of `npm run bench:train -- --device cuda`: one LoRA training step of a Llama-shaped
model on the GPU, the work bench/train_child.ts times (r=16, alpha=32 on q,k,v,o,gate,up,down,
causal LM loss, backward, AdamW on the adapter only, median of `steps` steps after 2 warm-ups).

    python3 torch_lora_train_gpu.py SHAPE MODE B T STEPS

SHAPE: smol135 (SmolLM2-135M: tied head) or tinyllama (TinyLlama-1.1B: untied head).
MODE:  lora-bf16  bf16 base weights, bf16 autocast (what PEFT on a bf16 model runs);
       qlora-nf4  the decoder Linear weights as bitsandbytes NF4 (Linear4bit, double quant,
                  compute_dtype bf16) under bf16 autocast; needs bitsandbytes.
The LoRA layer is PEFT's lora.Linear written out (base(x) + B(A(x))·s, A kaiming, B zero): PEFT
itself is not imported, so the peer measures the same math without its module overhead.
Prints one JSON line: tokens_per_s, step_s, peak_mb (torch.cuda.max_memory_reserved), torch,
bitsandbytes, peft (versions, or null where absent), device.
"""
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {
    "smol135": dict(hidden=576, inter=1536, layers=30, heads=9, kv=3, vocab=49152, theta=100000.0, tied=True),
    "tinyllama": dict(hidden=2048, inter=5632, layers=22, heads=32, kv=4, vocab=32000, theta=10000.0, tied=False),
    "tiny": dict(hidden=256, inter=688, layers=4, heads=4, kv=2, vocab=4096, theta=10000.0, tied=True),
}


def version(mod):
    try:
        return __import__(mod).__version__
    except Exception:  # absent, or broken for this torch
        return None


def base_linear(fin, fout, mode, dev):
    if mode == "qlora-nf4":
        import bitsandbytes as bnb
        lin = bnb.nn.Linear4bit(fin, fout, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
        w = torch.randn(fout, fin) * 0.02
        lin.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type="nf4")
        return lin.to(dev)  # quantizes on the move to the GPU
    lin = nn.Linear(fin, fout, bias=False, device=dev, dtype=torch.bfloat16)
    nn.init.normal_(lin.weight, std=0.02)
    lin.weight.requires_grad_(False)
    return lin


class LoraLinear(nn.Module):
    def __init__(self, fin, fout, mode, dev, r=16, alpha=32):
        super().__init__()
        self.base = base_linear(fin, fout, mode, dev)
        self.A = nn.Parameter(torch.empty(r, fin, device=dev))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(fout, r, device=dev))
        self.s = alpha / r

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.s


def rms(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos + torch.cat((-x2, x1), -1) * sin


class Block(nn.Module):
    def __init__(self, c, mode, dev):
        super().__init__()
        h, hd = c["hidden"], c["hidden"] // c["heads"]
        self.c, self.hd = c, hd
        self.w1 = nn.Parameter(torch.ones(h, device=dev), requires_grad=False)
        self.w2 = nn.Parameter(torch.ones(h, device=dev), requires_grad=False)
        self.q = LoraLinear(h, c["heads"] * hd, mode, dev)
        self.k = LoraLinear(h, c["kv"] * hd, mode, dev)
        self.v = LoraLinear(h, c["kv"] * hd, mode, dev)
        self.o = LoraLinear(c["heads"] * hd, h, mode, dev)
        self.g = LoraLinear(h, c["inter"], mode, dev)
        self.u = LoraLinear(h, c["inter"], mode, dev)
        self.d = LoraLinear(c["inter"], h, mode, dev)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c, hd = self.c, self.hd
        y = rms(x, self.w1)
        q = self.q(y).view(B, T, c["heads"], hd).transpose(1, 2)
        k = self.k(y).view(B, T, c["kv"], hd).transpose(1, 2)
        v = self.v(y).view(B, T, c["kv"], hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = c["heads"] // c["kv"]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        if hasattr(F, "scaled_dot_product_attention"):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch < 2.0: its math backend spelled out
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1), float("-inf"))
            a = att.softmax(-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B, T, -1))
        y = rms(x, self.w2)
        return x + self.d(F.silu(self.g(y)) * self.u(y))


class Model(nn.Module):
    def __init__(self, c, mode, dev):
        super().__init__()
        self.c = c
        self.emb = nn.Parameter(torch.randn(c["vocab"], c["hidden"], device=dev, dtype=torch.bfloat16) * 0.02, requires_grad=False)
        self.head = self.emb if c["tied"] else nn.Parameter(torch.randn(c["vocab"], c["hidden"], device=dev, dtype=torch.bfloat16) * 0.02, requires_grad=False)
        self.blocks = nn.ModuleList(Block(c, mode, dev) for _ in range(c["layers"]))
        self.wf = nn.Parameter(torch.ones(c["hidden"], device=dev), requires_grad=False)

    def forward(self, ids):
        T, hd, dev = ids.shape[1], self.c["hidden"] // self.c["heads"], ids.device
        inv = 1.0 / (self.c["theta"] ** (torch.arange(0, hd, 2, device=dev).float() / hd))
        f = torch.outer(torch.arange(T, device=dev).float(), inv)
        f = torch.cat((f, f), -1)
        cos, sin = f.cos(), f.sin()
        x = F.embedding(ids, self.emb).float()
        for b in self.blocks:
            x = b(x, cos, sin)
        x = rms(x, self.wf)
        logits = F.linear(x, self.head)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def main():
    shape, mode = sys.argv[1], sys.argv[2]
    B, T, steps = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    if mode == "qlora-nf4" and version("bitsandbytes") is None:
        sys.exit("bitsandbytes absent: no QLoRA peer on this machine")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    m = Model(SHAPES[shape], mode, dev)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    ids = torch.randint(0, SHAPES[shape]["vocab"], (B, T), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 2):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = m(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    peak = torch.cuda.max_memory_reserved() / 2**20 if dev.type == "cuda" else None
    print(json.dumps({"tokens_per_s": B * T / med, "step_s": med, "peak_mb": peak, "loss": loss.item(), "device": str(dev),
                      "torch": torch.__version__, "bitsandbytes": version("bitsandbytes"), "peft": version("peft")}))


if __name__ == "__main__":
    main()
