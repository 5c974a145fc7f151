"""What a run measures: the backends (:class:`Backend`) and their shared setup (:class:`BenchSpec`)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from trdq.api import DEPLOYMENTS
from trdq.config import ROTATIONS, QuantConfig, TimeGroups, parse_bits
from trdq.cpu import float_dtype
from trdq.quantizer import check_bits

FULL_PRECISION, SIMULATED, REAL = "full precision", "simulated", "real integer"
DEFAULT_BACKENDS = ("fp32", "bf16", "trdq-w8a8-sim", "trdq-w8a8-real", "trdq-w4a8-real")
FULL_PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# what a user would run instead of trdq (trdq.demo.bench.peers): the distribution that quantizes each
# one, on the layers trdq quantizes; both multiply int8 by int8 (torch._int_mm on CPU)
PEER_LIBRARIES = {"torchao-w8a8": "torchao", "quanto-w8a8": "optimum-quanto"}
COMPILED_SUFFIX = "-compiled"
DEVICES = ("cpu", "cuda")
REAL_DTYPES = ("bfloat16", "float16", "float32")
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


@dataclass(frozen=True)
class Backend:
    """One way to run the model: dtype, bits and execution (and the real path's deployment).

    Attributes:
        library: the distribution that quantizes a peer (``torchao``, ``optimum-quanto``; its
            float parts run in ``BenchSpec.real_dtype`` like trdq's real backends); None for
            trdq's own backends and plain torch.
        compiled: a backend whose whole transformer runs under ``torch.compile``: a full-precision
            one (``fp32-compiled``), or trdq's real integer model (``trdq-w8a8-real-compiled``: the
            attention, norms and activations left in floating point fused too).
        attention_bits: a trdq backend whose attention scores are quantized too (name suffix
            ``-qk8``; :mod:`trdq.attention`); None: attention in floating point.
    """

    name: str
    dtype: str = "float32"
    bits: str | None = None
    execution: str = FULL_PRECISION
    deployment: str | None = None
    library: str | None = None
    compiled: bool = False
    attention_bits: int | None = None

    @property
    def needs_fit(self) -> bool:
        """Whether this backend loads a trdq fit (a peer library quantizes by itself)."""
        return self.bits is not None and self.library is None


def parse_backends(names: Sequence[str], deployments: Sequence[str] = ("per-group",)) -> list[Backend]:
    """Backend names -> :class:`Backend`. A real backend without a ``-per-group``/``-shared`` suffix
    runs once per deployment (suffixed when there are several); duplicates run once. ``fp32``,
    ``bf16`` and ``fp16`` with a ``-compiled`` suffix run under ``torch.compile``; the peers
    (:data:`PEER_LIBRARIES`) are W8A8 by other libraries (:mod:`trdq.demo.bench.peers`).

    Raises:
        ValueError: for an unknown name or deployment, naming what is accepted.
    """
    compiled = [f"{fp}{COMPILED_SUFFIX}" for fp in FULL_PRECISION_DTYPES]
    hint = (f"use {', '.join([*FULL_PRECISION_DTYPES, *compiled, *PEER_LIBRARIES])}, trdq-wXaY-sim[-qkB], "
            f"trdq-wXaY-real[-per-group|-shared|-jit][-qkB][-compiled] (-qkB: attention scores at B bits, e.g. "
            f"-qk8; -compiled: the whole real model under torch.compile), "
            f"e.g. {','.join(DEFAULT_BACKENDS)}")
    bad = [d for d in deployments if d not in DEPLOYMENTS]
    if bad or not deployments:
        raise ValueError(f"unknown deployment(s) {bad or list(deployments)}; "
                         f"choose from {', '.join(DEPLOYMENTS)}")
    out: list[Backend] = []
    for name in names:
        m = re.fullmatch(rf"trdq-(w\d+a\d+)-(sim|real)(?:-({'|'.join(DEPLOYMENTS)}))?(?:-qk(\d+))?({COMPILED_SUFFIX})?",
                         name)
        fp = name.removesuffix(COMPILED_SUFFIX)
        if fp in FULL_PRECISION_DTYPES:
            out.append(Backend(name, FULL_PRECISION_DTYPES[fp], compiled=fp != name))
        elif name in PEER_LIBRARIES:
            out.append(Backend(name, bits="w8a8", execution=REAL, library=PEER_LIBRARIES[name]))
        elif re.fullmatch(r"(torchao|quanto)(-.*)?", name):
            raise ValueError(f"unknown backend {name!r}: the peers are {' and '.join(PEER_LIBRARIES)} "
                             "(W8A8 only, their float parts in --real-dtype)")
        elif m is None or (m.group(2) == "sim" and (m.group(3) or m.group(5))):
            raise ValueError(f"unknown backend {name!r}; {hint}")
        else:
            qk = None if m.group(4) is None else check_bits(int(m.group(4)), f"{name}: attention bits (-qkB)")
            if m.group(2) == "sim":
                out.append(Backend(name, bits=_bits(m.group(1)), execution=SIMULATED, attention_bits=qk))
                continue
            ds = [m.group(3)] if m.group(3) else list(deployments)
            stem = f"trdq-{m.group(1)}-real"
            tail = ("" if qk is None else f"-qk{m.group(4)}") + (m.group(5) or "")
            out += [Backend(f"{stem}-{d}{tail}" if len(ds) > 1 else name, bits=_bits(m.group(1)), execution=REAL,
                            deployment=d, attention_bits=qk, compiled=bool(m.group(5))) for d in ds]
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
        device: where the timed model and its inputs live: "cpu", or "cuda" (the current CUDA
            device; each step is synchronized before the clock stops, and the allocator's peak is
            reported beside the RSS). Building, calibrating and fitting run on the CPU either way;
            the built model is then moved.
        groups, rotation: time groups and rotation of the quantized backends.
        real_dtype: dtype of everything outside the integer layers of real backends ("bfloat16",
            like the bf16 baseline, "float16", like fp16, or "float32"; :func:`trdq.realize`'s
            ``dtype``). None: float16 on cuda (what GPU inference runs in); on cpu bfloat16 where
            the CPU has native bf16, else float32 (:func:`trdq.cpu.float_dtype`).
        compile: run real backends' activation quantization, int8 GEMM and dequantization through
            ``torch.compile`` (fused loops), block-rotation transforms too (:func:`trdq.realize`);
            and the peers' whole transformers (eager where their compilation fails). A
            ``-compiled`` full-precision backend compiles whatever this says.
        share_attention: also time each step with Attention-Sharing in the layers this rule picks
            (:meth:`trdq.attention.ShareRule.parse`: ``2`` layers, ``"0.9"`` cosine, ``"25%"`` of
            the uncond score compute); None or 0: not measured.
        overrides: config overrides of a random model's transformer (e.g. ``{"num_layers": 2}``;
            with fewer blocks than published, weights are also extrapolated to the published depth,
            :func:`trdq.demo.bench.measure.weight_bytes_at_depth`).
        timing: time and profile the steps; False: build each backend and record its weights and
            memory only (a memory report in minutes, on any CPU).
        compact_rotations: real backends keep DuQuant's block rotations as reflections
            (:func:`trdq.realize`'s ``compact_rotations``; None: per the deployment).
        shared_inputs: quantize trdq backends with ``QuantConfig(shared_inputs=True)``: one
            transform for each attention's q/k/v (and cross-attention k/v), applied once per call.
        mem_limit_gib: address-space cap of a worker beyond its size after imports (None: 90% of
            the memory available when it starts; 0: none), so that a backend too big for the
            machine fails with an error instead of waking the kernel's OOM killer. On cuda no cap
            is set (CUDA reserves far more virtual address space than it uses; a positive value is
            refused).
    """

    model: str = "pixart-xl-random"
    resolution: int | None = None
    batch: int = 2
    warmup: int = 2
    repeats: int | None = None
    e2e_repeats: int = 3
    threads: int | None = None
    device: str = "cpu"
    groups: int = 4
    rotation: str = "duquant"
    real_dtype: str | None = None
    compile: bool = True
    share_attention: int | str | None = None
    seed: int = 0
    overrides: dict = field(default_factory=dict)
    timing: bool = True
    compact_rotations: bool | None = None
    mem_limit_gib: float | None = None
    shared_inputs: bool = False

    def __post_init__(self):
        if self.share_attention in (0, "0", ""):
            object.__setattr__(self, "share_attention", None)
        if self.share_attention is not None:
            from trdq.attention import ShareRule

            ShareRule.parse(str(self.share_attention))  # raises with the forms it takes
        if self.share_attention is not None and self.batch % 2:
            raise ValueError("Attention-Sharing needs the CFG pair in the batch: use an even --batch")
        for name in ("batch", "warmup", "e2e_repeats", "groups", "repeats", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.resolution is not None and (self.resolution < 16 or self.resolution % 16):
            raise ValueError("resolution must be a positive multiple of 16 pixels (latent = px / 8, "
                             f"patch 2), got {self.resolution}")
        self._check_device()
        if self.real_dtype is None:
            dtype = "float16" if self.device == "cuda" else str(float_dtype("cpu")).removeprefix("torch.")
            object.__setattr__(self, "real_dtype", dtype)
        if self.real_dtype not in REAL_DTYPES:
            raise ValueError(f"real_dtype is one of {', '.join(REAL_DTYPES)}, got {self.real_dtype!r}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation {self.rotation!r}; choose one of {', '.join(ROTATIONS)}")
        if self.overrides and not self.bare:
            raise ValueError(f"config overrides apply to the random models ({', '.join(RANDOM_MODELS)}), "
                             f"not to {self.model!r}")

    def _check_device(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.device != "cuda":
            return
        if not torch.cuda.is_available():
            raise ValueError(f"--device cuda, but torch.cuda.is_available() is False here (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}): run on a "
                             "machine with a GPU and a CUDA build of torch, or use --device cpu")
        if self.mem_limit_gib:
            raise ValueError("--mem-limit-gib caps the address space, and CUDA reserves far more "
                             "virtual memory than it uses, so the cap would break it: leave it out "
                             "with --device cuda")

    @property
    def bare(self) -> bool:
        return self.model in RANDOM_MODELS

    @property
    def published_depth(self) -> int | None:
        """A random model's published block count when this run builds fewer (``--layers``), else None."""
        if not self.bare:
            return None
        depth = RANDOM_MODELS[self.model].config["num_layers"]
        return depth if self.overrides.get("num_layers", depth) < depth else None

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
                           alpha=BENCH_ALPHA, rotation=self.rotation, select_transforms=False, seed=self.seed,
                           shared_inputs=self.shared_inputs)

    def calibration_note(self) -> str:
        data = (f"{CALIB_INPUTS} random forward inputs (batch {self.batch}) at a {CALIB_LATENT}x"
                f"{CALIB_LATENT} latent with {CALIB_TEXT_TOKENS} text tokens, spread over 20 DPM-Solver "
                "timesteps" if self.bare else f"{CALIB_PROMPTS} prompts through the full-precision pipeline "
                "at its default steps and guidance")
        return (f"{data}; trdq, {self.groups} time groups, alpha fixed at {BENCH_ALPHA}, rotation "
                f"{self.rotation}, no per-layer transform selection: cheap to fit, and latency and memory do "
                "not depend on calibration quality (quality is measured by `trdq eval`, not here)")
