"""trdq app: full-precision and quantized models side by side, and why they differ.

Run ``python app.py`` and open the printed address. Tabs:

- **Compare**: FP and up to four quantized configurations (method and bits each) from the same
  seed, in a grid: each output with an amplified error map |Q - FP|, PSNR/SSIM against FP, what
  the shapes detector reads in it (marked right or wrong against the prompt), latency, peak
  memory and weight size, labelled "simulated" (fake quantization in floating point) or "real
  integer" (int8 GEMMs, packed 4-bit weights). The page opens on a precomputed grid.
- **Quantize**: method, bits, time groups, alpha_g per group (searched or set), rotation, CFG
  split, quantized attention scores, Attention-Sharing and execution. Method and bits make the
  configuration the Distributions and Trajectory tabs analyse; the rest of the recipe applies to
  every Compare slot too.
- **Distributions**: a layer's activations and weights before and after smoothing and rotation,
  per time group.
- **Trajectory**: the per-step noise-prediction error against FP, shaded by time group, and the
  cond/uncond attention similarity per layer and step.
- **Benchmark**: the measured latency and memory of ``python -m trdq bench``.

Handlers are plain functions (tested directly) of the UI values and one :class:`Recipe`, the Quantize
tab's settings, which :func:`build_demo`'s events make from the widgets; errors become ``gr.Error``. The
maths and the shipped answers live in :mod:`analysis.compare` and :mod:`analysis.examples`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

import trdq
from analysis import compare as grid
from analysis import examples as shipped
from analysis.compare import CALIBRATION, DEFAULT_RECIPE, DEFAULT_SLOTS
from trdq.api import calibrate_groups
from trdq.captions import GENERAL_CAPTIONS, read_captions
from trdq.config import METHODS, ROTATIONS, SEED_LIMIT, parse_bits
from trdq.cpu import cpu_info
from trdq.demo.worlds import WORLDS
from trdq.fingerprint import mismatch
from trdq.models.cache import ModelCache
from trdq.models.loader import EMBEDDED, folder_settings
from trdq.models.source import (
    available_memory,
    disk_bytes,
    inspect_source,
    loaded_bytes,
    placement,
    supported_transformers,
)

MODELS = {"shapes-t2i (image, PixArt)": "shapes-t2i", "shapes-t2v (video, Latte)": "shapes-t2v"}
AVAILABLE = [label for label, name in MODELS.items() if (EMBEDDED[name] / "model_index.json").exists()]
# Any WxAy with both widths in 2..8 runs (type it); these are offered.
BITS = ["w8a8", "w6a6", "w4a8", "w4a6", "w4a4", "w3a8", "w3a4", "w4a3", "w3a3", "w2a8", "w2a4", "w2a3"]
SLOT_METHODS = ["off", *METHODS]
MAX_GROUPS = 8  # alpha sliders shown; more groups than this are searched or take one alpha
DISPLAY_SCALE = 4  # the embedded models draw 64x64; shown at 256x256
RESULTS = Path(__file__).resolve().parent / "assets" / "results"
EXAMPLES = shipped.PROMPTS
EXECUTIONS = {"simulated": None, "real integer (per-group weights)": "per-group",
              "real integer (one shared weight copy)": "shared",
              "real integer (one int8 master, codes built per call)": "jit"}
SHARING = ["off", "1", "2", "4", "0.9", "25%", "50%"]
# Attention scores QK^T in floating point, or quantized (docs/method.md §10)
ATTENTION = {"float": None, "8-bit scores (QKᵀ)": 8, "6-bit scores (QKᵀ)": 6}
# Quantized models kept between requests, by the memory their tensors take (TRDQ_APP_CACHE_GIB).
CACHE_GIB = float(os.environ.get("TRDQ_APP_CACHE_GIB", "3"))
MODEL_CACHE = ModelCache(int(CACHE_GIB * 2**30))
MEDIA_DIR = Path(tempfile.gettempdir()) / "trdq-app-media"  # clips as GIFs, named by content
MAX_MEDIA_FILES = 64
# A model the user adds by folder or hub id: calibrated on this many general captions
# (trdq.captions), and refused when loading it and one quantized copy would not fit in memory.
USER_CALIBRATION = 4
MEMORY_LIMIT: int | None = None  # bytes; None: what the system has available when the model is added
# Quantized folders (trdq.save_pretrained) the user added, by picker label: the picker's model is
# the checkpoint's full-precision base, and the checkpoint takes the grid's first quantized column.
CHECKPOINTS: dict[str, str] = {}
# Where each model the user added runs (trdq.models.source.placement of its family: the GPU in half
# precision when there is one, else the CPU in float32), by name; the embedded models run on the CPU.
PLACEMENT: dict[str, tuple[str, torch.dtype]] = {}
# Calibration captions a user uploaded with their model, by name (at most MAX_USER_CAPTIONS used).
USER_CAPTIONS: dict[str, list[str]] = {}
MAX_USER_CAPTIONS = 16
# On a ZeroGPU Space (which sets SPACES_ZERO_GPU), the handlers that sample hold a GPU this long at most.
GPU_SECONDS = int(os.environ.get("TRDQ_GPU_SECONDS", "120"))


# ---------------------------------------------------------------- models, cached per process


@functools.lru_cache(maxsize=2)
def fp_model(name: str) -> trdq.LoadedModel:
    """A full-precision model (embedded, or a folder the user added), loaded once per process."""
    device, dtype = PLACEMENT.get(name, ("cpu", torch.float32))
    return trdq.load_model(name, device=device, dtype=dtype)


def on_gpu(handler):
    """``handler`` under the GPU decorator of a ZeroGPU Space (the `spaces` package, imported only
    there), which lends the process a GPU while it runs; ``handler`` itself anywhere else."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return handler
    import spaces

    return spaces.GPU(duration=GPU_SECONDS)(handler)


@functools.cache
def detector():
    """The shapes detector the evaluator reads outputs with."""
    from trdq.demo.eval.detector import load_detector

    return load_detector()


def calibration_count(name: str) -> int:
    return len(USER_CAPTIONS[name]) if name in USER_CAPTIONS else CALIBRATION.get(name, USER_CALIBRATION)


def calibration_prompts(name: str) -> list[str]:
    if name in USER_CAPTIONS:
        return USER_CAPTIONS[name]
    return grid.calibration_prompts(fp_model(name), calibration_count(name))


def examples(name: str) -> list[str]:
    """The model's example prompts (general captions for a model outside the shapes worlds)."""
    return EXAMPLES.get(name) or list(GENERAL_CAPTIONS[:1])


