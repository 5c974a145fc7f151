"""The Compare grid: full precision and several quantized models from one seed, and what tells
them apart: closeness to FP, an amplified error map, and what the shapes detector reads.

The app draws these; ``python -m analysis examples`` ships them precomputed. Nothing here
imports gradio.

    fp = trdq.load_model("shapes-t2i")
    models = [(config, trdq.quantize(fp, config, calibration_prompts(fp, 8)), None) for config in configs]
    outputs = run_grid(fp, models, "a large red circle in the center", seed=0, steps=20, guidance=4.5,
                       detector=load_detector())
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import trdq
from trdq.captions import general_captions
from trdq.config import parse_bits
from trdq.demo import shapes
from trdq.demo.eval.detector import ShapesDetector
from trdq.demo.worlds import WORLDS, world

# What the grid shows first: where the methods part ways (issue 18's 32-prompt W3A3 adherence:
# RTN 0.75, SmoothQuant 0.78, ViDiT-Q 0.81, TR-DQ 0.97; FP 1.0).
DEFAULT_SLOTS = (("rtn", "w3a3"), ("smoothquant", "w3a3"), ("viditq", "w3a3"), ("trdq", "w3a3"))
# The rest of the recipe every slot shares (the Quantize tab's defaults).
DEFAULT_RECIPE = {"groups": 4, "rotation": "duquant", "block_size": 64}
CALIBRATION = {"shapes-t2i": 8, "shapes-t2v": 4}  # prompts per calibration (video costs 8 frames each)
CALIBRATION_SEED = 2024
# Widths the integer kernels store and multiply natively; others run in the next wider container.
NATIVE_W_BITS, NATIVE_A_BITS = (4, 8), (8,)
SCORED = {"shapes": tuple(shapes.ATTRIBUTES), "moving-shapes": ("color", "shape", "direction")}


def default_config(method: str, bits: str) -> trdq.QuantConfig:
    """A slot's config with the shared recipe at its defaults (alpha_g searched)."""
    w_bits, a_bits = parse_bits(bits)
    return trdq.QuantConfig(method=method, w_bits=w_bits, a_bits=a_bits,
                            time_groups=trdq.TimeGroups(DEFAULT_RECIPE["groups"]),
                            rotation=DEFAULT_RECIPE["rotation"], block_size=DEFAULT_RECIPE["block_size"])


def calibration_prompts(model: trdq.LoadedModel, count: int) -> list[str]:
    """The captions every configuration of ``model`` is calibrated on: drawn from its world's
    grammar (fixed seed), or general captions for a model outside the shapes worlds."""
    if model.settings.world not in WORLDS:
        return general_captions(count)
    scenes = world(model.settings.world).sample_scenes(count, seed=CALIBRATION_SEED)
    return [s.caption for s in scenes]


def real_path_note(w_bits: int, a_bits: int) -> str:
    """What the real integer path does with these widths ('' where it runs them natively).

    The engine runs every width 2..8 as integers, but its kernels store weights as packed 4-bit
    or int8 codes and multiply int8 activations: narrower codes run in the next wider container,
    with the same codes as the simulated path and the memory and speed of the container.
    """
    w_box = next(b for b in NATIVE_W_BITS if w_bits <= b)
    if w_box == w_bits and a_bits in NATIVE_A_BITS:
        return ""
    return (f"W{w_bits}A{a_bits} has no integer kernel of its own: its savings are simulated only. "
            f"The real integer path runs its codes in W{w_box}A8 containers (the same integer codes, "
            f"W{w_box}A8 memory and speed).")


def gemm_note(model: trdq.LoadedModel) -> str:
    """Which int8 GEMM a real integer model's layers run, and on what CPU class ('' for simulated)."""
    from trdq.api import transformer_of
    from trdq.cpu import cpu_info
    from trdq.layers import IntLinear

    gemms = sorted({m.gemm for m in transformer_of(model).modules() if isinstance(m, IntLinear)})
    return f"int8 GEMM {', '.join(gemms)} on {cpu_info().cpu_class}" if gemms else ""


# ---------------------------------------------------------------- error maps


