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
def eps_sqnr_per_step(fp: LoadedModel, quantized: LoadedModel, prompts: Sequence[str], seeds: Sequence[int],
                      steps: int | None = None, guidance: float | None = None,
                      batch_size: int = 16) -> list[float]:
    """SQNR (dB) of the quantized noise prediction at each sampling step, pooled over prompts.

    Returns:
        One value per step, first step first.
    """
    q_transformer = quantized.pipe.transformer
    signal: dict[int, float] = {}
    noise: dict[int, float] = {}
    calls = {"n": 0}

    def hook(_module, args, kwargs, output):
        ref = output[0] if isinstance(output, tuple) else output.sample
        out = q_transformer(*args, **kwargs)
        approx = out[0] if isinstance(out, tuple) else out.sample
        step = calls["n"]
        signal[step] = signal.get(step, 0.0) + float(ref.double().pow(2).sum())
        noise[step] = noise.get(step, 0.0) + float((ref.double() - approx.double()).pow(2).sum())
        calls["n"] += 1

    handle = fp.pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        for lo in range(0, len(prompts), batch_size):
            calls["n"] = 0
            generate(fp, prompts[lo:lo + batch_size], seeds[lo:lo + batch_size], steps=steps,
                            guidance=guidance, batch_size=batch_size)
    finally:
        handle.remove()
    return [float(10 * torch.log10(torch.tensor(signal[s] / max(noise[s], 1e-30)))) for s in sorted(signal)]