def shipped_choices(name: str, config: trdq.QuantConfig) -> dict | None:
    """What the shipped search chose for an embedded model's ``config`` (None: search)."""
    if name not in EMBEDDED:
        return None
    return shipped.load_choices(name, config, fp_model(name), calibration_prompts(name))


@functools.lru_cache(maxsize=2)
def calibration(name: str, groups: trdq.TimeGroups, seed: int):
    """The FP model's layer statistics on the calibration prompts, per time group, recorded once
    per model and groups: every method and bit width is fitted from them (one-group methods merge
    the groups), so a new slot or bit width costs a fit, not another calibration run."""
    return calibrate_groups(fp_model(name), groups, calibration_prompts(name), config_seed=seed)


def quantized_model(name: str, config: trdq.QuantConfig) -> trdq.LoadedModel:
    """One calibrated (simulated) model per model and configuration, kept in :data:`MODEL_CACHE`."""
    def build() -> trdq.LoadedModel:
        if config.cfg_split:  # each branch is calibrated on its own rows
            return trdq.quantize(fp_model(name), config, calibration_prompts(name))
        choices = shipped_choices(name, config)
        return trdq.convert(calibration(name, config.time_groups, config.seed), config, choices=choices)

    return MODEL_CACHE.get(("simulated", name, config), build)


def executed_model(name: str, config: trdq.QuantConfig, execution: str) -> trdq.LoadedModel:
    """The quantized model of ``config`` run as ``execution`` (a key of :data:`EXECUTIONS`)."""
    return _run_as(execution, quantized_model(name, config), name, (name, config))


def checkpoint_model(name: str, folder: str, execution: str) -> trdq.LoadedModel:
    """A quantized folder the user added, loaded without its FP weights and run as ``execution``
    (the real deployments that rebuild codes take the FP weights of ``name``, its base)."""
    simulated = MODEL_CACHE.get(("checkpoint", folder), lambda: trdq.from_pretrained(folder))
    return _run_as(execution, simulated, name, ("checkpoint", folder))


def _run_as(execution: str, simulated: trdq.LoadedModel, name: str, key: tuple) -> trdq.LoadedModel:
    """``simulated``, or its real integer deployment of ``execution`` (cached under ``key``; the FP
    model ``name`` gives the weights the shared and jit deployments rebuild codes from)."""
    deployment = EXECUTIONS[execution]
    if deployment is None:
        return simulated
    return MODEL_CACHE.get((deployment, *key), lambda: trdq.realize(simulated, deployment, base=fp_model(name)))


@functools.lru_cache(maxsize=2)
def similarity(name: str):
    """Cond/uncond attention similarity of the FP model on the calibration prompts."""
    from trdq.attention import measure_similarity

    return measure_similarity(fp_model(name), calibration_prompts(name))


# ---------------------------------------------------------------- UI values -> typed values


def model_name(label: str) -> str:
    if label not in MODELS:
        raise gr.Error(f"Unknown model {label!r}; choose one of: {', '.join(AVAILABLE)}.")
    name = MODELS[label]
    if label not in AVAILABLE:
        raise gr.Error(f"{name} is not in assets/ on this machine; restore it with `git checkout -- assets` "
                       "or train it (docs/development.md, 'Retraining the embedded models').")
    return name


@dataclass(frozen=True)
class Recipe:
    """The Quantize tab's settings other than method and bits, as one value. Every handler that
    quantizes takes one; :meth:`from_widgets` is the one place widget values become it.

    Attributes:
        groups: time groups (TR-DQ and ViDiT-Q).
        rotation, block_size: TR-DQ's rotation and its block size.
        search_alpha: search alpha_g per group; else ``alphas`` gives one per group.
        alphas: the alpha sliders, one per group up to :data:`MAX_GROUPS`.
        cfg_split, uncond_bits: quantize the CFG branches apart, the unconditional one at these bits
            ("same": the slot's).
        attention: a key of :data:`ATTENTION`: attention scores in float or quantized.
        share: the Attention-Sharing rule (:data:`SHARING`, or typed), "off" for none.
        execution: a key of :data:`EXECUTIONS`.
    """

    groups: int = DEFAULT_RECIPE["groups"]
    rotation: str = DEFAULT_RECIPE["rotation"]
    block_size: int = DEFAULT_RECIPE["block_size"]
    search_alpha: bool = True
    alphas: tuple[float, ...] = field(default=(0.5,) * MAX_GROUPS)
    cfg_split: bool = False
    uncond_bits: str = "same"
    attention: str = "float"
    share: str = "off"
    execution: str = "simulated"

    def __post_init__(self):
        if self.execution not in EXECUTIONS:
            raise gr.Error(f"Unknown execution {self.execution!r}; choose one of: {', '.join(EXECUTIONS)}.")
        if self.attention not in ATTENTION:
            raise gr.Error(f"Unknown attention setting {self.attention!r}; choose one of: {', '.join(ATTENTION)}.")

    @classmethod
    def from_widgets(cls, groups: float, rotation: str, block_size: float, search_alpha: bool, cfg_split: bool,
                     uncond_bits: str, attention: str, share: str, execution: str, *alphas: float) -> Recipe:
        """Widget values, in the order of the page's recipe widgets, then the alpha sliders."""
        return cls(groups=int(groups), rotation=rotation, block_size=int(block_size), search_alpha=bool(search_alpha),
                   alphas=tuple(float(a) for a in alphas), cfg_split=bool(cfg_split),
                   uncond_bits=uncond_bits or "same", attention=attention or "float", share=str(share or "off"),
                   execution=execution)

    def config(self, method: str, bits: str) -> trdq.QuantConfig:
        """The validated config of ``method`` at ``bits`` under this recipe; invalid values become a UI
        error that says what to change."""
        try:
            w_bits, a_bits = parse_bits(bits)
            n = self.groups
            if self.search_alpha:
                alpha = None
            elif n <= len(self.alphas):
                alpha = self.alphas[:n]
            else:
                raise ValueError(f"alpha sliders cover {len(self.alphas)} groups; with {n} groups search alpha_g "
                                 "instead")
            uncond = None if not self.cfg_split or self.uncond_bits == "same" else parse_bits(self.uncond_bits)
            return trdq.QuantConfig(method=method, w_bits=w_bits, a_bits=a_bits, time_groups=trdq.TimeGroups(n),
                                    rotation=self.rotation, alpha=alpha, block_size=self.block_size,
                                    cfg_split=self.cfg_split, uncond_bits=uncond,
                                    attention_bits=ATTENTION[self.attention])
        except ValueError as err:
            raise gr.Error(str(err)) from None


