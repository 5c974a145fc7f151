"""One small adapter per diffusion-transformer family: what to quantize and how it is called.

The engine itself only needs three facts about a transformer, and they are all here, so no
``if``/``elif`` ladder over architectures lives anywhere else:

- which ``nn.Linear`` layers to quantize by default (the blocks; embedders, adaLN modulation and
  the final layer stay in full precision, docs/method.md §1);
- where ``timestep`` sits among the positional arguments of ``forward`` (time groups need it);
- random inputs of the right shapes for one forward call, for tests, benchmarks and smoke runs.

Add a family with :func:`register` (see docs/usage.md, "Architectures").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Inputs = dict[str, object]


@dataclass(frozen=True)
class Adapter:
    """How trdq drives one family of diffusers transformers.

    Attributes:
        family: short name, e.g. ``pixart``.
        classes: class names of the diffusers transformers of this family.
        include, exclude: default fnmatch patterns over module names of the layers to quantize.
        timestep_position: index of ``timestep`` in ``forward``'s positional arguments.
        example_inputs: ``(transformer, batch, timestep, generator) -> forward kwargs`` with
            random tensors of the shapes the transformer's config implies.
        gpu_dtype: the half precision the family's checkpoints are published and run in on a GPU
            (bf16 where a GPU lacks it falls back to fp16: :func:`trdq.models.source.placement`).
    """

    family: str
    classes: tuple[str, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    timestep_position: int
    example_inputs: Callable[[nn.Module, int, float, torch.Generator], Inputs]
    gpu_dtype: torch.dtype = torch.float16


class UnsupportedArchitectureError(ValueError):
    """The model is not a diffusion transformer trdq has an adapter for."""


def _latents(cfg, batch: int, gen: torch.Generator, frames: int | None = None) -> torch.Tensor:
    size = cfg.sample_size
    shape = (batch, cfg.in_channels, size, size) if frames is None else (batch, cfg.in_channels, frames, size, size)
    return torch.randn(shape, generator=gen)


def _text(batch: int, dim: int, gen: torch.Generator, tokens: int = 8) -> torch.Tensor:
    return torch.randn(batch, tokens, dim, generator=gen)


def _pixart(m: nn.Module, batch: int, t: float, gen: torch.Generator) -> Inputs:
    cfg = m.config
    return {"hidden_states": _latents(cfg, batch, gen), "timestep": torch.full((batch,), t),
            "encoder_hidden_states": _text(batch, cfg.caption_channels, gen),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def _latte(m: nn.Module, batch: int, t: float, gen: torch.Generator) -> Inputs:
    cfg = m.config
    return {"hidden_states": _latents(cfg, batch, gen, frames=cfg.video_length), "timestep": torch.full((batch,), t),
            "encoder_hidden_states": _text(batch, cfg.caption_channels, gen)}


def _dit(m: nn.Module, batch: int, t: float, gen: torch.Generator) -> Inputs:
    cfg = m.config
    return {"hidden_states": _latents(cfg, batch, gen), "timestep": torch.full((batch,), t),
            "class_labels": torch.randint(0, cfg.num_embeds_ada_norm, (batch,), generator=gen)}


def _sd3(m: nn.Module, batch: int, t: float, gen: torch.Generator) -> Inputs:
    cfg = m.config
    return {"hidden_states": _latents(cfg, batch, gen), "timestep": torch.full((batch,), t),
            "encoder_hidden_states": _text(batch, cfg.joint_attention_dim, gen),
            "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=gen)}


def _sana(m: nn.Module, batch: int, t: float, gen: torch.Generator) -> Inputs:
    cfg = m.config
    return {"hidden_states": _latents(cfg, batch, gen), "timestep": torch.full((batch,), t),
            "encoder_hidden_states": _text(batch, cfg.caption_channels, gen)}


ADAPTERS: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    """Make ``adapter`` the one used for its transformer classes (replaces an earlier one)."""
    ADAPTERS[adapter.family] = adapter
    return adapter


BLOCKS = ("transformer_blocks.*",)
register(Adapter("pixart", ("PixArtTransformer2DModel",), BLOCKS, (), 2, _pixart))
register(Adapter("latte", ("LatteTransformer3DModel",), BLOCKS + ("temporal_transformer_blocks.*",), (), 1, _latte))
# DiT's and SD3's blocks hold their own adaLN modulation (and DiT's its timestep/label embedders).
register(Adapter("dit", ("DiTTransformer2DModel",), BLOCKS, ("*.norm1.*",), 1, _dit))
# SD3.5 and Sana are published in bf16 (their fp16 activations can overflow); PixArt, Latte, DiT in fp16.
register(Adapter("sd3", ("SD3Transformer2DModel",), BLOCKS, ("*.norm1.*", "*.norm1_context.*"), 3, _sd3,
                 gpu_dtype=torch.bfloat16))
register(Adapter("sana", ("SanaTransformer2DModel",), BLOCKS, (), 2, _sana, gpu_dtype=torch.bfloat16))


def adapter_for(transformer: nn.Module) -> Adapter:
    """The adapter of ``transformer``'s class.

    Raises:
        UnsupportedArchitectureError: for a class no adapter lists, naming those supported.
    """
    name = type(transformer).__name__
    for adapter in ADAPTERS.values():
        if name in adapter.classes:
            return adapter
    supported = ", ".join(c for a in ADAPTERS.values() for c in a.classes)
    raise UnsupportedArchitectureError(
        f"no trdq adapter for {name}; supported transformers: {supported}. For another diffusion "
        "transformer, register one with trdq.models.adapters.register(Adapter(...)) naming its class, "
        "the layers to quantize and the position of `timestep` in its forward()")
