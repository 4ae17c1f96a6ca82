#!/usr/bin/python3
"""Golden outputs for two LoRA config options beside the low-rank layers: trained biases ("bias") and
modules_to_save (a dev tool, never a runtime dependency).

    nice -n 10 /usr/bin/python3 scripts/golden/torch_lora_extras.py                 # writes the two fixtures below
    nice -n 10 /usr/bin/python3 scripts/golden/torch_lora_extras.py --probe-bias-all  # f32 vs f64 of the rejected variant

A sibling of torch_methods.py: same models (rebuilt from the same seeds and checked byte for byte against
test/golden/methods/models/<arch>/model.safetensors, which this script never writes), same micro-batches
(checked against <arch>_lora/expected.json), same forward, the same training recipe (its docstring: windows
of 2 micro-batches, transformers' no-decay name patterns, cosine schedule with warmup 1 of 4, torch AdamW
with betas (0.9, 0.999), eps 1e-8, weight decay 0.01, max_grad_norm 0.5 x the step-0 pre-clip norm to 2
significant digits, clipping at every step) and the same file layout as <arch>_lora. It only adds
fixtures; no file torch_methods.py or torch_full_diff.py writes is touched:

    <name>/adapter_in/{adapter_config.json, adapter_model.safetensors}
    <name>/{expected.json, grads_step0.safetensors, adapter_out.safetensors}

qwen2_lora_bias_lora_only -- LoRA (r 4, alpha 8) on q_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
  of qwen2 with "bias": "lora_only": the existing biases of the LoRA-targeted Linears train, here the q_proj
  and v_proj biases of both layers (o/gate/up/down have none). k_proj has neither LoRA nor a trained bias:
  it keeps its base bias. A trained bias REPLACES the base bias in its Linear: y = x W^T + b_trained +
  s (x A^T) B^T. adapter_in's biases = base bias + 0.05 randn.
  Why not "bias": "all" on all 7 Linears (qwen2_lora_bias_all): "all" trains every existing bias, the k_proj
  ones included, and qwen2's k_proj bias gradient is f32 rounding noise (rope theta 1e6: along the slowly
  turning rope dims a key bias adds the same q.b to every score of a query, which softmax ignores; see
  torch_methods.py's BITFIT_TARGETS). Over the whole tensor the f32 vs f64 step-0 gradient still agrees
  (1.7e-6 relative), but its near-zero entries are noise that AdamW's g / (sqrt(v) + eps) turns into
  lr-sized moves: adapter_out's k_proj biases differ by 9.8e-5 (layer 0) and 1.7e-4 (layer 1) relative,
  above the 1e-5 every golden tensor must meet, while every other tensor of that run agrees within 3.9e-7
  (run --probe-bias-all to see them). lora_only with k_proj left out of target_modules trains the same
  q/v biases and leaves the k_proj ones alone.
llama_tied_lora_modules_to_save -- LoRA (r 4, alpha 8) on q_proj, v_proj of the TIED llama with
  "modules_to_save": ["embed_tokens", "lm_head"]. PEFT wraps each named module in a ModulesToSaveWrapper
  holding a deep copy (modules_to_save["default"]) that is trainable and used in the forward instead of the
  original; lm_head and embed_tokens are separate modules sharing one Parameter, and each is deep-copied on
  its own, so the two copies are separate tensors: the embedding copy serves the lookup, the lm_head copy
  the logits, and the tie is broken (ensure_weight_tying false, PEFT's default: PEFT warns "Model has
  tie_word_embeddings=True and a tied layer is part of the adapter, but ensure_weight_tying is not set to
  True"). adapter_in's copies = base embedding + 0.01 randn, a different draw for each.

Saved keys (base_model.model. + the module path in the HF model):
  LoRA:             base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r]
  bias:             base_model.model.<module>.bias [out], e.g. base_model.model.model.layers.0.self_attn.q_proj.bias
                    (peftkit's key; PEFT's own differs, see below)
  modules_to_save:  base_model.model.model.embed_tokens.weight [vocab, hidden], base_model.model.lm_head.weight
                    [vocab, hidden] (the copies)
  Weight decay by transformers' name rule (torch_methods.py): the biases get none ("bias" matches), the LoRA
  A/B and both copies get 0.01. expected.json's hyper.no_decay lists the bias keys.

What PEFT saves for these (read in huggingface/peft v0.20.0 src/peft/utils/save_and_load.py
get_peft_model_state_dict, src/peft/utils/other.py ModulesToSaveWrapper / _set_trainable,
src/peft/tuners/tuners_utils.py _mark_only_adapters_as_trainable):
  * bias "all": trainable = every parameter whose name contains "bias"; saved = every state_dict key
    containing "bias". A LoRA-wrapped Linear holds the original as .base_layer, so PEFT's key for q_proj's
    bias is base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias (no adapter name in it, so
    nothing is stripped). Only a bias of a module WITHOUT a LoRA layer is saved as <module>.bias. PEFT loads
    these keys unchanged (strict=False), so PEFT would ignore a "<lora module>.bias" tensor.
  * bias "lora_only": trainable = the base_layer bias of every LoRA layer. v0.20.0 SAVES NONE OF THEM: it looks
    for k.split("lora_")[0] + "bias" = "<module>.bias", which is not in the state dict (huggingface/peft issue
    #3306). PEFT main after v0.20.0 (commit 4ddb88b, PR #3490, _get_learnable_bias_state_dict) saves
    "<module>.base_layer.bias", as "all" does.
  * modules_to_save: ModulesToSaveWrapper.adapter_state_dict maps each key of the copy's state_dict to
    "<wrapper path>.<key>", dropping "modules_to_save.default.": base_model.model.model.embed_tokens.weight and
    base_model.model.lm_head.weight, the same keys as here.

adapter_config.json: every LoraConfig field as torch_methods.py writes them for <arch>_lora, with bias /
target_modules / modules_to_save set. expected.json: as torch_methods.py's (arch, method "lora",
micro_batches, hyper, window_tokens, losses, grad_norms, lrs, final_loss, logits_row0, f32_vs_f64_relerr,
torch), plus config ({bias, modules_to_save, target_modules}); f32_vs_f64_relerr also names the worst tensor
of each kind and gives grads_step0_per_tensor and adapter_out_per_tensor.

Self-checks: models and micro-batches equal torch_methods.py's; identity at neutral init (B = 0, trained
biases = base biases, both copies = the base embedding: the logits equal the base model's); autograd vs
float64 central differences of the window loss on an entry of every trainable tensor (plus a row of the
embedding copy that the lookup uses); non-zero step-0 gradients in every tensor; modules_to_save: the
embedding copy's gradient is exactly 0 on every row the lookup cannot reach and non-zero on the others, the
head copy's is non-zero on every row, and at neutral init the two copies' gradients add up to the gradient
of the one tied matrix (the model before the copies); clipping at every step; the f32 run within 1e-5 of
the float64 run (every tensor: losses, grads_step0, adapter_out).
"""
import json
import os
import sys