def sharing_plan(name: str, share: str):
    """The Attention-Sharing choice -> a plan over the FP model's measured similarity (None: off)."""
    from trdq.attention import ShareRule, select_layers

    if share in (None, "", "off"):
        return None
    try:
        return select_layers(similarity(name), rule=ShareRule.parse(str(share)))
    except ValueError as err:
        raise gr.Error(str(err)) from None


def check_seed(seed) -> int:
    """The Seed box's value as a seed torch's generator takes as it is (larger ones wrap)."""
    if seed is None or not float(seed).is_integer() or not 0 <= int(seed) < SEED_LIMIT:
        raise gr.Error(f"Seed must be a whole number from 0 to 2^63 - 1, got {seed}.")
    return int(seed)


def check_prompt(name: str, prompt: str, steps: float, groups: float) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error(f"Type a prompt first, e.g. '{examples(name)[0]}'.")
    if not 1 <= int(steps) <= 100:
        raise gr.Error(f"Steps must be between 1 and 100, got {steps}.")
    if int(groups) > int(steps):
        raise gr.Error(f"{int(groups)} time groups need at least as many sampling steps; raise the steps "
                       "or lower the groups.")
    caption_world = WORLDS.get(fp_model(name).settings.world)  # None: any prompt goes
    if caption_world is not None and (unknown := caption_world.unknown_words(prompt)):
        gr.Warning(f"The model never saw these words: {', '.join(unknown)}. It knows: {caption_world.GRAMMAR}.")
    return prompt


# ---------------------------------------------------------------- outputs -> UI values


def media(output: np.ndarray, scale: int = DISPLAY_SCALE) -> np.ndarray | str:
    """An image enlarged ``scale`` times (nearest neighbour, so every pixel stays visible); a clip
    enlarged alike as a looping GIF file (what gr.Image shows animated)."""
    output = output.repeat(scale, axis=-3).repeat(scale, axis=-2)
    if output.ndim == 3:
        return output
    from trdq.cli import write_media

    MEDIA_DIR.mkdir(exist_ok=True)
    path = MEDIA_DIR / f"{hashlib.sha1(output.tobytes() + str(output.shape).encode()).hexdigest()}.gif"
    if not path.exists():
        write_media(output, path)
        for old in sorted(MEDIA_DIR.glob("*.gif"), key=lambda p: p.stat().st_mtime)[:-MAX_MEDIA_FILES]:
            old.unlink(missing_ok=True)
    return str(path)


NUM_SLOTS = len(DEFAULT_SLOTS)
EMPTY_SLOT = ["*slot off*<br>&nbsp;", None, None, ""]  # title, output, error map, facts


def grid_values(outputs: list[grid.Output], header: str) -> list:
    """The grid's UI values: the header, FP's title, output and facts, then per slot its title,
    output, error map and facts (empty for slots left off)."""
    fp, rest = outputs[0], outputs[1:]
    maps, gain = grid.grid_error_maps(outputs) if rest else ([], 1)
    header += f"\n\n{grid.error_scale(gain)}" if rest else ""
    values = [header, fp.title, media(fp.output), grid.facts_markdown(fp)]
    for o, error in zip(rest, maps):
        values += [o.title, media(o.output), media(error), grid.facts_markdown(o, fp)]
    return values + EMPTY_SLOT * (NUM_SLOTS - len(rest))


def empty_grid(header: str) -> list:
    return [header, "", None, ""] + EMPTY_SLOT * NUM_SLOTS


def _header(prompt: str, seed: int, steps: int, guidance: float, source: str) -> str:
    return f"**{prompt}** · seed {seed} · {steps} steps · guidance {guidance:g} · {source}"


# ---------------------------------------------------------------- handlers


def quantize(model_label: str, method: str, bits: str, recipe: Recipe, progress=gr.Progress()) -> str:
    """Handler of the Quantize button: calibrate (once per configuration) and say what was made."""
    name = model_name(model_label)
    config = recipe.config(method, bits)
    progress(0.1, desc=f"calibrating {method} {config.bits} on {calibration_count(name)} prompts")
    fresh = ("simulated", name, config) not in MODEL_CACHE
    t0 = time.perf_counter()
    try:
        q = quantized_model(name, config)
    except ValueError as err:
        raise gr.Error(str(err)) from None
    seconds = time.perf_counter() - t0
    layers = sum(1 for m in q.pipe.transformer.modules() if type(m).__name__ == "QuantLinear")
    alpha = "searched per group" if config.alpha is None else ", ".join(f"{a:g}" for a in config.alphas())
    attention = "" if config.attention_bits is None else f", attention scores at {config.attention_bits} bits"
    return (f"**{name} · {method} {config.bits} · simulated** — {layers} linear layers quantized, "
            f"{config.time_groups.num_groups} time groups, alpha_g {alpha}, rotation {config.rotation} "
            f"(block {config.block_size}){', CFG split' if config.cfg_split else ''}{attention}. "
            + (f"Calibrated in {seconds:.1f} s." if fresh else "Taken from the cache (calibrated earlier).")
            + (" The search's choices (alpha_g and transform per layer and group) came from the shipped "
               "search of these settings on the same calibration (assets/examples; the same model as "
               "searching here, without the wait)."
               if fresh and shipped_choices(name, config) else "")
            + (f" {note}" if (note := grid.real_path_note(config.w_bits, config.a_bits)) else ""))


def bits_note(bits: str) -> str:
    """Handler of the bits dropdowns: what the real integer path does with these widths."""
    try:
        w_bits, a_bits = parse_bits(bits)
    except ValueError as err:
        return f"⚠ {err}"
    native = f"W{w_bits}A{a_bits} runs natively on the real integer path."
    return grid.real_path_note(w_bits, a_bits) or native


def slots_note(*slots: str) -> str:
    """Handler of the slot pickers: which slots' bits have no integer kernel of their own."""
    notes: dict[str, list[int]] = {}
    for k, (method, bits) in enumerate(zip(slots[::2], slots[1::2]), start=1):
        if method not in (None, "", "off"):
            notes.setdefault(bits_note(bits), []).append(k)
    return "<br>".join(f"Slot{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}: {note}"
                       for note, ks in notes.items() if "natively" not in note)


