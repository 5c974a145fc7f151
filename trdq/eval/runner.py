"""The evaluation runner: generate for shapes-world prompts, score, and write JSON records."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trdq import shapes
from trdq.eval.detector import ShapesDetector, load_detector
from trdq.eval.metrics import adherence, frechet_distance
from trdq.generate import generate_images
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


def evaluate_fp(model: LoadedModel, scenes: list[shapes.Scene], seed: int = 0, steps: int | None = None,
                guidance: float | None = None, batch_size: int = 16,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Evaluate the full-precision model on scenes; image i uses seed ``seed + i``.

    Returns:
        One record: ``method``, ``bits``, ``execution``, ``adherence``, ``acc_*``, ``shapes_fd``,
        ``num_prompts``, ``steps``, ``guidance``, ``seconds``.
    """
    if model.settings.world != "shapes":
        raise ValueError(
            f"eval scores prompt adherence in the shapes world; {model.name!r} is not a shapes-world "
            "model. Use --model shapes-t2i (or a folder trained with trdq.train)."
        )
    steps = steps or model.settings.steps
    guidance = model.settings.guidance if guidance is None else guidance
    t0 = time.perf_counter()
    images = generate_images(model, [s.caption for s in scenes], [seed + i for i in range(len(scenes))],
                             steps=steps, guidance=guidance, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    record = {"model": model.name, "method": "fp", "bits": "fp32", "execution": "full precision"}
    record.update(score_images(images, scenes, load_detector()))
    record.update({"num_prompts": len(scenes), "seed": seed, "steps": steps, "guidance": guidance,
                   "seconds": round(seconds, 2)})
    return record


def write_json(records: list[dict], path: str | Path) -> None:
    """Write records atomically: the file is either complete or untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