import torch

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_llama_lora import save_safetensors  # noqa: E402
from torch_methods import (ALPHA, BETAS, EPS, GRAD_ACCUM, HIDDEN, LR, NO_DECAY_PATTERNS, OUT, PREFIX, R,  # noqa: E402
                           STEPS, TARGETS, TOTAL, WARMUP, WD, Adapter, decays, forward, linear_modules, lora_config,
                           relerr, save_adapter_in, step0_norm, targeted, train, window_loss, window_tokens)
from torch_full_diff import checked_inputs  # noqa: E402

EMBED, HEAD = "model.embed_tokens", "lm_head"
FIXTURES = {
    "qwen2_lora_bias_lora_only": dict(arch="qwen2", seed=7200, target_modules=[t for t in TARGETS if t != "k_proj"],
                                      bias="lora_only", modules_to_save=None),
    "llama_tied_lora_modules_to_save": dict(arch="llama_tied", seed=7100, target_modules=["q_proj", "v_proj"],
                                            bias="none", modules_to_save=["embed_tokens", "lm_head"]),
}
# Rejected (see the docstring): written only with --probe-bias-all, and then nothing is written.
PROBE = {"qwen2_lora_bias_all": dict(arch="qwen2", seed=7201, target_modules=TARGETS, bias="all", modules_to_save=None)}
F64_TOL = 1e-5


# ---- the adapter: LoRA layers + trained biases + modules_to_save copies --------------------------
def saves(spec, short):  # modules_to_save names a module by its last dotted component(s), as PEFT's endswith
    return any(m.split(".")[-1] == short for m in (spec["modules_to_save"] or []))


def trained_bias_modules(spec, w):
    """Modules whose existing bias trains: every one with a bias ("all") or the LoRA-targeted ones ("lora_only")."""
    if spec["bias"] == "none":
        return []
    return [mod for mod, _, _ in linear_modules() if mod + ".bias" in w
            and (spec["bias"] == "all" or targeted(mod, spec["target_modules"]))]