def compare(model_label: str, prompt: str, seed: float, steps: float, guidance: float,
            slots: Sequence[tuple[str, str]], recipe: Recipe, progress=gr.Progress()) -> list:
    """Handler of the Compare button: FP and every slot (method, bits) that is not off, from one
    seed, in a grid (see :func:`grid_values`). The recipe (groups, alpha_g, rotation, CFG split,
    attention, sharing, execution) applies to every slot."""
    name = model_name(model_label)
    prompt = check_prompt(name, prompt, steps, recipe.groups)
    configs = [recipe.config(m, b) for m, b in slots if m not in (None, "", "off")]
    if recipe.cfg_split and recipe.share != "off":
        raise gr.Error("Attention-Sharing needs both CFG branches in one batch; turn off the CFG split or "
                       "the sharing.")
    seed, steps = check_seed(seed), int(steps)
    plan = sharing_plan(name, recipe.share)
    quantized = []
    if folder := CHECKPOINTS.get(model_label):  # the user's checkpoint first, then the slots that fit
        progress(0.02, desc="loading your checkpoint")
        try:
            model = checkpoint_model(name, folder, recipe.execution)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        quantized.append((model.quant.config, model, None, f"your checkpoint {Path(folder).name}"))
        if len(configs) >= NUM_SLOTS:
            gr.Warning(f"Your checkpoint takes the first column: slot {NUM_SLOTS} is not shown. Set a slot to "
                       "off to keep the grid as you chose it.")
        configs = configs[:NUM_SLOTS - 1]
    for i, config in enumerate(configs):
        progress(0.05 + 0.6 * i / len(configs),
                 desc=f"calibrating {config.method} {config.bits} (once per setting)")
        try:
            quantized.append((config, executed_model(name, config, recipe.execution), plan))
        except ValueError as err:
            raise gr.Error(str(err)) from None
    outputs = grid.run_grid(fp_model(name), quantized, prompt, seed, steps, float(guidance), detector(),
                            lambda done, what: progress(0.65 + 0.35 * done, desc=what))
    return grid_values(outputs, _header(prompt, seed, steps, float(guidance), "computed now"))


def show_example(model_label: str, prompt: str | None = None) -> list:
    """The shipped grid of ``prompt`` (else the model's first), read from assets/examples: instant."""
    name = MODELS.get(model_label)
    if model_label in CHECKPOINTS:  # the shipped grids are of the base model's slots, without the checkpoint
        return empty_grid(f"Press **Compare** to see your checkpoint beside {name} in full precision.")
    found = None if name is None else shipped.load_grid(name, prompt)
    if found is None:
        return empty_grid(f"No precomputed grid for {model_label}: press **Compare** (or run "
                          "`python -m analysis examples`).")
    meta, prompt, outputs = found
    machine = meta["machine"]
    source = (f"precomputed by `python -m analysis examples` with the default slots and recipe "
              f"({machine['cpu']}, threads {machine['threads']}, {machine['date'][:10]}); press **Compare** "
              "to run your own")
    return grid_values(outputs, _header(prompt, meta["seed"], meta["steps"], meta["guidance"], source))


def switch_model(model_label: str) -> list:
    """Handler of the model radio: the model's first example prompt, its sampling steps and guidance
    (its trdq settings, else its pipeline's own defaults) and its precomputed grid."""
    name = MODELS.get(model_label, "shapes-t2i")
    settings = folder_settings(EMBEDDED.get(name, name))
    return [examples(name)[0], settings.steps, settings.guidance, *show_example(model_label, examples(name)[0])]


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def add_model(source: str, captions_file: str | None = None) -> list:
    """Handler of 'Load model': check a local pipeline folder or a hub id in the local Hugging Face
    cache (supported transformer, memory), load it where :func:`placement` says and select it in the
    model picker; calibrate it on ``captions_file`` (one caption per line) if given. Returns the
    picker, a status line, and what :func:`switch_model` gives."""
    source = (source or "").strip()
    if not source:
        raise gr.Error("Type the path of a diffusers pipeline folder, or a hub id such as "
                       "PixArt-alpha/PixArt-XL-2-512x512 that is in the local Hugging Face cache.")
    try:
        found = inspect_source(source)
    except (FileNotFoundError, ValueError) as err:
        raise gr.Error(str(err)) from None
    if found.quantization is not None:
        return add_checkpoint(source, found)
    captions = read_user_captions(captions_file)
    name = str(found.folder)
    device, dtype = placement(found.family)
    need = loaded_bytes(found.folder, dtype.itemsize)
    check_memory(source, need, 2 * need, f"in {str(dtype).removeprefix('torch.')}, and each quantized copy "
                 "about as much again", device)
    if PLACEMENT.get(name, ("cpu", torch.float32)) != (device, dtype):
        fp_model.cache_clear()  # loaded elsewhere before
    PLACEMENT[name] = device, dtype
    loaded = load_fp(source, name)
    if USER_CAPTIONS.get(name, []) != captions:  # calibrations of the earlier captions are stale
        USER_CAPTIONS.pop(name, None)
        if captions:
            USER_CAPTIONS[name] = captions
        calibration.cache_clear()
        MODEL_CACHE.clear()
    label = f"{source} ({found.transformer})"
    pick(label, name)
    where = grid.placement(loaded)
    calibrating = (f"{len(captions)} of your captions" if captions else
                   f"{USER_CALIBRATION} general captions (trdq.captions; upload your own for a better fit)")
    status = (f"Loaded **{source}**: {found.pipeline} with {found.transformer} ({found.family}), "
              f"{_size(need)} of weights, on {where['device']} in {where['dtype']}; sampling defaults "
              f"{loaded.settings.steps} steps, guidance {loaded.settings.guidance:g}. Calibration uses "
              f"{calibrating}; the detector reads the shapes worlds only.")
    return [gr.Radio(choices=AVAILABLE, value=label), status, *switch_model(label)]


def read_user_captions(path: str | None) -> list[str]:
    """The captions of an uploaded file (one per line), at most :data:`MAX_USER_CAPTIONS`; [] for none."""
    if not path:
        return []
    try:
        return [text for _, text in read_captions(path)][:MAX_USER_CAPTIONS]
    except (OSError, ValueError) as err:
        raise gr.Error(f"The calibration captions file cannot be used: {err}. Upload a UTF-8 .txt file with "
                       "one caption per line, or none for the general captions.") from None


