"""The evaluation runner: generate for shapes-world prompts, score, and write JSON records."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from trdq import shapes
from trdq.api import quantize
from trdq.config import QuantConfig
from trdq.eval.detector import ShapesDetector, load_detector
from trdq.eval.metrics import adherence, frechet_distance, psnr, ssim
from trdq.eval.trajectory import eps_sqnr_per_step
from trdq.generate import generate_images
from trdq.layers import EXECUTION
from trdq.methods import DEFAULT_FIXED_ALPHA, num_groups, recipe_for
from trdq.models.loader import LoadedModel


def read_prompts_file(path: str | Path) -> list[shapes.Scene]:
    """Scenes from a file with one caption per line (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: naming the first caption outside the grammar, its line number, and the grammar.
    """
    scenes = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            scenes.append(shapes.parse_caption(text))
        except ValueError:
            raise ValueError(
                f"{path}, line {number}: {text!r} is not a caption of the shapes world. "
                f"Expected: {shapes.GRAMMAR}."
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


def _check_world(model: LoadedModel) -> None:
    if model.settings.world != "shapes":
        raise ValueError(
            f"eval scores prompt adherence in the shapes world; {model.name!r} is not a shapes-world "
            "model. Use --model shapes-t2i (or a folder trained with trdq.train)."
        )


def evaluate(model: LoadedModel, scenes: list[shapes.Scene], configs: Sequence[QuantConfig] = (),
             include_fp: bool = True, seed: int = 0, steps: int | None = None, guidance: float | None = None,
             calibration_prompts: Sequence[str] = (), batch_size: int = 16,
             progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Evaluate the FP model and one quantized model per config on ``scenes``.

    Image i uses seed ``seed + i`` for every model, so quantized images are compared with the FP
    image of the same seed.

    Returns:
        One record per model: ``model``, ``method``, ``bits``, ``execution``, ``adherence``,
        ``acc_*``, ``shapes_fd``, ``num_prompts``, ``seed``, ``steps``, ``guidance``, ``seconds``;
        quantized records add ``psnr_vs_fp`` (per-image PSNR capped at 100 dB, averaged),
        ``ssim_vs_fp``, ``eps_sqnr_db``,
        ``eps_sqnr_db_per_step``, ``calib_seconds`` and the settings of :func:`describe`.
    """
    _check_world(model)
    if configs and not calibration_prompts:
        raise ValueError("quantized evaluation needs calibration prompts")
    steps = steps or model.settings.steps
    guidance = model.settings.guidance if guidance is None else guidance
    prompts = [s.caption for s in scenes]
    seeds = [seed + i for i in range(len(scenes))]
    detector = load_detector()
    common = {"num_prompts": len(scenes), "seed": seed, "steps": steps, "guidance": guidance}

    def sample(label: str, m: LoadedModel) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        cb = None if progress is None else (lambda done, total: progress(label, done, total))
        images = generate_images(m, prompts, seeds, steps=steps, guidance=guidance, batch_size=batch_size,
                                 progress=cb)
        return images, round(time.perf_counter() - t0, 2)

    fp_images, fp_seconds = sample("fp", model)
    records = []
    if include_fp:
        records.append({"model": model.name, "method": "fp", "bits": "fp32", "execution": "full precision",
                        **score_images(fp_images, scenes, detector), **common, "seconds": fp_seconds})
    for config in configs:
        t0 = time.perf_counter()
        qmodel = quantize(model, config, calibration_prompts, steps=steps, guidance=guidance, seed=10**5)
        calib_seconds = round(time.perf_counter() - t0, 2)
        images, seconds = sample(f"{config.method} {config.bits}", qmodel)
        per_step = eps_sqnr_per_step(model, qmodel, prompts, seeds, steps=steps, guidance=guidance,
                                     batch_size=batch_size)
        records.append({
            "model": model.name, "method": config.method, "bits": config.bits, "execution": EXECUTION,
            **score_images(images, scenes, detector),
            "psnr_vs_fp": float(np.mean(np.minimum(psnr(images, fp_images), 100.0))),
            "ssim_vs_fp": float(np.mean(ssim(images, fp_images))),
            "eps_sqnr_db": float(np.mean(per_step)), "eps_sqnr_db_per_step": per_step,
            **describe(config), "calib_seconds": calib_seconds, **common, "seconds": seconds,
        })
    return records


def describe(config: QuantConfig) -> dict:
    """The settings that tell quantized records apart: ``num_groups``, ``smoothing`` (none, fixed
    or search), ``alpha`` (the fixed value, else None) and ``rotation`` as the method applies them."""
    recipe = recipe_for(config)
    alpha = None
    if recipe.smoothing == "fixed":
        alpha = config.alpha if config.alpha is not None else DEFAULT_FIXED_ALPHA
    return {"num_groups": num_groups(config), "smoothing": recipe.smoothing, "alpha": alpha,
            "rotation": recipe.rotation}


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
