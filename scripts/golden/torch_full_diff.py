#!/usr/bin/python3
"""Golden outputs for full fine-tuning and diff pruning (a dev tool, never a runtime dependency).

    nice -n 10 /usr/bin/python3 scripts/golden/torch_full_diff.py    # writes test/golden/methods/*_{full,diff}*

A sibling of torch_methods.py: same models (rebuilt from the same seeds and checked byte for byte
against test/golden/methods/models/<arch>/model.safetensors, which this script never writes), same
micro-batches (checked against <arch>_lora/expected.json), same forward and the same training recipe
(its docstring: windows of 2 micro-batches, transformers' no-decay name patterns, cosine schedule with
warmup 1 of 4, torch AdamW with betas (0.9, 0.999), eps 1e-8, weight decay 0.01, clipping that clips).
It only adds fixtures; no file torch_methods.py writes is touched. Layout:

    llama_full/, llama_tied_full/, qwen2_full/, llama_full_trainable/
        expected.json, grads_step0.safetensors, adapter_out.safetensors            (no adapter_in)
    llama_diff/, llama_tied_diff/, qwen2_diff/
        adapter_in/{adapter_config.json, adapter_model.safetensors}
        expected.json, grads_step0.safetensors, adapter_out.safetensors, adapter_out_dense.safetensors

full -- full fine-tuning. The starting point is the model itself (models/<arch>/model.safetensors),
  so there is no adapter_in; logits_row0 is the starting model's.
  * Trainable: every tensor of the checkpoint (embed_tokens, every norm weight, every Linear weight and
    existing bias, the untied lm_head). With tie_word_embeddings the embedding matrix is ONE parameter
    (there is no lm_head tensor): its gradient is the sum of the lookup's and the head's.
  * llama_full_trainable: only the tensors whose checkpoint name matches the regular expression
    TRAINABLE = "model\\.layers\\.1\\.|model\\.norm" (a search anywhere in the name, re.search = JavaScript's
    RegExp.prototype.test) train; the rest is frozen and absent from grads_step0/adapter_out.
    expected.json's hyper.trainable holds that string.
  * Weight decay 0.01, none for names matching the no-decay patterns, applied to the checkpoint names:
    every norm weight ("...input_layernorm.weight", "model.norm.weight") and the qwen2 q/k/v biases get
    none; embed_tokens, lm_head and the Linear weights decay. hyper.no_decay lists them (trainable only).
  * Clipping norm and max_grad_norm are over the trainable tensors. max_grad_norm is 0.4 x the step-0
    pre-clip norm (2 significant digits), not 0.5: lr 1e-2 on every tensor moves the model far in one
    step (llama_full's loss 5.62 -> 2.00), and step 2's norm (0.49 x step 0's on llama) must still clip. grads_step0.safetensors (pre-clip) and adapter_out.safetensors (the trained tensors
    after 3 steps) are keyed by checkpoint names ("model.layers.0.self_attn.q_proj.weight", ...), trainable
    tensors only.

diff -- diff pruning (Guo et al. 2021, "Parameter-Efficient Transfer Learning with Diff Pruning", the
  magnitude-pruning variant). Not a PEFT method: peftkit's own adapter format.
  * adapter_config.json: {"peft_type": "DIFF", "task_type": "CAUSAL_LM", "target_modules": [the 7 Linear
    names], "density": 0.1, "prune_step": 1, "base_model_name_or_path": null, "inference_mode": true}.
  * adapter_model.safetensors, per targeted Linear <mod> (e.g. model.layers.0.self_attn.q_proj):
      base_model.model.<mod>.diff_indices   I64 [k]  flat row-major indices into the [out, in] weight,
                                                     strictly ascending
      base_model.model.<mod>.diff_values    F32 [k]  delta at those indices (the non-pruned entries)
    A dense (not yet pruned) delta stores ALL indices 0..out*in-1.
  * Forward: each targeted Linear uses W + delta: y = x (W + delta)^T + b. delta ([out, in]) is the
    trainable tensor; it gets weight decay 0.01 (its name matches no no-decay pattern; hyper.no_decay=[]).
  * Pruning at the config's prune_step p (0-based optimizer step index): right AFTER step p's optimizer
    update, if delta is still dense, each module keeps its k = ceil(density * out * in) entries of largest
    |delta| (ties: lower flat index first, i.e. a stable sort by (-|delta|, index)); the other entries are
    set to 0 and become masked: from then on their gradient is zeroed BEFORE clipping (the clipping norm
    counts kept entries only) and, at the prune, their AdamW exp_avg and exp_avg_sq are zeroed, so they
    stay exactly 0 (zero gradient, zero moments, decay of 0). No density * out * in here is within 1e-9 of
    an integer, so every way of computing the ceiling agrees. Here p = 1: steps 0 and 1 are dense, step 2
    is masked. kept_per_module in expected.json gives k per module; prune_margin the smallest gap, over
    modules, between the k-th and (k+1)-th largest |delta| at the prune (1.4e-7 .. 4.3e-7 here, about
    100 f32 ulps of |delta| ~ 0.02).
  * adapter_in: a DENSE delta, 0.01 randn (non-trivial; logits_row0 are with it applied).
    grads_step0.safetensors: the dense pre-clip step-0 gradients, base_model.model.<mod>.diff_delta F32
    [out, in]. adapter_out.safetensors: the sparse format (diff_indices + diff_values) after 3 steps.
    adapter_out_dense.safetensors: the same delta dense, base_model.model.<mod>.diff_delta F32 [out, in].
  * max_grad_norm for diff is 0.2 x the step-0 pre-clip norm (2 significant digits), not 0.5: step 2's
    norm counts only the kept 10% of the entries (about sqrt(0.1) = 0.32 of a dense norm), and the fixture
    must clip at every step.

expected.json: as torch_methods.py's (arch, method, micro_batches, hyper, window_tokens, losses,
grad_norms, lrs, final_loss, logits_row0, f32_vs_f64_relerr, torch), hyper with no_decay (and
trainable, or density and prune_step); f32_vs_f64_relerr also names the worst tensor of each kind and
gives adapter_out_per_tensor.

Self-checks: models and micro-batches equal torch_methods.py's; autograd vs float64 central differences
of the window loss for the full-FT embedding (rows the loss sees through the lookup; on the tied model
also rows it does not, the pad row among them, whose gradient is the head's alone), lm_head, norms and
Linears, on the untied and the tied model; rows the lookup cannot reach get exactly 0 from it; the tied embedding gradient equals the
sum of a lookup-only copy's and a head-only copy's; finite differences on delta entries; clipping at
every step; after the prune and after step 2 each module holds exactly k non-zeros (at the mask's
positions), pruned moments are exactly 0; llama_full_trainable's step-0 gradients equal llama_full's;
the float64 re-run agrees with the f32 run within 1e-5 (every tensor; F64_LOOSE names the one
exception, qwen2_full's k_proj biases, at 7e-4 and 2e-4: their gradient is partly f32 noise, as
torch_methods.py's BITFIT_TARGETS explains); f32_vs_f64_relerr.adapter_out_per_tensor records each
tensor's figure (llama_full's lm_head: 5.7e-6, from its few entries whose gradient is near AdamW's eps,
where g / (sqrt(v) + eps) turns absolute rounding into relative change). The diff masks: the float64
run prunes the same entries, and every entry of delta lies farther from the prune threshold than 10x
its f32 vs f64 difference.
"""
import json
import math
import os
import re
import sys
import tempfile

