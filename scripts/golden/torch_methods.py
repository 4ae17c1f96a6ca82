#!/usr/bin/python3
"""Golden outputs for the PEFT methods beyond plain LoRA (a dev tool, never a runtime dependency).

    nice -n 10 /usr/bin/python3 scripts/golden/torch_methods.py    # rewrites test/golden/methods/

Writes test/golden/methods/ (torch_llama_lora.py and its test/golden/<arch>/ stay untouched; the
safetensors writer, the llama3 rope frequencies, rotate_half and rmsnorm are imported from it):

    models/<arch>/{config.json, model.safetensors}          arch in llama, llama_tied, qwen2
    <arch>_<method>/adapter_in/{adapter_config.json, adapter_model.safetensors}
    <arch>_<method>/{expected.json, grads_step0.safetensors, adapter_out.safetensors}
                                                            method in lora, dora, ia3, ln_tuning, bitfit
    llama_lora_patterns/...                                 LoRA with rank_pattern, alpha_pattern, use_rslora

(torch_full_diff.py, a sibling importing from this one, adds <arch>_full, llama_full_trainable and
<arch>_diff: full fine-tuning and diff pruning on the same models and micro-batches; torch_lora_extras.py,
another, adds qwen2_lora_bias_lora_only and llama_tied_lora_modules_to_save: LoRA with trained biases and
with modules_to_save copies; torch_dora_dropout.py adds <arch>_dora_dropout and llama_lora_dropout: lora_dropout
0.1 with the masks peftkit's run draws, passed to run_fixture as `dropout` and applied by Adapter.linear.)

Models (hidden 48, intermediate 136, 2 layers, 4 heads, 2 kv heads, head_dim 12, vocab 97, seeds
4321.. so they differ from the old fixtures): llama has rope_theta 500000 with llama3 rope scaling
(factor 8, low 1, high 4, original_max_position_embeddings 16) and rms_norm_eps 1e-6; llama_tied has
tied embeddings, rope_theta 10000, rms_norm_eps 1e-5; qwen2 has rope_theta 1e6, rms_norm_eps 1e-6 and
biases on q/k/v. The forward is the Hugging Face Llama/Qwen2 one (eager attention, causal mask, no
attention_mask: pads are on the right so no real position ever sees them).

Training recipe (every fixture; peftkit implements the same):
  * f32, no dropout (but in torch_dora_dropout.py's fixtures). An optimizer step is a window of 2 micro-batches (gradient accumulation), each
    2 rows x T=9: row 0 has labels[:3] = -100, row 1 is right-padded with id 0 (pad from position 6 in
    micro-batch 0, 5 in micro-batch 1) with labels -100 on the pad. labels[:, 0] is -100 in EVERY row,
    so the label count is the same whether one counts labels or the shifted labels[:, 1:] (transformers'
    Trainer counts labels.ne(-100) unshifted for num_items_in_batch; the loss only ever sees the shifted
    ones). The same 2 micro-batches are used at every step.
  * Step loss = (sum over both micro-batches of the summed token cross-entropies, HF causal shift:
    position t predicts labels[t+1], -100 ignored) / (label tokens in the whole window). Gradients are
    that loss's: each micro-batch's summed CE / window_tokens is backpropagated and the gradients add up.
  * torch.nn.utils.clip_grad_norm_ (global 2-norm over every adapter tensor; grads *= max_norm /
    (norm + 1e-6) when that is < 1). max_grad_norm is per fixture: 0.5 x the step-0 pre-clip norm,
    rounded to 2 significant digits; the script asserts that every step's pre-clip norm exceeds it.
    expected.json's grad_norms are the pre-clip norms; grads_step0.safetensors is pre-clip too.
  * lr of optimizer step k = 1e-2 x factor(k), transformers' get_cosine_schedule_with_warmup with
    warmup_steps 1 and num_training_steps 4: k < 1 -> k/1; else progress = (k-1)/3, factor =
    max(0, 0.5 (1 + cos(pi progress))). So lrs = [0, 1e-2, 7.5e-3]: step 0 moves nothing, but AdamW's
    moments still take the (clipped) step-0 gradients.
  * torch.optim.AdamW(betas (0.9, 0.999), eps 1e-8) with transformers Trainer's two parameter groups:
    weight_decay 0.01, except 0 for a tensor whose name (lowercased) matches any of the regexes of
    transformers' Trainer.get_decay_parameter_names: "bias", "layernorm", "rmsnorm",
    "(?:^|\\.)norm(?:$|\\.)", "_norm(?:$|\\.)" (re.search), applied to the adapter keys as saved. Net:
    BitFit biases and LN-tuning weights get no decay; LoRA A/B, DoRA magnitudes, IA3 vectors get 0.01.
    (The Trainer applies them to the PeftModel parameter names, which carry ".default"; the verdict is the
    same for every key here.) expected.json's hyper.no_decay lists the keys without decay.

Methods (PEFT v0.20.0 read at src/peft/tuners/<method>/{config,layer,model}.py, src/peft/config.py,
src/peft/tuners/tuners_utils.py, src/peft/utils/{save_and_load,other,constants}.py):
  * lora (lora/layer.py LoraLayer.update_layer, Linear.forward): targets the 7 Linears,
    y = x W^T + b + s (x A^T) B^T, s = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora). r 4, alpha 8.
    Keys base_model.model.<module>.lora_A.weight [r, in] and .lora_B.weight [out, r] (save_and_load:
    the adapter name ".default" is dropped from "lora_A.default.weight").
    llama_lora_patterns: rank_pattern {"down_proj": 2, "layers.1.mlp.up_proj": 6}, alpha_pattern
    {"_proj": 100, "v_proj": 4}, use_rslora. lora/model.py _create_and_replace resolves a module's r and
    alpha with utils/other.py get_pattern_key: the first pattern key (dict order; PEFT writes
    adapter_config.json with sort_keys=True) for which re.match(r"(.*\\.)?(KEY)$", module_name) holds,
    module_name being the module's path in the HF model ("model.layers.1.mlp.up_proj"). So a key matches
    a whole dotted suffix of the name and is a regex: "_proj" matches NO module ("q_proj" does not end in
    "._proj"), "layers.1.mlp.up_proj" only layer 1's up_proj.
  * dora (lora/dora.py DoraLinearLayer, lora/variants.py DoraLinearVariant): LoRA + use_dora.
    weight_norm = ||W + s B A|| over dim 1 (one per output row), detached (no gradient through it);
    y = (m / weight_norm) * (x W^T + s (x A^T) B^T) + b (PEFT adds (m/n - 1) x W^T + (m/n) s x A^T B^T to
    the base output, the same thing). Magnitude key base_model.model.<module>.lora_magnitude_vector
    [out] (lora/model.py _get_adapter_state_dict strips the ".weight" of the DoraLinearLayer
    parameter, keeping the old ParameterDict format).
  * ia3 (ia3/layer.py Linear.forward, update_layer): target_modules [k_proj, v_proj, down_proj],
    feedforward_modules [down_proj] (module is feedforward when its name ends with a listed name).
    Non-feedforward: ia3_l [out, 1], y = (x W^T + b) * l (the bias IS scaled: the base layer's whole
    output is multiplied). Feedforward: ia3_l [1, in], y = (x * l) W^T + b. Key
    base_model.model.<module>.ia3_l (a ParameterDict entry, so no ".weight").
  * ln_tuning (ln_tuning/layer.py LNTuningLayer): targets input_layernorm, post_attention_layernorm and
    the final norm (constants.py's llama list; the list entry "norm" matches "model.norm" by dotted
    suffix only). The layer deep-copies the norm into ln_tuning_layers[adapter] and runs the copy INSTEAD
    of the base (same eps). Key base_model.model.<norm>.ln_tuning_layers.weight [hidden].
  * bitfit: not a PEFT method, peftkit's own format. adapter_config.json {"peft_type": "BITFIT",
    "task_type": "CAUSAL_LM", "target_modules": [...], "base_model_name_or_path": null,
    "inference_mode": true}; tensors base_model.model.<module>.bias [out] for every targeted Linear.
    y = x W^T + b_adapter: the adapter bias is added where the base has none and REPLACES the base bias
    where it has one (qwen2 q/v; adapter_in there holds base bias + 0.05 randn); an untargeted Linear
    keeps its base bias (qwen2 k). Targets: all 7 Linears on llama_tied, all but k_proj on llama and
    qwen2 (see BITFIT_TARGETS: there a key bias's gradient is f32 noise that AdamW amplifies).

Starting adapters are non-trivial so that no gradient vanishes and identity-at-init hides nothing:
LoRA/DoRA A ~ randn/sqrt(in), B ~ 0.05 randn; DoRA m = ||W + s B A||_row * (1 + 0.05 randn);
IA3 l = 1 + 0.1 randn; LN tuning = base norm weight + 0.05 randn; BitFit 0.05 randn (+ base bias).
adapter_config.json of the PEFT methods holds every field of PEFT v0.20.0's config dataclass
(LoraConfig minus runtime_config, IA3Config, LNTuningConfig), as its save_pretrained writes them.

expected.json: arch, method, micro_batches [{input_ids, labels}] x 2, hyper, window_tokens,
losses[3] (step loss at the start of each step), grad_norms[3] (pre-clip), lrs[3], final_loss (window
loss after 3 steps), logits_row0 [T][vocab] (micro-batch 0 row 0, adapter_in applied, no grad),
f32_vs_f64_relerr (this f32 run against the same run in float64, per tensor ||a-b||/||b||, worst of
losses / grads_step0 / adapter_out: how much rounding alone moves the goldens), torch version.

Self-checks run every time: identity at neutral init for every method (LoRA/DoRA B = 0 with m = ||W||,
IA3 l = 1, LN copy = base, BitFit bias = base bias or 0), autograd vs float64 central differences of
the window loss on sampled entries of every fixture (DoRA's norm held constant, as it is detached),
non-zero step-0 gradients in every tensor, clipping at every step, rank/alpha patterns resolved as
expected, our DoRA and IA3 layer formulas against PEFT's way of computing them, and the f32 run within
1e-5 of the float64 run (every tensor), so that a 1e-4 test tolerance measures implementation, not luck.
"""
import json
import math
import os
import re
import sys

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_llama_lora import rmsnorm, rope_inv_freq, rotate_half, save_safetensors  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "test", "golden", "methods")

