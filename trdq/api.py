"""The public verbs: ``quantize`` and, underneath it, ``prepare`` -> ``calibrate`` -> ``convert``.

    qmodel = trdq.quantize(model, QuantConfig(method="trdq", w_bits=4, a_bits=8), prompts)

``model`` may be a model from ``trdq.load_model``, a diffusers pipeline, or a bare transformer
(then calibration data are its forward() inputs). Non-destructive: the full-precision model is
left as it was (its transformer gets calibration hooks only while calibrating); the quantized
model shares everything but the transformer.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline
from torch import nn

from trdq import cpu, kernels
from trdq.attention import AttentionQuant, quantize_attention
from trdq.calibrate import Calibration
from trdq.cfg import BRANCHES, CFGSplitTransformer
from trdq.config import QuantConfig, TimeGroups
from trdq.fingerprint import fingerprint
from trdq.layers import EXECUTION, IntLinear, QuantLinear, SharedIntLinear
from trdq.methods import Choice, check_choices, fit_layer, num_groups
from trdq.models.adapters import Adapter, UnsupportedArchitectureError, adapter_for
from trdq.models.loader import LoadedModel, ModelSettings
from trdq.sampling import generate
from trdq.siblings import SharedInput, input_siblings
from trdq.timegroups import GroupIndex, GroupState, track_timestep

log = logging.getLogger("trdq")


@dataclass(frozen=True)
class QuantInfo:
    """How a quantized model was made: enough to save it and to label its results."""

    config: QuantConfig
    index: GroupIndex
    base_model: str
    execution: str = "simulated"
    base_fingerprint: dict | None = None  # trdq.fingerprint of the FP transformer it was made from


Model = LoadedModel | DiffusionPipeline | nn.Module


@dataclass
class Prepared:
    """A transformer with its target layers chosen, ready to calibrate.

    Attributes:
        transformer: the full-precision transformer (left unchanged by every step).
        adapter: its architecture family.
        model: the pipeline it belongs to, or None for a bare transformer.
        given: what the caller passed (``loaded``, ``pipeline`` or ``transformer``); ``convert``
            returns the same kind.
        branch: calibrate on this CFG branch's rows only (``"cond"``/``"uncond"``; None: all).
    """

    transformer: nn.Module
    adapter: Adapter
    config: QuantConfig
    layers: dict[str, nn.Linear]
    model: LoadedModel | None = None
    given: str = "loaded"
    calibration: Calibration | None = None
    index: GroupIndex = field(default_factory=GroupIndex)
    branch: str | None = None


def target_layers(transformer: nn.Module, include: Sequence[str], exclude: Sequence[str]) -> dict[str, nn.Linear]:
    """``nn.Linear`` modules whose names match an include pattern and no exclude pattern."""
    return {name: m for name, m in transformer.named_modules()
            if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude)}


def _unwrap(model: Model) -> tuple[LoadedModel | None, nn.Module, str]:
    """(pipeline as a LoadedModel or None, transformer, kind given)."""
    if isinstance(model, DiffusionPipeline):
        model, given = LoadedModel(type(model).__name__, model, ModelSettings()), "pipeline"
    elif isinstance(model, LoadedModel):
        given = "loaded"
    elif isinstance(model, nn.Module):
        return None, model, "transformer"
    else:
        raise ValueError(f"cannot quantize a {type(model).__name__}: pass a diffusers pipeline, its "
                         "transformer, or a model from trdq.load_model()")
    transformer = getattr(model.pipe, "transformer", None)
    if transformer is None:
        raise UnsupportedArchitectureError(
            f"{model.name!r} has no `transformer` component; trdq quantizes diffusion transformers "
            "(PixArt, Latte, DiT, SD3, Sana), not UNets")
    return model, transformer, given


def prepare(model: Model, config: QuantConfig) -> Prepared:
    """Choose the layers to quantize.

    Args:
        model: a model from :func:`trdq.load_model`, a diffusers pipeline, or a bare transformer.

    Raises:
        UnsupportedArchitectureError: for a model without a supported diffusion transformer.
        ValueError: if the include/exclude patterns match no linear layer.
    """
    loaded, transformer, given = _unwrap(model)
    adapter = adapter_for(transformer)
    include = adapter.include if config.include is None else config.include
    exclude = adapter.exclude if config.exclude is None else config.exclude
    layers = target_layers(transformer, include, exclude)
    if not layers:
        raise ValueError(f"include={include} exclude={exclude} match no nn.Linear in "
                         f"{type(transformer).__name__}; list names with "
                         "[n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]")
    return Prepared(transformer, adapter, config, layers, loaded, given)


def calibrate(prepared: Prepared, data: Sequence, steps: int | None = None, guidance: float | None = None,
              seed: int = 0, batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
              timesteps: Sequence[float] | None = None) -> Prepared:
    """Record every target layer's input statistics per time group.

    With a pipeline, ``data`` are prompts, run through the full-precision pipeline over all
    ``steps`` (with CFG). With a bare transformer, ``data`` are keyword-argument dicts of its
    forward calls (``timestep`` included), and ``timesteps`` are the sampler's timesteps, first
    step first, from which the time groups are cut (needed with more than one group).

    Raises:
        ValueError: for empty data, groups that do not fit the steps, a missing ``timesteps``,
            or non-finite activations.
    """
    if isinstance(data, str | bytes):  # a string is a sequence too: of its characters
        raise ValueError(f"calibration data is one string ({data[:40]!r}); pass a list of prompts, e.g. [{data[:40]!r}]")
    if not data:
        raise ValueError("calibration needs at least one prompt (or, for a bare transformer, one input dict)")
    config, model = prepared.config, prepared.model
    groups = config.time_groups if num_groups(config) > 1 else TimeGroups(1)
    if model is not None:
        steps = steps or model.settings.steps
        scheduler = copy.deepcopy(model.pipe.scheduler)
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.tolist()
    elif timesteps is None and groups.num_groups > 1:
        raise ValueError("a bare transformer needs timesteps=... (the sampler's timesteps, first step first, "
                         "e.g. scheduler.timesteps after scheduler.set_timesteps(steps)) to cut time groups")
    prepared.index = GroupIndex.from_schedule(groups, timesteps) if timesteps is not None else GroupIndex()
    state = GroupState(prepared.index)
    calibration = Calibration(prepared.layers, state, prepared.index.num_groups, seed=config.seed,
                              branch=prepared.branch)
    handle = track_timestep(prepared.transformer, state, prepared.adapter.timestep_position)
    try:
        with calibration:
            if model is not None:
                generate(model, list(data), [seed + i for i in range(len(data))], steps=steps,
                                guidance=guidance, batch_size=batch_size, progress=progress)
            else:
                _run_inputs(prepared.transformer, data, progress)
    finally:
        handle.remove()
    calibration.check_complete()
    prepared.calibration = calibration
    return prepared


def calibrate_groups(model: Model, time_groups: TimeGroups, data: Sequence, config_seed: int = 0,
                     include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                     **calibrate_kwargs) -> Prepared:
    """Statistics that serve every method: recorded per time group of ``time_groups`` (as TR-DQ
    keeps them), for :func:`convert` with any config of those groups and layers whose ``seed`` is
    ``config_seed`` (one-group methods merge the groups). ``calibrate_kwargs`` go to :func:`calibrate`."""
    config = QuantConfig(method="trdq", time_groups=time_groups, seed=config_seed, include=include,
                         exclude=exclude)
    return calibrate(prepare(model, config), data, **calibrate_kwargs)


class Calibrating:
    """What :func:`calibrating` yields: the statistics being recorded, then :meth:`convert`."""

    def __init__(self, prepared: Prepared, groups: TimeGroups, timesteps: Sequence[float] | None):
        self.prepared, self._groups = prepared, groups
        self._state = GroupState(GroupIndex())
        self._schedule: list[float] | None = None
        self._calls = 0
        self._undo: list[Callable[[], None]] = []
        if timesteps is not None:
            self._cut(timesteps)

    def _cut(self, timesteps) -> None:
        """Cut the time groups from a sampler's timesteps (first step first); every run must
        follow one schedule."""
        schedule = [float(t) for t in timesteps]
        if self._schedule is not None and schedule != self._schedule:
            raise ValueError(f"calibration saw a schedule of {len(schedule)} steps after one of "
                             f"{len(self._schedule)}: time groups need one schedule, so calibrate with "
                             "the steps you will sample with in every call")
        self._state.index = GroupIndex.from_schedule(self._groups, schedule)
        self._schedule = schedule

    def __enter__(self) -> Calibrating:
        prepared = self.prepared
        calibration = Calibration(prepared.layers, self._state, self._groups.num_groups, seed=prepared.config.seed,
                                  branch=prepared.branch)
        scheduler = getattr(prepared.model.pipe, "scheduler", None) if prepared.model is not None else None
        if scheduler is not None:  # the pipeline sets its schedule before its first denoising step
            original, own = scheduler.set_timesteps, "set_timesteps" in vars(scheduler)

            def set_timesteps(*args, **kwargs):
                original(*args, **kwargs)
                self._cut(scheduler.timesteps.tolist())

            scheduler.set_timesteps = set_timesteps
            self._undo.append(lambda: setattr(scheduler, "set_timesteps", original) if own
                              else delattr(scheduler, "set_timesteps"))

        def before_call(_module, _args):
            if self._groups.num_groups > 1 and self._schedule is None:
                raise ValueError("the transformer ran before any schedule was known: calibrating() cuts time "
                                 "groups from the pipeline's scheduler.set_timesteps; call the pipeline, or "
                                 "pass timesteps=[...] (the sampler's, first step first)")
            self._calls += 1

        hooks = [prepared.transformer.register_forward_pre_hook(before_call),
                 track_timestep(prepared.transformer, self._state, prepared.adapter.timestep_position)]
        self._undo += [h.remove for h in hooks]
        calibration.__enter__()
        self._undo.append(lambda: calibration.__exit__(None, None, None))
        self._calibration = calibration
        return self

    def __exit__(self, *exc) -> None:
        while self._undo:
            self._undo.pop()()
        if exc[0] is not None:
            return
        if self._calls == 0:
            raise ValueError("calibrating() saw no call of the model: run your pipeline (or transformer) on "
                             "calibration prompts inside the with block")
        self._calibration.check_complete()
        self.prepared.calibration, self.prepared.index = self._calibration, self._state.index

    def convert(self, config: QuantConfig | None = None, choices: dict[str, list[Choice]] | None = None) -> Model:
        """The quantized model: :func:`convert` of these statistics."""
        if self.prepared.calibration is None:
            raise RuntimeError("call convert() after the with block of calibrating(), once the statistics are complete")
        return convert(self.prepared, config, choices)


def calibrating(model: Model, config: QuantConfig, timesteps: Sequence[float] | None = None) -> Calibrating:
    """Record calibration statistics while your own code runs the model::

        with trdq.calibrating(pipe, config) as cal:
            pipe(prompts, num_inference_steps=20, guidance_scale=4.5)
        qpipe = cal.convert()                     # or cal.convert(other_config)

    Any scheduler, steps, guidance or resolution: the time groups are cut from the timesteps the
    pipeline sets (``scheduler.set_timesteps``), and every call inside the block must use that
    schedule. For a bare transformer (or a loop of your own) with more than one group, pass the
    sampler's ``timesteps``, first step first. The model is unchanged after the block.

    Raises (at the end of the block):
        ValueError: if the model was not called, a time group saw no step (fewer steps than
            groups), or the transformer ran before its schedule was known.
    """
    prepared = prepare(model, config)
    groups = config.time_groups if num_groups(config) > 1 else TimeGroups(1)
    return Calibrating(prepared, groups, timesteps)


def _run_inputs(transformer: nn.Module, data: Sequence[dict], progress: Callable[[int, int], None] | None) -> None:
    with torch.no_grad():
        for i, kwargs in enumerate(data):
            if not isinstance(kwargs, dict):
                raise ValueError(f"calibration input {i} is a {type(kwargs).__name__}; a bare transformer "
                                 "takes dicts of forward() keyword arguments, timestep included")
            transformer(**kwargs)
            if progress is not None:
                progress(i + 1, len(data))


def convert(prepared: Prepared, config: QuantConfig | None = None,
            choices: dict[str, list[Choice]] | None = None) -> Model:
    """Build the quantized model from calibration statistics (the FP model is untouched).

    Args:
        prepared: a calibrated :class:`Prepared`.
        config: quantize with these settings instead of ``prepared.config``, reusing its
            statistics: one calibration serves every method and bit width. The config must choose
            the same layers and seed as the calibration's; a method with time groups needs the
            calibration's time groups, and a one-group method takes any (its statistics merged
            into one group, as a one-group calibration records them).
        choices: per quantized layer, one ``(alpha, kind)`` per time group to fit instead of
            searching (:func:`choices_of` an earlier model). On the statistics that search saw,
            the model is the one it made, at the cost of fitting one candidate.

    Returns:
        The kind :func:`prepare` was given: a :class:`LoadedModel`, a pipeline, or a transformer.

    Raises:
        RuntimeError: if ``calibrate`` has not run.
        ValueError: for a ``config`` the calibration cannot serve.
    """
    if prepared.calibration is None:
        raise RuntimeError("convert() needs calibration statistics: call calibrate(prepared, prompts) first")
    config = prepared.config if config is None else config
    calibration, index = _statistics_for(prepared, config)
    if choices is not None:
        check_choices(choices, list(prepared.layers), index.num_groups, config)
    siblings = _joint_fits(prepared, calibration, config, choices)
    transformer = copy.deepcopy(prepared.transformer)
    state = GroupState(index)
    fitted: dict[str, list] = {}  # first sibling -> the transforms all its siblings take
    for name in prepared.layers:
        fp = transformer.get_submodule(name)
        first = siblings.get(name, (name,))[0]
        if first not in fitted:
            w = torch.cat([prepared.layers[m].weight for m in siblings.get(name, (name,))])  # (sum C_out, C_in)
            fitted[first] = fit_layer(w, calibration.observers[first], config, choices[first] if choices else None)
        transforms = fitted[first]
        replace_module(transformer, name, QuantLinear.from_linear(
            fp, transforms, config.w_bits, config.a_bits, state, config.w_group_size, config.a_symmetric))
    base = prepared.model.name if prepared.model is not None else type(transformer).__name__
    info = QuantInfo(config, index, base, base_fingerprint=fingerprint(prepared.transformer))
    track_quantized(transformer, state, info)
    if prepared.model is None:
        return transformer
    return rewrap(prepared.model.pipe if prepared.given == "pipeline" else prepared.model, transformer)


def _joint_fits(prepared: Prepared, calibration: Calibration, config: QuantConfig,
                choices: dict[str, list[Choice]] | None) -> dict[str, tuple[str, ...]]:
    """Each quantized layer that shares its input and transform with siblings (``config.shared_inputs``,
    :func:`trdq.siblings.input_siblings`) -> its sibling set. A set whose calibration inputs differ
    (a processor that does not feed them one tensor) is fitted layer by layer, with a warning."""
    if not config.shared_inputs:
        return {}
    out = {}
    for members in input_siblings(prepared.transformer, prepared.layers):
        observers = [calibration.observers[m] for m in members]
        if not all(torch.equal(o.absmax, observers[0].absmax) for o in observers[1:]):
            log.warning("shared_inputs: %s saw different inputs in calibration; each gets its own transform",
                        ", ".join(members))
            continue
        if choices is not None and any(choices[m] != choices[members[0]] for m in members[1:]):
            raise ValueError(f"choices: {', '.join(members)} read one input and share one transform with "
                             "shared_inputs=True; give them the same choices")
        out.update({m: members for m in members})
    return out


def link_siblings(transformer: nn.Module) -> list[tuple[str, ...]]:
    """Have the quantized layers of ``transformer`` that read one input with one transform
    compute it once per input (:class:`trdq.siblings.SharedInput`); returns the sets linked.

    A set is linked only if its layers' transforms are the same linear map in every time group
    (bit-identical images of the identity matrix), as a joint fit makes them; others (a model
    quantized without ``shared_inputs``) stay apart."""
    layers = {name: m for name, m in transformer.named_modules() if isinstance(m, QuantLinear | IntLinear)}
    linked = []
    for members in input_siblings(transformer, layers):
        first, *rest = (layers[m] for m in members)
        probe = torch.eye(first.in_features, device=next(first.buffers()).device)  # the whole map, exactly

        def seen(m: nn.Module, g: int) -> torch.Tensor:  # eagerly: a probe must not compile anything
            t = m.transforms[g]
            return t.activation(probe) if isinstance(m, QuantLinear) else t.apply(probe)

        groups = range(len(first.transforms))
        same = all(type(m) is type(first) and len(m.transforms) == len(first.transforms) and
                   (m.a_bits, m.a_symmetric) == (first.a_bits, first.a_symmetric) for m in rest)
        if same:
            expected = [seen(first, g) for g in groups]
            same = all(torch.equal(seen(m, g), e) for m in rest for g, e in zip(groups, expected))
        holder = SharedInput(len(members)) if same else None
        for m in (first, *rest):
            m.shared_input = holder
        if same:
            linked.append(members)
    return linked


def choices_of(qmodel: Model) -> dict[str, list[Choice]]:
    """What a quantized model's fit chose, per layer and time group: ``(alpha, kind)`` (see
    :func:`convert`'s ``choices``)."""
    return {name: [(t.alpha, t.kind) for t in m.transforms]
            for name, m in transformer_of(qmodel).named_modules() if isinstance(m, QuantLinear)}


