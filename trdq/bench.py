"""Latency and memory of one model under several backends: ``python -m trdq bench``.

Backends are ``fp32``, ``bf16`` (full precision), ``trdq-wXaY-sim`` (simulated: fake quantization
in floating point) and ``trdq-wXaY-real`` (real integer, via :func:`trdq.realize`). Each backend is
built and measured in a fresh worker process (``python -m trdq.bench``), so its memory is its own;
every result carries the execution label its model reports. Per backend:

- ``step_ms``: one transformer forward without gradients on a CFG batch (conditional +
  unconditional) at the model's latent size and a mid timestep, after warm-up: median, min, all.
- ``e2e_s_per_image``: one image through the whole pipeline (text encoder, every step with CFG,
  VAE); None for a bare random transformer, which has neither text encoder nor VAE.
- ``weight_bytes``: every tensor the transformer holds (:data:`WEIGHT_RULE`).
- resident memory of the worker (:data:`MEMORY_RULE`).
- ``vs_fp32``, ``vs_bf16``: the value divided by that baseline's value from the same run.

Nothing here asserts a speed-up: the benchmark reports, with the machine it ran on.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import gc
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from trdq.api import DEPLOYMENTS
from trdq.config import ROTATIONS, QuantConfig, TimeGroups, parse_bits

log = logging.getLogger(__name__)

FULL_PRECISION, SIMULATED, REAL = "full precision", "simulated", "real integer"
DEFAULT_BACKENDS = ("fp32", "bf16", "trdq-w8a8-sim", "trdq-w8a8-real", "trdq-w4a8-real")
BENCH_ALPHA = 0.5
CALIB_LATENT, CALIB_TEXT_TOKENS, CALIB_INPUTS, CALIB_PROMPTS = 8, 8, 8, 8
PIPELINE_REPEATS = 20
MIB = 2**20

# PixArt-XL-2 (PixArt-alpha/PixArt-XL-2-512x512, transformer/config.json); Latte-1 (maxin-cn/Latte-1)
# has the same blocks. sample_size comes from the resolution; text is T5's, 120 tokens x 4096.
PIXART_XL = {"num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
             "num_layers": 28, "cross_attention_dim": 1152, "patch_size": 2, "caption_channels": 4096,
             "norm_type": "ada_norm_single", "activation_fn": "gelu-approximate", "attention_bias": True,
             "num_embeds_ada_norm": 1000, "norm_elementwise_affine": False, "norm_eps": 1e-6}


@dataclass(frozen=True)
class RandomModel:
    """A diffusers transformer class at a published configuration, with seeded random weights."""

    cls: str
    config: dict
    text_tokens: int = 120
    repeats: int = 5


RANDOM_MODELS = {
    "pixart-xl-random": RandomModel("PixArtTransformer2DModel",
                                    {**PIXART_XL, "use_additional_conditions": False}),
    "latte-random": RandomModel("LatteTransformer3DModel", {**PIXART_XL, "video_length": 16}),
}

WEIGHT_RULE = ("bytes of every distinct tensor storage the transformer holds: parameters, buffers "
               "(persistent or not) and tensors kept in module attributes (per-group transforms, cached "
               "rotation matrices); a simulated layer's float weights_fq copies count, which is why the "
               "simulated path saves no memory")
MEMORY_RULE = ("resident set size of the backend's own worker process, from /proc/self/status: "
               "rss_baseline after imports; rss_model once built (FP sources freed, malloc trimmed); "
               "peak_rss = VmHWM over warm-up and timing (the high-water mark, reset once the model is "
               "built); peak_rss_build = VmHWM while building (FP model, calibration, conversion); "
               "mem_limit = the worker's address-space cap beyond its size after imports")
RATIO_RULE = ("vs_fp32 / vs_bf16: this backend's value divided by the baseline's from the same run "
              "(below 1: smaller or faster)")


@dataclass(frozen=True)
class Backend:
    """One way to run the model: dtype, bits and execution (and the real path's deployment)."""

    name: str
    dtype: str = "float32"
    bits: str | None = None
    execution: str = FULL_PRECISION
    deployment: str | None = None


def parse_backends(names: Sequence[str], deployments: Sequence[str] = ("per-group",)) -> list[Backend]:
    """Backend names -> :class:`Backend`. A real backend without a ``-per-group``/``-shared`` suffix
    runs once per deployment (suffixed when there are several); duplicates run once.

    Raises:
        ValueError: for an unknown name or deployment, naming what is accepted.
    """
    hint = ("use fp32, bf16, trdq-wXaY-sim, trdq-wXaY-real[-per-group|-shared], "
            f"e.g. {','.join(DEFAULT_BACKENDS)}")
    bad = [d for d in deployments if d not in DEPLOYMENTS]
    if bad or not deployments:
        raise ValueError(f"unknown deployment(s) {bad or list(deployments)}; "
                         f"choose from {', '.join(DEPLOYMENTS)}")
    out: list[Backend] = []
    for name in names:
        m = re.fullmatch(r"trdq-(w\d+a\d+)-(sim|real)(?:-(per-group|shared))?", name)
        if name in ("fp32", "bf16"):
            out.append(Backend(name, "bfloat16" if name == "bf16" else "float32"))
        elif m is None or (m.group(2) == "sim" and m.group(3)):
            raise ValueError(f"unknown backend {name!r}; {hint}")
        elif m.group(2) == "sim":
            out.append(Backend(name, bits=_bits(m.group(1)), execution=SIMULATED))
        else:
            ds = [m.group(3)] if m.group(3) else list(deployments)
            out += [Backend(f"{name}-{d}" if len(ds) > 1 else name, bits=_bits(m.group(1)), execution=REAL,
                            deployment=d) for d in ds]
    if not out:
        raise ValueError(f"no backends given; {hint}")
    return list({b.name: b for b in out}.values())


def _bits(text: str) -> str:
    w, a = parse_bits(text)
    return f"w{w}a{a}"


@dataclass(frozen=True)
class BenchSpec:
    """What to measure; every backend of a run shares it.

    Attributes:
        model: a key of :data:`RANDOM_MODELS` (a bare transformer) or what :func:`trdq.load_model` takes.
        resolution: image side in pixels of a random model (default 512; latent = px / 8); a
            pipeline runs at its native size.
        batch: per-step batch (2: the CFG pair).
        warmup, repeats: untimed, then timed steps (repeats None: 5 for random models, 20 for pipelines).
        e2e_repeats: timed images of a pipeline, after one untimed image.
        threads: torch threads (None: every usable core).
        groups, rotation: time groups and rotation of the quantized backends.
        overrides: config overrides of a random model's transformer (e.g. ``{"num_layers": 2}``).
        mem_limit_gib: address-space cap of a worker beyond its size after imports (None: 90% of
            the memory available when it starts; 0: none), so that a backend too big for the
            machine fails with an error instead of waking the kernel's OOM killer.
    """

    model: str = "pixart-xl-random"
    resolution: int | None = None
    batch: int = 2
    warmup: int = 2
    repeats: int | None = None
    e2e_repeats: int = 3
    threads: int | None = None
    groups: int = 4
    rotation: str = "duquant"
    seed: int = 0
    overrides: dict = field(default_factory=dict)
    mem_limit_gib: float | None = None

    def __post_init__(self):
        for name in ("batch", "warmup", "e2e_repeats", "groups", "repeats", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.resolution is not None and (self.resolution < 16 or self.resolution % 16):
            raise ValueError("resolution must be a positive multiple of 16 pixels (latent = px / 8, "
                             f"patch 2), got {self.resolution}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation {self.rotation!r}; choose one of {', '.join(ROTATIONS)}")
        if self.overrides and not self.bare:
            raise ValueError(f"config overrides apply to the random models ({', '.join(RANDOM_MODELS)}), "
                             f"not to {self.model!r}")

    @property
    def bare(self) -> bool:
        return self.model in RANDOM_MODELS

    @property
    def num_repeats(self) -> int:
        return self.repeats or (RANDOM_MODELS[self.model].repeats if self.bare else PIPELINE_REPEATS)

    @property
    def num_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    def quant_config(self, bits: str) -> QuantConfig:
        """TR-DQ with a fixed alpha and no per-layer selection: cheap to fit; latency and memory
        do not depend on calibration quality."""
        w, a = parse_bits(bits)
        return QuantConfig(method="trdq", w_bits=w, a_bits=a, time_groups=TimeGroups(self.groups),
                           alpha=BENCH_ALPHA, rotation=self.rotation, select_transforms=False, seed=self.seed)

    def calibration_note(self) -> str:
        data = (f"{CALIB_INPUTS} random forward inputs (batch {self.batch}) at a {CALIB_LATENT}x"
                f"{CALIB_LATENT} latent with {CALIB_TEXT_TOKENS} text tokens, spread over 20 DPM-Solver "
                "timesteps" if self.bare else f"{CALIB_PROMPTS} prompts through the full-precision pipeline "
                "at its default steps and guidance")
        return (f"{data}; trdq, {self.groups} time groups, alpha fixed at {BENCH_ALPHA}, rotation "
                f"{self.rotation}, no per-layer transform selection: cheap to fit, and latency and memory do "
                "not depend on calibration quality (quality is measured by `trdq eval`, not here)")


# ----------------------------------------------------------------------------- building


@dataclass
class Built:
    """A model ready to time: ``model`` is what quantize/realize take, ``transformer`` its transformer."""

    model: object
    transformer: nn.Module
    resolution: int
    latent: int
    text_tokens: int
    timesteps: list[float]


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


def step_inputs(transformer: nn.Module, latent: int, text_tokens: int, batch: int, timestep: float,
                seed: int) -> dict:
    """Random forward kwargs: a ``latent`` x ``latent`` latent (frames kept), ``text_tokens`` text
    tokens, float tensors in the transformer's dtype."""
    from trdq.models.adapters import adapter_for

    gen = torch.Generator().manual_seed(seed)
    inputs = adapter_for(transformer).example_inputs(transformer, batch, timestep, gen)
    inputs["hidden_states"] = torch.randn(*inputs["hidden_states"].shape[:-2], latent, latent, generator=gen)
    if "encoder_hidden_states" in inputs:
        dim = inputs["encoder_hidden_states"].shape[-1]
        inputs["encoder_hidden_states"] = torch.randn(batch, text_tokens, dim, generator=gen)
    dtype = getattr(transformer, "dtype", torch.float32)
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k != "timestep" else v
            for k, v in inputs.items()}


def _calibration(spec: BenchSpec, built: Built) -> tuple[list, dict]:
    """(calibration data, quantize() keyword arguments) for ``built``."""
    if not spec.bare:
        from trdq import shapes

        if built.model.settings.world == "shapes":
            return [s.caption for s in shapes.sample_scenes(CALIB_PROMPTS, seed=7919)], {}
        return [f"a photo of object {i}" for i in range(CALIB_PROMPTS)], {}
    ts = built.timesteps
    picks = sorted({round(i * (len(ts) - 1) / (CALIB_INPUTS - 1)) for i in range(CALIB_INPUTS)})  # all groups
    data = [step_inputs(built.transformer, CALIB_LATENT, CALIB_TEXT_TOKENS, spec.batch, ts[i], spec.seed + i)
            for i in picks]
    return data, {"timesteps": ts}


def build(spec: BenchSpec, backend: Backend) -> Built:
    """The model of ``backend``: full precision, quantized (simulated) or realized (real integer)."""
    import trdq

    dtype = torch.bfloat16 if backend.dtype == "bfloat16" else torch.float32
    built = _random_transformer(spec) if spec.bare else _pipeline(spec, dtype)
    if spec.bare and dtype != torch.float32:
        built.transformer.to(dtype)
    if backend.execution == FULL_PRECISION:
        return built
    data, kwargs = _calibration(spec, built)
    q = trdq.quantize(built.model, spec.quant_config(backend.bits), data, **kwargs)
    # free the FP model before realizing; only the shared deployment rebuilds codes from its weights
    base = built.model if backend.deployment == "shared" else None
    built.model = built.transformer = data = None
    if backend.execution == REAL:
        q = trdq.realize(q, deployment=backend.deployment, base=base)
    transformer = q.pipe.transformer if hasattr(q, "pipe") else q
    return dataclasses.replace(built, model=q, transformer=transformer)


# ----------------------------------------------------------------------------- measuring


def _tensors(value, depth: int = 0):
    """Tensors inside ``value``, through lists, tuples, dicts and dataclasses (not modules)."""
    if torch.is_tensor(value):
        yield value
    elif depth > 6:
        return
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name), depth + 1)