def add_checkpoint(source: str, found) -> list:
    """:func:`add_model` for a quantized folder: find the full-precision model it was made from (the
    grid compares against it), check memory and that the weights match, and add the pair."""
    quant = found.quantization
    if quant.get("quant_method") != "trdq":
        raise gr.Error(f"{source} is quantized by {quant.get('quant_method', 'another tool')}, not trdq: give "
                       "its full-precision model and quantize it here")
    base = str(quant.get("base_model") or "")
    if base in EMBEDDED:
        base_folder = base
    else:
        try:
            base_found = inspect_source(base)
        except (FileNotFoundError, ValueError) as err:
            raise gr.Error(f"{source} is a trdq checkpoint of {base or 'a model it does not name'}, which is not "
                           f"here ({err}). The app compares a checkpoint with the full-precision model it was "
                           "made from: put that model on this machine and load the checkpoint again, or sample "
                           f"the checkpoint alone with `python -m trdq generate --model {source}`.") from None
        if base_found.quantization is not None:
            raise gr.Error(f"{source} names {base} as its base, and that is quantized too")
        base_folder = str(base_found.folder)
    fp_bytes = loaded_bytes(EMBEDDED[base] if base in EMBEDDED else base_folder)
    check_memory(source, fp_bytes, 2 * fp_bytes + 2 * disk_bytes(found.folder),
                 f"for its base {base} in float32, with a quantized copy of it for the slots and the checkpoint")
    fp = load_fp(base, base_folder)
    if (saved := quant.get("base_fingerprint")) and (differs := mismatch(saved, fp.pipe.transformer)):
        raise gr.Error(f"{source} was not made from the {base} found here ({differs}): its error against "
                       "this model would mean nothing. Load the checkpoint beside the model it was made from.")
    config = trdq.QuantConfig.from_dict(quant["config"])
    groups = config.time_groups.num_groups
    what = f"{config.method} {config.bits.upper()}, {groups} time group{'s' if groups > 1 else ''}"
    label = f"{source} (trdq checkpoint: {what}, of {base})"
    pick(label, base_folder)
    CHECKPOINTS[label] = str(found.folder)
    status = (f"Loaded **{source}**, a trdq checkpoint ({what}, {_size(disk_bytes(found.folder))} on disk) of "
              f"**{base}**. Compare shows it in the first quantized column, against {base} in full precision, "
              "and the slots that fit beside it; the other tabs work on its base.")
    return [gr.Radio(choices=AVAILABLE, value=label), status, *switch_model(label)]


def check_memory(source: str, size: int, need: int, what: str, device: str = "cpu") -> None:
    """Refuse, with the numbers, a model whose loading would not fit in free memory (of the GPU,
    for ``cuda``)."""
    free = MEMORY_LIMIT if MEMORY_LIMIT is not None else available_memory(device)
    if free is not None and need > free:
        memory = "GPU memory" if device != "cpu" else "memory"
        raise gr.Error(f"{source} takes about {_size(size)} {what}: {_size(need)}, where {_size(free)} of "
                       f"{memory} is free. Free memory or use a machine with more.")


def load_fp(source: str, name: str) -> trdq.LoadedModel:
    """Load the full-precision model ``name`` now, so that a folder that does not load says so here."""
    try:
        return fp_model(name)
    except (OSError, ValueError, TypeError) as err:
        raise gr.Error(f"could not load {source}: {err}") from None


def pick(label: str, name: str) -> None:
    """Add ``label`` (the model ``name``) to the model picker."""
    MODELS[label] = name
    if label not in AVAILABLE:
        AVAILABLE.append(label)


def layer_choices(model_label: str, method: str, bits: str, recipe: Recipe):
    """The quantized layers of the current configuration, for the Distributions picker."""
    from analysis.collect import quantized_layers

    name = model_name(model_label)
    config = recipe.config(method, bits)
    names = quantized_layers(quantized_model(name, config))
    n = config.time_groups.num_groups
    # a slider needs minimum < maximum: with one group it shows 0..1, fixed at 0
    return gr.Dropdown(choices=names, value=names[0]), gr.Slider(maximum=max(n - 1, 1), value=0, interactive=n > 1)


@functools.lru_cache(maxsize=16)
def _collected(name: str, config: trdq.QuantConfig, layer: str, steps: int, guidance: float):
    from analysis.collect import collect_layer

    fp = fp_model(name)
    prompts = shipped.analysis_prompts(fp)
    return collect_layer(fp, quantized_model(name, config), layer, prompts, steps, guidance)


def distributions(model_label: str, layer: str, group: float, steps: float, guidance: float, method: str,
                  bits: str, recipe: Recipe, progress=gr.Progress()):
    """Handler of the Distributions tab: figures, statistics and a caption of one layer in one time group."""
    name = model_name(model_label)
    config = recipe.config(method, bits)
    if not layer:
        raise gr.Error("Pick a layer first (press 'List layers').")
    if not 0 <= int(group) < config.time_groups.num_groups:
        raise gr.Error(f"Time group {int(group)} does not exist with {config.time_groups.num_groups} group(s); "
                       "press 'List layers' again.")
    progress(0.2, desc=f"sampling {shipped.ANALYSIS_PROMPTS} prompts through {layer}")
    try:
        collected = _collected(name, config, layer, int(steps), float(guidance))
        case = shipped.distributions_case(collected, int(group))
    except (ValueError, KeyError) as err:
        raise gr.Error(str(err)) from None
    figs = case["figures"]
    caption = f"Computed now: {name}, {method} {config.bits}, {layer}, time group {int(group)}."
    return (figs["histogram"], figs["surface"], figs["channel-absmax"], figs["weight-absmax"], case["table"],
            caption)


def trajectory(model_label: str, steps: float, guidance: float, method: str, bits: str, recipe: Recipe,
               progress=gr.Progress()):
    """Handler of the Trajectory tab: per-step error vs FP, cond/uncond attention similarity, a caption."""
    name = model_name(model_label)
    config = recipe.config(method, bits)
    if recipe.groups > int(steps):
        raise gr.Error(f"{recipe.groups} time groups need at least as many sampling steps.")
    progress(0.2, desc="noise-prediction error along the FP trajectory, then attention similarity")
    case = shipped.trajectory_case(fp_model(name), quantized_model(name, config), int(steps), float(guidance),
                                   similarity(name))
    caption = f"Computed now: {name}, {method} {config.bits}, {int(steps)} steps."
    return case["figures"]["curve"], case["figures"]["similarity"], caption


def _case_caption(case: dict, what: str) -> str:
    c = case["config"]
    return (f"Precomputed by `python -m analysis examples`: {case['model']}, {c['method']} "
            f"w{c['w_bits']}a{c['a_bits']}, {c['time_groups']['num_groups']} time groups, {what}"
            f"{case['steps']} steps. Set the Quantize tab and press the button to compute your own.")