def make_extras_adapter(spec, w, dtype=torch.float32):
    g = torch.Generator().manual_seed(spec["seed"])
    config = lora_config()
    config.update(target_modules=list(spec["target_modules"]), bias=spec["bias"], modules_to_save=spec["modules_to_save"])
    params, info = {}, {}
    for mod, o, i in linear_modules():
        if targeted(mod, config["target_modules"]):
            info[mod] = dict(r=R, alpha=ALPHA, scaling=ALPHA / R)
            params[PREFIX + mod + ".lora_A.weight"] = torch.randn(R, i, generator=g) / i ** 0.5
            params[PREFIX + mod + ".lora_B.weight"] = torch.randn(o, R, generator=g) * 0.05
    for mod in trained_bias_modules(spec, w):
        params[PREFIX + mod + ".bias"] = w[mod + ".bias"] + torch.randn(w[mod + ".bias"].shape, generator=g) * 0.05
    E = w[EMBED + ".weight"]
    if saves(spec, "embed_tokens"):
        params[PREFIX + EMBED + ".weight"] = E + torch.randn(E.shape, generator=g) * 0.01
    if saves(spec, "lm_head"):
        base_head = w.get(HEAD + ".weight", E)  # tied: the head IS the embedding matrix
        params[PREFIX + HEAD + ".weight"] = base_head + torch.randn(E.shape, generator=g) * 0.01
    params = {k: v.to(dtype).contiguous().requires_grad_() for k, v in params.items()}
    return Adapter("lora", config, params, info)


def effective(cfg, w, adapter):
    """(cfg, weights) the torch_methods forward runs on: the base weights with every trained bias and copy in
    place of the original. The dict holds the parameter tensors themselves, so it follows the optimizer's
    in-place updates and autograd reaches them. With a copy on a tied model the head becomes its own tensor
    (the copy, or else the base embedding)."""
    P, ww = adapter.params, dict(w)
    if (PREFIX + EMBED + ".weight" in P or PREFIX + HEAD + ".weight" in P) and cfg["tie_word_embeddings"]:
        cfg = dict(cfg, tie_word_embeddings=False)
        ww[HEAD + ".weight"] = w[EMBED + ".weight"]
    for k, v in P.items():
        if k.endswith(".bias") or k in (PREFIX + EMBED + ".weight", PREFIX + HEAD + ".weight"):
            ww[k[len(PREFIX):]] = v
    return cfg, ww


def neutral(adapter, w):
    out = {}
    for k, v in adapter.params.items():
        if k.endswith(".lora_B.weight"):
            out[k] = torch.zeros_like(v)
        elif k.endswith(".lora_A.weight"):
            out[k] = v.detach().clone()
        elif k.endswith(".bias"):
            out[k] = w[k[len(PREFIX):]].clone()
        elif k in (PREFIX + EMBED + ".weight", PREFIX + HEAD + ".weight"):
            out[k] = w.get(k[len(PREFIX):], w[EMBED + ".weight"]).clone()
        else:
            raise KeyError(k)
    return Adapter("lora", adapter.config, out, adapter.info)


# ---- self-checks ---------------------------------------------------------------------------------
def check_identity(cfg, w, adapter, mbs):
    ids = mbs[0][0]
    with torch.no_grad():
        base = forward(cfg, w, Adapter("none", {}, {}, {}), ids)
        a0 = neutral(adapter, w)
        neutral_logits = forward(*effective(cfg, w, a0), a0, ids)
        changed = forward(*effective(cfg, w, adapter), adapter, ids)
    err = (neutral_logits - base).abs().max().item()
    assert err < 1e-5, f"identity adapter moves logits by {err}"
    assert (changed - base).abs().max().item() > 1e-3, "adapter_in is trivial"


def used_rows(mbs):
    """Ids at a position some later label of its row depends on: the rows the lookup's gradient reaches."""
    used = set()
    for ids, lab in mbs:
        for b in range(ids.shape[0]):
            last = max(t for t in range(ids.shape[1]) if lab[b, t] != -100)
            used |= set(ids[b, :last].tolist())
    return sorted(used)


