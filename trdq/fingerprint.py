"""A fingerprint of a model's weights, to tell at load time whether a quantized model is being
rebuilt on the full-precision weights it was made from.

Per tensor of the state dict: its shape, the sum of squares of an evenly strided sample of at most
about :data:`SAMPLE` elements, and the sample's projections onto :data:`PROJECTIONS` fixed random
sign vectors. Two different checkpoints give projections about sqrt(2) times the sample's norm
apart; the same weights stored in another dtype (bf16, fp16: relative rounding under 2^-8 per
element, adding up like a random walk) stay within a few thousandths of it, far below
:data:`TOLERANCE`.
"""

from __future__ import annotations

import torch
from torch import nn

SAMPLE = 4096
PROJECTIONS = 4
TOLERANCE = 0.05  # of the sample's norm


def _signs(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.randint(0, 2, (PROJECTIONS, n), generator=g, dtype=torch.float64) * 2 - 1


def fingerprint(module: nn.Module) -> dict[str, list]:
    """``{name: [shape, sum of squares, projection, ...]}`` over ``module``'s floating-point state."""
    out = {}
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point() or t.device.type == "meta":
                continue
            flat = t.detach().reshape(-1)
            sample = flat[::max(1, flat.numel() // SAMPLE)].double().cpu()
            out[name] = [list(t.shape), float(sample.square().sum()), *(_signs(sample.numel()) @ sample).tolist()]
    return out


def mismatch(saved: dict, module: nn.Module) -> str | None:
    """None if ``module`` holds the weights ``saved`` (a :func:`fingerprint`) was taken from, else
    what differs first, in words."""
    now = fingerprint(module)
    if missing := sorted(set(saved) - set(now)):
        more = f" and {len(missing) - 1} more tensors" if len(missing) > 1 else ""
        return f"it lacks {missing[0]!r}{more}"
    if extra := sorted(set(now) - set(saved)):
        return f"it has {extra[0]!r}, which the original lacked"
    for name, (shape, squares, *projections) in saved.items():
        shape_now, squares_now, *projections_now = now[name]
        if list(shape) != shape_now:
            return f"{name!r} is {tuple(shape_now)}, not {tuple(shape)}"
        norm = max(squares, squares_now) ** 0.5
        if any(abs(a - b) > TOLERANCE * norm for a, b in zip(projections, projections_now, strict=True)) \
                or abs(squares - squares_now) > 2 * TOLERANCE * max(squares, squares_now):
            return f"the weights of {name!r} differ"
    return None