def abs_error(output: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|Q - FP| per pixel, the largest over RGB: uint8 (..., H, W, 3) -> uint8 (..., H, W)."""
    if output.shape != reference.shape:
        raise ValueError(f"cannot compare an output of shape {output.shape} with FP's {reference.shape}")
    return np.abs(output.astype(np.int16) - reference.astype(np.int16)).max(-1).astype(np.uint8)


def error_gain(errors: Sequence[np.ndarray], min_gain: int = 4, max_gain: int = 32,
               percentile: float = 99.0) -> int:
    """One amplification for a whole grid, so its error maps share a scale: ``min_gain``, or more
    when every map is faint: the power of two (up to ``max_gain``) that keeps the largest per-map
    ``percentile`` of |Q - FP| within full scale. At low bits, objects drawn elsewhere differ by
    most of the range and saturate at any gain; ``min_gain`` keeps the subtler errors of the better
    columns visible beside them."""
    top = max((float(np.percentile(e, percentile)) for e in errors), default=0.0)
    fits = max_gain if top <= 0 else 2 ** math.floor(math.log2(255 / top))
    return int(min(max_gain, max(min_gain, fits)))


def error_map(output: np.ndarray, reference: np.ndarray, gain: int) -> np.ndarray:
    """|Q - FP| times ``gain`` through a black-red-yellow-white scale (white: ``255 / gain`` or
    more): uint8 (..., H, W, 3) -> uint8 (..., H, W, 3)."""
    t = np.minimum(abs_error(output, reference).astype(np.float32) * gain, 255.0) / 255.0
    rgb = np.stack([np.clip(3 * t - k, 0.0, 1.0) for k in range(3)], -1)  # hot: r, then g, then b rise
    return (rgb * 255).round().astype(np.uint8)


def error_scale(gain: int) -> str:
    """The legend of :func:`error_map`."""
    return (f"error maps: |Q − FP| × {gain}, the largest over RGB; black = 0, red ≈ {255 / gain / 3:.0f}, "
            f"yellow ≈ {2 * 255 / gain / 3:.0f}, white ≥ {255 / gain:.0f} (of 255)")


# ---------------------------------------------------------------- detector readings


@dataclass(frozen=True)
class Reading:
    """One attribute as the detector reads it, beside what the prompt asked.

    Attributes:
        attribute: ``size``, ``color``, ``shape``, ``position`` (images) or ``direction`` (clips).
        read: the value read (``none`` where a clip shows no moving object).
        asked: the prompt's value, or None for a prompt outside the model's grammar.
        scored: whether adherence counts it (clips: colour, shape and direction).
    """

    attribute: str
    read: str
    asked: str | None
    scored: bool = True

    @property
    def right(self) -> bool | None:
        return None if self.asked is None else self.read == self.asked


def _asked(caption_world, prompt: str):
    try:
        return caption_world.parse_caption(prompt)
    except ValueError:
        return None


def read_output(output: np.ndarray, prompt: str, world_name: str, detector: ShapesDetector) -> list[Reading]:
    """What the evaluator reads in one output, marked against ``prompt``.

    Args:
        output: uint8 image (H, W, 3) of the shapes world, or clip (frames, H, W, 3) of the
            moving-shapes world, read as :mod:`trdq.demo.eval.runner` scores them.
    """
    from trdq.demo.eval.clips import read_clips

    if world_name not in WORLDS:  # the detector knows the shapes worlds only
        return []
    caption_world = world(world_name)
    scene = _asked(caption_world, prompt)
    if output.ndim == 3:
        indices = {k: int(v[0]) for k, v in detector.read(output[None])[0].items()}
    else:
        indices = {k: int(v[0]) for k, v in read_clips(output[None], detector).items()}
    readings = []
    for name, values in caption_world.ATTRIBUTES.items():
        read = values[indices[name]] if indices[name] >= 0 else "none"
        readings.append(Reading(name, read, None if scene is None else getattr(scene, name),
                                name in SCORED[world_name]))
    return readings


def adheres(readings: Sequence[Reading]) -> bool | None:
    """Whether every scored attribute is right (None when the prompt could not be parsed)."""
    marks = [r.right for r in readings if r.scored]
    return None if None in marks else all(marks)


def readings_markdown(readings: Sequence[Reading]) -> str:
    """One line per attribute, ✓ or ✗ against the prompt, and the verdict adherence gives."""
    if not readings:
        return "**detector**: not run (it reads the embedded shapes worlds only)"
    lines = []
    for r in readings:
        mark = {True: "✓", False: "✗", None: "·"}[r.right]
        missed = f" (asked {r.asked})" if r.right is False else ""
        unscored = "" if r.scored else " (not scored)"
        lines.append(f"{mark} {r.attribute}: {r.read}{missed}{unscored}")
    verdict = adheres(readings)
    head = {True: "**detector: adheres**", False: "**detector: misses**",
            None: "**detector** (prompt outside the grammar: nothing to mark)"}[verdict]
    return head + "<br>" + "<br>".join(lines)


# ---------------------------------------------------------------- running the grid


@dataclass
class Output:
    """One column of the grid: an output and the facts about producing it.

    Attributes:
        method: ``fp`` or a quantization method; ``bits``: ``fp32`` or e.g. ``w3a3``.
        execution: ``full precision``, ``simulated`` or ``real integer``.
        output: uint8 image (H, W, 3) or clip (frames, H, W, 3).
        seconds: sampling time (calibration excluded); peak_mib: the process's peak RSS meanwhile.
        weights_mib: the transformer's weight bytes.
        psnr_db, ssim: against the FP output of the same seed (None for FP itself).
        note: what else the reader should know (Attention-Sharing, the real path's containers).
        device, dtype: where the transformer ran and its floating-point dtype (e.g. ``cpu``,
            ``float32``).
    """

    method: str
    bits: str
    execution: str
    output: np.ndarray
    seconds: float
    peak_mib: float | None
    weights_mib: float
    readings: list[Reading]
    psnr_db: float | None = None
    ssim: float | None = None
    note: str = ""
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def title(self) -> str:
        """Two lines, model then execution, so that every column's images line up."""
        if self.method == "fp":
            return "**full precision**<br>fp32"
        return f"**{self.method} {self.bits.upper()}**<br>{self.execution}"

    def to_json(self) -> dict:
        """Every field but the pixels."""
        d = dataclasses.asdict(self)
        del d["output"]
        return d

    @classmethod
    def from_json(cls, d: dict, output: np.ndarray) -> Output:
        return cls(**{**d, "readings": [Reading(**r) for r in d["readings"]], "output": output})


def weight_mib(model: trdq.LoadedModel) -> float:
    from trdq.demo.bench.measure import weight_bytes

    return weight_bytes(model.pipe.transformer)["total"] / 2**20


def placement(model: trdq.LoadedModel) -> dict[str, str]:
    """``device`` and ``dtype`` of the model's transformer (its first floating parameter)."""
    t = next((p for p in model.pipe.transformer.parameters() if p.is_floating_point()), None)
    return {"device": "cpu", "dtype": "float32"} if t is None else {"device": t.device.type,
                                                                    "dtype": str(t.dtype).removeprefix("torch.")}


def sample(model: trdq.LoadedModel, prompt: str, seed: int, steps: int, guidance: float,
           plan=None) -> tuple[np.ndarray, float, float | None]:
    """One output, its sampling seconds and the process's peak RSS (MiB) while it ran."""
    from trdq.attention import share_attention
    from trdq.demo.bench.measure import proc_bytes, reset_peak

    reset = reset_peak()
    t0 = time.perf_counter()
    with share_attention(model, plan) if plan is not None else contextlib.nullcontext():
        out = trdq.generate(model, [prompt], [seed], steps=steps, guidance=guidance)[0]
    seconds = time.perf_counter() - t0
    peak = (proc_bytes("/proc/self/status", "VmHWM") or 0) / 2**20 if reset else None
    return out, seconds, peak


def run_grid(fp: trdq.LoadedModel, quantized: Sequence[tuple[trdq.QuantConfig, trdq.LoadedModel, object]],
             prompt: str, seed: int, steps: int, guidance: float, detector: ShapesDetector,
             progress: Callable[[float, str], None] = lambda fraction, what: None) -> list[Output]:
    """Sample FP and each quantized model from one seed; read and measure every output.

    Args:
        quantized: (config, model, Attention-Sharing plan or None) per quantized column, with a
            fourth item, a note shown under the column (e.g. where a checkpoint came from), if wanted.
        progress: called with the fraction done and what runs next.

    Returns:
        The FP output first, then one per quantized model, in order.
    """
    from trdq.demo.eval.runner import fidelity

    world_name = fp.settings.world
    progress(0.0, "full precision")
    fp_out, seconds, peak = sample(fp, prompt, seed, steps, guidance)
    outputs = [Output("fp", "fp32", "full precision", fp_out, seconds, peak, weight_mib(fp),
                      read_output(fp_out, prompt, world_name, detector), **placement(fp))]
    for i, (config, model, plan, *note) in enumerate(quantized):
        progress((i + 1) / (len(quantized) + 1), f"{config.method} {config.bits}")
        out, seconds, peak = sample(model, prompt, seed, steps, guidance, plan)
        close = fidelity(out[None], fp_out[None])
        notes = [*note] + ([] if plan is None else [f"sharing {len(plan.layers)} layers "
                                                    f"({plan.skipped:.0%} of uncond scores)"])
        if config.attention_bits is not None:
            notes.append(f"attention scores QKᵀ at {config.attention_bits} bits")
        if model.quant.execution != "simulated":
            notes += [n for n in (gemm_note(model), real_path_note(config.w_bits, config.a_bits)) if n]
        outputs.append(Output(config.method, config.bits, model.quant.execution, out, seconds, peak,
                              weight_mib(model), read_output(out, prompt, world_name, detector),
                              close["psnr_vs_fp"], close["ssim_vs_fp"], " · ".join(notes), **placement(model)))
    return outputs


def facts_markdown(output: Output, fp: Output | None = None) -> str:
    """Closeness to FP, the detector's reading, latency, memory and weights of one column."""
    peak = "-" if output.peak_mib is None else f"{output.peak_mib:.0f} MiB"
    lines = []
    if output.psnr_db is not None:
        mean = "" if fp is None else f" · mean |Q − FP| {abs_error(output.output, fp.output).mean():.1f}"
        lines.append(f"PSNR vs FP {output.psnr_db:.2f} dB · SSIM vs FP {output.ssim:.3f}{mean}")
    lines.append(readings_markdown(output.readings))
    lines.append(f"{output.seconds:.2f} s · peak RSS {peak} · transformer weights "
                 f"{output.weights_mib:.1f} MiB · {output.device}, {output.dtype}")
    if output.note:
        lines.append(f"*{output.note}*")
    return "<br>".join(lines)


def grid_error_maps(outputs: Sequence[Output]) -> tuple[list[np.ndarray], int]:
    """Error maps of every quantized column against the first (FP), on one shared scale."""
    fp, rest = outputs[0].output, outputs[1:]
    gain = error_gain([abs_error(o.output, fp) for o in rest])
    return [error_map(o.output, fp, gain) for o in rest], gain

