#!/usr/bin/python3
"""Golden outputs for LoRA dropout > 0, DoRA's above all (a dev tool, never a runtime dependency).

    node dist/test/helpers/dropout_masks.js <fixture> 0.1     # for each fixture below, after `npx tsc`
    nice -n 10 /usr/bin/python3 scripts/golden/torch_dora_dropout.py

A dropout golden cannot be matched with torch's RNG, so the masks are an input: peftkit's training run
records the mask each Linear call draws (seeded dropout: a pure function of the micro-batch's seed and the
call site's stream offset; test/helpers/dropout_masks.ts) into <fixture>/dropout_masks.json, and this
script applies exactly those where PEFT's nn.Dropout(p) would draw its own: x * (keep / (1 - p)), keep the
recorded mask of (optimizer step, micro-batch, module). The golden test checks that its own run draws the
same masks, then that it lands where this PyTorch run does. Eval (logits_row0, final_loss) has no dropout.

A sibling of torch_methods.py (same models, checked byte for byte against models/<arch>, same micro-batches,
checked against <arch>_lora, same training recipe, the same run_fixture and file layout), with lora_dropout
0.1 in adapter_config.json and expected.json's hyper.lora_dropout:

    llama_dora_dropout, qwen2_dora_dropout, llama_tied_dora_dropout   DoRA, r 4, alpha 8, all 7 Linears
    llama_lora_dropout                                                 LoRA, the same (a control: LoRA's
                                                                       dropout with the same masks)

DoRA with dropout active in training, as PEFT computes it (read at huggingface/peft main, 2026-08:
src/peft/tuners/lora/layer.py Linear.forward, src/peft/tuners/lora/variants.py DoraLinearVariant.forward,
src/peft/tuners/lora/dora.py DoraLinearLayer.forward): result = base_layer(x) = x W^T + b; the variant sees
dropout != Identity and training, so x_d = dropout(x) and base_result = None, and DoraLinearLayer computes
base_result = F.linear(x_d, W) (the dequantized weight, NO bias) and adds
    (m / ||W + s B A|| - 1) * base_result + (m / ||W + s B A||) * lora_B(lora_A(x_d)) * s,
the norm detached. Without dropout (or in eval) base_result is the base output minus its bias. Vanilla
LoRA adds lora_B(lora_A(dropout(x))) * s. torch_methods.Adapter.linear writes these literally.

Self-checks (torch_methods.run_fixture's): identity at neutral init (B = 0, m = ||W||) in eval and in
training with the step-0 masks, autograd vs float64 central differences of the step-0 training loss (the
masks applied, DoRA's norm constant), non-zero step-0 gradients everywhere, clipping at every step, the f32
run within 1e-5 of the float64 run (same masks). Here also: every mask is present for every step,
micro-batch and targeted module, with the shape of that Linear's input, and drops something.
"""
import json
import os
import sys

import torch

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_methods import OUT, STEPS, linear_modules, run_fixture  # noqa: E402
from torch_full_diff import checked_inputs  # noqa: E402

P = 0.1
FIXTURES = {  # name: (arch, method, adapter seed)
    "llama_dora_dropout": ("llama", "dora", 7300),
    "qwen2_dora_dropout": ("qwen2", "dora", 7301),
    "llama_tied_dora_dropout": ("llama_tied", "dora", 7302),
    "llama_lora_dropout": ("llama", "lora", 7303),
}


def read_masks(name, mbs):
    """{(step, micro_batch, module): keep [rows, in] (uint8)} from <name>/dropout_masks.json, checked complete."""
    with open(os.path.join(OUT, name, "dropout_masks.json")) as f:
        m = json.load(f)
    assert m["p"] == P, f"{name}: the masks were drawn with p {m['p']}, this script uses {P}"
    masks = {}
    for c in m["calls"]:
        keep = torch.tensor([int(ch) for ch in c["keep"]], dtype=torch.uint8).view(c["rows"], c["cols"])
        masks[(c["step"], c["micro_batch"], c["module"])] = keep
    for step in range(STEPS):
        for i, (ids, _) in enumerate(mbs):
            for mod, _, fan_in in linear_modules():
                keep = masks[(step, i, mod)]
                assert keep.shape == (ids.numel(), fan_in), f"{name}: mask of {(step, i, mod)} is {tuple(keep.shape)}"
                assert 0 < int(keep.sum()) < keep.numel(), f"{name}: mask of {(step, i, mod)} drops nothing"
    assert len(masks) == STEPS * len(mbs) * len(list(linear_modules())), f"{name}: unexpected masks"
    return masks


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    only = set(sys.argv[1:])  # optional fixture names, for development
    for _, arch, cfg, w, mbs in checked_inputs():
        for name, (fixture_arch, method, seed) in FIXTURES.items():
            if fixture_arch == arch and (not only or name in only):
                run_fixture(name, arch, cfg, w, mbs, method, seed, dropout=(P, read_masks(name, mbs)))


if __name__ == "__main__":
    sys.exit(main())
