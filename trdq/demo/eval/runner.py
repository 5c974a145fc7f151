"""The evaluation runner: generate for shapes-world prompts, score, and write JSON records."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from trdq.api import Prepared, calibrate_groups, convert, quantize
from trdq.attention import ShareRule, measure_similarity, select_layers, share_attention
from trdq.captions import read_captions
from trdq.config import QuantConfig, TimeGroups
from trdq.demo import motion, shapes
from trdq.demo.eval.clips import score_clips
from trdq.demo.eval.detector import ShapesDetector, load_detector
from trdq.demo.eval.metrics import adherence, frechet_distance, psnr, ssim
from trdq.demo.eval.shards import Shards
from trdq.demo.eval.trajectory import add_powers, eps_power_per_step, sqnr_db
from trdq.demo.worlds import world
from trdq.fingerprint import fingerprint
from trdq.layers import EXECUTION
from trdq.methods import DEFAULT_FIXED_ALPHA, num_groups, recipe_for
from trdq.models.loader import LoadedModel
from trdq.sampling import generate


def read_prompts_file(path: str | Path, caption_world=shapes, minimum: int = 2) -> list:
    """Scenes of ``caption_world`` (a :mod:`trdq.demo.worlds` module) from a file of captions
    (:func:`read_captions`).

    Raises:
        ValueError: as :func:`read_captions` (evaluation needs at least ``minimum``: ``shapes_fd``
            compares two sets), or for a caption outside the grammar (naming it, its line number
            and the grammar).
    """
    scenes = []
    for number, text in read_captions(path, minimum):
        try:
            scenes.append(caption_world.parse_caption(text))
        except ValueError:
            raise ValueError(
                f"{path}, line {number}: {text!r} is not a caption of the model's world. "
                f"Expected: {caption_world.GRAMMAR}."
            ) from None
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
    """:func:`score_images` for images; for clips, :func:`trdq.demo.eval.clips.score_clips` plus a
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
             sharing: Sequence[ShareRule] = (), eps_sqnr: bool = True,
             progress: Callable[[str, int, int], None] | None = None,
             on_records: Callable[[list[dict]], None] | None = None, shards: Shards = Shards(),
             reference_cache: str | Path | None = None) -> list[dict]:
    """Evaluate the FP model and one quantized model per config on ``scenes`` (of the model's world:
    :class:`~trdq.demo.shapes.Scene` for images, :class:`~trdq.demo.motion.MovingScene` for clips).

    A quantized ``model`` (e.g. from :func:`trdq.from_pretrained`) is evaluated as it is, in place
    of the FP model: its record names its method, bits and execution, and it takes no ``configs``.

    Output i (an image, or a clip for a video model) uses seed ``seed + i`` for every model, so
    quantized outputs are compared with the FP output of the same seed.

    Returns:
        One record per model: ``model``, ``method``, ``bits``, ``execution``, ``adherence``,
        ``acc_*``, ``shapes_fd`` (clips add ``temporal_consistency``), ``num_prompts``, ``seed``,
        ``steps``, ``guidance``, ``seconds``;
        quantized records add ``psnr_vs_fp`` (per-image PSNR capped at 100 dB, averaged),
        ``ssim_vs_fp``, ``eps_sqnr_db``,
        ``eps_sqnr_db_per_step`` (unless ``eps_sqnr`` is False: they re-run both models along the
        FP trajectory, which costs about as much as sampling twice more), ``calib_seconds`` (making
        the quantized model: recording statistics, unless ``calib_reused`` says an earlier model of
        the run recorded them, and fitting), ``calib_reused`` and the settings of :func:`describe`.
        Every model is also sampled once per sharing rule, with Attention-Sharing over the layers
        the rule picks from the FP model's cond/uncond similarity on the calibration prompts; those
        records add ``sharing`` (the rule), ``shared_layers``, ``attn_score_skipped`` (fraction of
        the unconditional attention-score compute skipped) and ``psnr_vs_fp``/``ssim_vs_fp``
        against the FP output without sharing; they carry no ``eps_sqnr_db``.
        ``on_records`` receives each model's records (its own and its sharing ones) as soon as they
        are complete, so that a caller can save them before the next model starts.
        With ``shards`` of several processes, each samples its share of the batches and every
        process scores all outputs (:mod:`trdq.demo.eval.shards`): the records equal a one-process
        run's; ``seconds`` is the slowest process's.
        With ``reference_cache`` (a folder), the FP outputs are kept there between runs
        (:func:`reference_outputs`): a resumed or staged run samples them once.
    """
    world(model.settings.world)
    info = getattr(model, "quant", None)
    if info is not None and configs:
        raise ValueError(f"{model.name} is quantized already and is evaluated as it is; quantize from its "
                         "full-precision model to compare methods")
    if (configs or sharing) and not calibration_prompts:
        raise ValueError("quantized evaluation and attention sharing need calibration prompts")
    steps = steps or model.settings.steps
    guidance = model.settings.guidance if guidance is None else guidance
    prompts = [s.caption for s in scenes]
    seeds = [seed + i for i in range(len(scenes))]
    detector = load_detector()
    common = {"num_prompts": len(scenes), "seed": seed, "steps": steps, "guidance": guidance}

    mine = shards.batches(len(prompts), batch_size)
    share = sum(hi - lo for lo, hi in mine)

    def sample(label: str, m: LoadedModel) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        outputs, done = {}, 0
        for lo, hi in mine:
            cb = None if progress is None else (lambda d, _total, done=done: progress(label, done + d, share))
            outputs[lo] = generate(m, prompts[lo:hi], seeds[lo:hi], steps=steps, guidance=guidance,
                                   batch_size=batch_size, progress=cb)
            done += hi - lo
        images = np.concatenate(shards.gather_batches(outputs))
        return images, max(shards.gather(round(time.perf_counter() - t0, 2)))

    label = "fp" if info is None else f"{info.config.method} {info.config.bits}"
    if reference_cache is None or info is not None:
        fp_images, fp_seconds = sample(label, model)
    else:
        fp_images, fp_seconds = reference_outputs(reference_cache, model, prompts, seeds, steps, guidance,
                                                  lambda: sample(label, model), write=shards.main)
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

    def done(new: list[dict]) -> None:
        records.extend(new)
        if on_records is not None:
            on_records(new)

    fp_base = ({"model": model.name, "method": "fp", "bits": "fp32", "execution": "full precision"} if info is None
               else {"model": model.name, "method": info.config.method, "bits": info.config.bits,
                     "execution": info.execution, **describe(info.config)})
    if include_fp:
        done([{**fp_base, **score_outputs(fp_images, scenes, detector), **common, "seconds": fp_seconds},
              *shared_records("fp", model, fp_base)])
    statistics: dict[tuple, Prepared] = {}

    def quantized(config: QuantConfig) -> tuple[LoadedModel, bool]:
        """The quantized model of ``config``, and whether its statistics came from an earlier
        model's calibration: configs with the same time groups share one (one-group methods
        merge its groups), which makes the models their own calibrations would."""
        if config.cfg_split:  # each branch calibrates on its own rows
            return quantize(model, config, calibration_prompts, steps=steps, guidance=guidance, seed=10**5), False
        groups = config.time_groups if num_groups(config) > 1 or config.time_groups.num_groups <= steps else TimeGroups(1)
        key = (groups, config.seed, config.include, config.exclude)
        reused = key in statistics
        if not reused:
            statistics.clear()  # one at a time: a run's configs mostly share their groups
            statistics[key] = calibrate_groups(model, groups, calibration_prompts, config_seed=config.seed,
                                               include=config.include, exclude=config.exclude, steps=steps,
                                               guidance=guidance, seed=10**5)
        return convert(statistics[key], config), reused

    for config in configs:
        t0 = time.perf_counter()
        qmodel, reused = quantized(config)
        calib_seconds = round(time.perf_counter() - t0, 2)
        images, seconds = sample(f"{config.method} {config.bits}", qmodel)
        trajectory = {}
        if eps_sqnr:
            powers = {lo: eps_power_per_step(model, qmodel, prompts[lo:hi], seeds[lo:hi], steps, guidance)
                      for lo, hi in mine}
            per_step = sqnr_db(*add_powers(shards.gather_batches(powers)))
            trajectory = {"eps_sqnr_db": float(np.mean(per_step)), "eps_sqnr_db_per_step": per_step}
        base = {"model": model.name, "method": config.method, "bits": config.bits, "execution": EXECUTION}
        label = f"{config.method} {config.bits}"
        done([{**base, **score_outputs(images, scenes, detector), **fidelity(images, fp_images), **trajectory,
               **describe(config), "calib_seconds": calib_seconds, "calib_reused": reused, **common,
               "seconds": seconds},
              *shared_records(label, qmodel, {**base, **describe(config), "calib_seconds": calib_seconds,
                                              "calib_reused": reused})])
    return records