def shipped_distributions(model_label: str):
    """The Distributions tab's precomputed case of the model (model switch; the page opens on it):
    layer, time group, the four figures, the table and a caption."""
    case = shipped.load_case(MODELS.get(model_label, ""), "distributions")
    if case is None:
        return (None, 0, None, None, None, None, None,
                "No precomputed case for this model: press **List layers**, pick one, press **Show**.")
    figs = case["figures"]
    return (case["layer"], case["group"], figs["histogram"], figs["surface"], figs["channel-absmax"],
            figs["weight-absmax"], case["table"], _case_caption(case, f"layer {case['layer']}, time group "
                                                                      f"{case['group']}, "))


def shipped_trajectory(model_label: str):
    """The Trajectory tab's precomputed case of the model (model switch; the page opens on it)."""
    case = shipped.load_case(MODELS.get(model_label, ""), "trajectory")
    if case is None:
        return None, None, "No precomputed case for this model: press **Measure**."
    return case["figures"]["curve"], case["figures"]["similarity"], _case_caption(case, "")


def benchmark_files() -> list[str]:
    """The bench reports, this CPU class's PixArt-XL report first (AVX2-only CPUs run other
    kernels than VNNI ones, see docs/results.md, "Speed and memory"; on AVX2 the run with the
    peers, torchao and optimum-quanto, beside fp32 and bf16), then the memory-only ones."""
    own = "bench-pixart-xl-random-512.json" if cpu_info().int8_dot else "bench-pixart-xl-random-512-avx2-peers.json"
    return sorted((p.name for pattern in ("bench-*.json", "memory-*.json") for p in RESULTS.glob(pattern)),
                  key=lambda name: (name != own, name.startswith("memory-"), name))


def benchmark(file: str) -> tuple[str, go.Figure]:
    """Handler of the Benchmark tab: the table of a bench report and a chart of step time and weights
    (for a memory-only report, of the weights as built and at the model's published depth)."""
    from analysis.readme import bench_table, memory_table

    path = RESULTS / (file or "")
    if not file or not path.exists():
        raise gr.Error(f"No benchmark report {file!r}; run `python -m trdq bench ... --json "
                       "assets/results/bench-NAME.json` first.")
    report = json.loads(path.read_text())
    ok = [r for r in report["results"] if r["status"] == "ok"]
    if report.get("timing", True) is not True:  # python -m trdq bench --memory-only
        depth = [(r.get("weight_bytes_at_depth") or r["weight_bytes"])["total"] / 2**20 for r in ok]
        fig = go.Figure([go.Bar(name="weights as built (MiB)", x=[r["backend"] for r in ok],
                                y=[r["weight_bytes"]["total"] / 2**20 for r in ok]),
                         go.Bar(name="at the published depth (MiB)", x=[r["backend"] for r in ok], y=depth)])
        fig.update_layout(barmode="group", title=file, yaxis={"title": "MiB"})
        return memory_table(path), fig
    frame = pd.DataFrame({"backend": [r["backend"] for r in ok],
                          "step (ms)": [r["step_ms"]["median"] for r in ok],
                          "weights (MiB)": [r["weight_bytes"]["total"] / 2**20 for r in ok]})
    # offset groups keep the two bars side by side: on two y axes plotly would draw them on top of each other
    fig = go.Figure([go.Bar(name="step (ms)", x=frame["backend"], y=frame["step (ms)"], offsetgroup=0),
                     go.Bar(name="weights (MiB)", x=frame["backend"], y=frame["weights (MiB)"], yaxis="y2",
                            offsetgroup=1)])
    fig.update_layout(barmode="group", title=file, yaxis={"title": "step (ms)"},
                      yaxis2={"title": "weights (MiB)", "overlaying": "y", "side": "right"})
    return bench_table(path), fig


# ---------------------------------------------------------------- layout


INTRO = (
    "# trdq\nTR-DQ post-training quantization for diffusion transformers: time groups with their own "
    "smoothing alpha_g, and DuQuant-style rotation + permutation of the outlier channels. The embedded "
    "models are a PixArt-alpha image pipeline and a Latte video pipeline trained on the shapes world; "
    "your own PixArt, Latte, DiT, SD3 or Sana pipeline loads under **Your model**. "
    "Quantized models run **simulated** (fake quantization in floating point: the method's numerics) or "
    "as **real integer** code (int8 GEMMs, 4-bit weights packed two per byte)."
)
GUIDES = {
    "Compare": (
        "Each column is the same prompt and seed through another model, and the dark image under each "
        "quantized output is its error map |Q − FP| (one amplification for the whole grid, stated under the "
        "prompt): bright where quantization changed the picture. Below it the shapes detector reads size, "
        "colour, shape and position (direction for clips), ✓ or ✗ against the prompt as the evaluator scores "
        "adherence; the grid opens at W3A3, where the methods part ways (at W8A8-W4A4 they all look like FP)."
        " Each slot sets a method and bits; the rest of the recipe (time groups, alpha_g, rotation, CFG "
        "split, attention scores, Attention-Sharing, execution) comes from the Quantize tab and applies to every slot, each "
        "method using the parts it has."
    ),
    "Quantize": (
        "Method and bits here make the configuration the Distributions and Trajectory tabs analyse; the other"
        " settings are the recipe every Compare slot shares. Widths go down to 2 bits: the real integer path "
        "runs every width, but only W4/W8 weights and A8 activations have kernels of their own, so a note "
        "says when a setting's savings are simulated only. Attention scores QKᵀ can be quantized too (beyond "
        "the paper, after SageAttention): int8 queries and keys, the keys' mean over tokens subtracted first, "
        "which softmax does not see."
    ),
    "Distributions": (
        "An outlier is a channel whose largest |x| stands far above the others: a spike in the per-channel "
        "abs-max plot, a ridge along the channel axis of the |x| surface; per-token quantization has to "
        "stretch its few levels over it, so every other channel is rounded coarsely. Smoothing (X Δ⁻¹) "
        "divides each input channel by δ and multiplies the weight's matching column by it, moving the "
        "outlier's magnitude into the weight (its abs-max curve rises). The rotation then spreads what is "
        "left over each block of channels, so the histogram narrows, the ridge flattens and the table's "
        "max/median falls towards 1."
    ),
    "Trajectory": (
        "The quantized model's noise prediction against FP's at every step of the same FP trajectory (higher "
        "SQNR is better), shaded by time group, each group with its own alpha_g and rotation; below, how "
        "alike the two CFG branches' attention is, the ground for Attention-Sharing. The error grows late, "
        "near a clean image: the inputs' outlier channels grow there (the opening layer of the Distributions "
        "tab, blocks.7.attn2.to_q, reaches 40× its median channel in the last step), and the fine detail the "
        "model predicts then is small beside the rounding error."
    ),
    "Benchmark": (
        "Measured step latency and weight memory of `python -m trdq bench` per backend: fp32, bf16/fp16, and "
        "the simulated and real integer paths, and torchao's and optimum-quanto's W8A8 where measured. "
        "Simulated quantization is slower than FP (it adds work); only the real integer path can be faster, "
        "and the table says where its time goes. CPUs differ: the report of this machine's class opens "
        "first (with VNNI, int8 and bf16 are fast; on AVX2 only, bf16 and torch's int8 GEMM are slower "
        "than fp32, so trdq runs fbgemm or exact fp32 GEMMs there). Under the table, one line per "
        "backend says whether it is faster or smaller than bf16 (fp32 where bf16 was not run) and why. "
        "The memory-* reports weigh each backend without timing it, at PixArt-XL's full depth."
    ),
}


