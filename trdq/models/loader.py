"""One loader for every model the tool accepts: an embedded name, a local folder, or a hub id.

Embedded models live under ``assets/`` and load with the network off. A local folder is any
diffusers pipeline saved with ``save_pretrained``. A hub id (e.g. ``PixArt-alpha/PixArt-XL-2-512x512``)
is resolved by diffusers from the local Hugging Face cache, or downloaded where the network allows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EMBEDDED = {"shapes-t2i": ASSETS / "shapes-t2i", "shapes-t2v": ASSETS / "shapes-t2v"}
SETTINGS_FILE = "trdq_model.json"


@dataclass(frozen=True)
class ModelSettings:
    """Sampling defaults a model folder may carry in ``trdq_model.json``.

    Attributes:
        world: the caption world its prompts come from (``"shapes"`` for shapes-t2i, ``"moving-shapes"``
            for shapes-t2v; see :mod:`trdq.demo.worlds`), or None.
        max_sequence_length: tokens of the text encoder's input; captions longer are truncated.
        steps: default number of sampling steps.
        guidance: default classifier-free guidance scale.
        num_frames: frames per clip of a video model (None for an image model: the pipeline's default).
        training: how the model was trained (steps, batch size, seconds), for the record.
    """

    world: str | None = None
    max_sequence_length: int = 120
    steps: int = 20
    guidance: float = 4.5
    num_frames: int | None = None
    training: dict | None = None


@dataclass
class LoadedModel:
    """A diffusers pipeline with the name it was loaded by and its sampling defaults.

    ``quant`` is None for a full-precision model and a :class:`trdq.api.QuantInfo` for one made
    by :func:`trdq.quantize` or :func:`trdq.load`.
    """

    name: str
    pipe: DiffusionPipeline
    settings: ModelSettings
    quant: Any = None


def pipeline_defaults(pipeline: type | str) -> dict:
    """The steps and guidance scale a diffusers pipeline class samples with when not told (its
    ``__call__`` defaults: 20 and 4.5 for PixArt-alpha, 50 and 7.5 for Latte, 28 and 7.0 for SD3),
    as :class:`ModelSettings` fields; empty for a class diffusers does not have."""
    import inspect

    import diffusers

    cls = getattr(diffusers, pipeline, None) if isinstance(pipeline, str) else pipeline
    if cls is None:
        return {}
    params = inspect.signature(cls.__call__).parameters
    found = {field: params[name].default for field, name in (("steps", "num_inference_steps"),
                                                             ("guidance", "guidance_scale")) if name in params}
    return {k: v for k, v in found.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def folder_settings(folder: str | Path) -> ModelSettings:
    """The sampling defaults of a pipeline folder: its ``trdq_model.json`` when it has one (the
    embedded models do), else its pipeline class's own (:func:`pipeline_defaults`)."""
    folder = Path(folder)
    if (folder / SETTINGS_FILE).is_file():
        return ModelSettings(**json.loads((folder / SETTINGS_FILE).read_text()))
    try:
        pipeline = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError):
        pipeline = ""
    return ModelSettings(**pipeline_defaults(pipeline))


def resolve(model: str) -> str:
    """Map a ``--model`` value to what ``from_pretrained`` takes; checks embedded assets exist."""
    if model in EMBEDDED:
        path = EMBEDDED[model]
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(
                f"the embedded model {model!r} is missing from {path}; restore assets/ from the "
                "repository (git checkout -- assets) or retrain it (see docs/development.md, 'Retraining the "
                "embedded models')."
            )
        return str(path)
    if os.path.isdir(model):
        if not os.path.exists(os.path.join(model, "model_index.json")):
            raise ValueError(
                f"{model!r} is a folder but not a diffusers pipeline (no model_index.json); "
                "save one with pipe.save_pretrained(folder)."
            )
        return model
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return model  # a hub id
    raise ValueError(
        f"unknown model {model!r}: use one of {sorted(EMBEDDED)}, a local diffusers folder, "
        "or a hub id such as PixArt-alpha/PixArt-XL-2-512x512."
    )


def load_model(model: str = "shapes-t2i", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, **components) -> LoadedModel:
    """Load a diffusers pipeline by embedded name, local folder or hub id.

    Args:
        model: ``"shapes-t2i"``, a folder holding ``model_index.json``, or a hub id.
        device: where to put the pipeline.
        dtype: parameter dtype.
        components: pipeline components given rather than loaded (e.g. ``transformer=...``).

    Returns:
        The pipeline with its sampling defaults.
    """
    source = resolve(model)
    local = os.path.isdir(source)
    diffusers_logging.disable_progress_bar()  # loading bars would drown the tool's own progress
    transformers_logging.disable_progress_bar()
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=local, **components)
    except OSError as err:
        raise OSError(
            f"could not load {model!r}: {err}. A hub id needs the network or a copy in the local "
            "Hugging Face cache; download it once elsewhere and pass its folder instead."
        ) from err
    pipe.set_progress_bar_config(disable=True)
    settings = folder_settings(source) if local else ModelSettings(**pipeline_defaults(type(pipe)))
    return LoadedModel(name=model, pipe=pipe.to(device), settings=settings)