import torch

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_llama_lora import save_safetensors  # noqa: E402
from torch_methods import (ARCHS, BETAS, EPS, GRAD_ACCUM, HIDDEN, LR, NO_DECAY_PATTERNS, OUT, PREFIX, STEPS,  # noqa: E402
                           TARGETS, TOTAL, WARMUP, WD, Adapter, decays, forward, linear_modules, lr_factor,
                           make_batches, make_model, relerr, summed_ce, window_tokens)

NONE = Adapter("none", {}, {}, {})
TRAINABLE = r"model\.layers\.1\.|model\.norm"
DENSITY, PRUNE_STEP = 0.1, 1
CLIP_FACTOR = {"full": 0.4, "diff": 0.2}
F64_TOL = 1e-5
# qwen2's k_proj biases (rope theta 1e6): their gradient along the slowly rotating rope dims is f32
# rounding noise (torch_methods.py, BITFIT_TARGETS), e.g. 6.5e-8 in f64 against 7.3e-8 in f32, and
# AdamW's g / (sqrt(v) + eps) turns that into lr-sized differences: f32 vs f64 after 3 steps 7e-4
# (layer 0) and 2e-4 (layer 1). They stay trainable (full FT trains every tensor); expected.json's
# f32_vs_f64_relerr.adapter_out_per_tensor says how far each tensor can be trusted.
F64_LOOSE = (r"k_proj\.bias$", 2e-3, {"qwen2_full"})