def _statistics_for(prepared: Prepared, config: QuantConfig) -> tuple[Calibration, GroupIndex]:
    """The calibration statistics and time-group index ``config`` quantizes with."""
    calibrated = prepared.config
    if config is not calibrated:
        if config.cfg_split:
            raise ValueError("convert() quantizes one transformer; a CFG split (cfg_split=True) calibrates "
                             "each branch apart: use trdq.quantize(model, config, prompts)")
        if config.seed != calibrated.seed:
            raise ValueError(f"the calibration was recorded with seed={calibrated.seed}, the config asks "
                             f"seed={config.seed}; use the same seed (it draws the calibration's row sample)")
        include = prepared.adapter.include if config.include is None else config.include
        exclude = prepared.adapter.exclude if config.exclude is None else config.exclude
        if list(target_layers(prepared.transformer, include, exclude)) != list(prepared.layers):
            raise ValueError("the config's include/exclude patterns choose other layers than the calibration "
                             "recorded; calibrate with prepare(model, config) for those layers")
    calibration, index = prepared.calibration, prepared.index
    if num_groups(config) == 1:
        return (calibration.merged(), GroupIndex()) if index.num_groups > 1 else (calibration, index)
    if num_groups(calibrated) == 1 or config.time_groups != calibrated.time_groups:
        raise ValueError(f"{config.method} quantizes per time group ({_groups(config.time_groups)}) but the "
                         f"calibration kept {_groups(calibrated.time_groups) if index.num_groups > 1 else 'one group'}; "
                         "calibrate with a config of those time groups and a method that uses them (viditq, trdq)")
    return calibration, index


