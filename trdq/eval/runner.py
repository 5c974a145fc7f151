"""The evaluation runner: generate for shapes-world prompts, score, and write JSON records."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from trdq import motion, shapes
from trdq.api import quantize
from trdq.attention import ShareRule, measure_similarity, select_layers, share_attention
from trdq.config import QuantConfig
from trdq.eval.clips import score_clips
from trdq.eval.detector import ShapesDetector, load_detector
from trdq.eval.metrics import adherence, frechet_distance, psnr, ssim
from trdq.eval.trajectory import eps_sqnr_per_step
from trdq.layers import EXECUTION
from trdq.methods import DEFAULT_FIXED_ALPHA, num_groups, recipe_for
from trdq.models.loader import LoadedModel
from trdq.sampling import generate
from trdq.worlds import world


def read_prompts_file(path: str | Path, caption_world=shapes) -> list:
    """Scenes of ``caption_world`` (a :mod:`trdq.worlds` module) from a file with one caption per
    line (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: naming the first caption outside the grammar, its line number, and the grammar.
    """
    scenes = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            scenes.append(caption_world.parse_caption(text))
        except ValueError:
            raise ValueError(
                f"{path}, line {number}: {text!r} is not a caption of the model's world. "
                f"Expected: {caption_world.GRAMMAR}."
            ) from None
    if not scenes:
        raise ValueError(f"{path} holds no prompts; write one caption per line")
    return scenes


def score_images(images: np.ndarray, scenes: list[shapes.Scene], detector: ShapesDetector,
                 reference_seed: int = 10**6) -> dict[str, float]:
    """Adherence, per-attribute accuracies and ``shapes_fd`` of generated images.

    ``shapes_fd`` compares the detector features of the images with those of fresh renders of the
    same scenes; it depends on the number of images, so compare values at equal N only.
    """
    preds, feats = detector.read(images)
    _, ref_feats = detector.read(shapes.render_batch(scenes, seed=reference_seed, size=images.shape[1]))
    scores = adherence(preds, scenes)
    scores["shapes_fd"] = frechet_distance(feats, ref_feats)
    return scores


def score_outputs(outputs: np.ndarray, scenes: list, detector: ShapesDetector,
                  reference_seed: int = 10**6) -> dict[str, float]:
    """:func:`score_images` for images; for clips, :func:`trdq.eval.clips.score_clips` plus a
    ``shapes_fd`` over all frames against fresh renders of the same scenes."""
    if outputs.ndim == 4:
        return score_images(outputs, scenes, detector, reference_seed)
    reference = motion.render_clips(scenes, seed=reference_seed, frames=outputs.shape[1], size=outputs.shape[2])
    _, feats = detector.read(outputs.reshape(-1, *outputs.shape[2:]))
    _, ref_feats = detector.read(reference.reshape(-1, *reference.shape[2:]))
    return {**score_clips(outputs, scenes, detector), "shapes_fd": frechet_distance(feats, ref_feats)}


def fidelity(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``psnr_vs_fp`` (per image PSNR capped at 100 dB) and ``ssim_vs_fp``, averaged; for clips
    each clip's value is the mean over its frames."""
    frames = outputs.reshape(-1, *outputs.shape[-3:]), reference.reshape(-1, *reference.shape[-3:])
    per = lambda values: values.reshape(len(outputs), -1).mean(1)  # noqa: E731
    return {"psnr_vs_fp": float(np.mean(per(np.minimum(psnr(*frames), 100.0)))),
            "ssim_vs_fp": float(np.mean(per(ssim(*frames))))}


def evaluate(model: LoadedModel, scenes: list, configs: Sequence[QuantConfig] = (),
             include_fp: bool = True, seed: int = 0, steps: int | None = None, guidance: float | None = None,
             calibration_prompts: Sequence[str] = (), batch_size: int = 16,
             sharing: Sequence[ShareRule] = (),
             progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Evaluate the FP model and one quantized model per config on ``scenes`` (of the model's world:
    :class:`~trdq.shapes.Scene` for images, :class:`~trdq.motion.MovingScene` for clips).

    Output i (an image, or a clip for a video model) uses seed ``seed + i`` for every model, so
    quantized outputs are compared with the FP output of the same seed.

    Returns:
        One record per model: ``model``, ``method``, ``bits``, ``execution``, ``adherence``,
        ``acc_*``, ``shapes_fd`` (clips add ``temporal_consistency``), ``num_prompts``, ``seed``,
        ``steps``, ``guidance``, ``seconds``;
        quantized records add ``psnr_vs_fp`` (per-image PSNR capped at 100 dB, averaged),
        ``ssim_vs_fp``, ``eps_sqnr_db``,
        ``eps_sqnr_db_per_step``, ``calib_seconds`` and the settings of :func:`describe`.
        Every model is also sampled once per sharing rule, with Attention-Sharing over the layers
        the rule picks from the FP model's cond/uncond similarity on the calibration prompts; those
        records add ``sharing`` (the rule), ``shared_layers``, ``attn_score_skipped`` (fraction of
        the unconditional attention-score compute skipped) and ``psnr_vs_fp``/``ssim_vs_fp``
        against the FP output without sharing; they carry no ``eps_sqnr_db``.
    """
    world(model.settings.world)
    if (configs or sharing) and not calibration_prompts:
        raise ValueError("quantized evaluation and attention sharing need calibration prompts")
    steps = steps or model.settings.steps
    guidance = model.settings.guidance if guidance is None else guidance
    prompts = [s.caption for s in scenes]
    seeds = [seed + i for i in range(len(scenes))]
    detector = load_detector()
    common = {"num_prompts": len(scenes), "seed": seed, "steps": steps, "guidance": guidance}

    def sample(label: str, m: LoadedModel) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        cb = None if progress is None else (lambda done, total: progress(label, done, total))
        images = generate(m, prompts, seeds, steps=steps, guidance=guidance, batch_size=batch_size,
                          progress=cb)
        return images, round(time.perf_counter() - t0, 2)

    fp_images, fp_seconds = sample("fp", model)
    plans = []
    if sharing:
        measured = measure_similarity(model, calibration_prompts, steps=steps, guidance=guidance, seed=10**5)
        plans = [(rule, select_layers(measured, rule=rule)) for rule in sharing]

    def shared_records(label: str, m: LoadedModel, base: dict) -> list[dict]:
        out = []
        for rule, plan in plans:
            with share_attention(m, plan):
                images, seconds = sample(f"{label} shared {rule.label}", m)
            out.append({**base, **score_outputs(images, scenes, detector), **fidelity(images, fp_images),
                        "sharing": rule.label, "shared_layers": list(plan.layers),
                        "attn_score_skipped": plan.skipped, **common, "seconds": seconds})
        return out

    records = []
    fp_base = {"model": model.name, "method": "fp", "bits": "fp32", "execution": "full precision"}
    if include_fp:
        records.append({**fp_base, **score_outputs(fp_images, scenes, detector), **common, "seconds": fp_seconds})
        records.extend(shared_records("fp", model, fp_base))
    for config in configs:
        t0 = time.perf_counter()
        qmodel = quantize(model, config, calibration_prompts, steps=steps, guidance=guidance, seed=10**5)
        calib_seconds = round(time.perf_counter() - t0, 2)
        images, seconds = sample(f"{config.method} {config.bits}", qmodel)
        per_step = eps_sqnr_per_step(model, qmodel, prompts, seeds, steps=steps, guidance=guidance,
                                     batch_size=batch_size)
        base = {"model": model.name, "method": config.method, "bits": config.bits, "execution": EXECUTION}
        records.append({
            **base, **score_outputs(images, scenes, detector), **fidelity(images, fp_images),
            "eps_sqnr_db": float(np.mean(per_step)), "eps_sqnr_db_per_step": per_step,
            **describe(config), "calib_seconds": calib_seconds, **common, "seconds": seconds,
        })
        label = f"{config.method} {config.bits}"
        records.extend(shared_records(label, qmodel, {**base, **describe(config), "calib_seconds": calib_seconds}))
    return records


def describe(config: QuantConfig) -> dict:
    """The settings that tell quantized records apart: ``num_groups``, ``smoothing`` (none, fixed
    or search), ``alpha`` (the fixed value, else None) and ``rotation`` as the method applies them,
    and ``cfg_split``."""
    recipe = recipe_for(config)
    alpha = None
    if recipe.smoothing == "fixed":
        alpha = config.alpha if config.alpha is not None else DEFAULT_FIXED_ALPHA
    return {"num_groups": num_groups(config), "smoothing": recipe.smoothing, "alpha": alpha,
            "rotation": recipe.rotation, "cfg_split": config.cfg_split}


def write_json(records: list[dict], path: str | Path) -> None:
    """Write records atomically: the file is either complete or untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
    os.replace(tmp, path)