# ---- the two methods as "what trains" + "what the forward sees" ----------------------------------
def full_params(w, trainable=None, dtype=torch.float32):
    names = sorted(k for k in w if trainable is None or re.search(trainable, k))
    return {k: w[k].to(dtype).clone().requires_grad_() for k in names}


def full_effective(w):
    return lambda P: {**w, **P}


def diff_key(mod):
    return PREFIX + mod + ".diff_delta"


def diff_config():
    return {"peft_type": "DIFF", "task_type": "CAUSAL_LM", "target_modules": TARGETS, "density": DENSITY,
            "prune_step": PRUNE_STEP, "base_model_name_or_path": None, "inference_mode": True}


def diff_params(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    P = {}
    for mod, o, i in linear_modules():
        P[diff_key(mod)] = torch.randn(o, i, generator=g) * 0.01
    return {k: v.to(dtype).contiguous().requires_grad_() for k, v in P.items()}


def diff_effective(w):
    def eff(P):
        out = dict(w)
        for mod, _, _ in linear_modules():
            out[mod + ".weight"] = w[mod + ".weight"] + P[diff_key(mod)]
        return out
    return eff


def kept_count(numel):
    x = DENSITY * numel
    assert abs(x - round(x)) > 1e-9, f"density * {numel} = {x} is (nearly) an integer: ceil is ambiguous"
    return math.ceil(x)


def prune_mask(delta, k):
    """Bool mask of the k largest |delta| (ties: lower flat index first). Returns (mask, gap at the boundary)."""
    a = delta.detach().abs().flatten().tolist()
    order = sorted(range(len(a)), key=lambda i: (-a[i], i))
    mask = torch.zeros(len(a), dtype=torch.bool)
    mask[order[:k]] = True
    gap = a[order[k - 1]] - a[order[k]]
    return mask.view(delta.shape), gap


def sparse(P):
    """The diff adapter's file format: per module ascending flat indices of the non-zeros + their values.
    (A dense delta, as adapter_in, stores every index; use dense_sparse for it.)"""
    out = {}
    for k, v in P.items():
        mod = k[:-len(".diff_delta")]
        flat = v.detach().flatten()
        idx = torch.nonzero(flat != 0).flatten().to(torch.int64)
        out[mod + ".diff_indices"], out[mod + ".diff_values"] = idx, flat[idx].float().clone()
    return out


def dense_sparse(P):
    out = {}
    for k, v in P.items():
        mod = k[:-len(".diff_delta")]
        out[mod + ".diff_indices"] = torch.arange(v.numel(), dtype=torch.int64)
        out[mod + ".diff_values"] = v.detach().flatten().float().clone()
    return out


# ---- training (torch_methods.train with a parameter dict of any kind, and the prune) -------------
def accumulate(cfg, eff, P, mbs):
    n = window_tokens(mbs)
    for p in P.values():
        p.grad = None
    total = 0.0
    for ids, lab in mbs:
        loss = summed_ce(forward(cfg, eff(P), NONE, ids), lab) / n
        loss.backward()
        total += loss.item()
    return total


def window_loss(cfg, eff, P, mbs):
    return sum(summed_ce(forward(cfg, eff(P), NONE, ids), lab) for ids, lab in mbs) / window_tokens(mbs)


def step0_norm(cfg, eff, P, mbs):
    accumulate(cfg, eff, P, mbs)
    n = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in P.values())).item()
    for p in P.values():
        p.grad = None
    return n