def _groups(groups: TimeGroups) -> str:
    return f"{groups.num_groups} groups" + (f" split at steps {list(groups.boundaries)}" if groups.boundaries else "")


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where ``root.get_submodule(name)`` is."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def track_quantized(transformer: nn.Module, state: GroupState, info: QuantInfo) -> None:
    """Make a transformer with quantized layers find its time group at every call, carry ``info``
    as ``transformer.trdq_info``, quantize its attention scores when the config asks (simulated
    or real as ``info.execution`` says), and link the layers that share an input
    (``shared_inputs``, :func:`link_siblings`)."""
    handle = track_timestep(transformer, state, adapter_for(transformer).timestep_position)
    transformer.trdq_info, transformer.trdq_hook_id = info, handle.id
    if info.config.shared_inputs:
        link_siblings(transformer)
    if info.config.attention_bits is not None:
        quantize_attention(transformer, AttentionQuant(info.config.attention_bits, real=info.execution != EXECUTION))


DEPLOYMENTS = ("per-group", "shared", "jit")


def realize(qmodel: Model, deployment: str = "per-group", base: Model | None = None, dtype: torch.dtype | None = None,
            compile: bool = False, gemm: str | None = None, compact_rotations: bool | None = None) -> Model:
    """Real integer execution of a quantized model (docs/method.md §7).

    Every simulated :class:`~trdq.layers.QuantLinear` becomes a real integer layer: int8 GEMMs
    on per-token int8 activations, 4-bit weights packed two per byte, the time group's transform
    applied to activations online in factored form. Non-destructive: ``qmodel`` stays simulated.

    Args:
        qmodel: a simulated quantized model (from :func:`quantize` or :func:`trdq.load`).
        deployment: ``per-group`` (the simulated model's own codes, one stored copy per
            distinct time-group transform; with float32 outside the integer layers, outputs match the
            simulated path to float32 rounding: over 90 dB on one transformer call)
            or ``shared`` (one int8 master of the FP weight, each group's codes rebuilt
            from it when the group changes; needs ``base``), or ``jit`` (the same master, the codes
            rebuilt at every call and dropped after it: weights at rest are one int8 copy at any
            number of groups; needs ``base``).
        base: the full-precision model ``qmodel`` was made from (for ``shared`` and ``jit``).
        dtype: run everything but the integer layers (attention, norms, embedders, the final
            layer) in this dtype, e.g. ``torch.bfloat16``; the transformer casts its float inputs
            to it and its output back. None: as ``qmodel`` is. The integer layers apply their online
            transforms in it too (float32 when None), keep float32 weight scales and quantize
            activations in float32, and return the dtype they are given.
        compile: run each integer layer's activation quantization, int8 GEMM and dequantization
            through ``torch.compile`` as fused loops (:func:`trdq.layers.compiled_quantized_linear`),
            and block-rotation transforms too (:func:`trdq.rotation.compiled_rotate_rows`, static
            shapes), and ``shared``/``jit``'s rebuild of a group's codes from the master
            (:func:`trdq.layers.compiled_rebuilt_codes`); a model's first step compiles.
        gemm: the int8 GEMM on the CPU, a name of :data:`trdq.kernels.GEMMS`; None picks the
            fastest exact one for this CPU and each layer's weight bits (:func:`trdq.cpu.int8_gemm`:
            ``torch._int_mm`` with VNNI or AMX, else fbgemm for weights of up to 7 bits, else
            fp32 GEMMs over exact K chunks). Off the CPU, ``torch._int_mm`` runs.
        compact_rotations: keep DuQuant's block rotations as their greedy reflections and build
            the blocks at every call (a few bytes per channel instead of ``2 b`` floats per channel
            and group, for a few small batched products per call) rather than as dense blocks.
            None: dense for ``per-group`` (the fast deployment), compact for ``shared`` and
            ``jit`` (the small ones).

    Returns:
        The same kind of object as ``qmodel``, labelled ``"real integer"``.

    Raises:
        ValueError: for a model that is not a simulated quantized one, grouped weights, an unknown
            deployment or GEMM, or ``shared``/``jit`` without ``base``.
    """
    if gemm is not None and gemm not in kernels.GEMMS:
        raise ValueError(f"unknown int8 GEMM {gemm!r}; choose one of {', '.join(kernels.GEMMS)}, or None for "
                         "this machine's fastest exact one")
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"unknown deployment {deployment!r}; choose one of {', '.join(DEPLOYMENTS)}")
    if deployment != "per-group" and base is None:
        raise ValueError(f"deployment={deployment!r} rebuilds every group's weights from an int8 master of the "
                         "full-precision weights: pass base=<the FP model the quantized one was made from>")
    info = quant_info(qmodel)
    if info is None or info.execution != EXECUTION:
        raise ValueError("realize() takes a simulated quantized model, the output of trdq.quantize() or trdq.load()")
    if info.config.w_group_size is not None:
        raise ValueError("the real integer path quantizes weights per output channel; quantize with w_group_size=None")
    fp = None if base is None else _unwrap(base)[1]
    source = transformer_of(qmodel)
    if isinstance(source, CFGSplitTransformer):  # each branch with its own bits
        transformer = CFGSplitTransformer(*(_realize_transformer(t, deployment, fp, dtype, compile, gemm,
                                                                 compact_rotations)
                                            for t in (source.uncond, source.cond)))
        transformer.trdq_info = dataclasses.replace(info, execution=IntLinear.execution)
    else:
        transformer = _realize_transformer(source, deployment, fp, dtype, compile, gemm, compact_rotations)
    return rewrap(qmodel, transformer)


