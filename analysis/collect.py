"""Record what a quantized layer's transforms do to its real inputs, per time group.

The full-precision model is sampled on a few prompts; a forward pre-hook on the FP layer of the
same name keeps, per time group, the per-channel abs-max of its inputs and a bounded uniform
sample of input rows (the calibration observers of :mod:`trdq.calibrate`, so memory stays
bounded). The time group of every call is the quantized model's own (its
:class:`~trdq.timegroups.GroupIndex`), so the groups here are the groups the quantized layers use.
Each group's sample is then passed through that group's :class:`~trdq.layers.GroupTransform`:
smoothing alone (``X Delta_g^-1``) and smoothing with rotation (``X Delta_g^-1 R_g``).

    fp = trdq.load_model("shapes-t2i")
    q = trdq.quantize(fp, config, prompts)
    layers = collect_layers(fp, q, ["transformer_blocks.0.attn1.to_q"], prompts)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trdq import quantizer
from trdq.api import quant_info, transformer_of
from trdq.calibrate import Calibration, InputObserver
from trdq.cfg import BRANCHES, CFGSplitTransformer
from trdq.layers import QuantLinear
from trdq.models.adapters import adapter_for
from trdq.models.loader import LoadedModel
from trdq.sampling import generate
from trdq.timegroups import GroupState, track_timestep

DEFAULT_SAMPLE_TOKENS = 512


@dataclass(frozen=True)
class GroupActivations:
    """One layer's inputs in one time group, before and after that group's transforms.

    Attributes:
        group: the time group.
        x: (n, C_in) sample of the FP inputs (n <= the sample size).
        smoothed: (n, C_in) ``X Delta_g^-1`` (equal to ``x`` when the group has no smoothing).
        rotated: (n, C_in) ``X Delta_g^-1 R_g`` (equal to ``smoothed`` when it has no rotation).
        absmax: (C_in,) per-channel abs-max of every input row the group saw, not just the sample.
        tokens: number of input rows the group saw.
        weight: (C_out, C_in) ``W Delta_g R_g``, the weight the group quantizes.
        kind: which transforms the group applies (``none``, ``smooth``, ``rotate``, ``both``).
        alpha: the group's smoothing strength alpha_g (None without smoothing).
        output_sqnr_db: SQNR of the quantized layer's output against the FP layer's on ``x``.
    """

    group: int
    x: torch.Tensor
    smoothed: torch.Tensor
    rotated: torch.Tensor
    absmax: torch.Tensor
    tokens: int
    weight: torch.Tensor
    kind: str
    alpha: float | None
    output_sqnr_db: float


@dataclass(frozen=True)
class LayerActivations:
    """What one quantized layer does to its inputs, per time group.

    Attributes:
        name: the layer's module name in the quantized transformer.
        weight: (C_out, C_in) full-precision weight.
        groups: one entry per time group, in group order.
        a_bits, a_symmetric: how the layer quantizes activations (per token).
        w_bits: weight bits of the quantized model.
    """

    name: str
    weight: torch.Tensor
    groups: list[GroupActivations]
    a_bits: int
    a_symmetric: bool
    w_bits: int

    @property
    def num_groups(self) -> int:
        return len(self.groups)


def quantized_layers(qmodel) -> list[str]:
    """Module names of the :class:`~trdq.layers.QuantLinear` layers of a quantized model, in
    model order (``cond.``/``uncond.`` prefixed for a CFG-split model)."""
    return [n for n, m in transformer_of(qmodel).named_modules() if isinstance(m, QuantLinear)]


def _fp_name(transformer, name: str) -> tuple[str, str | None]:
    """(the FP layer's name, the CFG branch whose rows it sees) of a quantized layer's name."""
    if isinstance(transformer, CFGSplitTransformer):
        branch, _, rest = name.partition(".")
        if branch in BRANCHES:
            return rest, branch
    return name, None


@torch.no_grad()
def group_activations(layer: QuantLinear, fp_weight: torch.Tensor, fp_bias: torch.Tensor | None,
                      observer: InputObserver, group: int) -> GroupActivations:
    """Pass one group's recorded inputs through the group's transforms and the quantized layer.

    Args:
        layer: the quantized layer.
        fp_weight, fp_bias: the full-precision layer's parameters.
        observer: the FP layer's recorded inputs (:class:`trdq.calibrate.InputObserver`).
    """
    t = layer.transforms[group]
    x = observer.sample(group).double()  # (n, C_in)
    smoothed = dataclasses.replace(t, rotation=None).activation(x)
    rotated = t.activation(x)
    saved = layer.state.group  # the layer reads its group from the model's shared state
    try:
        layer.state.group = group
        approx = layer(x.float().to(layer.w_codes.device)).cpu()
    finally:
        layer.state.group = saved
    bias = None if fp_bias is None else fp_bias.double()
    ref = F.linear(x, fp_weight.double(), bias)
    return GroupActivations(group, x.float(), smoothed.float(), rotated.float(), observer.absmax[group].clone(),
                            int(observer.tokens[group]), t.weight(fp_weight).float(), t.kind, t.alpha,
                            quantizer.sqnr_db(ref, approx) if len(x) else float("nan"))


@torch.no_grad()
def collect_layers(fp: LoadedModel, qmodel: LoadedModel, names: Sequence[str], prompts: Sequence[str],
                   steps: int | None = None, guidance: float | None = None, seed: int = 0,
                   sample_tokens: int = DEFAULT_SAMPLE_TOKENS, batch_size: int = 8) -> dict[str, LayerActivations]:
    """Sample ``fp`` on ``prompts`` once and record the inputs of the named quantized layers.

    Args:
        fp: the full-precision model ``qmodel`` was made from.
        qmodel: a model from :func:`trdq.quantize` (simulated).
        names: layers of ``qmodel`` (see :func:`quantized_layers`).
        steps, guidance: sampler settings (the model's defaults if None).
        seed: seed of the first prompt (one seed per prompt, counting up).
        sample_tokens: input rows kept per layer and group.

    Returns:
        One :class:`LayerActivations` per name, in the order given.

    Raises:
        ValueError: for a model that is not quantized, an unknown layer name, or a time group that
            no sampling step reached.
    """
    info = quant_info(qmodel)
    if info is None:
        raise ValueError("collect_layers needs the quantized model made by trdq.quantize(fp, config, prompts) "
                         "beside the FP model")
    qt, ft = transformer_of(qmodel), transformer_of(fp)
    available = quantized_layers(qmodel)
    if unknown := [n for n in names if n not in available]:
        raise ValueError(f"not quantized layers of this model: {unknown}; choose from "
                         f"analysis.collect.quantized_layers(qmodel), e.g. {available[:3]}")
    state = GroupState(info.index)
    by_branch: dict[str | None, dict] = {}
    for name in names:
        fp_name, branch = _fp_name(qt, name)
        by_branch.setdefault(branch, {})[name] = ft.get_submodule(fp_name)
    calibrations = [Calibration(layers, state, info.index.num_groups, sample_tokens, seed, branch)
                    for branch, layers in by_branch.items()]
    handle = track_timestep(ft, state, adapter_for(ft).timestep_position)
    try:
        with contextlib.ExitStack() as stack:
            for c in calibrations:
                stack.enter_context(c)
            generate(fp, list(prompts), [seed + i for i in range(len(prompts))], steps=steps,
                     guidance=guidance, batch_size=batch_size)
    finally:
        handle.remove()
    observers = {n: obs for c in calibrations for n, obs in c.observers.items()}
    return {name: _layer(name, qt, ft, observers[name]) for name in names}


def _layer(name: str, qt, ft, observer: InputObserver) -> LayerActivations:
    empty = (observer.tokens == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"time groups {empty} of {name} saw no input; sample with at least as many steps as "
                         "there are time groups (steps=... the model was quantized with)")
    layer = qt.get_submodule(name)
    fp_name, branch = _fp_name(qt, name)
    fp_layer = ft.get_submodule(fp_name)
    w_bits = (qt if branch is None else getattr(qt, branch)).trdq_info.config.w_bits  # a branch may differ
    weight = fp_layer.weight.detach().float().cpu()
    bias = None if fp_layer.bias is None else fp_layer.bias.detach().cpu()
    groups = [group_activations(layer, weight, bias, observer, g) for g in range(layer.num_groups)]
    return LayerActivations(name, weight, groups, layer.a_bits, layer.a_symmetric, w_bits)


def collect_layer(fp: LoadedModel, qmodel: LoadedModel, name: str, prompts: Sequence[str],
                  steps: int | None = None, guidance: float | None = None, seed: int = 0,
                  sample_tokens: int = DEFAULT_SAMPLE_TOKENS) -> LayerActivations:
    """:func:`collect_layers` for one layer."""
    return collect_layers(fp, qmodel, [name], prompts, steps, guidance, seed, sample_tokens)[name]
