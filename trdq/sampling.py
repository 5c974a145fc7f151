"""Sampling with per-output seeds, so one seed gives one image (or clip) in any batch."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from trdq.config import SEED_LIMIT
from trdq.models.loader import LoadedModel


def is_video(pipe) -> bool:
    """Whether ``pipe`` makes clips (a Latte-style pipeline taking ``video_length``)."""
    return "video_length" in inspect.signature(pipe.__call__).parameters


def generate(model: LoadedModel, prompts: Sequence[str], seeds: Sequence[int],
             steps: int | None = None, guidance: float | None = None, batch_size: int = 16,
             progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Sample one image, or one clip for a video model, per (prompt, seed) pair.

    Args:
        model: a loaded text-to-image or text-to-video pipeline.
        prompts: N prompts.
        seeds: N seeds; output i starts from noise drawn by ``torch.Generator().manual_seed(seeds[i])``.
        steps: sampling steps (the model's default if None).
        guidance: classifier-free guidance scale (the model's default if None).
        batch_size: prompts per pipeline call.
        progress: called with (outputs done, N) after every batch.

    Returns:
        uint8 array (N, H, W, 3) of images, or (N, frames, H, W, 3) of clips.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer of at least 1, got {steps!r}")
    if guidance is not None and not (isinstance(guidance, int | float) and math.isfinite(guidance)):
        raise ValueError(f"guidance must be a finite number (NaN turns guidance off, inf gives black images), "
                         f"got {guidance!r}")
    if bad := [s for s in seeds if not isinstance(s, int | np.integer) or not 0 <= s < SEED_LIMIT]:
        raise ValueError(f"seeds must be integers in 0..2**63-1 (larger ones wrap onto small ones), got {bad[0]!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    pipe, settings = model.pipe, model.settings
    kwargs = {
        "num_inference_steps": steps or settings.steps,
        "guidance_scale": settings.guidance if guidance is None else guidance,
        "output_type": "np",
    }
    accepted = inspect.signature(pipe.__call__).parameters
    video = is_video(pipe)
    if video:  # Latte's defaults are 16 frames of 512 px whatever the checkpoint; take its own size
        side = pipe.transformer.config.sample_size * pipe.vae_scale_factor
        kwargs.update(height=side, width=side, negative_prompt=None)
        # frames: the model's settings, else the length its temporal embedding was built for
        frames = settings.num_frames or getattr(pipe.transformer.config, "video_length", None)
        if frames is not None:
            kwargs["video_length"] = frames
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
        if video:
            cond, uncond = text_embeddings(pipe, batch_prompts, settings.max_sequence_length)
            frames = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=generators, **kwargs).frames
            result = np.asarray(frames)
        else:
            result = np.asarray(pipe(prompt=batch_prompts, generator=generators, **kwargs).images)
        out.append(np.round(result * 255).clip(0, 255).astype(np.uint8))
        if progress is not None:
            progress(min(lo + batch_size, len(prompts)), len(prompts))
    return np.concatenate(out)


def fixed_layout(text_encoder, ids: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """T5 encodings padded to ``ids``'s length; rows where ``masked`` is True are zeroed at the pads.

    Latte's transformer takes no text mask, so its pipeline zeroes the caption's pads and leaves the
    negative caption's encoding as it is; doing the same at one fixed length for every batch makes
    an output independent of the batch it is sampled in (the pipeline trims instead when the batch
    holds one prompt). The embedded shapes-t2v model is trained on exactly this layout.
    """
    states = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = torch.where(masked[:, None], mask, torch.ones_like(mask))
    return states * keep[..., None].to(states.dtype)


@torch.no_grad()
def text_embeddings(pipe, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption and empty-caption encodings of a Latte-style pipeline in :func:`fixed_layout`."""
    enc = pipe.tokenizer(prompts + [""] * len(prompts), padding="max_length", max_length=max_length,
                         truncation=True, return_tensors="pt").to(pipe.device)
    masked = torch.arange(2 * len(prompts), device=pipe.device) < len(prompts)
    states = fixed_layout(pipe.text_encoder, enc.input_ids, enc.attention_mask, masked)
    return states[:len(prompts)], states[len(prompts):]
