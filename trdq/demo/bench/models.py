"""Building a backend's model: the full-precision one from a seed, a quantized one fitted once
(:func:`fit`: calibrate, quantize, :func:`trdq.save`) and loaded by every backend that uses it
(:func:`build`: :func:`trdq.load`, then :func:`trdq.realize` for the real integer path). All of
it runs on the CPU; :func:`build` then moves the model to the spec's device."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from trdq.attention import AttentionQuant, quantize_attention
from trdq.demo.bench.spec import (
    CALIB_INPUTS,
    CALIB_LATENT,
    CALIB_PROMPTS,
    CALIB_TEXT_TOKENS,
    FULL_PRECISION,
    RANDOM_MODELS,
    REAL,
    Backend,
    BenchSpec,
)

# spec fields that change neither the FP weights nor the fit: a fit made with other values is reused
# (fits are made on the CPU whatever the device)
TIMING_ONLY = ("warmup", "repeats", "e2e_repeats", "threads", "device", "mem_limit_gib", "real_dtype",
               "compile", "share_attention", "timing", "compact_rotations")


@dataclass
class Built:
    """A model ready to time: ``model`` is what quantize/realize take, ``transformer`` its transformer.

    Attributes:
        compiled: whether it runs through ``torch.compile`` (trdq's real layers, or a whole
            transformer).
        library, quantized_layers: a peer's quantizing library (``"name version"``) and how many
            linear layers it quantized.
        compile_s: a whole compiled transformer's first step (its compilation), made while building.
        note: what a reader of its record should know (e.g. a failed compilation, run eager instead).
    """

    model: object
    transformer: nn.Module
    resolution: int
    latent: int
    text_tokens: int
    timesteps: list[float]
    compiled: bool = False
    library: str | None = None
    quantized_layers: int | None = None
    compile_s: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class Fitted:
    """A quantized (simulated) model saved by :func:`fit`.

    Attributes:
        folder: the :func:`trdq.save` folder.
        bits: the configuration's bits (the rest comes from the spec).
        fingerprint: (elements, sum, sum of squares) of the FP transformer it was fitted on.
        fit_seconds: building the FP model, calibrating, quantizing and saving.
        reused: whether this run took it from the cache of an earlier one.
    """

    folder: str
    bits: str
    fingerprint: tuple[float, float, float]
    fit_seconds: float
    reused: bool = False

    def check(self, transformer: nn.Module) -> None:
        """Raise ValueError unless ``transformer`` has the weights this fit was made from."""
        now = fingerprint(transformer)
        if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(now, self.fingerprint)):
            raise ValueError(f"the fit in {self.folder} was made from other full-precision weights; "
                             "delete it (or use another --cache) to fit again")


def _random_transformer(spec: BenchSpec) -> Built:
    import diffusers

    entry, latent = RANDOM_MODELS[spec.model], (spec.resolution or 512) // 8
    torch.manual_seed(spec.seed)
    try:
        config = {**entry.config, "sample_size": latent, **spec.overrides}
        transformer = getattr(diffusers, entry.cls)(**config)
    except TypeError as err:
        raise ValueError(f"bad config override for {entry.cls}: {err}") from None
    scheduler = diffusers.DPMSolverMultistepScheduler()  # PixArt's sampler, diffusers defaults
    scheduler.set_timesteps(20)
    return Built(transformer.eval(), transformer, latent * 8, latent, entry.text_tokens,
                 scheduler.timesteps.tolist())


def _pipeline(spec: BenchSpec, dtype: torch.dtype) -> Built:
    from trdq.models.loader import load_model

    model = load_model(spec.model, dtype=dtype)
    transformer = model.pipe.transformer
    latent = transformer.config.sample_size
    native = latent * model.pipe.vae_scale_factor
    if spec.resolution not in (None, native):
        raise ValueError(f"{spec.model} runs at its native {native} px; leave out --resolution")
    scheduler = copy.deepcopy(model.pipe.scheduler)
    scheduler.set_timesteps(model.settings.steps)
    return Built(model, transformer, native, latent, model.settings.max_sequence_length,
                 scheduler.timesteps.tolist())


def full_precision(spec: BenchSpec, dtype: torch.dtype = torch.float32) -> Built:
    """The FP model of ``spec`` in ``dtype``: the same weights in every process (seeded or loaded)."""
    built = _random_transformer(spec) if spec.bare else _pipeline(spec, dtype)
    if spec.bare and dtype != torch.float32:
        built.transformer.to(dtype)
    return built


def mid_timestep(built: Built) -> float:
    """The timestep of a timed step: the sampler's middle one."""
    return built.timesteps[len(built.timesteps) // 2]


def step_inputs(transformer: nn.Module, latent: int, text_tokens: int, batch: int, timestep: float,
                seed: int, device: str | torch.device = "cpu") -> dict:
    """Random forward kwargs: a ``latent`` x ``latent`` latent (frames kept), ``text_tokens`` text
    tokens, float tensors in the transformer's dtype, all on ``device`` (drawn on the CPU, so
    every device gets the same values)."""
    from trdq.models.adapters import adapter_for

    gen = torch.Generator().manual_seed(seed)
    inputs = adapter_for(transformer).example_inputs(transformer, batch, timestep, gen)
    inputs["hidden_states"] = torch.randn(*inputs["hidden_states"].shape[:-2], latent, latent, generator=gen)
    if "encoder_hidden_states" in inputs:
        dim = inputs["encoder_hidden_states"].shape[-1]
        inputs["encoder_hidden_states"] = torch.randn(batch, text_tokens, dim, generator=gen)
    dtype = getattr(transformer, "dtype", torch.float32)
    return {k: v.to(device, dtype) if torch.is_tensor(v) and v.is_floating_point() and k != "timestep"
            else v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def calibration_data(spec: BenchSpec, built: Built) -> tuple[list, dict]:
    """(calibration data, quantize() keyword arguments) for ``built``."""
    if not spec.bare:
        from trdq.demo.worlds import WORLDS

        if (world := WORLDS.get(built.model.settings.world)) is not None:
            return [s.caption for s in world.sample_scenes(CALIB_PROMPTS, seed=7919)], {}
        return [f"a photo of object {i}" for i in range(CALIB_PROMPTS)], {}
    ts = built.timesteps
    picks = sorted({round(i * (len(ts) - 1) / (CALIB_INPUTS - 1)) for i in range(CALIB_INPUTS)})  # all groups
    data = [step_inputs(built.transformer, CALIB_LATENT, CALIB_TEXT_TOKENS, spec.batch, ts[i], spec.seed + i)
            for i in picks]
    return data, {"timesteps": ts}


def fingerprint(transformer: nn.Module) -> tuple[float, float, float]:
    """(elements, sum, sum of squares) in float64 over every tensor of ``transformer``'s state."""
    n = total = squares = 0.0
    with torch.no_grad():
        for t in transformer.state_dict().values():
            if t.is_floating_point():
                t = t.double()
                n, total, squares = n + t.numel(), total + t.sum().item(), squares + t.square().sum().item()
    return n, total, squares


@functools.cache
def _source_digest() -> str:
    """A hash of trdq's source: a fit made by other code is never reused."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def fit_key(spec: BenchSpec, bits: str) -> str:
    """A name for the fit of ``bits`` under ``spec``: a hash of everything that shapes it (the
    spec but its timing fields, the config, calibration sizes, library versions, trdq's source)."""
    import diffusers

    what = {"spec": {k: v for k, v in asdict(spec).items() if k not in TIMING_ONLY},
            "config": spec.quant_config(bits).to_dict(),
            "calibration": [CALIB_LATENT, CALIB_TEXT_TOKENS, CALIB_INPUTS, CALIB_PROMPTS],
            "torch": torch.__version__, "diffusers": diffusers.__version__, "source": _source_digest()}
    return f"{bits}-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]}"


def fit(spec: BenchSpec, bits: str, folder: str | Path) -> Fitted:
    """Calibrate and quantize (simulated) the FP model of ``spec`` at ``bits``; save it to ``folder``."""
    import trdq

    start = time.perf_counter()
    built = full_precision(spec)
    data, kwargs = calibration_data(spec, built)
    trdq.save(trdq.quantize(built.model, spec.quant_config(bits), data, **kwargs), folder)
    seconds = round(time.perf_counter() - start, 2)
    return Fitted(str(folder), bits, fingerprint(built.transformer), seconds)


def to_device(built: Built, device: str) -> Built:
    """``built`` moved to ``device`` in place: a pipeline whole (text encoder, transformer, VAE)."""
    if device != "cpu":
        (built.model.pipe if hasattr(built.model, "pipe") else built.transformer).to(device)
    return built


def build(spec: BenchSpec, backend: Backend, fitted: Fitted | None = None) -> Built:
    """The model of ``backend`` on ``spec.device``: full precision, or ``fitted`` loaded onto the
    same FP weights (simulated) and realized (real integer), on the CPU, then moved; a peer's (a
    ``-compiled`` or another library's backend) by :func:`trdq.demo.bench.peers.build_peer`.

    Raises:
        ValueError: for a quantized backend without a fit, or a fit of other weights or bits.
    """
    import trdq

    if backend.library or (backend.compiled and backend.execution == FULL_PRECISION):
        from trdq.demo.bench.peers import build_peer  # peers builds on this module

        return build_peer(spec, backend)
    built = full_precision(spec, getattr(torch, backend.dtype))
    if backend.execution == FULL_PRECISION:
        return to_device(built, spec.device)
    if fitted is None or fitted.bits != backend.bits:
        raise ValueError(f"{backend.name} loads a {backend.bits} fit: pass "
                         f"fitted=fit(spec, {backend.bits!r}, folder)")
    fitted.check(built.transformer)
    q = trdq.load(fitted.folder, base=built.model)
    # free the FP model before realizing; only the shared and jit deployments rebuild codes from its weights
    base = built.model if backend.deployment in ("shared", "jit") else None
    built.model = built.transformer = None
    if backend.execution == REAL:
        q = trdq.realize(q, deployment=backend.deployment, base=base, dtype=getattr(torch, spec.real_dtype),
                         compile=spec.compile, compact_rotations=spec.compact_rotations)
    transformer = q.pipe.transformer if hasattr(q, "pipe") else q
    if backend.attention_bits is not None:  # the fit is the same; only the attention processors differ
        quantize_attention(transformer, AttentionQuant(backend.attention_bits, real=backend.execution == REAL))
    built = dataclasses.replace(built, model=q, transformer=transformer,
                                compiled=spec.compile and backend.execution == REAL)
    built = to_device(built, spec.device)
    if backend.compiled:  # the whole real model, after moving it: what the full-precision -compiled rows do
        from trdq.demo.bench.peers import compile_whole

        built = compile_whole(spec, built)
    return built