def check_finite_differences(cfg, w, spec, mbs, seed):
    """autograd vs float64 central differences of the window loss: one random entry of every trainable
    tensor, plus an entry in a row of the embedding copy that the lookup uses."""
    w64 = {k: v.double() for k, v in w.items()}
    a = make_extras_adapter(spec, w, torch.float64)
    c64, e64 = effective(cfg, w64, a)
    P = a.params
    loss = window_loss(c64, e64, a, mbs)
    grads = dict(zip(P, torch.autograd.grad(loss, list(P.values()))))
    g = torch.Generator().manual_seed(seed)
    picks = [(k, int(torch.randint(P[k].numel(), (1,), generator=g))) for k in sorted(P)]
    if PREFIX + EMBED + ".weight" in P:
        picks.append((PREFIX + EMBED + ".weight", used_rows(mbs)[3] * HIDDEN + 11))
    worst, h = 0.0, 1e-5
    for k, idx in picks:
        with torch.no_grad():
            flat = P[k].view(-1)
            old = flat[idx].item()
            flat[idx] = old + h
            lp = window_loss(c64, e64, a, mbs).item()
            flat[idx] = old - h
            lm = window_loss(c64, e64, a, mbs).item()
            flat[idx] = old
        fd, an = (lp - lm) / (2 * h), grads[k].view(-1)[idx].item()
        rel = abs(fd - an) / max(abs(fd), abs(an), 1e-3)  # below 1e-3, an absolute 1e-8
        worst = max(worst, rel)
        assert rel < 1e-5, f"{k}[{idx}] autograd {an} vs finite difference {fd}"
    return worst


def check_copies(cfg, w, spec, mbs):
    """modules_to_save on the tied model: the embedding copy's gradient is the lookup's alone (exactly 0 on
    rows it cannot reach), the head copy's the head's alone (every row), and at neutral init (both copies
    = the embedding) they add up to the gradient of the one tied matrix of the model before the copies."""
    w64 = {k: v.double() for k, v in w.items()}
    a = neutral(make_extras_adapter(spec, w, torch.float64), w64)
    a.params = {k: v.detach().clone().requires_grad_() for k, v in a.params.items()}
    kE, kH = PREFIX + EMBED + ".weight", PREFIX + HEAD + ".weight"
    gE, gH = torch.autograd.grad(window_loss(*effective(cfg, w64, a), a, mbs), [a.params[kE], a.params[kH]])
    used = used_rows(mbs)
    unused = sorted(set(range(cfg["vocab_size"])) - set(used))
    assert 0 in unused and gE[unused].abs().max().item() == 0, "the embedding copy gets gradient off the lookup"
    assert gE[used].abs().sum(1).min().item() > 0 and gH.abs().sum(1).min().item() > 0
    # the tied model with the same LoRA layers, its embedding matrix one parameter
    assert cfg["tie_word_embeddings"]
    T = w64[EMBED + ".weight"].clone().requires_grad_()
    wt = dict(w64, **{EMBED + ".weight": T})
    lora_only = Adapter("lora", a.config, {k: v for k, v in a.params.items() if ".lora_" in k}, a.info)
    (gT,) = torch.autograd.grad(window_loss(cfg, wt, lora_only, mbs), [T])
    err = (gT - (gE + gH)).abs().max().item()
    assert err < 1e-12 * max(1.0, gT.abs().max().item()), f"copies' gradients do not add up to the tied one: {err}"


# ---- the fixtures --------------------------------------------------------------------------------
def run(name, cfg, w, spec, mbs):
    """Trains the f32 and the f64 run; returns everything a fixture holds."""
    adapter = make_extras_adapter(spec, w)
    c, e = effective(cfg, w, adapter)
    with torch.no_grad():
        logits_row0 = forward(c, e, adapter, mbs[0][0][:1])[0]
    adapter_in = {k: v.detach().clone() for k, v in adapter.params.items()}
    n0 = step0_norm(c, e, adapter, mbs)
    max_grad_norm = float(f"{0.5 * n0:.2g}")
    losses, norms, lrs, grads0 = train(c, e, adapter, mbs, max_grad_norm)  # asserts clipping at every step
    assert abs(norms[0] - n0) <= 1e-5 * n0
    for k, gk in grads0.items():
        assert gk.abs().max().item() > 0, f"{name}: zero step-0 gradient for {k}"
    with torch.no_grad():
        final_loss = window_loss(c, e, adapter, mbs).item()
    w64 = {k: v.double() for k, v in w.items()}
    a64 = make_extras_adapter(spec, w, torch.float64)
    c64, e64 = effective(cfg, w64, a64)
    losses64, _, _, grads64 = train(c64, e64, a64, mbs, max_grad_norm)
    gs = {k: relerr(grads0[k], grads64[k]) for k in sorted(grads0)}
    os_ = {k: relerr(adapter.params[k], a64.params[k]) for k in sorted(grads0)}
    gk, ok = max(gs, key=gs.get), max(os_, key=os_.get)
    f64 = dict(losses=max(abs(x - y) / abs(y) for x, y in zip(losses, losses64)), grads_step0=gs[gk],
               adapter_out=os_[ok], worst_grad_tensor=gk, worst_out_tensor=ok, grads_step0_per_tensor=gs,
               adapter_out_per_tensor=os_)
    return dict(adapter=adapter, adapter_in=adapter_in, logits_row0=logits_row0, max_grad_norm=max_grad_norm,
                losses=losses, norms=norms, lrs=lrs, grads0=grads0, final_loss=final_loss, f64=f64)


