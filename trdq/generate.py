"""Text-to-image sampling with per-image seeds, so one seed gives one image in any batch."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

from trdq.models.loader import LoadedModel


def generate_images(model: LoadedModel, prompts: Sequence[str], seeds: Sequence[int],
                    steps: int | None = None, guidance: float | None = None, batch_size: int = 16,
                    progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Sample one image per (prompt, seed) pair.

    Args:
        model: a loaded text-to-image pipeline.
        prompts: N prompts.
        seeds: N seeds; image i starts from noise drawn by ``torch.Generator().manual_seed(seeds[i])``.
        steps: sampling steps (the model's default if None).
        guidance: classifier-free guidance scale (the model's default if None).
        batch_size: prompts per pipeline call.
        progress: called with (images done, N) after every batch.

    Returns:
        uint8 array (N, H, W, 3).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    pipe, settings = model.pipe, model.settings
    kwargs = {
        "num_inference_steps": steps or settings.steps,
        "guidance_scale": settings.guidance if guidance is None else guidance,
        "output_type": "np",
    }
    accepted = inspect.signature(pipe.__call__).parameters
    if "use_resolution_binning" in accepted:
        kwargs["use_resolution_binning"] = False
    if "max_sequence_length" in accepted:
        kwargs["max_sequence_length"] = settings.max_sequence_length
    if "clean_caption" in accepted:
        kwargs["clean_caption"] = False
    out = []
    for lo in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[lo:lo + batch_size])
        generators = [torch.Generator(pipe.device).manual_seed(int(s)) for s in seeds[lo:lo + batch_size]]
        images = pipe(prompt=batch_prompts, generator=generators, **kwargs).images
        out.append(np.round(np.asarray(images) * 255).clip(0, 255).astype(np.uint8))
        if progress is not None:
            progress(min(lo + batch_size, len(prompts)), len(prompts))
    return np.concatenate(out)