def _slot_pickers() -> list[gr.Dropdown]:
    pickers = []
    with gr.Row():
        for k, (method, bits) in enumerate(DEFAULT_SLOTS, start=1):
            with gr.Column(min_width=150):
                pickers.append(gr.Dropdown(SLOT_METHODS, value=method, label=f"Slot {k} method"))
                pickers.append(gr.Dropdown(BITS, value=bits, label=f"Slot {k} bits", allow_custom_value=True))
    return pickers


def _grid(values: list) -> list:
    """The grid's header, FP's column (title, output, facts) and each slot's (title, output, error
    map, facts), showing ``values`` (:func:`grid_values`)."""
    header = gr.Markdown(values[0], elem_classes="grid-header")
    shown = iter(values[1:])
    # PNG: the default WebP is lossy, and would blur the enlarged pixels and the error maps
    image = {"height": 256, "show_label": False, "format": "png"}
    with gr.Row(equal_height=False):
        with gr.Column(min_width=200, elem_classes="grid-fp"):
            parts = [gr.Markdown(next(shown)), gr.Image(next(shown), label="Full precision", **image),
                     gr.Markdown(next(shown))]
        for k in range(1, NUM_SLOTS + 1):
            with gr.Column(min_width=200, elem_classes=f"grid-slot grid-slot-{k}"):
                parts += [gr.Markdown(next(shown)), gr.Image(next(shown), label=f"Slot {k} output", **image),
                          gr.Image(next(shown), label=f"Slot {k} error map", **image), gr.Markdown(next(shown))]
    return [header, *parts]