def train(cfg, eff, P, mbs, max_grad_norm, prune=False):
    keys = sorted(P)
    groups = [{"params": [P[k] for k in keys if decays(k)], "weight_decay": WD},
              {"params": [P[k] for k in keys if not decays(k)], "weight_decay": 0.0}]
    groups = [gr for gr in groups if gr["params"]]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses, norms, lrs, grads0, masks, margin, at_prune = [], [], [], None, None, None, None
    for step in range(STEPS):
        losses.append(accumulate(cfg, eff, P, mbs))
        if masks is not None:  # pruned entries: gradient zeroed before clipping
            for k in keys:
                P[k].grad.masked_fill_(~masks[k], 0.0)
        if step == 0:
            grads0 = {k: P[k].grad.detach().clone() for k in keys}
        norm = torch.nn.utils.clip_grad_norm_([P[k] for k in keys], max_grad_norm).item()
        assert norm > max_grad_norm, f"step {step}: pre-clip norm {norm} <= max_grad_norm {max_grad_norm}"
        norms.append(norm)
        lrs.append(sched.get_last_lr()[0])
        assert abs(lrs[-1] - LR * lr_factor(step)) < 1e-15
        opt.step()
        sched.step()
        if prune and step == PRUNE_STEP and masks is None:
            masks, margin = {}, math.inf
            at_prune = {k: P[k].detach().clone() for k in keys}
            for k in keys:
                p = P[k]
                kk = kept_count(p.numel())
                mask, gap = prune_mask(p, kk)
                margin = min(margin, gap)
                with torch.no_grad():
                    p.masked_fill_(~mask, 0.0)
                st = opt.state[p]
                st["exp_avg"].masked_fill_(~mask, 0.0)
                st["exp_avg_sq"].masked_fill_(~mask, 0.0)
                masks[k] = mask
                assert int((p != 0).sum()) == kk, f"{k}: {int((p != 0).sum())} non-zeros after the prune, not {kk}"
    if prune:
        assert masks is not None
        for k in keys:  # after the masked step(s): still exactly k non-zeros, at the mask, moments 0 off it
            p, st, kk = P[k].detach(), opt.state[P[k]], kept_count(P[k].numel())
            assert int((p != 0).sum()) == kk and bool((p[masks[k]] != 0).all()), f"{k}: not {kk} non-zeros at the mask"
            assert bool((p[~masks[k]] == 0).all())
            assert bool((st["exp_avg"][~masks[k]] == 0).all()) and bool((st["exp_avg_sq"][~masks[k]] == 0).all())
    return dict(losses=losses, norms=norms, lrs=lrs, grads0=grads0, masks=masks, margin=margin, at_prune=at_prune)


