"""Answers the app shows before anything is computed: the default Compare grid for a few example
prompts, and one Distributions and one Trajectory case, shipped in ``assets/examples/<model>/``.

    python -m analysis examples                     # every embedded model
    python -m analysis examples --model shapes-t2i

Each model's folder holds ``grid.json`` (settings, machine, and per prompt every column's facts
and detector readings), one lossless PNG per output (a clip as a strip of frames),
``choices.json`` (what the default TR-DQ slot's search chose per layer and time group, so the app
fits it without searching again on the same calibration) and ``distributions.json`` /
``trajectory.json`` (plotly figures and the statistics table). The app
computes its own answers with the same functions (:func:`analysis.compare.run_grid`,
:func:`distributions_case`, :func:`trajectory_case`), so pressing a button with the default
settings recomputes what is shown.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image

import trdq
from analysis.compare import CALIBRATION, DEFAULT_SLOTS, Output, calibration_prompts, default_config, run_grid
from trdq.captions import general_captions
from trdq.demo.worlds import WORLDS, world

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "assets" / "examples"
PROMPTS = {
    "shapes-t2i": ["a small blue square on the left", "a large yellow star at the top",
                   "a large red circle in the center", "a small purple triangle at the bottom"],
    "shapes-t2v": ["a large green star moving right", "a small red circle moving up",
                   "a large blue square moving left", "a small orange triangle moving down"],
}
SHIPPED = {"shapes-t2i": 4, "shapes-t2v": 2}  # prompts shipped: a clip's lossless PNG strip is ~25 KB
SEED, STEPS, GUIDANCE = 0, 20, 4.5
# The page opens on the first prompt: at seed 0 its W3A3 grid shows the methods parting ways (RTN and
# SmoothQuant draw another shape; ViDiT-Q and TR-DQ keep the square).
ANALYSIS_PROMPTS, ANALYSIS_SEED = 2, 99
# Models whose Distributions and Trajectory tabs open on a shipped case (about 300 KB each), with the
# layer and time group shown: the embedded image model's strongest outlier (blocks.7.attn2.to_q's
# largest input channel reaches 40x the median in the last steps, assets/results/shapes-t2i-outliers.json),
# in the last of the default 4 time groups.
CASES = {"shapes-t2i": ("transformer_blocks.7.attn2.to_q", 3)}


def analysis_prompts(model: trdq.LoadedModel) -> list[str]:
    """The captions the Distributions and Trajectory tabs sample (not the calibration ones)."""
    if model.settings.world not in WORLDS:  # a model outside the shapes worlds
        return general_captions(ANALYSIS_PROMPTS)
    scenes = world(model.settings.world).sample_scenes(ANALYSIS_PROMPTS, seed=ANALYSIS_SEED)
    return [s.caption for s in scenes]


def distributions_case(collected, group: int) -> dict:
    """The Distributions tab's figures and table of one collected layer
    (:func:`analysis.collect.collect_layer`) in one time group."""
    from analysis.report import layer_figures, layer_table

    table = layer_table({collected.name: collected}).round(3)
    return {"figures": layer_figures(collected, group), "table": table}


def trajectory_case(fp: trdq.LoadedModel, qmodel: trdq.LoadedModel, steps: int, guidance: float,
                    similarity) -> dict:
    """The Trajectory tab's figures: per-step noise-prediction SQNR of ``qmodel`` against FP on the
    analysis prompts, and the FP model's cond/uncond attention similarity."""
    from analysis.figures import attention_similarity_figure, error_curve_figure
    from trdq.demo.eval.trajectory import eps_sqnr_per_step

    config = qmodel.quant.config
    prompts = analysis_prompts(fp)
    per_step = eps_sqnr_per_step(fp, qmodel, prompts, list(range(len(prompts))), steps=steps,
                                 guidance=guidance)
    curve = error_curve_figure(per_step, config.time_groups,
                               title=f"{config.method} {config.bits}: noise-prediction SQNR vs FP per step")
    return {"figures": {"curve": curve, "similarity": attention_similarity_figure(similarity)},
            "per_step": [float(v) for v in per_step]}


# ---------------------------------------------------------------- files


def _image_file(output: np.ndarray, path: Path) -> str:
    strip = output if output.ndim == 3 else np.concatenate(list(output), axis=1)  # frames side by side
    Image.fromarray(strip).save(path, optimize=True)
    return path.name


