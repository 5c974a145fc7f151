"""Attention in CFG pipelines: Attention-Sharing between the guidance branches (docs/method.md §9)
and quantized attention scores (docs/method.md §10).

Diffusers' CFG pipelines run the two branches as one batch, unconditional half first. In a
self-attention layer whose two branches attend alike, the unconditional half can skip its queries,
keys, ``QK^T`` and softmax and reuse the conditional half's attention probabilities:
``A_cond V_uncond``. This module measures how alike the branches attend (per layer, head and
step, as the cosine between flattened attention maps), picks the layers to share from that
measurement, and installs the sharing through diffusers attention processors, so it works on the
full-precision, simulated and real integer models alike (their linear layers are untouched).

With ``QuantConfig(attention_bits=8)``, every attention layer computes ``QK^T`` from int8 queries
and mean-subtracted keys (:func:`trdq.kernels.quantized_scores`), its softmax in float32 and
``PV`` in the model's float dtype (:class:`QuantAttnProcessor`); shared layers reuse those
quantized probabilities.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from trdq import kernels
from trdq.cpu import attention_gemm
from trdq.quantizer import check_bits
from trdq.timegroups import GroupIndex, TimeGroups


def self_attention_layers(transformer: torch.nn.Module) -> dict[str, Attention]:
    """The self-attention layers (``attn1``) of the transformer's spatial and temporal blocks."""
    return {name: m for name, m in transformer.named_modules()
            if isinstance(m, Attention) and name.endswith(".attn1") and not m.is_cross_attention}


def _layout_supported(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states,
                      attention_mask) -> bool:
    return (encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
            and hidden_states.shape[0] % 2 == 0 and attn.spatial_norm is None and attn.group_norm is None)


def _check_joint_branches(transformer: torch.nn.Module) -> None:
    from trdq.cfg import CFGSplitTransformer

    if isinstance(transformer, CFGSplitTransformer):
        raise ValueError("attention sharing and similarity need both CFG branches in one batch; a CFG-split "
                         "model (cfg_split=True) runs them as separate passes: quantize without cfg_split")


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)