# ---- self-checks ---------------------------------------------------------------------------------
def fd_check(cfg, eff, P, mbs, picks, what):
    """autograd vs float64 central differences of the window loss at (key, flat index) picks."""
    loss = window_loss(cfg, eff, P, mbs)
    grads = dict(zip(P, torch.autograd.grad(loss, list(P.values()))))
    worst, h = 0.0, 1e-5
    for k, idx in picks:
        with torch.no_grad():
            flat = P[k].view(-1)
            old = flat[idx].item()
            flat[idx] = old + h
            lp = window_loss(cfg, eff, P, mbs).item()
            flat[idx] = old - h
            lm = window_loss(cfg, eff, P, mbs).item()
            flat[idx] = old
        fd, an = (lp - lm) / (2 * h), grads[k].view(-1)[idx].item()
        rel = abs(fd - an) / max(abs(fd), abs(an), 1e-3)
        worst = max(worst, rel)
        assert rel < 1e-5, f"{what}: {k}[{idx}] autograd {an} vs finite difference {fd}"
        assert abs(an) > 1e-7, f"{what}: {k}[{idx}] gradient {an} too small to test anything"
    return worst, grads


def check_full_fd(cfg, w, mbs):
    """Embedding (lookup and head), lm_head, a norm, a Linear: autograd = finite differences (float64);
    with tied embeddings also: the one matrix's gradient = lookup-only gradient + head-only gradient."""
    w64 = {k: v.double() for k, v in w.items()}
    P = full_params(w64, dtype=torch.float64)
    # "used": ids at a position some later label of its row depends on. Every other row of the matrix
    # (never in the batch, the pad id 0, ids only at a row's last labelled position or after it) gets
    # exactly no gradient from the lookup.
    used = set()
    for ids, lab in mbs:
        for b in range(ids.shape[0]):
            last = max(t for t in range(ids.shape[1]) if lab[b, t] != -100)
            used |= set(ids[b, :last].tolist())
    used = sorted(used)
    unused = sorted(set(range(cfg["vocab_size"])) - set(used))
    assert 0 in unused and used[0] > 0
    E = "model.embed_tokens.weight"
    picks = [(E, used[0] * HIDDEN + 3), (E, used[-1] * HIDDEN + 17),
             ("model.norm.weight", 5), ("model.layers.0.input_layernorm.weight", 7),
             ("model.layers.1.self_attn.q_proj.weight", 100), ("model.layers.0.mlp.down_proj.weight", 1234)]
    if cfg["tie_word_embeddings"]:  # unused rows: the head's gradient only
        picks += [(E, unused[1] * HIDDEN + 40), (E, 0 * HIDDEN + 17)]
    else:
        picks += [("lm_head.weight", used[1] * HIDDEN + 9), ("lm_head.weight", unused[1] * HIDDEN + 11)]
    worst, grads = fd_check(cfg, full_effective(w64), P, mbs, picks, "full")
    gE = grads[E]
    if cfg["tie_word_embeddings"]:
        # the same model with the lookup and the head as two separate copies of the matrix
        cfg2 = dict(cfg, tie_word_embeddings=False)
        Pin = {E: w64[E].clone().requires_grad_(), "lm_head.weight": w64[E].clone().requires_grad_()}
        loss = window_loss(cfg2, full_effective(w64), Pin, mbs)
        g_in, g_head = torch.autograd.grad(loss, [Pin[E], Pin["lm_head.weight"]])
        assert (gE - (g_in + g_head)).abs().max().item() < 1e-12 * max(1.0, gE.abs().max().item())
        assert g_in[unused].abs().max().item() == 0 and g_in[used].abs().sum(1).min().item() > 0
        assert g_head.abs().sum(1).min().item() > 0  # the head reaches every row
    else:
        assert gE[unused].abs().max().item() == 0 and gE[used].abs().sum(1).min().item() > 0
    return worst