def reference_outputs(folder: str | Path, model: LoadedModel, prompts: Sequence[str], seeds: Sequence[int],
                      steps: int, guidance: float, sample: Callable[[], tuple[np.ndarray, float]],
                      write: bool = True) -> tuple[np.ndarray, float]:
    """The FP model's outputs and the seconds they took, from ``folder`` if an earlier run kept
    them, else from ``sample()`` (then kept, if ``write``).

    The file is named by a hash of everything the outputs depend on: the pipeline's weights
    (:func:`trdq.fingerprint.fingerprint` of each component), its scheduler's settings, prompts,
    seeds, steps, guidance, torch's version, the device and the CPU class kernels were picked for;
    another machine class samples afresh.
    """
    parts = {name: fingerprint(m) for name, m in model.pipe.components.items() if isinstance(m, torch.nn.Module)}
    key = {"model": model.name, "weights": parts, "scheduler": dict(model.pipe.scheduler.config),
           "prompts": list(prompts), "seeds": list(seeds), "steps": steps, "guidance": guidance,
           "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
           "device": str(model.pipe.transformer.device)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    name = re.sub(r"[^\w.-]+", "_", model.name)[-40:]  # a hub id or a path names a model too
    path = Path(folder) / f"reference-{name}-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path) as kept:
                return kept["outputs"], float(kept["seconds"])
        except (OSError, ValueError, KeyError):  # a damaged file: sample afresh and replace it
            pass
    outputs, seconds = sample()
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                np.savez(f, outputs=outputs, seconds=seconds)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return outputs, seconds


def describe(config: QuantConfig) -> dict:
    """The settings that tell quantized records apart: ``num_groups``, ``smoothing`` (none, fixed
    or search), ``alpha`` (the fixed value, else None) and ``rotation`` as the method applies them,
    ``cfg_split``, ``attention_bits`` (None: float attention) and ``shared_inputs``."""
    recipe = recipe_for(config)
    alpha = None
    if recipe.smoothing == "fixed":
        alpha = config.alpha if config.alpha is not None else DEFAULT_FIXED_ALPHA
    return {"num_groups": num_groups(config), "smoothing": recipe.smoothing, "alpha": alpha,
            "rotation": recipe.rotation, "cfg_split": config.cfg_split, "attention_bits": config.attention_bits,
            "shared_inputs": config.shared_inputs}


#: The fields that tell apart two evaluations of the same model whose records may share a file.
RUN_FIELDS = ("model", "num_prompts", "seed", "steps", "guidance")
# The settings of describe() that tell two quantized models of one method and bits apart.
_DESCRIBED = ("num_groups", "smoothing", "alpha", "rotation", "cfg_split", "attention_bits", "shared_inputs")
_UNSAID = {"shared_inputs": False}  # what a record written before the setting existed had


def config_key(config: QuantConfig) -> tuple:
    """What identifies a quantized model's record in a file: method, bits and :func:`describe`."""
    settings = describe(config)
    return (config.method, config.bits, *(settings[k] for k in _DESCRIBED))


def record_key(record: dict) -> tuple:
    """:func:`config_key` of the model a record came from (``("fp",)`` for the FP model)."""
    if record["method"] == "fp":
        return ("fp",)
    return (record["method"], record["bits"], *(record.get(k, _UNSAID.get(k)) for k in _DESCRIBED))


def read_records(path: str | Path, run: dict) -> list[dict]:
    """The records of an earlier evaluation in ``path`` ([] if there is no file), checked to come
    from the same run: each of :data:`RUN_FIELDS` must equal ``run``'s."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a JSON file of eval records ({err}); move it away to start over") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "method" in r for r in records):
        raise ValueError(f"{path} is not a list of eval records; move it away to start over")
    for r in records:
        if differ := [f"{k} {r.get(k)!r} (now {run[k]!r})" for k in RUN_FIELDS if r.get(k) != run[k]]:
            raise ValueError(f"{path} holds records of another run: {', '.join(differ)}; resume with the same "
                             "settings or write to another file")
    return records


def finite(value):
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def check_writable(path: str | Path) -> None:
    """Raise ``OSError`` now if :func:`write_json` could not write ``path`` (it makes the folder)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name for the JSON records")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)


def write_json(records: list[dict], path: str | Path) -> None:
    """Write records atomically as strict JSON (a non-finite number becomes null): the file is
    either complete or untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(finite(records), f, indent=2, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