def _read_image(path: Path, frames: int | None) -> np.ndarray:
    strip = np.asarray(Image.open(path).convert("RGB"))
    if not frames:
        return strip
    return np.stack(np.split(strip, frames, axis=1))  # (frames, H, W, 3)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def _single_precision(node):
    """Plotly's float64 arrays (``{"dtype": "f8", "bdata": base64}``) as float32: half the bytes,
    and far more digits than a figure shows."""
    if isinstance(node, list):
        return [_single_precision(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.get("dtype") == "f8" and "bdata" in node:
        values = np.frombuffer(base64.b64decode(node["bdata"]), np.float64).astype(np.float32)
        return {**node, "dtype": "f4", "bdata": base64.b64encode(values.tobytes()).decode()}
    return {k: _single_precision(v) for k, v in node.items()}


def _figure_json(fig: go.Figure) -> dict:
    return _single_precision(json.loads(pio.to_json(fig, validate=False)))


def write_grid(folder: Path, grids: Sequence[tuple[str, list[Output]]], meta: dict) -> Path:
    """``grid.json`` and one PNG per output; returns the JSON's path."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for i, (prompt, outputs) in enumerate(grids):
        columns = []
        for o in outputs:
            name = f"{i}-{o.method}-{o.bits}.png"
            columns.append({**o.to_json(), "file": _image_file(o.output, folder / name),
                            "frames": int(o.output.shape[0]) if o.output.ndim == 4 else None})
        examples.append({"prompt": prompt, "outputs": columns})
    path = folder / "grid.json"
    _write_json(path, {**meta, "examples": examples})
    return path


def load_grid(model_name: str, prompt: str | None = None,
              folder: Path = EXAMPLES_DIR) -> tuple[dict, str, list[Output]] | None:
    """(settings, prompt, columns) of a shipped grid: the one for ``prompt``, else the first; None
    when the model has no shipped grid."""
    path = folder / model_name / "grid.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    example = next((e for e in data["examples"] if e["prompt"] == prompt), data["examples"][0])
    outputs = []
    for c in example["outputs"]:
        fields = {k: v for k, v in c.items() if k not in ("file", "frames")}
        outputs.append(Output.from_json(fields, _read_image(path.parent / c["file"], c["frames"])))
    meta = {k: v for k, v in data.items() if k != "examples"}
    return meta, example["prompt"], outputs


def shipped_prompts(model_name: str, folder: Path = EXAMPLES_DIR) -> list[str]:
    path = folder / model_name / "grid.json"
    return [e["prompt"] for e in json.loads(path.read_text())["examples"]] if path.exists() else []


def write_case(path: Path, case: dict, meta: dict) -> Path:
    """A Distributions or Trajectory case: its figures (plotly JSON), table and settings."""
    data = {**meta, "figures": {k: _figure_json(f) for k, f in case["figures"].items()}}
    if "table" in case:
        data["table"] = case["table"].to_dict(orient="records")
    if "per_step" in case:
        data["per_step"] = case["per_step"]
    path.write_text(json.dumps(data) + "\n")  # one line: the figures' arrays dwarf any layout
    return path


def load_case(model_name: str, kind: str, folder: Path = EXAMPLES_DIR) -> dict | None:
    """A shipped case (``distributions`` or ``trajectory``) with its figures rebuilt, or None."""
    path = folder / model_name / f"{kind}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    # written by plotly itself: skipping validation reads them in milliseconds instead of seconds
    data["figures"] = {k: go.Figure(f, _validate=False) for k, f in data["figures"].items()}
    if "table" in data:
        data["table"] = pd.DataFrame(data["table"])
    return data


# ---------------------------------------------------------------- searches


def searches(config: trdq.QuantConfig) -> bool:
    """Whether ``config``'s method searches per layer (alpha_g, transform selection)."""
    from trdq.methods import recipe_for

    recipe = recipe_for(config)
    return recipe.smoothing == "search" or recipe.select


def calibration_record(fp: trdq.LoadedModel, prompts: Sequence[str]) -> dict:
    """What a shipped search was calibrated on: the base weights' fingerprint and the calibration
    run (prompts, first seed 0, the model's steps and guidance)."""
    from trdq.api import transformer_of
    from trdq.fingerprint import fingerprint

    return {"base_fingerprint": fingerprint(transformer_of(fp)), "prompts": list(prompts), "seed": 0,
            "steps": fp.settings.steps, "guidance": fp.settings.guidance}


def write_choices(path: Path, fp: trdq.LoadedModel, prompts: Sequence[str],
                  quantized: Sequence[tuple[trdq.QuantConfig, trdq.LoadedModel]]) -> Path:
    """The choices (alpha and transform per layer and time group) of every searching default slot,
    with what they were calibrated on, so the app can fit them without searching again."""
    from trdq.api import choices_of

    entries = [{"config": c.to_dict(), "choices": choices_of(q)} for c, q in quantized if searches(c)]
    path.write_text(json.dumps({**calibration_record(fp, prompts), "searches": entries}) + "\n")
    return path


def load_choices(model_name: str, config: trdq.QuantConfig, fp: trdq.LoadedModel, prompts: Sequence[str],
                 folder: Path = EXAMPLES_DIR) -> dict | None:
    """The shipped choices of ``config``, if its search was made on these weights and this
    calibration (:func:`write_choices`); else None (then the search runs)."""
    from trdq.api import transformer_of
    from trdq.fingerprint import mismatch

    path = folder / model_name / "choices.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    record = {k: v for k, v in calibration_record(fp, prompts).items() if k != "base_fingerprint"}
    if any(data.get(k) != v for k, v in record.items()) or mismatch(data["base_fingerprint"], transformer_of(fp)):
        return None
    # read back as configs: a field added since the file was written takes its default
    entry = next((e for e in data["searches"] if trdq.QuantConfig.from_dict(e["config"]) == config), None)
    return None if entry is None else {name: [tuple(c) for c in per_group] for name, per_group in entry["choices"].items()}


# ---------------------------------------------------------------- the command


def build(model_name: str, out: Path = EXAMPLES_DIR, prompts: Sequence[str] | None = None) -> list[Path]:
    """Compute and write every shipped answer of one embedded model: its grid for ``prompts``
    (default: the first :data:`SHIPPED` of :data:`PROMPTS`) and, for models in :data:`CASES`, the
    Distributions and Trajectory cases. Returns the JSON files written."""
    import torch

    from analysis.collect import collect_layer
    from trdq.attention import measure_similarity
    from trdq.demo.bench.report import machine
    from trdq.demo.eval.detector import load_detector

    fp = trdq.load_model(model_name)
    detector = load_detector()
    calibration = calibration_prompts(fp, CALIBRATION[model_name])
    quantized = []
    for method, bits in DEFAULT_SLOTS:
        t0 = time.perf_counter()
        config = default_config(method, bits)
        quantized.append((config, trdq.quantize(fp, config, calibration), None))
        log.info("%s: calibrated %s %s in %.1f s", model_name, method, bits, time.perf_counter() - t0)
    grids = []
    for prompt in prompts or PROMPTS[model_name][:SHIPPED[model_name]]:
        grids.append((prompt, run_grid(fp, quantized, prompt, SEED, STEPS, GUIDANCE, detector)))
        log.info("%s: grid for %r", model_name, prompt)
    folder = out / model_name
    meta = {"model": model_name, "seed": SEED, "steps": STEPS, "guidance": GUIDANCE,
            "configs": [c.to_dict() for c, _, _ in quantized], "calibration_prompts": len(calibration),
            "machine": machine(torch.get_num_threads())}
    written = [write_grid(folder, grids, meta),
               write_choices(folder / "choices.json", fp, calibration, [(c, q) for c, q, _ in quantized])]

    if model_name not in CASES:
        return written
    config, qmodel, _ = quantized[-1]  # TR-DQ: the Quantize tab's default configuration
    layer, group = CASES[model_name]
    collected = collect_layer(fp, qmodel, layer, analysis_prompts(fp), STEPS, GUIDANCE)
    case_meta = {"model": model_name, "config": config.to_dict(), "steps": STEPS, "guidance": GUIDANCE,
                 "prompts": analysis_prompts(fp)}
    written.append(write_case(folder / "distributions.json", distributions_case(collected, group),
                              {**case_meta, "layer": layer, "group": group}))
    log.info("%s: distributions of %s, group %d", model_name, layer, group)
    similarity = measure_similarity(fp, calibration)
    case = trajectory_case(fp, qmodel, STEPS, GUIDANCE, similarity)
    written.append(write_case(folder / "trajectory.json", case, case_meta))
    log.info("%s: trajectory", model_name)
    return written