HIDDEN, INTER, LAYERS, HEADS, KV, VOCAB, T = 48, 136, 2, 4, 2, 97, 9
HEAD_DIM = HIDDEN // HEADS
PEFT_VERSION = "0.20.0"
PREFIX = "base_model.model."

ARCHS = {
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", tie_word_embeddings=False,
                  rope_theta=500000.0, rms_norm_eps=1e-6,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=16)),
    "llama_tied": dict(architectures=["LlamaForCausalLM"], model_type="llama", tie_word_embeddings=True,
                       rope_theta=10000.0, rms_norm_eps=1e-5),
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", tie_word_embeddings=False,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32),
}
SHAPES = {"self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN), "self_attn.k_proj": (KV * HEAD_DIM, HIDDEN),
          "self_attn.v_proj": (KV * HEAD_DIM, HIDDEN), "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
          "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN), "mlp.down_proj": (HIDDEN, INTER)}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = ["lora", "dora", "ia3", "ln_tuning", "bitfit"]
R, ALPHA = 4, 8
PATTERNS = dict(rank_pattern={"down_proj": 2, "layers.1.mlp.up_proj": 6}, alpha_pattern={"_proj": 100, "v_proj": 4},
                use_rslora=True)
IA3_TARGETS, IA3_FF = ["k_proj", "v_proj", "down_proj"], ["down_proj"]
LN_TARGETS = ["input_layernorm", "post_attention_layernorm", "norm"]
# k_proj's bias is left out of BitFit where rope barely turns some dims over 9 positions (llama: theta 5e5
# with llama3 scaling; qwen2: theta 1e6): along those dims a key bias adds the same q.b to every score of a
# query, which softmax ignores, so its gradient is ~1e-10, pure f32 rounding noise, and AdamW's g/sqrt(v)
# turns that noise into lr-sized differences (f32 vs f64 adapter_out: 6e-3 relative). llama_tied
# (theta 1e4) keeps all 7.
BITFIT_TARGETS = {"llama": [t for t in TARGETS if t != "k_proj"], "llama_tied": TARGETS,
                  "qwen2": [t for t in TARGETS if t != "k_proj"]}

LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.01
STEPS, GRAD_ACCUM, WARMUP, TOTAL = 3, 2, 1, 4
NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def linear_modules():
    for l in range(LAYERS):
        for m, (o, i) in SHAPES.items():
            yield f"model.layers.{l}.{m}", o, i


def norm_modules():
    return [f"model.layers.{l}.{n}" for l in range(LAYERS) for n in ("input_layernorm", "post_attention_layernorm")] \
        + ["model.norm"]


def targeted(module, targets):  # PEFT's check_target_module_exists for a list of names
    return any(module == t or module.endswith("." + t) for t in targets)


def pattern_value(patterns, module, default):  # PEFT's get_pattern_key + dict.get
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def decays(key):  # transformers' Trainer.get_decay_parameter_names, by name
    return not any(re.search(p, key.lower()) for p in NO_DECAY_PATTERNS)


def lr_factor(k):  # transformers' get_cosine_schedule_with_warmup (num_cycles 0.5)
    if k < WARMUP:
        return k / max(1, WARMUP)
    progress = (k - WARMUP) / max(1, TOTAL - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


# ---- base models ---------------------------------------------------------------------------------
def make_model(arch, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = dict(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               num_key_value_heads=KV, head_dim=HEAD_DIM, vocab_size=VOCAB, max_position_embeddings=64,
               hidden_act="silu", torch_dtype="float32", bos_token_id=1, eos_token_id=2, **ARCHS[arch])

    def rnd(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    w = {"model.embed_tokens.weight": rnd(VOCAB, HIDDEN, std=0.5), "model.norm.weight": 1 + rnd(HIDDEN, std=0.1)}
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rnd(VOCAB, HIDDEN, std=0.2)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1 + rnd(HIDDEN, std=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + rnd(HIDDEN, std=0.1)
        for m, (o, i) in SHAPES.items():
            w[p + m + ".weight"] = rnd(o, i, std=1 / math.sqrt(i))
            if cfg["model_type"] == "qwen2" and m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                w[p + m + ".bias"] = rnd(o, std=0.1)
    return cfg, w


def make_batches(seed):
    g = torch.Generator().manual_seed(seed)
    mbs = []
    for pad_from in (6, 5):
        ids = torch.randint(3, VOCAB, (2, T), generator=g)
        labels = ids.clone()
        labels[:, 0] = -100           # never predicted; masked so that every way of counting labels agrees
        labels[0, :3] = -100          # a prompt-masked completion
        ids[1, pad_from:] = 0         # a right-padded short row
        labels[1, pad_from:] = -100
        mbs.append((ids, labels))
    return mbs


# ---- adapters ------------------------------------------------------------------------------------
class Adapter:
    """One method's starting adapter: config (adapter_config.json), params (saved key -> tensor), and
    what the forward needs per module (rank, scaling, feedforward flag). `dropout`: None, or LoRA/DoRA's
    lora_dropout as (p, masks), masks {(step, micro_batch, module): keep [rows, in]} (torch_dora_dropout.py),
    applied to the micro-batch chosen with at()."""

    def __init__(self, method, config, params, info, dropout=None):
        self.method, self.config, self.params, self.info = method, config, params, info
        self.dropout, self.micro_batch = dropout, None

    def at(self, micro_batch):
        """(step, i): training micro-batch i of optimizer step `step`, whose dropout masks apply; None: eval."""
        self.micro_batch = micro_batch

    def dropped(self, mod, x):
        """PEFT's nn.Dropout(p) in training, with the recorded mask instead of torch's draw: x * (keep / (1 - p))."""
        if self.dropout is None or self.micro_batch is None:
            return None
        p, masks = self.dropout
        keep = masks[self.micro_batch + (mod,)]
        return x * (keep.to(x.dtype) / (1 - p)).view(x.shape)

    def linear(self, mod, x, W, b, dora_norms=None):
        k, P, m = PREFIX + mod, self.params, self.method
        if m in ("lora", "dora") and mod in self.info:
            s = self.info[mod]["scaling"]
            A, B = P[k + ".lora_A.weight"], P[k + ".lora_B.weight"]
            norm = None if m == "lora" else dora_norms[mod] if dora_norms is not None else dora_weight_norm(W, A, B, s)
            xd = self.dropped(mod, x)
            if xd is not None:
                # lora/layer.py Linear.forward: result = base_layer(x), then vanilla LoRA adds
                # lora_B(lora_A(dropout(x))) * s; DoRA (lora/variants.py DoraLinearVariant.forward with the
                # dropout active in training: x = dropout(x), base_result None; lora/dora.py
                # DoraLinearLayer.forward: base_result = F.linear(x, weight), no bias) adds
                # (m/n - 1) * F.linear(xd, W) + (m/n) * lora_B(lora_A(xd)) * s.
                result = x @ W.t() if b is None else x @ W.t() + b
                lora_result = (xd @ A.t()) @ B.t()
                if m == "lora":
                    return result + lora_result * s
                mag_norm_scale = P[k + ".lora_magnitude_vector"] / norm
                return result + (mag_norm_scale - 1) * (xd @ W.t()) + mag_norm_scale * lora_result * s
            lora = (x @ A.t()) @ B.t() * s
            if m == "lora":
                y = x @ W.t() + lora
                return y if b is None else y + b
            y = (P[k + ".lora_magnitude_vector"] / norm) * (x @ W.t() + lora)
            return y if b is None else y + b
        if m == "ia3" and mod in self.info:
            l = P[k + ".ia3_l"]
            if self.info[mod]["feedforward"]:
                y = (x * l.flatten()) @ W.t()
                return y if b is None else y + b
            y = x @ W.t()
            y = y if b is None else y + b
            return y * l.flatten()
        if m == "bitfit" and mod in self.info:
            return x @ W.t() + P[k + ".bias"]
        y = x @ W.t()
        return y if b is None else y + b

    def norm_weight(self, mod, w):
        if self.method == "ln_tuning" and mod in self.info:
            return self.params[PREFIX + mod + ".ln_tuning_layers.weight"]
        return w


def dora_weight_norm(W, A, B, s):
    return torch.linalg.norm(W + s * (B @ A), dim=1).detach()


def peft_base_config(peft_type, **fields):
    return dict(task_type="CAUSAL_LM", peft_type=peft_type, auto_mapping=None, peft_version=PEFT_VERSION,
                base_model_name_or_path=None, revision=None, inference_mode=True, **fields)


def lora_config(use_dora=False, rank_pattern=None, alpha_pattern=None, use_rslora=False):
    # every field of PEFT v0.20.0's LoraConfig except runtime_config (dropped by its to_dict), defaults kept
    return peft_base_config(
        "LORA", r=R, target_modules=TARGETS, exclude_modules=None, lora_alpha=ALPHA, lora_dropout=0.0,
        fan_in_fan_out=False, bias="none", use_rslora=use_rslora, modules_to_save=None, init_lora_weights=True,
        layers_to_transform=None, layers_pattern=None, rank_pattern=rank_pattern or {},
        alpha_pattern=alpha_pattern or {}, megatron_config=None, megatron_core="megatron.core",
        trainable_token_indices=None, loftq_config={}, eva_config=None, corda_config=None, lora_ga_config=None,
        use_dora=use_dora, velora_config=None, alora_invocation_tokens=None, use_qalora=False,
        qalora_group_size=16, monteclora_config=None, layer_replication=None, lora_bias=False,
        target_parameters=None, use_bdlora=None, arrow_config=None, ensure_weight_tying=False)


def make_adapter(method, arch, w, seed, patterns=None, dropout=None):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    params, info = {}, {}
    if method in ("lora", "dora"):
        pat = patterns or {}
        config = lora_config(use_dora=method == "dora", **pat)
        for mod, o, i in linear_modules():
            if not targeted(mod, config["target_modules"]):
                continue
            r = pattern_value(config["rank_pattern"], mod, config["r"])
            alpha = pattern_value(config["alpha_pattern"], mod, config["lora_alpha"])
            s = alpha / math.sqrt(r) if config["use_rslora"] else alpha / r
            info[mod] = dict(r=r, alpha=alpha, scaling=s)
            k = PREFIX + mod
            A, B = rnd(r, i, std=1 / math.sqrt(i)), rnd(o, r, std=0.05)
            params[k + ".lora_A.weight"], params[k + ".lora_B.weight"] = A, B
            if method == "dora":
                norm = dora_weight_norm(w[mod + ".weight"], A, B, s)
                params[k + ".lora_magnitude_vector"] = norm * (1 + rnd(o, std=0.05))
    elif method == "ia3":
        config = peft_base_config("IA3", target_modules=IA3_TARGETS, exclude_modules=None,
                                  feedforward_modules=IA3_FF, fan_in_fan_out=False, modules_to_save=None,
                                  init_ia3_weights=True)
        for mod, o, i in linear_modules():
            if not targeted(mod, IA3_TARGETS):
                continue
            ff = any(mod.endswith(f) for f in IA3_FF)  # ia3/model.py _check_target_module_feedforward
            info[mod] = dict(feedforward=ff)
            params[PREFIX + mod + ".ia3_l"] = 1 + rnd(*((1, i) if ff else (o, 1)), std=0.1)
    elif method == "ln_tuning":
        config = peft_base_config("LN_TUNING", target_modules=LN_TARGETS, exclude_modules=None, modules_to_save=None)
        for mod in norm_modules():
            if targeted(mod, LN_TARGETS):
                info[mod] = {}
                params[PREFIX + mod + ".ln_tuning_layers.weight"] = w[mod + ".weight"] + rnd(HIDDEN, std=0.05)
    elif method == "bitfit":
        config = {"peft_type": "BITFIT", "task_type": "CAUSAL_LM", "target_modules": BITFIT_TARGETS[arch],
                  "base_model_name_or_path": None, "inference_mode": True}
        for mod, o, i in linear_modules():
            if targeted(mod, config["target_modules"]):
                info[mod] = {}
                base = w.get(mod + ".bias")
                params[PREFIX + mod + ".bias"] = (0 if base is None else base) + rnd(o, std=0.05)
    else:
        raise ValueError(method)
    params = {k: v.float().contiguous().requires_grad_() for k, v in params.items()}
    if dropout is not None:
        config["lora_dropout"] = dropout[0]
    return Adapter(method, config, params, info, dropout)


def neutral_adapter(adapter, w):
    """The same adapter at its identity point (the model must then equal the base)."""
    out = {}
    for k, v in adapter.params.items():
        mod = k[len(PREFIX):].rsplit(".", 1)[0]
        if k.endswith(".lora_A.weight"):
            out[k] = v.detach().clone()
        elif k.endswith(".lora_B.weight"):
            out[k] = torch.zeros_like(v)
        elif k.endswith(".lora_magnitude_vector"):
            out[k] = torch.linalg.norm(w[mod + ".weight"], dim=1)
        elif k.endswith(".ia3_l"):
            out[k] = torch.ones_like(v)
        elif k.endswith(".ln_tuning_layers.weight"):
            out[k] = w[k[len(PREFIX):-len(".ln_tuning_layers.weight")] + ".weight"].clone()
        elif k.endswith(".bias"):
            b = w.get(k[len(PREFIX):])
            out[k] = torch.zeros_like(v) if b is None else b.clone()
        else:
            raise KeyError(k)
    return Adapter(adapter.method, adapter.config, out, adapter.info, adapter.dropout)


# ---- the model ----------------------------------------------------------------------------------
def forward(cfg, w, adapter, ids, dora_norms=None):
    """Logits [B, T, vocab] of the HF Llama/Qwen2 forward (eager attention) with `adapter` applied.
    Works in the dtype of w (float64 for the finite-difference checks)."""
    dt = w["model.embed_tokens.weight"].dtype
    Bsz, Tn = ids.shape
    H, KVh, D, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    x = w["model.embed_tokens.weight"][ids]
    inv = rope_inv_freq(cfg)
    freqs = torch.outer(torch.arange(Tn).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dt), emb.sin().to(dt)
    mask = torch.full((Tn, Tn), float("-inf"), dtype=dt).triu(1)
    norm_fn = lambda mod, h: rmsnorm(h, adapter.norm_weight(mod, w[mod + ".weight"]), eps)  # noqa: E731
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."

        def lin(name, inp):
            return adapter.linear(p + name, inp, w[p + name + ".weight"], w.get(p + name + ".bias"), dora_norms)

        h = norm_fn(p + "input_layernorm", x)
        q = lin("self_attn.q_proj", h).view(Bsz, Tn, H, D).transpose(1, 2)
        k = lin("self_attn.k_proj", h).view(Bsz, Tn, KVh, D).transpose(1, 2)
        v = lin("self_attn.v_proj", h).view(Bsz, Tn, KVh, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // KVh, dim=1)
        v = v.repeat_interleave(H // KVh, dim=1)
        att = F.softmax((q @ k.transpose(2, 3)) / math.sqrt(D) + mask, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(Bsz, Tn, H * D)
        x = x + lin("self_attn.o_proj", a)
        h = norm_fn(p + "post_attention_layernorm", x)
        x = x + lin("mlp.down_proj", F.silu(lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h))
    x = norm_fn("model.norm", x)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.t()


def summed_ce(logits, labels):  # HF causal shift, -100 ignored, summed over tokens
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum")


def window_tokens(mbs):
    n = sum(int((lab[:, 1:] != -100).sum()) for _, lab in mbs)
    assert n == sum(int((lab != -100).sum()) for _, lab in mbs), "shifted and unshifted label counts differ"
    return n


def window_loss(cfg, w, adapter, mbs, dora_norms=None, step=None):
    """The window's loss; with `step`, in training (that step's dropout masks), else in eval."""
    n = window_tokens(mbs)
    total = 0
    for i, (ids, lab) in enumerate(mbs):
        adapter.at(None if step is None else (step, i))
        total = total + summed_ce(forward(cfg, w, adapter, ids, dora_norms), lab)
    adapter.at(None)
    return total / n


# ---- self-checks ---------------------------------------------------------------------------------
def check_identity(cfg, w, adapter, mbs):
    ids = mbs[0][0]
    neutral = neutral_adapter(adapter, w)
    with torch.no_grad():
        base = forward(cfg, w, Adapter("none", {}, {}, {}), ids)
        changed = forward(cfg, w, adapter, ids)
        for mode in [None] + ([(0, 0)] if adapter.dropout else []):  # eval; training with the dropout masks
            neutral.at(mode)
            err = (forward(cfg, w, neutral, ids) - base).abs().max().item()
            assert err < 1e-5, f"{adapter.method}: identity adapter moves logits by {err} ({mode or 'eval'})"
    assert (changed - base).abs().max().item() > 1e-3, f"{adapter.method}: adapter_in is trivial"


def check_finite_differences(cfg, w, adapter, mbs, g, n_per_tensor=1, n_tensors=6):
    """autograd vs central differences of the window loss, all in float64; DoRA's norm held constant."""
    w64 = {k: v.double() for k, v in w.items()}
    P64 = {k: v.detach().double().requires_grad_() for k, v in adapter.params.items()}
    a64 = Adapter(adapter.method, adapter.config, P64, adapter.info, adapter.dropout)
    norms = None
    if adapter.method == "dora":
        norms = {mod: dora_weight_norm(w64[mod + ".weight"], P64[PREFIX + mod + ".lora_A.weight"],
                                       P64[PREFIX + mod + ".lora_B.weight"], adapter.info[mod]["scaling"])
                 for mod in adapter.info}
    loss = window_loss(cfg, w64, a64, mbs, norms, step=0)
    grads = dict(zip(P64, torch.autograd.grad(loss, list(P64.values()))))
    keys = sorted(P64)
    picks = [keys[int(j)] for j in torch.randperm(len(keys), generator=g)[:n_tensors]]
    worst = 0.0
    for k in picks:
        for _ in range(n_per_tensor):
            idx = int(torch.randint(P64[k].numel(), (1,), generator=g))
            h = 1e-5
            with torch.no_grad():
                flat = P64[k].view(-1)
                old = flat[idx].item()
                flat[idx] = old + h
                lp = window_loss(cfg, w64, a64, mbs, norms, step=0).item()
                flat[idx] = old - h
                lm = window_loss(cfg, w64, a64, mbs, norms, step=0).item()
                flat[idx] = old
            fd, an = (lp - lm) / (2 * h), grads[k].view(-1)[idx].item()
            rel = abs(fd - an) / max(abs(fd), abs(an), 1e-3)  # below 1e-3, an absolute 1e-8
            worst = max(worst, rel)
            assert rel < 1e-5, f"{adapter.method}: {k}[{idx}] autograd {an} vs finite difference {fd}"
    return worst


def check_peft_layer_forms(w):
    """Our per-layer formulas against the way PEFT's layer code computes them (float64, a biased Linear)."""
    g = torch.Generator().manual_seed(99)
    mod = "model.layers.0.self_attn.q_proj"
    W, b = w[mod + ".weight"].double(), w[mod + ".bias"].double()
    o, i = W.shape
    x = torch.randn(3, i, generator=g, dtype=torch.float64)
    A, B = torch.randn(R, i, generator=g, dtype=torch.float64), torch.randn(o, R, generator=g, dtype=torch.float64)
    s, m = 2.0, torch.rand(o, generator=g, dtype=torch.float64) + 0.5
    P = {PREFIX + mod + ".lora_A.weight": A, PREFIX + mod + ".lora_B.weight": B, PREFIX + mod + ".lora_magnitude_vector": m}
    ours = Adapter("dora", {}, P, {mod: dict(scaling=s)}).linear(mod, x, W, b)
    # dora.py: lora_weight = lora_B(lora_A(eye)).T; result = base(x) + (m/n - 1) * (base(x) - bias) + m/n * lora * s
    lora_weight = ((torch.eye(i, dtype=torch.float64) @ A.t()) @ B.t()).t()
    n = torch.linalg.norm(W + s * lora_weight, dim=1)
    base = x @ W.t() + b
    peft = base + (m / n - 1) * (base - b) + (m / n) * ((x @ A.t()) @ B.t()) * s
    assert (ours - peft).abs().max().item() < 1e-12
    # ia3 layer.py: non-feedforward result = base_layer(x) * l.flatten(); feedforward base_layer(x * l.flatten())
    lo, li = torch.randn(o, 1, generator=g, dtype=torch.float64), torch.randn(1, i, generator=g, dtype=torch.float64)
    a = Adapter("ia3", {}, {PREFIX + mod + ".ia3_l": lo}, {mod: dict(feedforward=False)})
    assert (a.linear(mod, x, W, b) - (x @ W.t() + b) * lo.flatten()).abs().max().item() < 1e-12
    a = Adapter("ia3", {}, {PREFIX + mod + ".ia3_l": li}, {mod: dict(feedforward=True)})
    assert (a.linear(mod, x, W, b) - ((x * li.flatten()) @ W.t() + b)).abs().max().item() < 1e-12


def check_patterns(adapter):
    """rank_pattern / alpha_pattern resolved as PEFT's get_pattern_key does (see the docstring)."""
    for mod, inf in adapter.info.items():
        r = 2 if mod.endswith("down_proj") else 6 if mod == "model.layers.1.mlp.up_proj" else 4
        alpha = 4 if mod.endswith("v_proj") else 8
        assert (inf["r"], inf["alpha"]) == (r, alpha), (mod, inf)
        assert abs(inf["scaling"] - alpha / math.sqrt(r)) < 1e-15
        assert adapter.params[PREFIX + mod + ".lora_A.weight"].shape[0] == r


# ---- training ------------------------------------------------------------------------------------
def accumulate(cfg, w, adapter, mbs, step=0):
    """One window of optimizer step `step`: zero grads, backprop each micro-batch's summed CE / window_tokens.
    Returns the loss."""
    n = window_tokens(mbs)
    for p in adapter.params.values():
        p.grad = None
    total = 0.0
    for i, (ids, lab) in enumerate(mbs):
        adapter.at((step, i))
        loss = summed_ce(forward(cfg, w, adapter, ids), lab) / n
        loss.backward()
        total += loss.item()
    adapter.at(None)
    return total


def train(cfg, w, adapter, mbs, max_grad_norm):
    keys = sorted(adapter.params)
    groups = [{"params": [adapter.params[k] for k in keys if decays(k)], "weight_decay": WD},
              {"params": [adapter.params[k] for k in keys if not decays(k)], "weight_decay": 0.0}]
    groups = [gr for gr in groups if gr["params"]]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses, norms, lrs, grads0 = [], [], [], None
    for step in range(STEPS):
        losses.append(accumulate(cfg, w, adapter, mbs, step))
        if step == 0:
            grads0 = {k: adapter.params[k].grad.detach().clone() for k in keys}
        norm = torch.nn.utils.clip_grad_norm_([adapter.params[k] for k in keys], max_grad_norm).item()
        assert norm > max_grad_norm, f"step {step}: pre-clip norm {norm} <= max_grad_norm {max_grad_norm}"
        norms.append(norm)
        lrs.append(sched.get_last_lr()[0])
        assert abs(lrs[-1] - LR * lr_factor(step)) < 1e-15
        opt.step()
        sched.step()
    return losses, norms, lrs, grads0


def step0_norm(cfg, w, adapter, mbs):
    accumulate(cfg, w, adapter, mbs)
    n = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in adapter.params.values())).item()
    for p in adapter.params.values():
        p.grad = None
    return n


def relerr(a, b):  # ||a - b|| / ||b|| over a whole tensor, as the TypeScript tests measure
    return ((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm()).item()


def save_adapter_in(d, adapter):
    os.makedirs(os.path.join(d, "adapter_in"), exist_ok=True)
    with open(os.path.join(d, "adapter_in", "adapter_config.json"), "w") as f:
        f.write(json.dumps(adapter.config, indent=2, sort_keys=True))  # as PEFT's save_pretrained writes it
    save_safetensors(os.path.join(d, "adapter_in", "adapter_model.safetensors"),
                     {k: v.detach().clone() for k, v in adapter.params.items()}, {"format": "pt"})


def run_fixture(name, arch, cfg, w, mbs, method, seed, patterns=None, dropout=None):
    adapter = make_adapter(method, arch, w, seed, patterns, dropout)
    if patterns:
        check_patterns(adapter)
    check_identity(cfg, w, adapter, mbs)
    fd_worst = check_finite_differences(cfg, w, adapter, mbs, torch.Generator().manual_seed(seed + 1))
    d = os.path.join(OUT, name)
    save_adapter_in(d, adapter)
    with torch.no_grad():
        logits_row0 = forward(cfg, w, adapter, mbs[0][0][:1])[0]
    n0 = step0_norm(cfg, w, adapter, mbs)
    max_grad_norm = float(f"{0.5 * n0:.2g}")
    losses, norms, lrs, grads0 = train(cfg, w, adapter, mbs, max_grad_norm)
    for k, gk in grads0.items():
        assert gk.abs().max().item() > 0, f"{name}: zero step-0 gradient for {k}"
    assert abs(norms[0] - n0) <= 1e-5 * n0
    save_safetensors(os.path.join(d, "grads_step0.safetensors"), grads0)
    save_safetensors(os.path.join(d, "adapter_out.safetensors"),
                     {k: v.detach().clone() for k, v in adapter.params.items()}, {"format": "pt"})
    with torch.no_grad():
        final_loss = window_loss(cfg, w, adapter, mbs).item()
    # Conditioning: the same run in float64 must agree with this f32 one far inside the tests' 1e-4
    # (relative error of each tensor as a whole, as test/helpers/check.ts relErr measures it).
    w64 = {k: v.double() for k, v in w.items()}
    a64 = make_adapter(method, arch, w, seed, patterns, dropout)
    a64.params = {k: v.detach().double().requires_grad_() for k, v in a64.params.items()}
    losses64, _, _, grads64 = train(cfg, w64, a64, mbs, max_grad_norm)
    f64 = dict(losses=max(abs(x - y) / abs(y) for x, y in zip(losses, losses64)),
               grads_step0=max(relerr(grads0[k], grads64[k]) for k in grads0),
               adapter_out=max(relerr(adapter.params[k], a64.params[k]) for k in grads0))
    assert max(f64.values()) < 1e-5, f"{name}: f32 vs f64 {f64}"
    keys = sorted(adapter.params)
    hyper = dict(lr=LR, betas=list(BETAS), eps=EPS, weight_decay=WD, steps=STEPS, grad_accum=GRAD_ACCUM,
                 max_grad_norm=max_grad_norm, schedule="cosine", warmup_steps=WARMUP, total_steps=TOTAL,
                 no_decay=[k for k in keys if not decays(k)],
                 no_decay_rule="weight_decay 0 for a key whose lowercased name matches (re.search) any of "
                               + json.dumps(NO_DECAY_PATTERNS) + "; weight_decay 0.01 otherwise")
    if dropout is not None:
        hyper["lora_dropout"] = dropout[0]
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(dict(arch=arch, method=method,
                       micro_batches=[dict(input_ids=i.tolist(), labels=lab.tolist()) for i, lab in mbs],
                       hyper=hyper, window_tokens=window_tokens(mbs), losses=losses, grad_norms=norms, lrs=lrs,
                       final_loss=final_loss, logits_row0=logits_row0.tolist(), f32_vs_f64_relerr=f64,
                       torch=torch.__version__),
                  f, indent=1)
    print(f"{name:22s} losses {['%.6f' % x for x in losses]} -> {final_loss:.6f}  norms "
          f"{['%.4g' % x for x in norms]} clip {max_grad_norm:g}  fd {fd_worst:.1e}  f64 "
          f"{max(f64.values()):.1e}")


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for a, arch in enumerate(ARCHS):
        cfg, w = make_model(arch, 4321 + a)
        d = os.path.join(OUT, "models", arch)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        save_safetensors(os.path.join(d, "model.safetensors"), w, {"format": "pt"})
        if arch == "qwen2":
            check_peft_layer_forms(w)
        mbs = make_batches(8765 + a)
        for m, method in enumerate(METHODS):
            run_fixture(f"{arch}_{method}", arch, cfg, w, mbs, method, 5000 + 100 * a + m)
        if arch == "llama":
            run_fixture("llama_lora_patterns", arch, cfg, w, mbs, "lora", 5099, PATTERNS)


if __name__ == "__main__":
    sys.exit(main())