def weight_bytes(module: nn.Module) -> dict[str, int]:
    """Bytes per dtype of every distinct storage ``module`` holds (see :data:`WEIGHT_RULE`).

    Returns:
        ``{dtype name: bytes}`` plus ``"total"``.
    """
    seen, out = set(), {}
    for m in module.modules():
        held = [*m._parameters.values(), *m._buffers.values(),
                *(v for k, v in vars(m).items() if not k.startswith("_"))]
        for t in _tensors(held):
            storage = t.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                name = str(t.dtype).removeprefix("torch.")
                out[name] = out.get(name, 0) + storage.nbytes()
    return {**dict(sorted(out.items())), "total": sum(out.values())}


def _proc(path: str, key: str) -> int | None:
    """A size in bytes from a ``/proc`` table such as ``/proc/self/status`` (None where there is none)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _trim() -> None:
    """Free garbage and hand free heap pages back, so RSS shows what the model holds."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux 4.0+)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], object], warmup: int, repeats: int, scale: float = 1.0) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; times x ``scale``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * scale)
    return {"median": statistics.median(times), "min": min(times), "all": times}


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / MIB, 1)


def measure(spec: BenchSpec, backend: Backend) -> dict:
    """Build ``backend``'s model in this process and measure it (see the module docstring).

    Returns:
        The backend's result record, with ``setup`` (latent, tokens, timestep) for the report.

    Raises:
        ValueError: if the model's execution label is not the backend's.
    """
    from trdq.api import quant_info
    from trdq.generate import generate_images

    torch.set_num_threads(spec.num_threads)
    _trim()
    baseline, start = _proc("/proc/self/status", "VmRSS"), time.perf_counter()
    built = build(spec, backend)
    build_s = time.perf_counter() - start
    info = quant_info(built.model)
    execution = FULL_PRECISION if info is None else info.execution
    if execution != backend.execution:
        raise ValueError(f"{backend.name} should run {backend.execution!r}, its model reports {execution!r}")
    _trim()
    peak_build, rss_model = _proc("/proc/self/status", "VmHWM"), _proc("/proc/self/status", "VmRSS")
    reset = _reset_peak()
    timestep = built.timesteps[len(built.timesteps) // 2]
    inputs = step_inputs(built.transformer, built.latent, built.text_tokens, spec.batch, timestep, spec.seed)
    log.info("%s (%s): built in %.1f s; %d warm-up + %d timed steps", backend.name, execution, build_s,
             spec.warmup, spec.num_repeats)
    prompt = "a small red circle on the left"  # in the shapes grammar; any pipeline takes it
    with torch.inference_mode():
        step = timed(lambda: built.transformer(**inputs), spec.warmup, spec.num_repeats, scale=1e3)
        e2e = None if spec.bare else timed(
            lambda: generate_images(built.model, [prompt], [spec.seed], batch_size=1), 1, spec.e2e_repeats)
    latent = inputs["hidden_states"]  # (B, C, H, W) or (B, C, F, H, W)
    return {
        "backend": backend.name, "execution": execution, "dtype": backend.dtype, "bits": backend.bits,
        "deployment": backend.deployment, "status": "ok", "step_ms": step, "e2e_s_per_image": e2e,
        "weight_bytes": weight_bytes(built.transformer), "build_s": round(build_s, 2),
        "rss_baseline_mib": _mib(baseline), "rss_model_mib": _mib(rss_model),
        "peak_rss_mib": _mib(_proc("/proc/self/status", "VmHWM")) if reset else None,
        "peak_rss_build_mib": _mib(peak_build),
        "setup": {"transformer": type(built.transformer).__name__, "resolution_px": built.resolution,
                  "latent": list(latent.shape), "text_tokens": built.text_tokens, "timestep": timestep,
                  "image_tokens": latent[0, 0].numel() // built.transformer.config.patch_size ** 2,
                  "sampler_steps": len(built.timesteps)},
    }


# ----------------------------------------------------------------------------- workers and the run


def _limit_memory(gib: float | None) -> int | None:
    """Cap this process's address space at its size now plus ``gib`` GiB (None: 90% of the memory
    available now); returns the bytes allowed beyond that size, None without a cap."""
    if gib == 0:
        return None
    budget = int(gib * 2**30) if gib is not None else int(0.9 * (_proc("/proc/meminfo", "MemAvailable") or 0))
    if budget <= 0:
        return None
    limit = (_proc("/proc/self/status", "VmSize") or 0) + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return budget


def _worker_env(threads: int) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {
        **os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        # glibc malloc returns blocks above its mmap threshold to the kernel on free, and trims the
        # heap top after frees, so every step would fault its large activations in again: noise
        # in the timings. Keep blocks up to 32 MiB (the largest threshold glibc accepts) on the
        # heap, never trim by itself (measure() trims once, before timing), and use two arenas
        # (plenty for a few threads; fewer arenas fragment RSS less).
        "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(32 * MIB),
        "MALLOC_TRIM_THRESHOLD_": str(2**40),
    }


def _run_worker(spec: BenchSpec, backend: Backend) -> dict:
    """:func:`measure` in a fresh process; a failure becomes an ``error`` record."""
    with tempfile.TemporaryDirectory(prefix="trdq-bench-") as tmp:
        out = Path(tmp) / "result.json"
        payload = json.dumps({"spec": asdict(spec), "backend": asdict(backend)})
        proc = subprocess.run([sys.executable, "-m", "trdq.bench", payload, str(out)],
                              env=_worker_env(spec.num_threads), check=False)
        if out.exists():
            return json.loads(out.read_text())
    why = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
    return _failed(backend, f"worker exited with code {proc.returncode}{why} before writing a result")


def _failed(backend: Backend, why: str) -> dict:
    return {**asdict(backend), "backend": backend.name, "status": "error", "error": why}


def machine(threads: int) -> dict:
    """CPU model, cores, memory, library versions, threads and date of this run."""
    import diffusers

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    total = _proc("/proc/meminfo", "MemTotal")
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "threads": threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "memory_gib": None if total is None else round(total / 2**30, 1), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _ratios(result: dict, base: dict | None) -> dict | None:
    if base is None or base["status"] != "ok" or result["status"] != "ok":
        return None

    def ratio(get):
        a, b = get(result), get(base)
        return None if a is None or not b else a / b

    return {"step": ratio(lambda r: r["step_ms"]["median"]),
            "e2e": ratio(lambda r: r["e2e_s_per_image"] and r["e2e_s_per_image"]["median"]),
            "weight_bytes": ratio(lambda r: r["weight_bytes"]["total"]),
            "peak_rss": ratio(lambda r: r["peak_rss_mib"])}


def run(spec: BenchSpec, backends: Sequence[Backend], isolate: bool = True,
        progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Measure every backend, each in a fresh worker process unless ``isolate`` is False (then
    the memory figures are this process's, not the backend's).

    A backend whose worker fails becomes an ``error`` record that says why; the others still run.

    Args:
        progress: called with (backends done, total, the last result).

    Returns:
        The report: setup, rules, machine, calibration, and one result per backend with ratios.
    """
    results = []
    for i, backend in enumerate(backends):
        result = _run_worker(spec, backend) if isolate else measure(spec, backend)
        results.append(result)
        if progress is not None:
            progress(i + 1, len(backends), result)
    setups = [r.pop("setup") for r in results if "setup" in r]
    by_name = {r["backend"]: r for r in results}
    for r in results:
        r["vs_fp32"], r["vs_bf16"] = _ratios(r, by_name.get("fp32")), _ratios(r, by_name.get("bf16"))
    setup = setups[0] if setups else None
    return {
        "benchmark": "python -m trdq bench", "model": spec.model,
        "kind": "bare transformer (random weights)" if spec.bare else "pipeline",
        "resolution_px": setup and setup["resolution_px"], "batch": spec.batch,
        "batch_note": "per-step batch; 2 is the CFG pair (conditional + unconditional)",
        "setup": setup, "warmup": spec.warmup, "repeats": spec.num_repeats,
        "e2e": ("null: a bare transformer has no text encoder or VAE" if spec.bare else
                f"one image per call, {spec.e2e_repeats} timed after 1 untimed, the model's default steps "
                "and guidance"),
        "threads": spec.num_threads, "isolated": isolate, "spec": asdict(spec),
        "quantization": {"method": "trdq", "groups": spec.groups, "alpha": BENCH_ALPHA,
                         "rotation": spec.rotation, "select_transforms": False},
        "calibration": spec.calibration_note(),
        "rules": {"weight_bytes": WEIGHT_RULE, "memory": MEMORY_RULE, "ratios": RATIO_RULE},
        "machine": machine(spec.num_threads), "results": results,
    }


def summary(result: dict) -> str:
    """One log line for a backend's result."""
    if result["status"] != "ok":
        return f"{result['backend']}: {result['status']}: {result['error']}"
    step, e2e = result["step_ms"], result["e2e_s_per_image"]
    return (f"{result['backend']} ({result['execution']}): step {step['median']:.1f} ms "
            f"(min {step['min']:.1f})" + (f", {e2e['median']:.2f} s/image" if e2e else "")
            + f", weights {result['weight_bytes']['total'] / MIB:.1f} MiB"
            + f", peak RSS {result['peak_rss_mib']} MiB")


def save_report(report: dict, path: str | Path) -> Path:
    """Write ``report`` as JSON to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def _worker_main(payload: str, out: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    args = json.loads(payload)
    spec, backend = BenchSpec(**args["spec"]), Backend(**args["backend"])
    budget = _limit_memory(spec.mem_limit_gib)
    try:
        result = measure(spec, backend)
    except Exception as err:  # at the process boundary every failure is a record (allocator: RuntimeError)
        log.error("%s: %s", backend.name, err)
        result = _failed(backend, f"{type(err).__name__}: {err}")
    result["mem_limit_mib"] = _mib(budget)
    Path(out).write_text(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(_worker_main(*sys.argv[1:]))