def _realize_transformer(source: nn.Module, deployment: str, fp: nn.Module | None, dtype: torch.dtype | None,
                         compile: bool, gemm: str | None, compact_rotations: bool | None = None) -> nn.Module:
    info = source.trdq_info
    # copy all but the simulated layers' float weights, which the integer layers do not use
    memo = {id(m.weights_fq): None for m in source.modules()
            if isinstance(m, QuantLinear) and m.weights_fq is not None}
    transformer = copy.deepcopy(source, memo)
    # the copied timestep hook would drive the original's state: drop it, track the copy's own
    transformer._forward_pre_hooks.pop(transformer.trdq_hook_id, None)
    transformer._forward_pre_hooks_with_kwargs.pop(transformer.trdq_hook_id, None)
    state = GroupState(info.index)
    for name, m in list(transformer.named_modules()):
        if isinstance(m, QuantLinear):
            m.state = state
            weight = None if deployment == "per-group" else fp.get_submodule(name).weight
            replace_module(transformer, name, integer_layer(m, info.config.w_bits, deployment, weight, dtype,
                                                            compile, gemm, compact_rotations))
    return finish_real(transformer, state, info, dtype)


def integer_layer(m: QuantLinear, w_bits: int, deployment: str = "per-group", weight: torch.Tensor | None = None,
                  dtype: torch.dtype | None = None, compile: bool = False, gemm: str | None = None,
                  compact_rotations: bool | None = None) -> IntLinear:
    """The real integer layer of simulated layer ``m`` (see :func:`realize`; ``weight``: its
    full-precision weight, for ``shared`` and ``jit``)."""
    layer = (IntLinear.from_quant(m, w_bits, dtype or torch.float32, compact_rotations) if deployment == "per-group"
             else SharedIntLinear.from_weight(m, weight, w_bits, dtype or torch.float32,
                                              keep_active=deployment == "shared", compact_rotations=compact_rotations))
    layer.compiled = compile
    return layer.use_gemm(gemm or cpu.int8_gemm(w_bits))


