"""The peers: what a user would run instead of trdq, built in the same worker scheme.

- ``fp32-compiled``, ``bf16-compiled``, ``fp16-compiled``: the full-precision transformer under
  ``torch.compile`` (the fair compiled baseline).
- ``torchao-w8a8``: torchao's ``Int8DynamicActivationInt8WeightConfig`` (int8 per-channel weights,
  dynamic per-token int8 activations) applied by ``quantize_``.
- ``quanto-w8a8``: optimum-quanto's ``quantize(weights=qint8, activations=qint8)``, calibrated with
  its ``Calibration`` on the inputs trdq's fit calibrates on (static per-tensor activation scales),
  then ``freeze``.

Both libraries quantize exactly the linear layers trdq quantizes (:func:`target_names`), and run
everything else in ``BenchSpec.real_dtype``, as trdq's real backends do. Both multiply int8 by
int8 (``torch._int_mm`` on CPU), hence their ``"real integer"`` label. They compile when
``BenchSpec.compile`` says so; a peer whose compiled first step fails is rebuilt and runs eagerly,
and its record says why. A compiled backend's first step (compilation) runs while building, and
``compile_s`` is its time.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from dataclasses import replace

import torch

from trdq.demo.bench.models import (
    Built,
    calibration_data,
    full_precision,
    mid_timestep,
    step_inputs,
    to_device,
)
from trdq.demo.bench.spec import Backend, BenchSpec

log = logging.getLogger(__name__)

QUANTO_CALIB_BATCH = 8  # prompts per pipeline call while calibrating, as trdq.calibrate's default


def target_names(spec: BenchSpec, built: Built) -> set[str]:
    """Names (in the transformer) of the linear layers trdq quantizes under ``spec``."""
    from trdq.api import prepare

    return set(prepare(built.model, spec.quant_config("w8a8")).layers)


def library_version(dist: str) -> str:
    """``"name version"`` of an installed distribution.

    Raises:
        ValueError: if it is not installed, saying how to install it.
    """
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"{dist} is not installed: pip install -r requirements.txt") from None


def _torchao(spec: BenchSpec, built: Built, names: set[str]) -> None:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(built.transformer, Int8DynamicActivationInt8WeightConfig(),
              filter_fn=lambda module, name: name in names)


def _quanto(spec: BenchSpec, built: Built, names: set[str]) -> None:
    from optimum.quanto import Calibration, freeze, qint8, quantize

    from trdq.sampling import generate

    # fnmatch patterns: a module name has none of * ? [ ], so each matches itself only
    quantize(built.transformer, weights=qint8, activations=qint8, include=sorted(names))
    data, _ = calibration_data(spec, built)
    with torch.inference_mode(), Calibration():
        if spec.bare:
            for kwargs in data:
                built.transformer(**kwargs)
        else:
            generate(built.model, data, list(range(len(data))), batch_size=QUANTO_CALIB_BATCH)
    freeze(built.transformer)


QUANTIZERS = {"torchao": _torchao, "optimum-quanto": _quanto}


def _quantized(spec: BenchSpec, backend: Backend) -> Built:
    """``backend``'s model, quantized on the CPU by its library (if any), on ``spec.device``."""
    built = full_precision(spec, getattr(torch, spec.real_dtype if backend.library else backend.dtype))
    if backend.library:
        names = target_names(spec, built)
        QUANTIZERS[backend.library](spec, built, names)
        built = replace(built, library=library_version(backend.library), quantized_layers=len(names))
    return to_device(built, spec.device)


def compile_whole(spec: BenchSpec, built: Built) -> Built:
    """``built`` with its transformer compiled in place (so a pipeline runs it compiled too), after
    one step at the timed shape: the compilation, timed as ``compile_s``."""
    built.transformer.compile()
    inputs = step_inputs(built.transformer, built.latent, built.text_tokens, spec.batch, mid_timestep(built),
                         spec.seed, spec.device)
    start = time.perf_counter()
    with torch.inference_mode():
        built.transformer(**inputs)
    return replace(built, compiled=True, compile_s=round(time.perf_counter() - start, 2))


def build_peer(spec: BenchSpec, backend: Backend) -> Built:
    """The model of a ``-compiled`` full-precision backend or of a peer library (see the module).

    Raises:
        ValueError: if the peer's library is not installed. A ``-compiled`` backend's compilation
            errors propagate (it has no eager fallback: compiling is what it measures).
    """
    if backend.library:
        library_version(backend.library)  # before building anything
    built = _quantized(spec, backend)
    if not backend.library:
        return compile_whole(spec, built) if backend.compiled else built
    if not spec.compile:
        return built
    try:
        return compile_whole(spec, built)
    except Exception as err:  # compilers fail in many ways; the eager model is still a fair peer
        why = f"torch.compile failed ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}); ran eager"
    log.warning("%s: %s", backend.name, why)
    del built  # a compiled model that failed: free it before building again
    torch._dynamo.reset()
    return replace(_quantized(spec, backend), note=why)
