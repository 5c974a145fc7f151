"""Latency and memory of one model under several backends: ``python -m trdq bench``.

Backends are ``fp32``, ``bf16`` (full precision), ``trdq-wXaY-sim`` (simulated: fake quantization
in floating point) and ``trdq-wXaY-real`` (real integer, via :func:`trdq.realize`). Each backend is
built and measured in a fresh worker process (``python -m trdq.bench``), so its memory is its own;
every result is labelled with the execution its model reports. Per backend:

- ``step_ms``: per-step latency of the transformer alone, one forward without gradients on a
  CFG batch (conditional + unconditional) at the model's latent size and a mid timestep, after
  warm-up; median, min and every repeat.
- ``e2e_s_per_image``: one image through the whole pipeline (text encoder, all steps with CFG,
  VAE); None for a bare random transformer, which has neither text encoder nor VAE.
- ``weight_bytes``: every tensor the transformer holds (see :func:`weight_bytes`).
- memory: resident set sizes read from ``/proc/self/status`` (see :func:`measure`).
- ``vs_fp32``, ``vs_bf16``: this backend's value divided by the baseline's from the same run.

No speed-up is asserted anywhere: the benchmark reports, the machine it ran on included.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from trdq.config import ROTATIONS, QuantConfig, TimeGroups, parse_bits

log = logging.getLogger(__name__)

FULL_PRECISION, SIMULATED, REAL = "full precision", "simulated", "real integer"
DEPLOYMENTS = ("per-group", "shared")
DEFAULT_BACKENDS = ("fp32", "bf16", "trdq-w8a8-sim", "trdq-w8a8-real", "trdq-w4a8-real")
BENCH_ALPHA = 0.5
CALIB_LATENT, CALIB_TEXT_TOKENS, CALIB_INPUTS = 8, 8, 8
PIPELINE_REPEATS = 20
MIB = 2**20

# PixArt-XL-2 (PixArt-alpha/PixArt-XL-2-512x512, transformer/config.json) and Latte-1
# (maxin-cn/Latte-1); sample_size comes from --resolution. Text: T5 at 120 tokens of 4096 channels.
PIXART_XL = {"num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
             "num_layers": 28, "cross_attention_dim": 1152, "patch_size": 2, "caption_channels": 4096,
             "use_additional_conditions": False, "norm_type": "ada_norm_single", "activation_fn": "gelu-approximate",
             "attention_bias": True, "num_embeds_ada_norm": 1000, "norm_elementwise_affine": False, "norm_eps": 1e-6}
LATTE_1 = {**{k: v for k, v in PIXART_XL.items() if k != "use_additional_conditions"}, "video_length": 16}


@dataclass(frozen=True)
class RandomModel:
    """A diffusers transformer class with a published configuration and random (seeded) weights."""

    cls: str
    config: dict
    text_tokens: int = 120
    repeats: int = 5


RANDOM_MODELS = {"pixart-xl-random": RandomModel("PixArtTransformer2DModel", PIXART_XL),
                 "latte-random": RandomModel("LatteTransformer3DModel", LATTE_1)}


@dataclass(frozen=True)
class Backend:
    """How one backend runs: dtype, bits and execution (and, for real integer, the deployment)."""

    name: str
    dtype: str = "float32"
    bits: str | None = None
    execution: str = FULL_PRECISION
    deployment: str | None = None


def parse_backends(names: Sequence[str], deployments: Sequence[str] = ("per-group",)) -> list[Backend]:
    """Backend names -> :class:`Backend`; a real backend without a ``-per-group``/``-shared`` suffix
    runs once per deployment (suffixed when there are several).

    Raises:
        ValueError: for an unknown name or deployment, naming what is accepted.
    """
    if not names or bad_d := [d for d in deployments if d not in DEPLOYMENTS]:
        pass
    bad_d = [d for d in deployments if d not in DEPLOYMENTS]
    if bad_d or not deployments:
        raise ValueError(f"unknown deployment(s) {bad_d or list(deployments)}; choose from {', '.join(DEPLOYMENTS)}")
    out: list[Backend] = []
    for name in names:
        m = re.fullmatch(r"trdq-(w\d+a\d+)-(sim|real)(?:-(per-group|shared))?", name)
        if name in ("fp32", "bf16"):
            out.append(Backend(name, "bfloat16" if name == "bf16" else "float32"))
        elif m is None or (m.group(2) == "sim" and m.group(3)):
            raise ValueError(f"unknown backend {name!r}; use fp32, bf16, trdq-wXaY-sim or trdq-wXaY-real[-per-group|-shared] "
                             f"(e.g. {','.join(DEFAULT_BACKENDS)})")
        else:
            w, a = parse_bits(m.group(1))
            bits = f"w{w}a{a}"
            if m.group(2) == "sim":
                out.append(Backend(name, bits=bits, execution=SIMULATED))
            else:
                ds = [m.group(3)] if m.group(3) else list(deployments)
                out += [Backend(f"{name}-{d}" if len(ds) > 1 else name, bits=bits, execution=REAL, deployment=d) for d in ds]
    if not out:
        raise ValueError(f"no backends given; choose from fp32, bf16, trdq-wXaY-sim, trdq-wXaY-real (e.g. {','.join(DEFAULT_BACKENDS)})")
    return list({b.name: b for b in out}.values())