def finish_real(transformer: nn.Module, state: GroupState, info: QuantInfo, dtype: torch.dtype | None) -> nn.Module:
    """Label ``transformer``, whose quantized layers are now integer layers sharing ``state``, as
    real integer, track its time groups, and cast its float parts to ``dtype`` (None: as they are)."""
    track_quantized(transformer, state, dataclasses.replace(info, execution=IntLinear.execution))
    if dtype is not None:
        _float_parts_to(transformer, dtype)
    return transformer


def _float_parts_to(transformer: nn.Module, dtype: torch.dtype) -> None:
    """Cast every floating parameter and buffer outside the integer layers to ``dtype``, and have
    the transformer cast its floating inputs (the timestep aside) to it and its output back to the
    dtype of its ``hidden_states``, so the pipeline around it is unchanged."""
    for m in transformer.modules():
        if isinstance(m, IntLinear):
            continue
        for _, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            if t.is_floating_point():
                t.data = t.data.to(dtype)

    def cast(value):
        return value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value

    given = []  # the dtype of the call's hidden_states, to give the output back in

    def cast_inputs(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        given[:] = [hidden.dtype if torch.is_tensor(hidden) else torch.float32]
        return tuple(cast(a) for a in args), {k: v if k == "timestep" else cast(v) for k, v in kwargs.items()}

    def cast_output(module, args, kwargs, output):
        back = given[0]
        if isinstance(output, tuple):
            return tuple(o.to(back) if torch.is_tensor(o) else o for o in output)
        output.sample = output.sample.to(back)
        return output

    transformer.register_forward_pre_hook(cast_inputs, with_kwargs=True)
    transformer.register_forward_hook(cast_output, with_kwargs=True)


def transformer_of(model: Model) -> nn.Module:
    """The transformer of a model, a pipeline, or the transformer itself."""
    return model.pipe.transformer if isinstance(model, LoadedModel) else getattr(model, "transformer", model)


def rewrap(like: Model, transformer: nn.Module) -> Model:
    """``transformer`` (made by :func:`track_quantized`) in the same kind of object as ``like``: a
    :class:`LoadedModel` or a pipeline sharing ``like``'s other components, or itself."""
    if isinstance(like, LoadedModel):
        return assemble(like, transformer)
    if isinstance(like, DiffusionPipeline):
        return assemble(LoadedModel(type(like).__name__, like, ModelSettings()), transformer).pipe
    return transformer


def quant_info(model: Model) -> QuantInfo | None:
    """How ``model`` was quantized, or None for a full-precision model."""
    if isinstance(model, LoadedModel):
        return model.quant
    transformer = getattr(model, "transformer", model)
    return getattr(transformer, "trdq_info", None)


def assemble(base: LoadedModel, transformer: nn.Module) -> LoadedModel:
    """A quantized model: ``transformer`` (made by :func:`track_quantized`) joins a copy of
    ``base``'s pipeline that shares every other component."""
    info = transformer.trdq_info
    pipe = type(base.pipe)(**{**base.pipe.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    label = f"{info.config.method}-{info.config.bits}" + ("-int" if info.execution != EXECUTION else "")
    return LoadedModel(name=f"{info.base_model}:{label}", pipe=pipe, settings=base.settings, quant=info)


def quantize(model: Model, config: QuantConfig, calibration_data: Sequence, steps: int | None = None,
             guidance: float | None = None, seed: int = 0, progress: Callable[[int, int], None] | None = None,
             timesteps: Sequence[float] | None = None) -> Model:
    """Quantize a model's transformer with ``config`` (simulated execution).

    Args:
        model: a model from :func:`trdq.load_model`, a diffusers pipeline, or a bare transformer.
        config: method, bits, time groups, rotation, layer patterns.
        calibration_data: prompts for a pipeline (run through it in full precision); for a bare
            transformer, dicts of forward() keyword arguments (see :func:`calibrate`).
        steps, guidance: sampler settings of calibration (the model's defaults if None); use
            those you will sample with.
        seed: first calibration seed.
        progress: called with (items done, total) during calibration.
        timesteps: a bare transformer's sampler timesteps, first step first.

    Returns:
        The same kind of object as ``model``, whose transformer holds
        :class:`~trdq.layers.QuantLinear` layers; ``model`` itself is unchanged.
    """
    if config.cfg_split:
        return _quantize_branches(model, config, calibration_data, steps, guidance, seed, progress, timesteps)
    prepared = calibrate(prepare(model, config), calibration_data, steps, guidance, seed, progress=progress,
                         timesteps=timesteps)
    return convert(prepared)


def _quantize_branches(model: Model, config: QuantConfig, data: Sequence, steps, guidance, seed, progress,
                       timesteps) -> Model:
    """CFG split: one quantized transformer per branch, calibrated on that branch's rows only."""
    single = dataclasses.replace(config, cfg_split=False, uncond_bits=None)
    parts = {}
    for branch in BRANCHES:
        part = single
        if branch == "uncond" and config.uncond_bits is not None:
            part = dataclasses.replace(single, w_bits=config.uncond_bits[0], a_bits=config.uncond_bits[1])
        prepared = prepare(model, part)
        prepared.branch = branch
        calibrate(prepared, data, steps, guidance, seed, progress=progress, timesteps=timesteps)
        parts[branch] = transformer_of(convert(prepared))
    split = CFGSplitTransformer(parts["uncond"], parts["cond"])
    split.trdq_info = dataclasses.replace(parts["cond"].trdq_info, config=config)
    return rewrap(model, split)