def check_diff_fd(cfg, w, mbs, seed):
    w64 = {k: v.double() for k, v in w.items()}
    P = diff_params(seed, torch.float64)
    keys = sorted(P)
    g = torch.Generator().manual_seed(seed + 7)
    picks = [(keys[int(j)], int(torch.randint(P[keys[int(j)]].numel(), (1,), generator=g)))
             for j in torch.randperm(len(keys), generator=g)[:5]]
    worst, grads = fd_check(cfg, diff_effective(w64), P, mbs, picks, "diff")
    # delta's gradient is the Linear weight's gradient of the merged model
    Pw = {mod + ".weight": (w64[mod + ".weight"] + P[diff_key(mod)].detach()).requires_grad_()
          for mod, _, _ in linear_modules()}
    gw = dict(zip(Pw, torch.autograd.grad(window_loss(cfg, full_effective(w64), Pw, mbs), list(Pw.values()))))
    for mod, _, _ in linear_modules():
        assert (gw[mod + ".weight"] - grads[diff_key(mod)]).abs().max().item() < 1e-14
    return worst


def checked_inputs():
    """(index, arch, cfg, weights, micro-batches) of each architecture, made with torch_methods.main's seeds and
    checked against the files it wrote."""
    for a, arch in enumerate(ARCHS):
        cfg, w = make_model(arch, 4321 + a)
        mbs = make_batches(8765 + a)
        check_same_inputs(arch, cfg, w, mbs)
        yield a, arch, cfg, w, mbs


def check_same_inputs(arch, cfg, w, mbs):
    d = os.path.join(OUT, "models", arch)
    with tempfile.TemporaryDirectory() as tmp:
        save_safetensors(os.path.join(tmp, "m.safetensors"), w, {"format": "pt"})
        with open(os.path.join(tmp, "m.safetensors"), "rb") as a, open(os.path.join(d, "model.safetensors"), "rb") as b:
            assert a.read() == b.read(), f"{arch}: the rebuilt model differs from models/{arch}/model.safetensors"
    with open(os.path.join(d, "config.json")) as f:
        assert json.load(f) == cfg, f"{arch}: config.json differs"
    with open(os.path.join(OUT, f"{arch}_lora", "expected.json")) as f:
        ref = json.load(f)["micro_batches"]
    assert ref == [dict(input_ids=i.tolist(), labels=lab.tolist()) for i, lab in mbs], f"{arch}: micro-batches differ"


# ---- fixtures ------------------------------------------------------------------------------------
def hyper_common(max_grad_norm, keys):
    return dict(lr=LR, betas=list(BETAS), eps=EPS, weight_decay=WD, steps=STEPS, grad_accum=GRAD_ACCUM,
                max_grad_norm=max_grad_norm, schedule="cosine", warmup_steps=WARMUP, total_steps=TOTAL,
                no_decay=[k for k in keys if not decays(k)],
                no_decay_rule="weight_decay 0 for a key whose lowercased name matches (re.search) any of "
                              + json.dumps(NO_DECAY_PATTERNS) + "; weight_decay 0.01 otherwise")


def f64_agreement(name, r32, P32, r64, P64):
    gs = {k: relerr(r32["grads0"][k], r64["grads0"][k]) for k in sorted(P32)}
    os_ = {k: relerr(P32[k], P64[k]) for k in sorted(P32)}
    gk, ok = max(gs, key=gs.get), max(os_, key=os_.get)
    f64 = dict(losses=max(abs(x - y) / abs(y) for x, y in zip(r32["losses"], r64["losses"])),
               grads_step0=gs[gk], adapter_out=os_[ok], worst_grad_tensor=gk, worst_out_tensor=ok,
               adapter_out_per_tensor=os_)
    assert max(f64["losses"], f64["grads_step0"]) < F64_TOL, f"{name}: f32 vs f64 {f64}"
    for k, e in os_.items():
        loose = re.search(F64_LOOSE[0], k) and name in F64_LOOSE[2]
        assert e < (F64_LOOSE[1] if loose else F64_TOL), f"{name}: f32 vs f64 {k}: {e}"
    return f64