def _finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    out = out.transpose(1, 2).reshape(out.shape[0], -1, out.shape[1] * out.shape[-1])
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _qk(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = _heads(attn.to_q(x), attn.heads), _heads(attn.to_k(x), attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k


@dataclass(frozen=True)
class AttentionQuant:
    """How attention scores are quantized.

    Attributes:
        bits: width of the symmetric per-token grids of the queries and of the keys after their
            mean over tokens is subtracted (:func:`trdq.kernels.quantize_qk`).
        real: ``Q K^T`` as an exact integer product of the codes (:func:`trdq.kernels.quantized_scores`,
            on :func:`trdq.cpu.attention_gemm`'s GEMM), or simulated: the same codes dequantized and
            multiplied in float32 (:func:`trdq.kernels.quantized_scores_ref`).
    """

    bits: int = 8
    real: bool = False

    def __post_init__(self):
        check_bits(self.bits, "attention_bits")

    def scores(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
        """float32 ``scale * Q K^T`` (up to a per-row constant the softmax cancels)."""
        if self.real:
            return kernels.quantized_scores(q, k, scale, self.bits, attention_gemm(q.device))
        return kernels.quantized_scores_ref(q, k, scale, self.bits)


def attention_probs(attn: Attention, q: torch.Tensor, k: torch.Tensor, quant: AttentionQuant | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(scale * Q K^T + mask)``: in ``q``'s dtype without ``quant``, else from quantized
    scores with the softmax in float32. A boolean mask keeps the True entries, a float one is added."""
    scores = (q @ k.transpose(-1, -2)) * attn.scale if quant is None else quant.scores(q, k, attn.scale)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    return scores.softmax(-1)


class QuantAttnProcessor:
    """Diffusers' standard attention (``AttnProcessor2_0``'s projections, norms, mask and output)
    with the scores quantized by ``quant`` and ``PV`` in the value's dtype."""

    def __init__(self, quant: AttentionQuant):
        self.quant = quant

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:
            image_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch, length = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states
        if encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        q, k = _heads(attn.to_q(hidden_states), attn.heads), _heads(attn.to_k(context), attn.heads)
        value = _heads(attn.to_v(context), attn.heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = attention_probs(attn, q, k, self.quant, attention_mask).to(value.dtype) @ value
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * value.shape[-1]).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if image_shape is not None:
            out = out.transpose(-1, -2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


#: The processors :func:`quantize_attention` replaces: diffusers' standard attention, and its own.
_STANDARD_PROCESSORS = (AttnProcessor, AttnProcessor2_0, QuantAttnProcessor)


def quantize_attention(transformer: torch.nn.Module, quant: AttentionQuant | None) -> int:
    """Quantize the scores of every attention layer of ``transformer`` that runs diffusers' standard
    processor (``quant`` None: restore the float one). Layers with another processor (joint or
    linear attention) are left as they are.

    Returns:
        The number of layers changed.

    Raises:
        ValueError: if ``quant`` is given and no layer runs the standard processor.
    """
    layers = [m for m in transformer.modules()
              if isinstance(m, Attention) and isinstance(m.processor, _STANDARD_PROCESSORS)]
    if quant is not None and not layers:
        raise ValueError(f"attention_bits needs attention layers with diffusers' standard processor; "
                         f"{type(transformer).__name__} has none: quantize with attention_bits=None")
    for m in layers:
        m.set_processor(QuantAttnProcessor(quant) if quant is not None else AttnProcessor2_0())
    return len(layers)


@dataclass
class Recorder:
    """Cond/uncond attention-map cosine per layer, step and head, and each layer's score cost.

    Attributes:
        sums: ``(layer, timestep) -> (heads,)`` summed cosine over sample pairs.
        counts: ``(layer, timestep) -> number of pairs``.
        score_flops: ``layer -> multiply-adds of the unconditional half's QK^T per step``.
        timestep: the step being recorded (set by :func:`measure_similarity`).
    """

    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    score_flops: dict = field(default_factory=dict)
    timestep: float = 0.0

    def add(self, name: str, uncond: torch.Tensor, cond: torch.Tensor, head_dim: int) -> None:
        """Fold in two (pairs, heads, L, L) probability tensors of heads of width ``head_dim``."""
        a, b = uncond.flatten(2).double(), cond.flatten(2).double()
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)  # (pairs, heads)
        key = (name, self.timestep)
        self.sums[key] = self.sums.get(key, 0.0) + cos.sum(0).cpu().numpy()
        self.counts[key] = self.counts.get(key, 0) + cos.shape[0]
        pairs, heads, length, _ = uncond.shape
        self.score_flops[name] = pairs * heads * length * length * head_dim


class CFGAttnProcessor:
    """Self-attention over a ``[uncond; cond]`` batch that measures the branches' similarity
    (``recorder`` set) or shares the conditional probabilities with the unconditional half
    (``share=True``). Inputs of another layout (no CFG, a mask, cross-attention) run the layer's
    ``previous`` processor if it quantizes scores, else the standard one; quantized scores are
    kept either way."""

    def __init__(self, name: str, share: bool = False, recorder: Recorder | None = None, previous=None):
        self.name, self.share, self.recorder = name, share, recorder
        self.quant = getattr(previous, "quant", None)  # quantized scores stay quantized when shared
        self.fallback = previous if isinstance(previous, QuantAttnProcessor) else AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        if not _layout_supported(attn, hidden_states, encoder_hidden_states, attention_mask):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        half = hidden_states.shape[0] // 2
        value = _heads(attn.to_v(hidden_states), attn.heads)
        if self.share:  # queries and keys of the conditional half only
            q, k = _qk(attn, hidden_states[half:])
            probs = attention_probs(attn, q, k, self.quant).to(value.dtype)
            out = torch.cat([probs @ value[:half], probs @ value[half:]])
        else:
            q, k = _qk(attn, hidden_states)
            probs = attention_probs(attn, q, k, self.quant).to(value.dtype)
            if self.recorder is not None:
                self.recorder.add(self.name, probs[:half], probs[half:], q.shape[-1])
            out = probs @ value
        return _finish(attn, out.to(hidden_states.dtype), hidden_states)


@dataclass
class Similarity:
    """Measured cond/uncond attention similarity of a model.

    Attributes:
        layers: self-attention layer names, in model order.
        timesteps: sampling timesteps, first step first.
        cosine: (layers, steps, heads) mean cosine between the branches' attention maps.
        score_flops: (layers,) multiply-adds of each layer's unconditional ``QK^T`` per step.
    """

    layers: list[str]
    timesteps: list[float]
    cosine: np.ndarray
    score_flops: np.ndarray

    def per_layer(self) -> np.ndarray:
        """(layers,) cosine averaged over steps and heads."""
        return self.cosine.mean((1, 2))

    def per_group(self, num_groups: int) -> np.ndarray:
        """(layers, groups) cosine averaged per time group (groups cut as the engine cuts them)."""
        index = GroupIndex.from_schedule(TimeGroups(num_groups), self.timesteps)
        groups = np.array([index.group_of(t) for t in self.timesteps])
        return np.stack([self.cosine[:, groups == g].mean((1, 2)) for g in range(num_groups)], 1)

    def records(self) -> list[dict]:
        """One row per (layer, step, head), for JSON or a DataFrame."""
        return [{"layer": name, "step": s, "timestep": t, "head": h, "cosine": float(self.cosine[i, s, h])}
                for i, name in enumerate(self.layers) for s, t in enumerate(self.timesteps)
                for h in range(self.cosine.shape[2])]


@torch.no_grad()
def similarity_of_call(transformer: torch.nn.Module, **inputs) -> Similarity:
    """The cond/uncond similarity of one forward call on a ``[uncond; cond]`` batch (one "step"),
    for a bare transformer without a pipeline to sample with."""
    layers = self_attention_layers(transformer)
    recorder = Recorder()
    with _processors(layers, lambda name, old: CFGAttnProcessor(name, recorder=recorder, previous=old)):
        transformer(**inputs)
    names = [n for n in layers if n in recorder.score_flops]
    cosine = np.stack([recorder.sums[(n, 0.0)] / recorder.counts[(n, 0.0)] for n in names])[:, None]
    flops = np.array([recorder.score_flops[n] for n in names], dtype=float)
    return Similarity(names, [0.0], cosine, flops)


@torch.no_grad()
def measure_similarity(model, prompts: Sequence[str], steps: int | None = None, guidance: float | None = None,
                       seed: int = 0, batch_size: int = 8,
                       progress: Callable[[int, int], None] | None = None) -> Similarity:
    """Run the model on ``prompts`` (with CFG) and measure, in every self-attention layer, how alike
    the conditional and unconditional attention maps are.

    Args:
        model: a :class:`trdq.LoadedModel` (full precision or quantized).

    Raises:
        ValueError: if guidance is 1 or less (there is no unconditional branch to compare).
    """
    from trdq.sampling import generate

    guidance = model.settings.guidance if guidance is None else guidance
    if guidance <= 1:
        raise ValueError(f"attention similarity needs classifier-free guidance (> 1), got {guidance}")
    transformer = model.pipe.transformer
    _check_joint_branches(transformer)
    layers = self_attention_layers(transformer)
    if not layers:
        raise ValueError(f"{type(transformer).__name__} has no self-attention layers named '*.attn1'")
    recorder = Recorder()

    def on_step(_module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        recorder.timestep = float(torch.as_tensor(t).flatten()[0])

    handle = transformer.register_forward_pre_hook(on_step, with_kwargs=True)
    try:
        with _processors(layers, lambda name, old: CFGAttnProcessor(name, recorder=recorder, previous=old)):
            generate(model, list(prompts), [seed + i for i in range(len(prompts))], steps=steps,
                     guidance=guidance, batch_size=batch_size, progress=progress)
    finally:
        handle.remove()
    names = [n for n in layers if n in recorder.score_flops]
    timesteps = sorted({t for _, t in recorder.sums}, reverse=True)
    cosine = np.stack([np.stack([recorder.sums[(n, t)] / recorder.counts[(n, t)] for t in timesteps])
                       for n in names])
    flops = np.array([recorder.score_flops[n] for n in names], dtype=float)
    return Similarity(names, timesteps, cosine, flops)


@dataclass(frozen=True)
class ShareRule:
    """How to pick the shared layers from a measured :class:`Similarity` (exactly one is set): the
    ``budget`` most similar layers, every layer with mean cosine >= ``threshold``, or the most
    similar layers until they hold ``compute`` (a fraction) of the uncond score compute."""

    threshold: float | None = None
    budget: int | None = None
    compute: float | None = None

    @classmethod
    def parse(cls, text: str) -> ShareRule:
        """``"8"`` -> the 8 most similar layers; ``"0.95"`` -> every layer with cosine >= 0.95;
        ``"25%"`` -> the most similar layers until 25% of the uncond score compute is skipped."""
        text = text.strip()
        if text.isdigit():
            return cls(budget=int(text))
        percent = text.endswith("%")
        try:
            value = float(text[:-1] if percent else text) / (100 if percent else 1)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise ValueError(f"attention sharing takes a number of layers (e.g. 8), a cosine threshold "
                             f"in [0, 1] (e.g. 0.95) or a share of the uncond score compute (e.g. 25%), "
                             f"got {text!r}")
        return cls(compute=value) if percent else cls(threshold=value)

    @property
    def label(self) -> str:
        if self.compute is not None:
            return f"skip>={self.compute:.0%}"
        return f"top{self.budget}" if self.budget is not None else f"cos>={self.threshold:g}"


@dataclass(frozen=True)
class SharingPlan:
    """Which layers share attention, and what that skips.

    Attributes:
        layers: the shared self-attention layers.
        skipped: fraction of the unconditional branch's attention-score multiply-adds (``QK^T``)
            skipped per step; the softmax and the query/key projections of those layers go too.
    """

    layers: tuple[str, ...]
    skipped: float


def select_layers(similarity: Similarity, threshold: float | None = None, budget: int | None = None,
                  layers: Sequence[str] | None = None, rule: ShareRule | None = None,
                  compute: float | None = None) -> SharingPlan:
    """Choose the layers to share: those with mean cosine >= ``threshold``, the ``budget`` most
    similar ones, the most similar ones until they hold at least ``compute`` (a fraction) of the
    uncond score compute, or an explicit list (checked against the measured layers). Give exactly
    one (a ``rule`` gives its own)."""
    if rule is not None:
        threshold, budget, compute = rule.threshold, rule.budget, rule.compute
    given = [x is not None for x in (threshold, budget, layers, compute)]
    if sum(given) != 1:
        raise ValueError("give exactly one of threshold (a cosine in [0, 1]), budget (a number of layers), "
                         "compute (a fraction of the uncond score compute) or layers (their names)")
    score = similarity.per_layer()
    flops = dict(zip(similarity.layers, similarity.score_flops))
    total = max(similarity.score_flops.sum(), 1.0)
    if compute is not None:
        if not 0 <= compute <= 1:
            raise ValueError(f"compute is a fraction of the uncond score compute in [0, 1], got {compute}")
        chosen, held = [], 0.0
        for i in np.argsort(-score, kind="stable"):
            if held >= compute * total:
                break
            chosen.append(similarity.layers[i])
            held += flops[similarity.layers[i]]
        taken = set(chosen)
        chosen = [n for n in similarity.layers if n in taken]  # in model order
    elif threshold is not None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold is a cosine similarity in [0, 1], got {threshold}")
        chosen = [n for n, s in zip(similarity.layers, score) if s >= threshold]
    elif budget is not None:
        if not 0 <= budget <= len(score):
            raise ValueError(f"budget must be between 0 and {len(score)} layers, got {budget}")
        order = np.argsort(-score, kind="stable")[:budget]
        chosen = [similarity.layers[i] for i in sorted(order)]
    else:
        unknown = [n for n in layers if n not in similarity.layers]
        if unknown:
            raise ValueError(f"unknown self-attention layer(s) {unknown}; measured: {similarity.layers}")
        chosen = [n for n in similarity.layers if n in set(layers)]
    skipped = sum(flops[n] for n in chosen) / total
    return SharingPlan(tuple(chosen), float(skipped))


@contextlib.contextmanager
def _processors(layers: dict[str, Attention], make: Callable[[str, object], object]) -> Iterator[None]:
    """Within the block, each layer runs ``make(name, its previous processor)``."""
    saved = {name: attn.processor for name, attn in layers.items()}
    try:
        for name, attn in layers.items():
            attn.set_processor(make(name, saved[name]))
        yield
    finally:
        for name, attn in layers.items():
            attn.set_processor(saved[name])


@contextlib.contextmanager
def share_attention(model, plan: SharingPlan | Sequence[str]) -> Iterator[None]:
    """Within the block, the unconditional pass of the chosen layers reuses the conditional pass's
    attention probabilities; the previous processors come back on exit.

    Args:
        model: a :class:`trdq.LoadedModel`, a pipeline or a transformer (FP, simulated or real).
        plan: a :class:`SharingPlan` or layer names.
    """
    from trdq.api import transformer_of

    names = plan.layers if isinstance(plan, SharingPlan) else tuple(plan)
    _check_joint_branches(transformer_of(model))
    available = self_attention_layers(transformer_of(model))
    if unknown := [n for n in names if n not in available]:
        raise ValueError(f"not self-attention layers of this model: {unknown}")
    chosen = {n: available[n] for n in names}
    with _processors(chosen, lambda name, old: CFGAttnProcessor(name, share=True, previous=old)):
        yield
