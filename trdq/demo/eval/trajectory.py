"""Noise-prediction error of a quantized transformer along the full-precision sampling trajectory.

At every step of the FP sampler, the quantized transformer is fed exactly the FP transformer's
inputs, and the SQNR of its prediction against the FP prediction is recorded: the per-step error
of quantization alone, without the drift of a diverging trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trdq.models.loader import LoadedModel
from trdq.sampling import generate


@torch.no_grad()
def eps_power_per_step(fp: LoadedModel, quantized: LoadedModel, prompts: Sequence[str], seeds: Sequence[int],
                       steps: int | None = None, guidance: float | None = None) -> tuple[list[float], list[float]]:
    """Summed squares of the FP noise prediction (signal) and of the quantized one's error (noise)
    at each step, over one sampling batch of ``prompts``; :func:`sqnr_db` of sums over batches is
    :func:`eps_sqnr_per_step`.

    Returns:
        ``(signal, noise)``, one value per step each, first step first.
    """
    q_transformer = quantized.pipe.transformer
    signal: list[float] = []
    noise: list[float] = []

    def hook(_module, args, kwargs, output):
        ref = output[0] if isinstance(output, tuple) else output.sample
        out = q_transformer(*args, **kwargs)
        approx = out[0] if isinstance(out, tuple) else out.sample
        signal.append(float(ref.double().pow(2).sum()))
        noise.append(float((ref.double() - approx.double()).pow(2).sum()))

    handle = fp.pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        generate(fp, list(prompts), list(seeds), steps=steps, guidance=guidance, batch_size=max(len(prompts), 1))
    finally:
        handle.remove()
    return signal, noise


def sqnr_db(signal: Sequence[float], noise: Sequence[float]) -> list[float]:
    """Per step ``10 log10(signal / noise)`` (dB) of summed powers."""
    return [float(10 * torch.log10(torch.tensor(s / max(n, 1e-30)))) for s, n in zip(signal, noise)]


def add_powers(parts: Sequence[tuple[list[float], list[float]]]) -> tuple[list[float], list[float]]:
    """The per-step sums of several batches' ``(signal, noise)``, added in the order given."""
    signal, noise = [0.0] * len(parts[0][0]), [0.0] * len(parts[0][1])
    for s, n in parts:
        signal = [a + b for a, b in zip(signal, s)]
        noise = [a + b for a, b in zip(noise, n)]
    return signal, noise


def eps_sqnr_per_step(fp: LoadedModel, quantized: LoadedModel, prompts: Sequence[str], seeds: Sequence[int],
                      steps: int | None = None, guidance: float | None = None,
                      batch_size: int = 16) -> list[float]:
    """SQNR (dB) of the quantized noise prediction at each sampling step, pooled over prompts
    (sampled in batches of ``batch_size``).

    Returns:
        One value per step, first step first.
    """
    parts = [eps_power_per_step(fp, quantized, prompts[lo:lo + batch_size], seeds[lo:lo + batch_size], steps,
                                guidance) for lo in range(0, len(prompts), batch_size)]
    return sqnr_db(*add_powers(parts))
