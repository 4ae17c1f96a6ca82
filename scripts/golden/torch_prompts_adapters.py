#!/usr/bin/python3
"""Golden outputs for soft prompts (prompt tuning, P-tuning, prefix tuning) and bottleneck adapters
(Houlsby, Pfeiffer) (a dev tool, never a runtime dependency).

    nice -n 10 /usr/bin/python3 scripts/golden/torch_prompts_adapters.py [FIXTURE ...]   # writes the fixtures below

A sibling of torch_methods.py: same models (rebuilt from the same seeds and checked byte for byte against
test/golden/methods/models/<arch>/model.safetensors, which this script never writes), same micro-batches
(checked against <arch>_lora/expected.json), same HF Llama/Qwen2 forward (eager attention, no attention_mask:
pads are on the right), the same training recipe (its docstring: windows of 2 micro-batches 2 x T=9, summed
CE / window label count, transformers' no-decay name patterns, cosine schedule with warmup 1 of 4, torch AdamW
with betas (0.9, 0.999), eps 1e-8, weight decay 0.01, max_grad_norm 0.5 x the step-0 pre-clip norm to 2
significant digits, clipping at every step). It only adds fixtures; no file another script writes is touched.

Layout (under test/golden/methods/):

    <arch>_prompt/, <arch>_prefix/, <arch>_bottleneck_houlsby/, llama_bottleneck_pfeiffer/
        adapter_in/{adapter_config.json, adapter_model.safetensors}
        expected.json, grads_step0.safetensors, adapter_out.safetensors
    <arch>_p_tuning/, <arch>_p_tuning_lstm/, llama_prefix_projection/
        adapter_in/{adapter_config.json, adapter_model.safetensors, prompt_encoder.safetensors}
        expected.json, grads_step0.safetensors, adapter_out.safetensors, adapter_out_encoder.safetensors
    (arch in llama, llama_tied, qwen2)

adapter_model.safetensors and adapter_out.safetensors always hold what the adapter folder's
adapter_model.safetensors holds (for the PEFT methods: what PEFT v0.20.0's save_pretrained writes) before and
after the 3 steps. grads_step0.safetensors (pre-clip) is keyed by the TRAINABLE tensors, which for P-tuning and
prefix_projection are the prompt encoder's, not what PEFT saves (see "What PEFT saves" below); their values at the
start and after the 3 steps are adapter_in/prompt_encoder.safetensors and adapter_out_encoder.safetensors.

PEFT semantics (huggingface/peft v0.20.0: src/peft/peft_model.py PeftModel._setup_prompt_encoder,
get_prompt_embedding_to_save, get_prompt, _adjust_prompt_learning_kwargs, PeftModelForCausalLM.forward and
prepare_inputs_for_generation; src/peft/tuners/{prompt_tuning,p_tuning,prefix_tuning}/{config,model}.py;
src/peft/utils/save_and_load.py get_peft_model_state_dict / set_peft_model_state_dict; src/peft/utils/other.py
_prepare_prompt_learning_config; transformers' modeling_llama.py LlamaModel.forward / LlamaAttention.forward /
_prepare_4d_causal_attention_mask_with_cache_position, read at ~v4.49: cache_position = arange(past_seen,
past_seen + S), position_ids = cache_position; later versions compute position_ids = arange(S) + past_seen_tokens and
mask with create_causal_mask, the same result; cache_utils.DynamicCache.update). n = num_virtual_tokens = 4.

prompt -- PROMPT_TUNING. PromptEmbedding is nn.Embedding(n, token_dim = hidden). PeftModelForCausalLM.forward
  embeds input_ids with the model's word embeddings, prepends the n prompt rows (the same for every row of the
  batch) and calls the model with inputs_embeds only: no position_ids (a given one is dropped with a warning), no
  past_key_values, attention_mask None stays None (a given mask gets n ones prepended). So the model runs an
  ordinary causal forward over n + T positions: positions 0..n+T-1 (cache_position = arange(0, n+T)), the virtual
  tokens rotated at 0..n-1 like any token, the real tokens at n..n+T-1, causal mask over the concatenation (a
  virtual token sees only the virtual tokens before it). labels get n -100 prepended, so the loss is the HF shifted
  CE over the concatenation: position n-1 (the last virtual token) predicts labels[0], which is -100 in every row
  here, so the loss is exactly the CE of the real positions (checked). The logits the model returns have n + T
  positions; logits_row0 holds the real ones only, logits[n:], shape [T, vocab].
  Saved key: "prompt_embeddings" [n, hidden] (save_and_load.py: to_return["prompt_embeddings"] =
  get_prompt_embedding_to_save = the embedding of arange(n), i.e. the embedding matrix; no "base_model.model."
  prefix, no adapter name). Trainable: that matrix (Trainer name prompt_encoder.default.embedding.weight: decays,
  0.01). adapter_in: N(0, 0.5^2).
p_tuning -- P_TUNING, encoder_reparameterization_type "MLP", encoder_hidden_size 16. PromptEncoder: embedding
  nn.Embedding(n, hidden), mlp_head = Sequential(Linear(hidden, 16), ReLU, Linear(16, 16), ReLU, Linear(16, hidden))
  (encoder_num_layers is ignored for MLP: always these 3 Linears); prompts = mlp_head(embedding(arange(n))),
  prepended exactly as prompt tuning (same positions, mask, labels). Trainable: the encoder, keyed in
  grads_step0 / prompt_encoder.safetensors / adapter_out_encoder.safetensors as PEFT's module names with the adapter
  name dropped: prompt_encoder.embedding.weight [n, hidden], prompt_encoder.mlp_head.0.weight [16, hidden],
  .0.bias [16], .2.weight [16, 16], .2.bias [16], .4.weight [hidden, 16], .4.bias [hidden]. Biases no decay,
  the rest 0.01. adapter_in: embedding 0.5 randn, Linear weights randn / sqrt(in), biases 0.1 randn.
p_tuning_lstm -- P_TUNING, encoder_reparameterization_type "LSTM", encoder_hidden_size h = 10, encoder_num_layers 2,
  encoder_dropout 0. PromptEncoder: embedding nn.Embedding(n, hidden), lstm_head = nn.LSTM(input_size=hidden,
  hidden_size=h, num_layers=2, dropout=0, bidirectional=True, batch_first=True), mlp_head = Sequential(Linear(2h, 2h),
  ReLU, Linear(2h, hidden)); prompts = mlp_head(lstm_head(embedding(arange(n)))[0]) (the LSTM's output sequence:
  per position the forward direction's h concatenated with the reverse direction's, zero initial states; layer 1
  reads layer 0's [n, 2h] output). The LSTM here IS torch.nn.LSTM, built as PEFT builds it and run with the
  method's tensors as its weights (nn.LSTM.forward over _flat_weights), so the f32 and f64 runs and the finite
  differences all go through PyTorch's own LSTM. Trainable, keyed as above: prompt_encoder.embedding.weight [n, hidden],
  prompt_encoder.lstm_head.{weight_ih_l<k>, weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k>}[_reverse] (k = 0, 1:
  weight_ih [4h, hidden] for k = 0 and [4h, 2h] for k = 1, weight_hh [4h, h], biases [4h]; rows are the gates
  i, f, g, o, checked against a cell-by-cell float64 LSTM), prompt_encoder.mlp_head.0.weight [2h, 2h], .0.bias [2h],
  .2.weight [hidden, 2h], .2.bias [hidden]. Biases (bias_* included) no decay, the rest 0.01. adapter_in: embedding
  0.5 randn, weight_ih randn / sqrt(in), weight_hh randn / sqrt(h), LSTM biases 0.1 randn, Linears as MLP's.
prefix -- PREFIX_TUNING, prefix_projection false. _prepare_prompt_learning_config, for a config with
  num_key_value_heads (PEFT #1901): token_dim = head_dim * num_key_value_heads = 24, num_attention_heads =
  num_key_value_heads = 2 (both saved so in adapter_config.json), encoder_hidden_size defaults to that token_dim.
  PrefixEncoder: nn.Embedding(n, num_layers * 2 * token_dim) = [4, 96]. get_prompt views it as
  [batch, n, num_layers * 2, kv_heads, head_dim], permutes to [num_layers * 2, batch, kv_heads, n, head_dim] and
  splits into per-layer pairs: column ((l * 2 + j) * kv_heads + h) * head_dim + d of row t is layer l's key (j = 0)
  or value (j = 1), kv head h, dim d, virtual position t. These enter as a DynamicCache (past_key_values) holding
  n entries per layer. The model then (LlamaModel.forward) takes past_seen_tokens = n: cache_position =
  arange(n, n+T), position_ids = cache_position, so the real tokens are rotated at positions n..n+T-1; in
  LlamaAttention the NEW keys are rotated and then DynamicCache.update concatenates [prefix keys, new keys] on the
  sequence axis: the prefix keys are used exactly as stored, never rotated (PEFT rotates nothing either). The
  causal mask is [T, n+T]: real query i (position n+i) sees every prefix entry and real keys 0..i. Keys and values
  are per KV head (repeat_kv expands them to the query heads as the real ones). Labels and logits are the real
  tokens' only ([T, vocab]); PEFT passes no position_ids (a given one would be shifted by n).
  Saved key: "prompt_embeddings" [n, num_layers * 2 * kv_heads * head_dim] = [4, 96], the embedding matrix.
  Trainable: that matrix (decays, 0.01). adapter_in: N(0, 0.5^2).
llama_prefix_projection -- prefix_projection true, encoder_hidden_size 16: embedding nn.Embedding(n, token_dim=24)
  and transform = Sequential(Linear(24, 16), Tanh, Linear(16, num_layers * 2 * 24 = 96)); the prefix is
  transform(embedding(arange(n))) [4, 96], laid out and used as above. Trainable: prompt_encoder.embedding.weight
  [4, 24], prompt_encoder.transform.0.weight [16, 24], .0.bias [16], .2.weight [96, 16], .2.bias [96] (biases no
  decay). adapter_in: embedding 0.5 randn, weights randn / sqrt(in), biases 0.1 randn.
bottleneck -- bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020). Not a PEFT method: peftkit's own
  format. adapter_config.json {"peft_type": "BOTTLENECK", "adapter_type": "houlsby" | "pfeiffer",
  "reduction_factor": 8, "non_linearity": "relu", "task_type": "CAUSAL_LM", "base_model_name_or_path": null,
  "inference_mode": true}; bottleneck = hidden / reduction_factor = 6. An adapter maps h -> h + up(relu(down(h)))
  with down = Linear(hidden, bottleneck) and up = Linear(bottleneck, hidden), both with bias. Houlsby: one on the
  attention block's output (o_proj's output, before the residual add: x = x + A(o_proj(attn))) and one on the MLP's
  output (down_proj's output, before the residual add: x = x + M(down_proj(...))); Pfeiffer: the MLP one only.
  Tensors per layer l:
      base_model.model.model.layers.<l>.attn_adapter.down.weight [bottleneck, hidden], .down.bias [bottleneck],
      base_model.model.model.layers.<l>.attn_adapter.up.weight [hidden, bottleneck], .up.bias [hidden]   (Houlsby)
      base_model.model.model.layers.<l>.mlp_adapter.{down.weight, down.bias, up.weight, up.bias}          (both)
  Weights decay 0.01, biases none. up = 0 (weight and bias) makes the model the base one exactly (checked).
  adapter_in: down.weight randn / sqrt(hidden), down.bias 0.1 randn, up.weight 0.2 randn / sqrt(bottleneck),
  up.bias 0.05 randn.

What PEFT saves for P-tuning and prefix_projection (save_and_load.py get_peft_model_state_dict, the
is_prompt_learning branch): while training (inference_mode false) to_return["prompt_embeddings"] =
get_prompt_embedding_to_save(adapter), which RUNS the prompt encoder on arange(n) and saves its detached OUTPUT:
[n, hidden] for P-tuning, [n, num_layers * 2 * token_dim] for prefix_projection. The encoder (mlp_head /
transform, and the embedding feeding it) is NOT saved, and save_pretrained writes adapter_config.json with
inference_mode true. Loading (set_peft_model_state_dict) copies prompt_embeddings into prompt_encoder.embedding;
with inference_mode true the encoder builds no mlp_head / transform and get_prompt uses embedding.weight as the
prompts / prefix directly, so inference is exact. Training cannot continue from that file in PEFT
(is_trainable=True builds a fresh random mlp_head behind the loaded outputs for P-tuning, and an embedding of the
wrong shape for prefix_projection, which fails to load; huggingface/peft issues #1247, #1607, #2043, #2256). Hence
adapter_model.safetensors / adapter_out.safetensors hold "prompt_embeddings" = the encoder's output (what PEFT
writes and reads), and prompt_encoder.safetensors / adapter_out_encoder.safetensors the encoder itself (peftkit's
addition to the folder, to continue training). For prompt tuning and prefix tuning without projection the saved
matrix IS the trainable tensor.

expected.json: as torch_methods.py's (arch, method in prompt, p_tuning, prefix, bottleneck; micro_batches, hyper,
window_tokens, losses, grad_norms, lrs, final_loss, logits_row0 [T][vocab] = micro-batch 0 row 0, adapter_in
applied, no grad, the real positions only with the virtual tokens / prefix present, f32_vs_f64_relerr, torch), plus
config (adapter_config.json's method fields), num_virtual_tokens (0 for bottleneck), real_positions (the rope
positions of the real tokens: n..n+T-1 for the soft prompts, 0..T-1 for bottleneck), trainable {name: shape},
saved {name: shape}. f32_vs_f64_relerr names the worst tensor of each kind and gives per-tensor figures for the
trainable tensors and the saved ones.

Self-checks: models and micro-batches equal torch_methods.py's; this forward with no method equals
torch_methods.forward; prompt semantics: virtual embeddings = the word embeddings of n real tokens give, at the real
positions, the base model's logits on the concatenated ids; prefix semantics: the base model's own per-layer
(rotated) keys and values of n tokens, packed in PEFT's layout, give the logits of the base model on the
concatenated ids (so: prefix keys taken as stored, real tokens at n.., every prefix entry visible); PEFT's layout
round-trips; the loss over the n -100 labels + concatenation equals the real positions' loss; bottleneck up = 0 is
the base model; adapter_in moves the logits; P-tuning / prefix_projection: the saved prompt_embeddings used as the
prompts (PEFT's inference path) give the same logits as the encoder; autograd vs float64 central differences of the
window loss on an entry of every trainable tensor; non-zero step-0 gradients in every tensor; clipping at every
step; the f32 run within 1e-5 of the float64 run (losses, every step-0 gradient, every trained and saved tensor).
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_llama_lora import rmsnorm, rope_inv_freq, rotate_half, save_safetensors  # noqa: E402
from torch_methods import (BETAS, EPS, GRAD_ACCUM, HEAD_DIM, HEADS, HIDDEN, KV, LAYERS, LR,  # noqa: E402
                           NO_DECAY_PATTERNS, OUT, PREFIX, STEPS, TOTAL, WARMUP, WD, Adapter, decays, lr_factor,
                           peft_base_config, relerr, summed_ce, window_tokens)
from torch_methods import forward as methods_forward  # noqa: E402
from torch_full_diff import checked_inputs  # noqa: E402

N_VIRTUAL = 4
ENC_HIDDEN = 16
LSTM_HIDDEN = 10
LSTM_LAYERS = 2
REDUCTION = 8
BOTTLENECK = HIDDEN // REDUCTION
KV_DIM = KV * HEAD_DIM
F64_TOL = 1e-5
# llama_bottleneck_houlsby's seed 7004 (the default: 7000 + 100 * arch + index) draws an adapter_in where one entry
# of layer 1's mlp_adapter.down.weight gets a step-0 gradient of 1.4e-7 by cancellation: there f32 rounding is 3% of
# it (f64: 1.3985e-7, f32: 1.3516e-7), and with |g| near AdamW's eps (1e-8) g / (sqrt(v) + eps) passes that on,
# moving the entry 3.8e-5 away from the f64 run (1.6e-5 relative over the tensor, above F64_TOL). 7054 has no such
# entry; the f32 vs f64 check below is what decides.
# llama_p_tuning_lstm's default seed 7006 gives entry 664 of lstm_head.weight_ih_l1 a step-0 gradient of -6.2e-9 (6e-7 of
# the tensor's largest), the same effect: the f32 run ends 1.4e-4 away from the f64 run there (2.2e-5 relative over the
# tensor). 7056: worst f32 vs f64 2.6e-7.
SEED_OVERRIDE = {"llama_bottleneck_houlsby": 7054, "llama_p_tuning_lstm": 7056}
NONE = Adapter("none", {}, {}, {})
assert HIDDEN % REDUCTION == 0


# ---- the methods ---------------------------------------------------------------------------------
class Method:
    """kind: prompt | p_tuning | prefix | bottleneck. params: trainable name -> tensor. Everything the forward
    needs is computed from params, so the same object runs in float32 and float64."""

    def __init__(self, kind, config, params, projection=False, adapter_type=None):
        self.kind, self.config, self.params = kind, config, params
        self.projection, self.adapter_type = projection, adapter_type
        self.lstm = None
        if kind == "p_tuning" and config["encoder_reparameterization_type"] == "LSTM":
            self.lstm = lstm_head(config)

    @property
    def n_virtual(self):
        return 0 if self.kind == "bottleneck" else N_VIRTUAL

    def prompts(self, P=None):
        """[n, hidden]: the virtual token embeddings (prompt, p_tuning)."""
        P = P or self.params
        if self.kind == "prompt":
            return P["prompt_embeddings"]
        if self.kind == "p_tuning" and self.lstm is not None:  # PromptEncoder.forward, LSTM reparameterization
            e = run_lstm(self.lstm, P, P["prompt_encoder.embedding.weight"])
            e = F.relu(e @ P["prompt_encoder.mlp_head.0.weight"].t() + P["prompt_encoder.mlp_head.0.bias"])
            return e @ P["prompt_encoder.mlp_head.2.weight"].t() + P["prompt_encoder.mlp_head.2.bias"]
        if self.kind == "p_tuning":  # PromptEncoder.forward, MLP reparameterization
            e = P["prompt_encoder.embedding.weight"]
            for i in (0, 2):
                e = F.relu(e @ P[f"prompt_encoder.mlp_head.{i}.weight"].t() + P[f"prompt_encoder.mlp_head.{i}.bias"])
            return e @ P["prompt_encoder.mlp_head.4.weight"].t() + P["prompt_encoder.mlp_head.4.bias"]
        raise ValueError(self.kind)

    def prefix_matrix(self, P=None):
        """[n, num_layers * 2 * kv_dim]: PrefixEncoder.forward(arange(n))."""
        P = P or self.params
        if not self.projection:
            return P["prompt_embeddings"]
        e = P["prompt_encoder.embedding.weight"]
        e = torch.tanh(e @ P["prompt_encoder.transform.0.weight"].t() + P["prompt_encoder.transform.0.bias"])
        return e @ P["prompt_encoder.transform.2.weight"].t() + P["prompt_encoder.transform.2.bias"]

    def saved(self, P=None):
        """What adapter_model.safetensors holds (PEFT's save_pretrained for the PEFT methods)."""
        P = P or self.params
        if self.kind == "bottleneck" or (self.kind in ("prompt", "prefix") and not self.projection):
            return {k: v.detach().clone() for k, v in P.items()}
        m = self.prompts(P) if self.kind == "p_tuning" else self.prefix_matrix(P)
        return {"prompt_embeddings": m.detach().clone().contiguous()}

    def has_encoder(self):
        return self.kind == "p_tuning" or (self.kind == "prefix" and self.projection)

    def adapt(self, where, l, h, P=None):
        """Bottleneck adapter on a block's output h (before the residual add); identity where there is none."""
        P = P or self.params
        k = f"{PREFIX}model.layers.{l}.{where}_adapter."
        if self.kind != "bottleneck" or k + "down.weight" not in P:
            return h
        z = F.relu(h @ P[k + "down.weight"].t() + P[k + "down.bias"])
        return h + z @ P[k + "up.weight"].t() + P[k + "up.bias"]


def lstm_head(config):
    """PromptEncoder.__init__'s lstm_head, as PEFT builds it."""
    return torch.nn.LSTM(input_size=config["token_dim"], hidden_size=config["encoder_hidden_size"],
                         num_layers=config["encoder_num_layers"], dropout=config["encoder_dropout"], bidirectional=True,
                         batch_first=True)


LSTM_KEY = "prompt_encoder.lstm_head."


def run_lstm(lstm, P, x):
    """lstm_head(x[None])[0][0]: nn.LSTM.forward with the method's tensors (any dtype) as the module's weights."""
    lstm._flat_weights = [P[LSTM_KEY + k] for k in lstm._flat_weights_names]
    return lstm(x.unsqueeze(0))[0][0]


def naive_lstm(P, x, h, layers):
    """A cell-by-cell bidirectional LSTM from the documented equations (gate rows i, f, g, o; zero initial states),
    to check that the names and layouts above are what nn.LSTM computes."""
    for k in range(layers):
        outs = []
        for suffix, order in (("", range(x.shape[0])), ("_reverse", reversed(range(x.shape[0])))):
            W, U = P[f"{LSTM_KEY}weight_ih_l{k}{suffix}"], P[f"{LSTM_KEY}weight_hh_l{k}{suffix}"]
            b = P[f"{LSTM_KEY}bias_ih_l{k}{suffix}"] + P[f"{LSTM_KEY}bias_hh_l{k}{suffix}"]
            hs, c, hp = [None] * x.shape[0], torch.zeros(h, dtype=x.dtype), torch.zeros(h, dtype=x.dtype)
            for t in order:
                z = W @ x[t] + U @ hp + b
                i, f, g, o = torch.sigmoid(z[:h]), torch.sigmoid(z[h:2 * h]), torch.tanh(z[2 * h:3 * h]), torch.sigmoid(z[3 * h:])
                c = f * c + i * g
                hp = o * torch.tanh(c)
                hs[t] = hp
            outs.append(torch.stack(hs))
        x = torch.cat(outs, dim=1)
    return x


def prefix_layers(m, B):
    """PEFT's get_prompt: [n, L*2*kv_heads*head_dim] -> per layer (key, value), each [B, kv_heads, n, head_dim]."""
    n = m.shape[0]
    pkv = m.unsqueeze(0).expand(B, n, m.shape[1]).reshape(B, n, LAYERS * 2, KV, HEAD_DIM).permute(2, 0, 3, 1, 4)
    pairs = pkv.split(2)  # PEFT: .split(num_transformer_submodules * 2), each [2, B, kv_heads, n, head_dim]
    return [(p[0], p[1]) for p in pairs]


def pack_prefix(layers):
    """The inverse of prefix_layers (batch row 0): per layer (key, value) [B, kv, n, head_dim] -> [n, L*2*kv_dim]."""
    st = torch.stack([t[0] for kv in layers for t in kv])  # [L*2, kv_heads, n, head_dim]
    return st.permute(2, 0, 1, 3).reshape(st.shape[2], -1)


def peft_prompt_config(peft_type, cfg, **fields):
    base = peft_base_config(peft_type, num_virtual_tokens=N_VIRTUAL, token_dim=cfg["hidden_size"],
                            num_transformer_submodules=1, num_attention_heads=cfg["num_attention_heads"],
                            num_layers=cfg["num_hidden_layers"], modules_to_save=None)
    base.update(fields)
    return base


def make_method(kind, cfg, seed, projection=False, adapter_type=None, encoder="MLP", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def linear(P, name, o, i):
        P[name + ".weight"], P[name + ".bias"] = rnd(o, i, std=1 / math.sqrt(i)), rnd(o, std=0.1)

    P = {}
    if kind == "prompt":
        config = peft_prompt_config("PROMPT_TUNING", cfg, prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
                                    tokenizer_name_or_path=None, tokenizer_kwargs=None)
        P["prompt_embeddings"] = rnd(N_VIRTUAL, HIDDEN, std=0.5)
    elif kind == "p_tuning" and encoder == "LSTM":
        h = LSTM_HIDDEN
        config = peft_prompt_config("P_TUNING", cfg, encoder_reparameterization_type="LSTM",
                                    encoder_hidden_size=h, encoder_num_layers=LSTM_LAYERS, encoder_dropout=0.0)
        P["prompt_encoder.embedding.weight"] = rnd(N_VIRTUAL, HIDDEN, std=0.5)
        for k in range(LSTM_LAYERS):
            n_in = HIDDEN if k == 0 else 2 * h
            for suffix in ("", "_reverse"):
                P[f"{LSTM_KEY}weight_ih_l{k}{suffix}"] = rnd(4 * h, n_in, std=1 / math.sqrt(n_in))
                P[f"{LSTM_KEY}weight_hh_l{k}{suffix}"] = rnd(4 * h, h, std=1 / math.sqrt(h))
                P[f"{LSTM_KEY}bias_ih_l{k}{suffix}"] = rnd(4 * h, std=0.1)
                P[f"{LSTM_KEY}bias_hh_l{k}{suffix}"] = rnd(4 * h, std=0.1)
        linear(P, "prompt_encoder.mlp_head.0", 2 * h, 2 * h)
        linear(P, "prompt_encoder.mlp_head.2", HIDDEN, 2 * h)
        # the same names and shapes as PEFT's module
        ref = {"prompt_encoder." + k: list(v.shape) for k, v in torch.nn.ModuleDict(dict(
            embedding=torch.nn.Embedding(N_VIRTUAL, HIDDEN), lstm_head=lstm_head(config),
            mlp_head=torch.nn.Sequential(torch.nn.Linear(2 * h, 2 * h), torch.nn.ReLU(),
                                         torch.nn.Linear(2 * h, HIDDEN)))).state_dict().items()}
        assert ref == {k: list(v.shape) for k, v in P.items()}, ref
    elif kind == "p_tuning":
        config = peft_prompt_config("P_TUNING", cfg, encoder_reparameterization_type="MLP",
                                    encoder_hidden_size=ENC_HIDDEN, encoder_num_layers=2, encoder_dropout=0.0)
        P["prompt_encoder.embedding.weight"] = rnd(N_VIRTUAL, HIDDEN, std=0.5)
        linear(P, "prompt_encoder.mlp_head.0", ENC_HIDDEN, HIDDEN)
        linear(P, "prompt_encoder.mlp_head.2", ENC_HIDDEN, ENC_HIDDEN)
        linear(P, "prompt_encoder.mlp_head.4", HIDDEN, ENC_HIDDEN)
    elif kind == "prefix":
        # _prepare_prompt_learning_config with num_key_value_heads: token_dim = head_dim * kv heads, heads = kv heads
        assert cfg["head_dim"] == HEAD_DIM and cfg["num_key_value_heads"] == KV
        config = peft_prompt_config("PREFIX_TUNING", cfg, token_dim=KV_DIM, num_attention_heads=KV, init_weights=None,
                                    encoder_hidden_size=ENC_HIDDEN if projection else KV_DIM,
                                    prefix_projection=projection)
        if projection:
            P["prompt_encoder.embedding.weight"] = rnd(N_VIRTUAL, KV_DIM, std=0.5)
            linear(P, "prompt_encoder.transform.0", ENC_HIDDEN, KV_DIM)
            linear(P, "prompt_encoder.transform.2", LAYERS * 2 * KV_DIM, ENC_HIDDEN)
        else:
            P["prompt_embeddings"] = rnd(N_VIRTUAL, LAYERS * 2 * KV_DIM, std=0.5)
    elif kind == "bottleneck":
        config = {"peft_type": "BOTTLENECK", "adapter_type": adapter_type, "reduction_factor": REDUCTION,
                  "non_linearity": "relu", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
                  "inference_mode": True}
        for l in range(LAYERS):
            for where in (("attn", "mlp") if adapter_type == "houlsby" else ("mlp",)):
                k = f"{PREFIX}model.layers.{l}.{where}_adapter."
                P[k + "down.weight"] = rnd(BOTTLENECK, HIDDEN, std=1 / math.sqrt(HIDDEN))
                P[k + "down.bias"] = rnd(BOTTLENECK, std=0.1)
                P[k + "up.weight"] = rnd(HIDDEN, BOTTLENECK, std=0.2 / math.sqrt(BOTTLENECK))
                P[k + "up.bias"] = rnd(HIDDEN, std=0.05)
    else:
        raise ValueError(kind)
    P = {k: v.to(dtype).contiguous().requires_grad_() for k, v in P.items()}
    m = Method(kind, config, P, projection, adapter_type)
    if m.lstm is not None:
        with torch.no_grad():
            P64 = {k: v.double() for k, v in P.items()}
            e = P64["prompt_encoder.embedding.weight"]
            a, b = run_lstm(m.lstm, P64, e), naive_lstm(P64, e, LSTM_HIDDEN, LSTM_LAYERS)
            assert a.shape == (N_VIRTUAL, 2 * LSTM_HIDDEN) and (a - b).abs().max().item() < 1e-12, "nn.LSTM layout"
    return m


# ---- the model ----------------------------------------------------------------------------------
def forward(cfg, w, m, ids, P=None, prompts=None, prefix=None, collect_kv=None):
    """Logits [B, S, vocab] of the HF Llama/Qwen2 forward (eager attention) with method m (None: the base).
    S = n + T for prompt / p_tuning (virtual positions first), T otherwise. prompts / prefix override the
    method's (the semantics checks); collect_kv, a list, receives each layer's (rotated key, value) [B, kv, S, D]."""
    dt = w["model.embed_tokens.weight"].dtype
    B, T = ids.shape
    H, KVh, D, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    x = w["model.embed_tokens.weight"][ids]
    if prompts is None and m is not None and m.kind in ("prompt", "p_tuning"):
        prompts = m.prompts(P)
    if prefix is None and m is not None and m.kind == "prefix":
        prefix = prefix_layers(m.prefix_matrix(P), B)
    past = 0
    if prompts is not None:  # PeftModelForCausalLM.forward: inputs_embeds = cat(prompts, embeds), no cache
        x = torch.cat((prompts.unsqueeze(0).expand(B, -1, -1).to(dt), x), dim=1)
    if prefix is not None:  # a cache of n entries: past_seen_tokens = n
        past = prefix[0][0].shape[2]
    S = x.shape[1]
    pos = torch.arange(past, past + S)  # cache_position = arange(past_seen, past_seen + S) = position_ids
    freqs = torch.outer(pos.float(), rope_inv_freq(cfg))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dt), emb.sin().to(dt)
    # query i (position past + i) sees key j (of past + S) iff j <= past + i
    mask = torch.full((S, past + S), float("-inf"), dtype=dt).triu(past + 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."

        def lin(name, inp):
            y = inp @ w[p + name + ".weight"].t()
            b = w.get(p + name + ".bias")
            return y if b is None else y + b

        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", h).view(B, S, H, D).transpose(1, 2)
        k = lin("self_attn.k_proj", h).view(B, S, KVh, D).transpose(1, 2)
        v = lin("self_attn.v_proj", h).view(B, S, KVh, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if collect_kv is not None:
            collect_kv.append((k, v))
        if prefix is not None:  # DynamicCache.update: cat([cached, new], dim=-2); the cached keys as stored
            k = torch.cat((prefix[l][0].to(dt), k), dim=2)
            v = torch.cat((prefix[l][1].to(dt), v), dim=2)
        k = k.repeat_interleave(H // KVh, dim=1)
        v = v.repeat_interleave(H // KVh, dim=1)
        att = F.softmax((q @ k.transpose(2, 3)) / math.sqrt(D) + mask, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(B, S, H * D)
        o = lin("self_attn.o_proj", a)
        x = x + (o if m is None else m.adapt("attn", l, o, P))
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        o = lin("mlp.down_proj", F.silu(lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h))
        x = x + (o if m is None else m.adapt("mlp", l, o, P))
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.t()


def n_prompt(m):
    return N_VIRTUAL if m.kind in ("prompt", "p_tuning") else 0


def mb_loss(cfg, w, m, P, ids, lab):
    """Summed CE of a micro-batch as the model computes it: for prompt / p_tuning over the concatenation, with n
    -100 labels prepended (PeftModelForCausalLM.forward)."""
    logits = forward(cfg, w, m, ids, P)
    n = n_prompt(m)
    if n:
        lab = torch.cat((torch.full((lab.shape[0], n), -100, dtype=lab.dtype), lab), dim=1)
    return summed_ce(logits, lab)


def real_logits(cfg, w, m, ids, P=None):
    return forward(cfg, w, m, ids, P)[:, n_prompt(m):]


def window_loss(cfg, w, m, P, mbs):
    return sum(mb_loss(cfg, w, m, P, ids, lab) for ids, lab in mbs) / window_tokens(mbs)


# ---- training (torch_methods.train over the method's trainable tensors) -------------------------
def accumulate(cfg, w, m, P, mbs):
    n = window_tokens(mbs)
    for p in P.values():
        p.grad = None
    total = 0.0
    for ids, lab in mbs:
        loss = mb_loss(cfg, w, m, P, ids, lab) / n
        loss.backward()
        total += loss.item()
    return total


def step0_norm(cfg, w, m, P, mbs):
    accumulate(cfg, w, m, P, mbs)
    n = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in P.values())).item()
    for p in P.values():
        p.grad = None
    return n


def train(cfg, w, m, mbs, max_grad_norm):
    P = m.params
    keys = sorted(P)
    groups = [{"params": [P[k] for k in keys if decays(k)], "weight_decay": WD},
              {"params": [P[k] for k in keys if not decays(k)], "weight_decay": 0.0}]
    groups = [gr for gr in groups if gr["params"]]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses, norms, lrs, grads0 = [], [], [], None
    for step in range(STEPS):
        losses.append(accumulate(cfg, w, m, P, mbs))
        if step == 0:
            grads0 = {k: P[k].grad.detach().clone() for k in keys}
        norm = torch.nn.utils.clip_grad_norm_([P[k] for k in keys], max_grad_norm).item()
        assert norm > max_grad_norm, f"step {step}: pre-clip norm {norm} <= max_grad_norm {max_grad_norm}"
        norms.append(norm)
        lrs.append(sched.get_last_lr()[0])
        assert abs(lrs[-1] - LR * lr_factor(step)) < 1e-15
        opt.step()
        sched.step()
    return dict(losses=losses, norms=norms, lrs=lrs, grads0=grads0)


# ---- self-checks ---------------------------------------------------------------------------------
def check_base_forward(cfg, w, mbs):
    """This forward with no method is torch_methods.forward."""
    for ids, _ in mbs:
        a, b = forward(cfg, w, None, ids), methods_forward(cfg, w, NONE, ids)
        assert (a - b).abs().max().item() <= 1e-6 * b.abs().max().item(), "forward differs from torch_methods.forward"


def check_semantics(cfg, w, mbs, seed):
    """Prompt and prefix semantics against the base model on concatenated ids (float64)."""
    w64 = {k: v.double() for k, v in w.items()}
    g = torch.Generator().manual_seed(seed)
    ids = mbs[0][0]
    B = ids.shape[0]
    a = torch.randint(3, cfg["vocab_size"], (1, N_VIRTUAL), generator=g)
    with torch.no_grad():
        full = forward(cfg, w64, None, torch.cat((a.expand(B, -1), ids), dim=1))[:, N_VIRTUAL:]
        # prompt tuning: the virtual embeddings = the word embeddings of a -> positions 0..n-1 then n..n+T-1
        via_prompt = forward(cfg, w64, None, ids, prompts=w64["model.embed_tokens.weight"][a[0]])[:, N_VIRTUAL:]
        e1 = (via_prompt - full).abs().max().item()
        assert e1 < 1e-10, f"prompt semantics: {e1}"
        # prefix tuning: the base model's rotated keys / values of a, in PEFT's layout, as the cache
        kv = []
        forward(cfg, w64, None, a, collect_kv=kv)
        packed = pack_prefix(kv)
        assert packed.shape == (N_VIRTUAL, LAYERS * 2 * KV_DIM)
        layers = prefix_layers(packed, B)
        for (k0, v0), (k1, v1) in zip(kv, layers):
            assert torch.equal(k0[0], k1[0]) and torch.equal(v0[0], v1[0]) and torch.equal(k1[0], k1[B - 1])
        via_prefix = forward(cfg, w64, None, ids, prefix=layers)
        e2 = (via_prefix - full).abs().max().item()
        assert e2 < 1e-10, f"prefix semantics: {e2}"
        # and NOT what one gets by rotating the prefix keys again, or by giving the real tokens positions 0..T-1
        rerot = []
        for (k, v) in layers:
            freqs = torch.outer(torch.arange(N_VIRTUAL).float(), rope_inv_freq(cfg))
            emb = torch.cat((freqs, freqs), dim=-1).double()
            rerot.append((k * emb.cos() + rotate_half(k) * emb.sin(), v))
        assert (forward(cfg, w64, None, ids, prefix=rerot) - full).abs().max().item() > 1e-6
    return max(e1, e2)


def check_method(cfg, w, m, mbs):
    """Concatenated-label loss = real-position loss; adapter_in non-trivial; bottleneck up = 0 is the base;
    P-tuning / prefix_projection: the saved matrix (PEFT's inference path) gives the encoder's logits."""
    ids = mbs[0][0]
    with torch.no_grad():
        base = forward(cfg, w, None, ids)
        got = real_logits(cfg, w, m, ids)
        assert got.shape == base.shape
        assert (got - base).abs().max().item() > 1e-3, f"{m.kind}: adapter_in is trivial"
        for i, lab in mbs:
            a = mb_loss(cfg, w, m, None, i, lab).item()
            b = summed_ce(real_logits(cfg, w, m, i), lab).item()
            assert abs(a - b) <= 1e-6 * abs(b), f"{m.kind}: loss over the concatenation {a} != real positions {b}"
        if m.kind == "bottleneck":
            Z = {k: (torch.zeros_like(v) if ".up." in k else v) for k, v in m.params.items()}
            assert (real_logits(cfg, w, m, ids, Z) - base).abs().max().item() == 0
        if m.has_encoder():
            pe = m.saved()["prompt_embeddings"]
            if m.kind == "p_tuning":
                inf = forward(cfg, w, None, ids, prompts=pe)[:, N_VIRTUAL:]
            else:
                inf = forward(cfg, w, None, ids, prefix=prefix_layers(pe, ids.shape[0]))
            assert (inf - got).abs().max().item() <= 1e-6 * got.abs().max().item()


def check_fd(cfg, w, m, mbs, g):
    """autograd vs float64 central differences of the window loss, an entry of every trainable tensor."""
    w64 = {k: v.double() for k, v in w.items()}
    P = {k: v.detach().double().requires_grad_() for k, v in m.params.items()}
    loss = window_loss(cfg, w64, m, P, mbs)
    grads = dict(zip(P, torch.autograd.grad(loss, list(P.values()))))
    worst, h = 0.0, 1e-5
    for k in sorted(P):
        gk = grads[k].view(-1)
        cand = torch.nonzero(gk.abs() > 1e-6).flatten()
        assert cand.numel() > 0, f"{k}: no entry with a gradient above 1e-6"
        idx = int(cand[int(torch.randint(cand.numel(), (1,), generator=g))])
        with torch.no_grad():
            flat = P[k].view(-1)
            old = flat[idx].item()
            flat[idx] = old + h
            lp = window_loss(cfg, w64, m, P, mbs).item()
            flat[idx] = old - h
            lm = window_loss(cfg, w64, m, P, mbs).item()
            flat[idx] = old
        fd, an = (lp - lm) / (2 * h), gk[idx].item()
        rel = abs(fd - an) / max(abs(fd), abs(an), 1e-3)
        worst = max(worst, rel)
        assert rel < 1e-5, f"{m.kind}: {k}[{idx}] autograd {an} vs finite difference {fd}"
    return worst


# ---- fixtures ------------------------------------------------------------------------------------
def shapes(d):
    return {k: list(v.shape) for k, v in sorted(d.items())}


def run_fixture(name, arch, cfg, w, mbs, kind, seed, projection=False, adapter_type=None, encoder="MLP"):
    m = make_method(kind, cfg, seed, projection, adapter_type, encoder)
    check_method(cfg, w, m, mbs)
    fd = check_fd(cfg, w, m, mbs, torch.Generator().manual_seed(seed + 1))
    d = os.path.join(OUT, name)
    os.makedirs(os.path.join(d, "adapter_in"), exist_ok=True)
    with open(os.path.join(d, "adapter_in", "adapter_config.json"), "w") as f:
        f.write(json.dumps(m.config, indent=2, sort_keys=True))  # as PEFT's save_pretrained writes it
    saved_in = m.saved()
    save_safetensors(os.path.join(d, "adapter_in", "adapter_model.safetensors"), saved_in, {"format": "pt"})
    if m.has_encoder():
        save_safetensors(os.path.join(d, "adapter_in", "prompt_encoder.safetensors"),
                         {k: v.detach().clone() for k, v in m.params.items()}, {"format": "pt"})
    with torch.no_grad():
        logits_row0 = real_logits(cfg, w, m, mbs[0][0][:1])[0]
    assert logits_row0.shape == (mbs[0][0].shape[1], cfg["vocab_size"])
    n0 = step0_norm(cfg, w, m, m.params, mbs)
    max_grad_norm = float(f"{0.5 * n0:.2g}")
    r = train(cfg, w, m, mbs, max_grad_norm)
    assert abs(r["norms"][0] - n0) <= 1e-5 * n0
    for k, gk in r["grads0"].items():
        assert gk.abs().max().item() > 0, f"{name}: zero step-0 gradient for {k}"
    with torch.no_grad():
        final_loss = window_loss(cfg, w, m, None, mbs).item()
    saved_out = m.saved()
    # the same run in float64
    w64 = {k: v.double() for k, v in w.items()}
    m64 = make_method(kind, cfg, seed, projection, adapter_type, encoder, dtype=torch.float64)
    r64 = train(cfg, w64, m64, mbs, max_grad_norm)
    saved64 = m64.saved()
    gs = {k: relerr(r["grads0"][k], r64["grads0"][k]) for k in sorted(m.params)}
    ts = {k: relerr(m.params[k], m64.params[k]) for k in sorted(m.params)}
    ss = {k: relerr(saved_out[k], saved64[k]) for k in sorted(saved_out)}
    f64 = dict(losses=max(abs(x - y) / abs(y) for x, y in zip(r["losses"], r64["losses"])),
               grads_step0=max(gs.values()), adapter_out=max(max(ts.values()), max(ss.values())),
               worst_grad_tensor=max(gs, key=gs.get), worst_trained_tensor=max(ts, key=ts.get),
               grads_step0_per_tensor=gs, trained_per_tensor=ts, saved_per_tensor=ss)
    assert max(f64["losses"], f64["grads_step0"], f64["adapter_out"]) < F64_TOL, f"{name}: f32 vs f64 {f64}"
    save_safetensors(os.path.join(d, "grads_step0.safetensors"), r["grads0"])
    save_safetensors(os.path.join(d, "adapter_out.safetensors"), saved_out, {"format": "pt"})
    if m.has_encoder():
        save_safetensors(os.path.join(d, "adapter_out_encoder.safetensors"),
                         {k: v.detach().clone() for k, v in m.params.items()}, {"format": "pt"})
    keys = sorted(m.params)
    hyper = dict(lr=LR, betas=list(BETAS), eps=EPS, weight_decay=WD, steps=STEPS, grad_accum=GRAD_ACCUM,
                 max_grad_norm=max_grad_norm, schedule="cosine", warmup_steps=WARMUP, total_steps=TOTAL,
                 no_decay=[k for k in keys if not decays(k)],
                 no_decay_rule="weight_decay 0 for a key whose lowercased name matches (re.search) any of "
                               + json.dumps(NO_DECAY_PATTERNS) + "; weight_decay 0.01 otherwise")
    method_fields = {k: v for k, v in m.config.items()
                     if k not in ("task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                                  "inference_mode", "modules_to_save")}
    nv = m.n_virtual
    T = mbs[0][0].shape[1]
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(dict(arch=arch, method=kind, config=method_fields, num_virtual_tokens=nv,
                       real_positions=list(range(nv, nv + T)), trainable=shapes(m.params), saved=shapes(saved_out),
                       micro_batches=[dict(input_ids=i.tolist(), labels=lab.tolist()) for i, lab in mbs],
                       hyper=hyper, window_tokens=window_tokens(mbs), losses=r["losses"], grad_norms=r["norms"],
                       lrs=r["lrs"], final_loss=final_loss, logits_row0=logits_row0.tolist(), f32_vs_f64_relerr=f64,
                       torch=torch.__version__),
                  f, indent=1)
    print(f"{name:26s} losses {['%.6f' % x for x in r['losses']]} -> {final_loss:.6f}  norms "
          f"{['%.4g' % x for x in r['norms']]} clip {max_grad_norm:g}  fd {fd:.1e}  f64 "
          f"{max(f64['losses'], f64['grads_step0'], f64['adapter_out']):.1e} ({f64['worst_trained_tensor']})",
          flush=True)


def fixtures(arch):
    out = [(f"{arch}_prompt", "prompt", {}), (f"{arch}_p_tuning", "p_tuning", {}), (f"{arch}_prefix", "prefix", {})]
    if arch == "llama":
        out.append(("llama_prefix_projection", "prefix", dict(projection=True)))
    out.append((f"{arch}_bottleneck_houlsby", "bottleneck", dict(adapter_type="houlsby")))
    if arch == "llama":
        out.append(("llama_bottleneck_pfeiffer", "bottleneck", dict(adapter_type="pfeiffer")))
    out.append((f"{arch}_p_tuning_lstm", "p_tuning", dict(encoder="LSTM")))  # last: the other fixtures keep their seeds
    return out


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    only = set(sys.argv[1:])  # optional fixture names, for development
    for a, arch, cfg, w, mbs in checked_inputs():
        check_base_forward(cfg, w, mbs)
        sem = check_semantics(cfg, w, mbs, 7900 + a)
        print(f"{arch}: prompt / prefix semantics against the base model on concatenated ids: {sem:.1e}", flush=True)
        for j, (name, kind, kw) in enumerate(fixtures(arch)):
            if not only or name in only:
                run_fixture(name, arch, cfg, w, mbs, kind, SEED_OVERRIDE.get(name, 7000 + 100 * a + j), **kw)


if __name__ == "__main__":
    sys.exit(main())
