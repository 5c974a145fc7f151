"""Activation outlier statistics of every linear layer's input, per sampling step.

For each ``nn.Linear`` inside the transformer blocks and each sampling step, the per-channel
abs-max of the layer's input is taken over all tokens of both CFG branches, and summarised as
``ratio`` (largest channel abs-max / median channel abs-max: how far the outlier channels stand
out), ``absmax`` and ``kurtosis`` (of all input values; 3 for a Gaussian).

    python -m analysis outliers --model shapes-t2i --json assets/results/shapes-t2i-outliers.json
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import nn

from trdq.models.loader import LoadedModel
from trdq.sampling import generate

BLOCK_LINEAR = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def block_linears(transformer: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the transformer blocks, by module name."""
    return {name: m for name, m in transformer.named_modules()
            if isinstance(m, nn.Linear) and BLOCK_LINEAR.search(name)}


@torch.no_grad()
def collect(model: LoadedModel, prompts: list[str], seed: int = 0, steps: int = 20,
            guidance: float = 4.5) -> list[dict]:
    """Sample ``prompts`` and record input statistics of every block linear at every step.

    Returns:
        Records ``{"layer", "block", "step", "timestep", "ratio", "absmax", "kurtosis"}``.
    """
    transformer = model.pipe.transformer
    state = {"step": -1, "timestep": None}
    absmax: dict = defaultdict(lambda: None)  # (layer, step) -> (C_in,) running abs-max
    moments: dict = defaultdict(lambda: torch.zeros(4, dtype=torch.float64))  # n, sum x^2, sum x^4

    def on_call(_module, args, kwargs):
        t = kwargs.get("timestep", args[2] if len(args) > 2 else None)
        t = float(t.flatten()[0]) if torch.is_tensor(t) else t
        if t != state["timestep"]:
            state["step"] += 1
            state["timestep"] = t

    def recorder(name):
        def hook(_module, inputs):
            x = inputs[0].detach().flatten(0, -2).double()  # (tokens, C_in)
            key = (name, state["step"])
            m = x.abs().amax(0)
            absmax[key] = m if absmax[key] is None else torch.maximum(absmax[key], m)
            centred = x - x.mean()
            moments[key] += torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64),
                                         (centred**2).sum(), (centred**4).sum(), torch.zeros((), dtype=torch.float64)])
        return hook

    handles = [transformer.register_forward_pre_hook(on_call, with_kwargs=True)]
    handles += [m.register_forward_pre_hook(recorder(n)) for n, m in block_linears(transformer).items()]
    timesteps = {}
    try:
        generate(model, prompts, [seed + i for i in range(len(prompts))], steps=steps,
                        guidance=guidance, batch_size=len(prompts))
        timesteps = dict(enumerate(model.pipe.scheduler.timesteps.tolist()))
    finally:
        for h in handles:
            h.remove()
    records = []
    for (name, step), m in absmax.items():
        n, s2, s4, _ = moments[(name, step)].tolist()
        block, layer = BLOCK_LINEAR.search(name).groups()
        records.append({
            "layer": layer, "block": int(block), "step": step, "timestep": timesteps.get(step),
            "ratio": float(m.max() / m.median().clamp_min(1e-12)), "absmax": float(m.max()),
            "kurtosis": float((s4 / n) / (s2 / n) ** 2),
        })
    return sorted(records, key=lambda r: (r["block"], r["layer"], r["step"]))