def build_demo() -> gr.Blocks:
    """The page: the shared model and sampler settings, the five tabs, and their events. Handlers get
    plain values; the Quantize tab's recipe widgets reach them as one :class:`Recipe`."""
    recipe = Recipe()  # the widgets open on its defaults
    with gr.Blocks(title="trdq: time-rotation diffusion quantization") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Radio(AVAILABLE, value=AVAILABLE[0], label="Model")
            steps = gr.Slider(1, 100, value=20, step=1, label="Sampling steps")
            guidance = gr.Slider(1.0, 10.0, value=4.5, step=0.5, label="Guidance scale")
        with gr.Accordion("Your model: a diffusers pipeline folder, or a hub id in the local cache", open=False):
            with gr.Row():
                source = gr.Textbox(label="Folder or hub id", scale=4,
                                    placeholder="/path/to/pipeline or PixArt-alpha/PixArt-XL-2-512x512")
                captions_file = gr.File(label="Calibration captions (optional .txt, one per line)", scale=2,
                                        file_types=[".txt"], type="filepath")
                load_button = gr.Button("Load model", scale=1)
            source_info = gr.Markdown(f"Supported transformers: {', '.join(supported_transformers())}. A "
                                      "quantized folder (`python -m trdq quantize --out`) is shown beside the "
                                      "model it was made from. Nothing is downloaded; the model is checked for "
                                      "memory before it loads.")
        with gr.Tab("Compare"):
            gr.Markdown(GUIDES["Compare"])
            with gr.Row():
                with gr.Column(scale=1, min_width=240):
                    prompt = gr.Textbox(label="Prompt", value=EXAMPLES["shapes-t2i"][0])
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                    compare_button = gr.Button("Compare", variant="primary")
                with gr.Column(scale=4):
                    slot_inputs = _slot_pickers()
            slot_info = gr.Markdown(slots_note(*(v for slot in DEFAULT_SLOTS for v in slot)))
            # the page opens on the shipped default grid, drawn with the page itself: no wait for an event
            grid_outputs = _grid(show_example(AVAILABLE[0]))
            rows = [[label, p] for label in AVAILABLE for p in shipped.shipped_prompts(MODELS[label])]
            if rows:
                gr.Examples(rows, inputs=[model, prompt], outputs=grid_outputs, fn=show_example,
                            run_on_click=True, cache_examples=False,
                            label="Precomputed examples (the default grid, shown at once)")
        with gr.Tab("Quantize"):
            gr.Markdown(GUIDES["Quantize"])
            with gr.Row():
                with gr.Column():
                    method = gr.Dropdown(list(METHODS), value="trdq", label="Method (TR-DQ or a baseline)")
                    bits = gr.Dropdown(BITS, value=DEFAULT_SLOTS[-1][1], allow_custom_value=True,
                                       label="Bits (weights/activations, WxAy with 2..8 each)")
                    bits_info = gr.Markdown(bits_note(DEFAULT_SLOTS[-1][1]))
                    groups = gr.Slider(1, 20, value=recipe.groups, step=1,
                                       label="Time groups (TR-DQ, ViDiT-Q)")
                    rotation = gr.Radio(list(ROTATIONS), value=recipe.rotation,
                                        label="Rotation (TR-DQ)")
                    block_size = gr.Slider(8, 192, value=recipe.block_size, step=8,
                                           label="Rotation block size")
                with gr.Column():
                    search_alpha = gr.Checkbox(value=recipe.search_alpha, label="Search alpha_g per time group")
                    alpha_sliders = [gr.Slider(0.0, 1.0, value=a, step=0.05, label=f"alpha, group {g}")
                                     for g, a in enumerate(recipe.alphas)]
                with gr.Column():
                    cfg_split = gr.Checkbox(value=recipe.cfg_split, label="CFG split: quantize the branches apart")
                    uncond_bits = gr.Dropdown(["same"] + BITS, value=recipe.uncond_bits, allow_custom_value=True,
                                              label="Unconditional branch bits")
                    share = gr.Dropdown(SHARING, value=recipe.share, label="Attention-Sharing: layers (N), cosine threshold, or share of uncond score compute (P%)")
                    attention = gr.Radio(list(ATTENTION), value=recipe.attention,
                                         label="Attention scores QKᵀ (beyond the paper: int8 Q and mean-subtracted K)")
                    execution = gr.Radio(list(EXECUTIONS), value=recipe.execution, label="Execution")
                    quantize_button = gr.Button("Quantize", variant="primary")
                    quantize_info = gr.Markdown()
        # the order of Recipe.from_widgets
        recipe_inputs = [groups, rotation, block_size, search_alpha, cfg_split, uncond_bits, attention, share,
                         execution, *alpha_sliders]
        with gr.Tab("Distributions"):
            gr.Markdown(GUIDES["Distributions"])
            opening = shipped_distributions(AVAILABLE[0])  # the tab opens on the shipped case
            with gr.Row():
                list_button = gr.Button("List layers")
                layer = gr.Dropdown([opening[0]] if opening[0] else [], value=opening[0], label="Layer",
                                    allow_custom_value=True)
                group = gr.Slider(0, grid.DEFAULT_RECIPE["groups"] - 1, value=opening[1], step=1,
                                  label="Time group")
                show_button = gr.Button("Show", variant="primary")
            distributions_caption = gr.Markdown(opening[7])
            with gr.Row():
                hist_plot = gr.Plot(opening[2], label="Histogram")
                surface_plot = gr.Plot(opening[3], label="|x| per token and channel")
            with gr.Row():
                channel_plot = gr.Plot(opening[4], label="Per-channel abs-max of the input")
                weight_plot = gr.Plot(opening[5], label="Per-input-channel abs-max of the weight")
            stats_table = gr.Dataframe(opening[6], label="Statistics per time group", wrap=True)
        with gr.Tab("Trajectory"):
            gr.Markdown(GUIDES["Trajectory"])
            opening = shipped_trajectory(AVAILABLE[0])
            trajectory_button = gr.Button("Measure", variant="primary")
            trajectory_caption = gr.Markdown(opening[2])
            curve_plot = gr.Plot(opening[0], label="Noise-prediction SQNR vs FP")
            similarity_plot = gr.Plot(opening[1], label="Cond/uncond attention similarity")
        with gr.Tab("Benchmark"):
            gr.Markdown(GUIDES["Benchmark"])
            files = benchmark_files()
            bench_file = gr.Dropdown(files, value=files[0] if files else None, label="Report")
            bench_button = gr.Button("Show", variant="primary")
            opening = benchmark(files[0]) if files else ("", None)  # the tab opens on this CPU class's report
            bench_md = gr.Markdown(opening[0])
            bench_plot = gr.Plot(opening[1])

        distribution_outputs = [layer, group, hist_plot, surface_plot, channel_plot, weight_plot, stats_table,
                                distributions_caption]
        trajectory_outputs = [curve_plot, similarity_plot, trajectory_caption]
        # precomputed answers of the other model on a switch; light reads, so outside the one-at-a-time queue
        ui_only = {"concurrency_limit": None, "api_visibility": "undocumented"}
        model.input(switch_model, inputs=model, outputs=[prompt, steps, guidance, *grid_outputs], **ui_only)
        model.input(shipped_distributions, inputs=model, outputs=distribution_outputs, **ui_only)
        model.input(shipped_trajectory, inputs=model, outputs=trajectory_outputs, **ui_only)
        bits.change(bits_note, inputs=bits, outputs=bits_info, **ui_only)
        for picker in slot_inputs:
            picker.change(slots_note, inputs=slot_inputs, outputs=slot_info, **ui_only)

        def on_quantize(model_label, method_, bits_, *recipe, progress=gr.Progress()):
            return quantize(model_label, method_, bits_, Recipe.from_widgets(*recipe), progress=progress)

        def on_compare(model_label, prompt_, seed_, steps_, guidance_, *values, progress=gr.Progress()):
            picked, recipe = values[:len(slot_inputs)], Recipe.from_widgets(*values[len(slot_inputs):])
            return compare(model_label, prompt_, seed_, steps_, guidance_, list(zip(picked[::2], picked[1::2])),
                           recipe, progress=progress)

        def on_layers(model_label, method_, bits_, *recipe):
            return layer_choices(model_label, method_, bits_, Recipe.from_widgets(*recipe))

        def on_distributions(model_label, layer_, group_, steps_, guidance_, method_, bits_, *recipe,
                             progress=gr.Progress()):
            return distributions(model_label, layer_, group_, steps_, guidance_, method_, bits_,
                                 Recipe.from_widgets(*recipe), progress=progress)

        def on_trajectory(model_label, steps_, guidance_, method_, bits_, *recipe, progress=gr.Progress()):
            return trajectory(model_label, steps_, guidance_, method_, bits_, Recipe.from_widgets(*recipe),
                              progress=progress)

        # on_gpu: the handlers that sample hold a GPU on a ZeroGPU Space
        quantize_button.click(on_gpu(on_quantize), inputs=[model, method, bits, *recipe_inputs],
                              outputs=quantize_info, api_name="quantize")
        compare_button.click(on_gpu(on_compare),
                             inputs=[model, prompt, seed, steps, guidance, *slot_inputs, *recipe_inputs],
                             outputs=grid_outputs, api_name="compare")
        list_button.click(on_layers, inputs=[model, method, bits, *recipe_inputs], outputs=[layer, group],
                          api_name="layers")
        show_button.click(on_gpu(on_distributions),
                          inputs=[model, layer, group, steps, guidance, method, bits, *recipe_inputs],
                          outputs=distribution_outputs[2:], api_name="distributions")
        trajectory_button.click(on_gpu(on_trajectory),
                                inputs=[model, steps, guidance, method, bits, *recipe_inputs],
                                outputs=trajectory_outputs, api_name="trajectory")
        bench_button.click(benchmark, inputs=bench_file, outputs=[bench_md, bench_plot], api_name="benchmark")
        loaded = load_button.click(on_gpu(add_model), inputs=[source, captions_file],
                                   outputs=[model, source_info, prompt, steps, guidance, *grid_outputs],
                                   api_name="add_model")
        loaded.success(shipped_distributions, inputs=model, outputs=distribution_outputs, **ui_only)
        loaded.success(shipped_trajectory, inputs=model, outputs=trajectory_outputs, **ui_only)
    demo.queue(default_concurrency_limit=1)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
