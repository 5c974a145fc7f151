"""CFG-wise compression: the conditional and unconditional branches as separate passes, each
through its own quantized transformer (docs/method.md §8).

Diffusers' CFG pipelines batch the branches, unconditional half first. :class:`CFGSplitTransformer`
stands where the pipeline's transformer stands, cuts every batched input in two, runs the halves
through the unconditional and the conditional transformer, and joins the outputs. Each branch's
transformer was calibrated on that branch's activations only and may use other bits (e.g. W4A4 for
the unconditional branch beside W4A8 for the conditional one).
"""

from __future__ import annotations

import torch
from torch import nn

BRANCHES = ("uncond", "cond")  # order of the halves in a diffusers CFG batch


def branch_rows(x: torch.Tensor, branch: str | None) -> torch.Tensor:
    """The rows of a ``[uncond; cond]`` batch (leading dimension) that belong to ``branch``; every
    row for None. Spatial and temporal token batches of Latte (``B*F`` or ``B*HW`` rows) are
    batch-major, so halving them halves the branches too."""
    if branch is None:
        return x
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES} or None, got {branch!r}")
    if x.shape[0] % 2:
        raise ValueError(f"a CFG batch has an even number of rows (uncond then cond), got {x.shape[0]}; "
                         "calibrate with guidance > 1")
    half = x.shape[0] // 2
    return x[:half] if branch == "uncond" else x[half:]


def _split(value, batch: int, part: int):
    """Half ``part`` (0 or 1) of every tensor with ``batch`` rows inside ``value``; the rest as is."""
    if torch.is_tensor(value) and value.ndim and value.shape[0] == batch:
        half = batch // 2
        return value[:half] if part == 0 else value[half:]
    if isinstance(value, dict):
        return {k: _split(v, batch, part) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_split(v, batch, part) for v in value)
    return value


class CFGSplitTransformer(nn.Module):
    """Runs the unconditional and conditional halves of a CFG batch through two transformers.

    An odd batch (sampling without guidance) is all conditional and goes to ``cond`` alone.
    ``config``, ``dtype`` and ``device`` are the conditional transformer's, so the pipeline reads
    its settings as before.
    """

    def __init__(self, uncond: nn.Module, cond: nn.Module):
        super().__init__()
        self.uncond, self.cond = uncond, cond

    @property
    def config(self):
        return self.cond.config

    @property
    def dtype(self) -> torch.dtype:
        return self.cond.dtype

    @property
    def device(self) -> torch.device:
        return self.cond.device

    def forward(self, *args, **kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        batch = hidden.shape[0]
        if batch % 2:
            return self.cond(*args, **kwargs)
        outs = [branch(*_split(args, batch, part), **_split(kwargs, batch, part))
                for part, branch in enumerate((self.uncond, self.cond))]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(pair) for pair in zip(*outs))
        sample = torch.cat([o.sample for o in outs])
        return type(outs[0])(sample=sample)