def write_expected(d, arch, method, mbs, hyper, r, final_loss, logits_row0, f64, **extra):
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(dict(arch=arch, method=method,
                       micro_batches=[dict(input_ids=i.tolist(), labels=lab.tolist()) for i, lab in mbs],
                       hyper=hyper, window_tokens=window_tokens(mbs), losses=r["losses"], grad_norms=r["norms"],
                       lrs=r["lrs"], final_loss=final_loss, logits_row0=logits_row0.tolist(), **extra,
                       f32_vs_f64_relerr=f64, torch=torch.__version__),
                  f, indent=1)


def run_full(name, arch, cfg, w, mbs, trainable=None, full_grads0=None):
    fd = check_full_fd(cfg, w, mbs) if trainable is None else math.nan
    eff = full_effective(w)
    P = full_params(w, trainable)
    assert set(P) == (set(w) if trainable is None else {k for k in w if re.search(trainable, k)}) and P
    with torch.no_grad():
        logits_row0 = forward(cfg, w, NONE, mbs[0][0][:1])[0]
    n0 = step0_norm(cfg, eff, P, mbs)
    max_grad_norm = float(f"{CLIP_FACTOR['full'] * n0:.2g}")
    r = train(cfg, eff, P, mbs, max_grad_norm)
    assert abs(r["norms"][0] - n0) <= 1e-5 * n0
    for k, gk in r["grads0"].items():
        assert gk.abs().max().item() > 0, f"{name}: zero step-0 gradient for {k}"
        if full_grads0 is not None:  # the same model at step 0: freezing the rest changes no gradient
            assert relerr(gk, full_grads0[k]) < 1e-6, f"{name}: {k} differs from the full run's gradient"
    with torch.no_grad():
        final_loss = window_loss(cfg, eff, P, mbs).item()
    w64 = {k: v.double() for k, v in w.items()}
    P64 = full_params(w64, trainable, torch.float64)
    r64 = train(cfg, full_effective(w64), P64, mbs, max_grad_norm)
    f64 = f64_agreement(name, r, P, r64, P64)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    save_safetensors(os.path.join(d, "grads_step0.safetensors"), r["grads0"])
    save_safetensors(os.path.join(d, "adapter_out.safetensors"), {k: v.detach().clone() for k, v in P.items()},
                     {"format": "pt"})
    hyper = hyper_common(max_grad_norm, sorted(P))
    if trainable is not None:
        hyper["trainable"] = trainable
    write_expected(d, arch, "full", mbs, hyper, r, final_loss, logits_row0, f64)
    print(f"{name:22s} losses {['%.6f' % x for x in r['losses']]} -> {final_loss:.6f}  norms "
          f"{['%.4g' % x for x in r['norms']]} clip {max_grad_norm:g}  fd {fd:.1e}  f64 "
          f"{max(f64['losses'], f64['grads_step0'], f64['adapter_out']):.1e} ({f64['worst_out_tensor']})", flush=True)
    return r["grads0"]


