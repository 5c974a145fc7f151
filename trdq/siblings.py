"""Layers that read one input: an attention's query, key and value projections.

In self-attention ``to_q``, ``to_k`` and ``to_v`` all read the same hidden states; in
cross-attention ``to_k`` and ``to_v`` both read the text states (and a joint attention's
``add_q_proj``/``add_k_proj``/``add_v_proj`` read the context). With
``QuantConfig(shared_inputs=True)`` such siblings get one transform per time group, fitted to
their weights stacked (:func:`trdq.api.convert`), so the transformed activations (and, in the
simulated path, their fake quantization) can be computed once per input and read by every sibling
(:class:`SharedInput`) instead of once per layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# (projection names that read one input, in the order an attention processor calls them)
SELF_ATTENTION = ("to_q", "to_k", "to_v")
CROSS_ATTENTION = ("to_k", "to_v")
ADDED = ("add_q_proj", "add_k_proj", "add_v_proj")


def input_siblings(transformer: nn.Module, names: Iterable[str]) -> list[tuple[str, ...]]:
    """The sets of at least two of ``names`` (linear layers of ``transformer``) that read one
    input, found from the attention modules' structure: a module with ``to_q``/``to_k``/``to_v``
    and an ``is_cross_attention`` flag (diffusers' ``Attention``) gives its q/k/v in self-attention
    and its k/v in cross-attention, plus its ``add_*_proj`` if it has them. The structure is what
    the standard processors read; :func:`trdq.api.convert` checks it against the calibration
    statistics (siblings see equal inputs) before fitting them together."""
    wanted = set(names)
    found = []
    for prefix, module in transformer.named_modules():
        if not hasattr(module, "is_cross_attention"):
            continue
        groups = [CROSS_ATTENTION if module.is_cross_attention else SELF_ATTENTION, ADDED]
        for group in groups:
            members = tuple(f"{prefix}.{p}" if prefix else p for p in group
                            if isinstance(getattr(module, p, None), nn.Module))
            members = tuple(m for m in members if m in wanted)
            if len(members) >= 2:
                found.append(members)
    return found


class SharedInput:
    """What the first of a set of sibling layers computed from an input, kept for the others.

    The first sibling to run on an input tensor computes its transformed activations and
    :meth:`put` s them; the others, called with the very same tensor (same object, unchanged
    since, same time group), :meth:`get` them. Once every sibling has read it the entry is
    dropped, so it does not outlive its attention call (if a sibling is skipped, the next input
    replaces it). Any other input misses, and the layer computes its own: sharing saves work and
    never changes a value. Under ``torch.compile`` the
    layers compute their own (a traced graph cannot keep Python state between calls).
    """

    def __init__(self, size: int):
        self.size = size
        self.clear()

    def clear(self) -> None:
        """Drop what is kept."""
        self.x: torch.Tensor | None = None
        self.version, self.group, self.value, self.uses = -1, -1, None, 0

    def get(self, x: torch.Tensor, group: int):
        """The value kept for ``x`` in time group ``group``, or None."""
        if self.x is not x or self.version != _version(x) or self.group != group:
            return None
        value = self.value
        self.uses += 1
        if self.uses >= self.size:
            self.clear()
        return value

    def put(self, x: torch.Tensor, group: int, value) -> None:
        """Keep ``value``, computed from ``x`` in ``group``, for the other siblings."""
        self.x, self.version, self.group, self.value, self.uses = x, _version(x), group, value, 1

    def __deepcopy__(self, memo) -> SharedInput:
        return SharedInput(self.size)  # a copied model shares among its own layers, from empty

    def __repr__(self) -> str:
        return f"SharedInput(size={self.size})"


def _version(x: torch.Tensor) -> int | None:
    """``x``'s in-place change counter; None for a tensor made under ``torch.inference_mode``, which
    keeps none (there the identity of the tensor is what tells inputs apart)."""
    return None if x.is_inference() else x._version


def shared(holder: SharedInput | None, x: torch.Tensor, group: int, compute):
    """``compute()`` of ``x``, through ``holder`` when there is one (see :class:`SharedInput`)."""
    if holder is None or torch.compiler.is_compiling():
        return compute()
    value = holder.get(x, group)
    if value is None:
        value = compute()
        holder.put(x, group, value)
    return value
