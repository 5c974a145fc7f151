"""Latency and memory of one model under several backends: ``python -m trdq bench``.

Backends are ``fp32``, ``bf16``, ``fp16`` (full precision), ``trdq-wXaY-sim`` (simulated: fake
quantization in floating point) and ``trdq-wXaY-real`` (real integer, via :func:`trdq.realize`), and
the peers (:mod:`~trdq.demo.bench.peers`): ``fp32-compiled``, ``bf16-compiled``, ``fp16-compiled``
(``torch.compile``), ``torchao-w8a8`` and ``quanto-w8a8`` (other libraries' W8A8 on the layers trdq
quantizes). Each trdq quantized configuration is fitted once per run (calibrated, quantized,
:func:`trdq.save`\\ d) in a preparation worker; then each backend is built and measured in a fresh
worker process (``python -m trdq.demo.bench``), a trdq quantized one by :func:`trdq.load`\\ ing its fit
onto the same full-precision weights, a peer by its library in that worker, so its memory is its
own; every trdq result carries the execution label its model reports, a peer's the one its library
runs (int8 x int8 GEMMs: ``real integer``). The timed model and its inputs live on
``BenchSpec.device`` (``cpu`` or ``cuda``; building and fitting always run on the CPU, then the
model is moved). Per backend:

- ``step_ms``: one transformer forward without gradients on a CFG batch (conditional +
  unconditional) at the model's latent size and a mid timestep, after warm-up: median, min, all;
  on cuda the device is synchronized before the clock starts and before it stops.
- ``e2e_s_per_image``: one image through the whole pipeline (text encoder, every step with CFG,
  VAE); None for a bare random transformer, which has neither text encoder nor VAE.
- ``weight_bytes``: every tensor the transformer holds (:data:`WEIGHT_RULE`).
- resident memory of the worker, and on cuda the CUDA allocator's (:data:`MEMORY_RULE`).
- ``profile``: one profiled step split into attention, float GEMMs, int8 GEMMs, the online
  transforms and the rest (:func:`~trdq.demo.bench.measure.profile_step`); ``online_transforms`` (real
  backends) is its transforms' share. CPU time on cpu, kernel time on cuda (``basis`` says which).
- ``fit_seconds``: the wall time of its configuration's fit (None in full precision).
- ``vs_fp32``, ``vs_bf16``, ``vs_fp16``, ``vs_bf16_compiled``: the value divided by that baseline's
  value from the same run.
- ``compiled``, ``compile_s`` (a whole compiled transformer's first step), ``library`` (a peer's, with
  its version), ``quantized_layers`` (a peer's), ``note`` (e.g. a peer whose compilation failed).

Nothing here asserts a speed-up: the benchmark reports, with the machine it ran on.

Modules: :mod:`~trdq.demo.bench.spec` (backends, the spec), :mod:`~trdq.demo.bench.models` (building and
fitting), :mod:`~trdq.demo.bench.peers` (building the peers), :mod:`~trdq.demo.bench.measure`, :mod:`~trdq.demo.bench.runner` (workers, the fit cache, ``run``),
:mod:`~trdq.demo.bench.report`; ``__main__`` is the worker. :mod:`~trdq.demo.bench.layer_timing` times single
layers (fp16 ``nn.Linear`` against the real W8A8 layer, eager and from a CUDA graph).
"""

from trdq.demo.bench.measure import MEMORY_RULE, WEIGHT_RULE, measure, synchronizer, timed, weight_bytes
from trdq.demo.bench.models import Built, Fitted, build, fit, fit_key, step_inputs
from trdq.demo.bench.peers import build_peer, target_names
from trdq.demo.bench.report import PEER_RULE, RATIO_RULE, machine, save_report, summary
from trdq.demo.bench.runner import FitError, prepare, run
from trdq.demo.bench.spec import (
    DEFAULT_BACKENDS,
    DEVICES,
    FULL_PRECISION,
    FULL_PRECISION_DTYPES,
    PEER_LIBRARIES,
    RANDOM_MODELS,
    REAL,
    SIMULATED,
    Backend,
    BenchSpec,
    parse_backends,
)

__all__ = [
    "DEFAULT_BACKENDS", "DEVICES", "FULL_PRECISION", "FULL_PRECISION_DTYPES", "MEMORY_RULE", "PEER_LIBRARIES",
    "PEER_RULE", "RANDOM_MODELS", "RATIO_RULE", "REAL", "SIMULATED", "WEIGHT_RULE", "Backend", "BenchSpec",
    "Built", "FitError", "Fitted", "build", "build_peer", "fit", "fit_key", "machine", "measure",
    "parse_backends", "prepare", "run", "save_report", "step_inputs", "summary", "synchronizer",
    "target_names", "timed", "weight_bytes",
]