def write_fixture(name, arch, spec, mbs, r):
    adapter, f64 = r["adapter"], r["f64"]
    assert max(f64["losses"], f64["grads_step0"], f64["adapter_out"]) < F64_TOL, f"{name}: f32 vs f64 {f64}"
    d = os.path.join(OUT, name)
    save_adapter_in(d, Adapter("lora", adapter.config, r["adapter_in"], adapter.info))
    save_safetensors(os.path.join(d, "grads_step0.safetensors"), r["grads0"])
    save_safetensors(os.path.join(d, "adapter_out.safetensors"),
                     {k: v.detach().clone() for k, v in adapter.params.items()}, {"format": "pt"})
    keys = sorted(adapter.params)
    hyper = dict(lr=LR, betas=list(BETAS), eps=EPS, weight_decay=WD, steps=STEPS, grad_accum=GRAD_ACCUM,
                 max_grad_norm=r["max_grad_norm"], schedule="cosine", warmup_steps=WARMUP, total_steps=TOTAL,
                 no_decay=[k for k in keys if not decays(k)],
                 no_decay_rule="weight_decay 0 for a key whose lowercased name matches (re.search) any of "
                               + json.dumps(NO_DECAY_PATTERNS) + "; weight_decay 0.01 otherwise")
    config = dict(bias=spec["bias"], modules_to_save=spec["modules_to_save"], target_modules=spec["target_modules"])
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(dict(arch=arch, method="lora", config=config,
                       micro_batches=[dict(input_ids=i.tolist(), labels=lab.tolist()) for i, lab in mbs],
                       hyper=hyper, window_tokens=window_tokens(mbs), losses=r["losses"], grad_norms=r["norms"],
                       lrs=r["lrs"], final_loss=r["final_loss"], logits_row0=r["logits_row0"].tolist(),
                       f32_vs_f64_relerr=f64, torch=torch.__version__),
                  f, indent=1)


def report(name, r, fd):
    f64 = r["f64"]
    print(f"{name:32s} losses {['%.6f' % x for x in r['losses']]} -> {r['final_loss']:.6f}  norms "
          f"{['%.4g' % x for x in r['norms']]} clip {r['max_grad_norm']:g}  fd {fd:.1e}  f64 losses "
          f"{f64['losses']:.1e} grads {f64['grads_step0']:.1e} ({f64['worst_grad_tensor']}) out "
          f"{f64['adapter_out']:.1e} ({f64['worst_out_tensor']})", flush=True)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    probe = "--probe-bias-all" in sys.argv[1:]
    models = {}
    for _, arch, cfg, w, mbs in checked_inputs():
        models[arch] = (cfg, w, mbs)
    for name, spec in (PROBE if probe else FIXTURES).items():
        cfg, w, mbs = models[spec["arch"]]
        check_identity(cfg, w, make_extras_adapter(spec, w), mbs)
        fd = check_finite_differences(cfg, w, spec, mbs, spec["seed"] + 1)
        if spec["modules_to_save"]:
            check_copies(cfg, w, spec, mbs)
        r = run(name, cfg, w, spec, mbs)
        report(name, r, fd)
        if probe:
            for kind in ("grads_step0_per_tensor", "adapter_out_per_tensor"):
                bad = {k: f"{v:.1e}" for k, v in r["f64"][kind].items() if v >= F64_TOL}
                rest = max(v for v in r["f64"][kind].values() if v < F64_TOL)
                print(f"  {kind}: over {F64_TOL:g}: {bad}; every other tensor <= {rest:.1e}")
        else:
            write_fixture(name, spec["arch"], spec, mbs, r)


if __name__ == "__main__":
    sys.exit(main())
