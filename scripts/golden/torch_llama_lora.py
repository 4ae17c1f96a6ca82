#!/usr/bin/python3
"""Golden outputs for the end-to-end LoRA test (a dev tool, never a runtime dependency).

Builds small random checkpoints in real Hugging Face layout (config.json + model.safetensors)
for three models -- a Llama with llama3 rope scaling, a Llama with tied embeddings, and a Qwen2
with q/k/v biases -- plus a starting PEFT adapter whose B is non-zero, then runs 3 AdamW steps
of LoRA training with a PyTorch implementation of the Hugging Face architecture (written out
here: transformers is not installable on the dev machines) and PyTorch's own AdamW. Everything
lands in test/golden/<name>/ so the TypeScript tests need no Python.

    /usr/bin/python3 scripts/golden/torch_llama_lora.py     # rewrites test/golden/

Settings of the golden run: f32, lora_dropout 0, no clipping, no shuffling, constant lr.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "test", "golden")

# ---- safetensors (no Python package on the dev machines; the format is 30 lines) ---------------
DT = {torch.float32: ("F32", 4), torch.int32: ("I32", 4), torch.int64: ("I64", 8)}


def save_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        dt, size = DT[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---- the Hugging Face Llama / Qwen2 forward (modeling_llama.py, eager attention) ------------
def rope_inv_freq(cfg):
    d = cfg["head_dim"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type") == "llama3":  # transformers' _compute_llama3_parameters
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        is_med = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        inv = torch.where(is_med, smoothed, inv_l)
    return inv


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rmsnorm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


class Lora:
    def __init__(self, A, B, scaling):
        self.A, self.B, self.s = A, B, scaling


def linear(x, W, b, lora):
    y = x @ W.t()
    if b is not None:
        y = y + b
    if lora is not None:
        y = y + (x @ lora.A.t()) @ lora.B.t() * lora.s
    return y


def forward(cfg, w, loras, ids, labels):
    B, T = ids.shape
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    x = w["model.embed_tokens.weight"][ids]
    inv = rope_inv_freq(cfg)
    freqs = torch.outer(torch.arange(T).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((T, T), float("-inf")).triu(1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."

        def lin(name, inp):
            return linear(inp, w[p + name + ".weight"], w.get(p + name + ".bias"), loras.get(p + name))

        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", h).view(B, T, H, D).transpose(1, 2)
        k = lin("self_attn.k_proj", h).view(B, T, KV, D).transpose(1, 2)
        v = lin("self_attn.v_proj", h).view(B, T, KV, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        att = (q @ k.transpose(2, 3)) / math.sqrt(D) + mask
        att = F.softmax(att, dim=-1, dtype=torch.float32)
        a = (att @ v).transpose(1, 2).reshape(B, T, H * D)
        x = x + lin("self_attn.o_proj", a)
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        x = x + lin("mlp.down_proj", F.silu(lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h))
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    logits = x @ head.t()
    if labels is None:
        return logits
    # HF's causal LM loss: predict token t+1 from position t, mean over labels != -100.
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


# ---- fixtures ------------------------------------------------------------------------------------
MODELS = {
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", tie_word_embeddings=False,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=16)),
    "llama_tied": dict(architectures=["LlamaForCausalLM"], model_type="llama", tie_word_embeddings=True),
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", tie_word_embeddings=False,
                  use_sliding_window=False, sliding_window=32),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HYPER = dict(lr=1e-2, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01, steps=3)
R, ALPHA = 4, 8


def make(name, extra, seed):
    g = torch.Generator().manual_seed(seed)
    hidden, inter, layers, heads, kv, vocab = 48, 136, 2, 4, 2, 97
    cfg = dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv, head_dim=hidden // heads, vocab_size=vocab, rms_norm_eps=1e-5,
               rope_theta=10000.0, max_position_embeddings=64, hidden_act="silu", torch_dtype="float32",
               bos_token_id=1, eos_token_id=2, **extra)
    D = cfg["head_dim"]

    def rnd(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    w = {"model.embed_tokens.weight": rnd(vocab, hidden, std=0.5), "model.norm.weight": 1 + rnd(hidden, std=0.1)}
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rnd(vocab, hidden, std=0.2)
    shapes = {"self_attn.q_proj": (heads * D, hidden), "self_attn.k_proj": (kv * D, hidden),
              "self_attn.v_proj": (kv * D, hidden), "self_attn.o_proj": (hidden, heads * D),
              "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
    for l in range(layers):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1 + rnd(hidden, std=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + rnd(hidden, std=0.1)
        for m, (o, i) in shapes.items():
            w[p + m + ".weight"] = rnd(o, i, std=1 / math.sqrt(i))
            if cfg["model_type"] == "qwen2" and m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                w[p + m + ".bias"] = rnd(o, std=0.1)
    # A starting adapter whose B is non-zero, so every LoRA gradient is non-trivial.
    loras = {}
    for l in range(layers):
        for m, (o, i) in shapes.items():
            A = rnd(R, i, std=1 / math.sqrt(i)).requires_grad_()
            Bm = rnd(o, R, std=0.05).requires_grad_()
            loras[f"model.layers.{l}.{m}"] = Lora(A, Bm, ALPHA / R)
    # Two rows: a prompt-masked completion and a right-padded short row (-100 labels).
    T = 9
    ids = torch.randint(3, vocab, (2, T), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    ids[1, 6:] = 0
    labels[1, 6:] = -100
    return cfg, w, loras, ids, labels


def adapter_tensors(loras, grads=False):
    out = {}
    for mod, lo in loras.items():
        p = "base_model.model." + mod
        out[p + ".lora_A.weight"] = lo.A.grad if grads else lo.A
        out[p + ".lora_B.weight"] = lo.B.grad if grads else lo.B
    return {k: v.detach().clone() for k, v in out.items()}


def main():
    torch.set_num_threads(2)
    for idx, (name, extra) in enumerate(MODELS.items()):
        cfg, w, loras, ids, labels = make(name, extra, 1234 + idx)
        d = os.path.join(OUT, name)
        os.makedirs(os.path.join(d, "adapter_in"), exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        save_safetensors(os.path.join(d, "model.safetensors"), w, {"format": "pt"})
        adapter_cfg = dict(peft_type="LORA", task_type="CAUSAL_LM", r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                           target_modules=TARGETS, bias="none", init_lora_weights=True, use_rslora=False,
                           fan_in_fan_out=False, inference_mode=True, base_model_name_or_path=None)
        with open(os.path.join(d, "adapter_in", "adapter_config.json"), "w") as f:
            json.dump(adapter_cfg, f, indent=2, sort_keys=True)
        save_safetensors(os.path.join(d, "adapter_in", "adapter_model.safetensors"), adapter_tensors(loras), {"format": "pt"})

        with torch.no_grad():  # what generation must see: logits after each prefix of row 0, with adapter_in
            prefill_logits = forward(cfg, w, loras, ids[:1], None)[0]
        params = [t for lo in loras.values() for t in (lo.A, lo.B)]
        opt = torch.optim.AdamW(params, lr=HYPER["lr"], betas=tuple(HYPER["betas"]), eps=HYPER["eps"],
                                weight_decay=HYPER["weight_decay"])
        losses = []
        for step in range(HYPER["steps"]):
            opt.zero_grad()
            loss = forward(cfg, w, loras, ids, labels)
            loss.backward()
            if step == 0:
                save_safetensors(os.path.join(d, "grads_step0.safetensors"), adapter_tensors(loras, grads=True))
            losses.append(loss.item())
            opt.step()
        with torch.no_grad():
            final_loss = forward(cfg, w, loras, ids, labels).item()
        save_safetensors(os.path.join(d, "adapter_out.safetensors"), adapter_tensors(loras), {"format": "pt"})
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(dict(input_ids=ids.tolist(), labels=labels.tolist(), hyper=HYPER, losses=losses,
                           final_loss=final_loss, torch=torch.__version__,
                           logits_row0=prefill_logits.tolist()), f, indent=2)
        print(f"{name}: losses {['%.6f' % l for l in losses]} -> {final_loss:.6f}")


if __name__ == "__main__":
    sys.exit(main())