def run_diff(name, arch, cfg, w, mbs, seed):
    fd = check_diff_fd(cfg, w, mbs, seed)
    eff = diff_effective(w)
    P = diff_params(seed)
    d = os.path.join(OUT, name)
    os.makedirs(os.path.join(d, "adapter_in"), exist_ok=True)
    with open(os.path.join(d, "adapter_in", "adapter_config.json"), "w") as f:
        f.write(json.dumps(diff_config(), indent=2, sort_keys=True))
    save_safetensors(os.path.join(d, "adapter_in", "adapter_model.safetensors"), dense_sparse(P), {"format": "pt"})
    with torch.no_grad():
        logits_row0 = forward(cfg, eff(P), NONE, mbs[0][0][:1])[0]
        base = forward(cfg, w, NONE, mbs[0][0][:1])[0]
    assert (logits_row0 - base).abs().max().item() > 1e-3, f"{name}: adapter_in is trivial"
    n0 = step0_norm(cfg, eff, P, mbs)
    max_grad_norm = float(f"{CLIP_FACTOR['diff'] * n0:.2g}")
    r = train(cfg, eff, P, mbs, max_grad_norm, prune=True)
    assert abs(r["norms"][0] - n0) <= 1e-5 * n0
    assert r["margin"] > 1e-7, f"{name}: prune boundary gap {r['margin']} (masks would be fragile)"
    for k, gk in r["grads0"].items():
        assert gk.abs().max().item() > 0, f"{name}: zero step-0 gradient for {k}"
    with torch.no_grad():
        final_loss = window_loss(cfg, eff, P, mbs).item()
    w64 = {k: v.double() for k, v in w.items()}
    P64 = diff_params(seed, torch.float64)
    r64 = train(cfg, diff_effective(w64), P64, mbs, max_grad_norm, prune=True)
    for k in P:
        assert torch.equal(r["masks"][k], r64["masks"][k]), f"{name}: f64 prunes {k} differently"
    # How close the mask's decision is, against how far rounding alone moves delta by the prune: every
    # entry's distance from the threshold (midway between the k-th and (k+1)-th largest |delta|) must be
    # 10x its f32 vs f64 difference, so that no implementation's rounding can flip it.
    safety = math.inf
    for k in P:
        a = r64["at_prune"][k].abs().flatten().sort(descending=True).values
        kk = kept_count(a.numel())
        thr = 0.5 * (a[kk - 1] + a[kk]).item()
        dist = (r64["at_prune"][k].abs() - thr).abs()
        noise = (r["at_prune"][k].double() - r64["at_prune"][k]).abs()
        safety = min(safety, (dist / noise.clamp_min(1e-300)).min().item())
    assert safety > 10, f"{name}: an entry of delta lies within {safety:.2g}x its rounding noise of the prune threshold"
    f64 = f64_agreement(name, r, P, r64, P64)
    save_safetensors(os.path.join(d, "grads_step0.safetensors"), r["grads0"])
    out = sparse(P)
    kept = {k[len(PREFIX):-len(".diff_delta")]: kept_count(v.numel()) for k, v in P.items()}
    for k in P:
        mod = k[:-len(".diff_delta")]
        idx = out[mod + ".diff_indices"]
        assert idx.numel() == kept[mod[len(PREFIX):]] and bool((idx[1:] > idx[:-1]).all())
        assert torch.equal(idx, torch.nonzero(r["masks"][k].flatten()).flatten())
    save_safetensors(os.path.join(d, "adapter_out.safetensors"), out, {"format": "pt"})
    save_safetensors(os.path.join(d, "adapter_out_dense.safetensors"), {k: v.detach().clone() for k, v in P.items()},
                     {"format": "pt"})
    hyper = hyper_common(max_grad_norm, sorted(P))
    hyper.update(density=DENSITY, prune_step=PRUNE_STEP)
    write_expected(d, arch, "diff", mbs, hyper, r, final_loss, logits_row0, f64, kept_per_module=kept,
                   prune_margin=r["margin"])
    print(f"{name:22s} losses {['%.6f' % x for x in r['losses']]} -> {final_loss:.6f}  norms "
          f"{['%.4g' % x for x in r['norms']]} clip {max_grad_norm:g}  fd {fd:.1e}  f64 "
          f"{max(f64['losses'], f64['grads_step0'], f64['adapter_out']):.1e} ({f64['worst_out_tensor']})  "
          f"margin {r['margin']:.1e} (safety {safety:.2g}x)", flush=True)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    only = set(sys.argv[1:])  # optional fixture names, for development
    for a, arch, cfg, w, mbs in checked_inputs():
        if not only or f"{arch}_full" in only or (arch == "llama" and "llama_full_trainable" in only):
            g0 = run_full(f"{arch}_full", arch, cfg, w, mbs)
            if arch == "llama":
                run_full("llama_full_trainable", arch, cfg, w, mbs, TRAINABLE, g0)
        if not only or f"{arch}_diff" in only:
            run_diff(f"{arch}_diff", arch, cfg, w, mbs, 6000 + 100 * a)


if __name__ == "__main__":
    sys.exit(main())
