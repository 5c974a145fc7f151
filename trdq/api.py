"""The public verbs: ``quantize`` and, underneath it, ``prepare`` -> ``calibrate`` -> ``convert``.

    qmodel = trdq.quantize(model, QuantConfig(method="trdq", w_bits=4, a_bits=8), prompts)

Non-destructive: the full-precision model is left as it was (its transformer gets calibration
hooks only while calibrating); the quantized model shares everything but the transformer.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from trdq.calibrate import Calibration
from trdq.config import QuantConfig, TimeGroups
from trdq.generate import generate_images
from trdq.layers import QuantLinear
from trdq.methods import fit_layer, num_groups
from trdq.models.loader import LoadedModel
from trdq.timegroups import GroupIndex, GroupState, track_timestep

@dataclass(frozen=True)
class QuantInfo:
    """How a quantized model was made: enough to save it and to label its results."""

    config: QuantConfig
    index: GroupIndex
    base_model: str
    execution: str = "simulated"


@dataclass
class Prepared:
    """A model with its target layers chosen, ready to calibrate."""

    model: LoadedModel
    config: QuantConfig
    layers: dict[str, nn.Linear]
    calibration: Calibration | None = None
    index: GroupIndex = field(default_factory=GroupIndex)


def target_layers(transformer: nn.Module, include: Sequence[str], exclude: Sequence[str]) -> dict[str, nn.Linear]:
    """``nn.Linear`` modules whose names match an include pattern and no exclude pattern."""
    return {name: m for name, m in transformer.named_modules()
            if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude)}


def prepare(model: LoadedModel, config: QuantConfig) -> Prepared:
    """Choose the layers to quantize.

    Raises:
        ValueError: if the model has no transformer or the patterns match no linear layer.
    """
    transformer = getattr(model.pipe, "transformer", None)
    if transformer is None:
        raise ValueError(f"{model.name!r} has no `transformer` component; trdq quantizes diffusion "
                         "transformers (PixArt, DiT, Latte, SD3, Flux, Sana), not UNets")
    layers = target_layers(transformer, config.include, config.exclude)
    if not layers:
        raise ValueError(f"include={config.include} exclude={config.exclude} match no nn.Linear in "
                         f"{type(transformer).__name__}; list names with "
                         "[n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]")
    return Prepared(model, config, layers)


def calibrate(prepared: Prepared, prompts: Sequence[str], steps: int | None = None,
              guidance: float | None = None, seed: int = 0, batch_size: int = 8,
              progress: Callable[[int, int], None] | None = None) -> Prepared:
    """Run the full-precision pipeline on ``prompts`` through all steps (with CFG) and record
    every target layer's input statistics per time group."""
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    model, config = prepared.model, prepared.config
    steps = steps or model.settings.steps
    scheduler = copy.deepcopy(model.pipe.scheduler)
    scheduler.set_timesteps(steps)
    groups = config.time_groups if num_groups(config) > 1 else TimeGroups(1)
    prepared.index = GroupIndex.from_schedule(groups, scheduler.timesteps.tolist())
    state = GroupState(prepared.index)
    calibration = Calibration(prepared.layers, state, prepared.index.num_groups, seed=config.seed)
    handle = track_timestep(model.pipe.transformer, state)
    try:
        with calibration:
            generate_images(model, list(prompts), [seed + i for i in range(len(prompts))], steps=steps,
                            guidance=guidance, batch_size=batch_size, progress=progress)
    finally:
        handle.remove()
    calibration.check_complete()
    prepared.calibration = calibration
    return prepared


def convert(prepared: Prepared) -> LoadedModel:
    """Build the quantized model from calibration statistics (the FP model is untouched).

    Raises:
        RuntimeError: if ``calibrate`` has not run.
    """
    if prepared.calibration is None:
        raise RuntimeError("convert() needs calibration statistics: call calibrate(prepared, prompts) first")
    config, model = prepared.config, prepared.model
    transformer = copy.deepcopy(model.pipe.transformer)
    state = GroupState(prepared.index)
    for name in prepared.layers:
        fp = transformer.get_submodule(name)
        transforms = fit_layer(fp.weight, prepared.calibration.observers[name], config)
        replace_module(transformer, name, QuantLinear.from_linear(
            fp, transforms, config.w_bits, config.a_bits, state, config.w_group_size, config.a_symmetric))
    return assemble(model, transformer, state, QuantInfo(config, prepared.index, model.name))


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where ``root.get_submodule(name)`` is."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def assemble(base: LoadedModel, transformer: nn.Module, state: GroupState, info: QuantInfo) -> LoadedModel:
    """A quantized model: ``transformer`` tracks its time group and joins a copy of ``base``'s
    pipeline that shares every other component."""
    track_timestep(transformer, state)
    pipe = type(base.pipe)(**{**base.pipe.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(name=f"{base.name}:{info.config.method}-{info.config.bits}", pipe=pipe,
                       settings=base.settings, quant=info)


def quantize(model: LoadedModel, config: QuantConfig, calibration_prompts: Sequence[str],
             steps: int | None = None, guidance: float | None = None, seed: int = 0,
             progress: Callable[[int, int], None] | None = None) -> LoadedModel:
    """Quantize a model's transformer with ``config`` (simulated execution).

    Args:
        model: a loaded pipeline (see :func:`trdq.models.load_model`).
        config: method, bits, time groups, rotation, layer patterns.
        calibration_prompts: prompts run through the FP pipeline to gather statistics.
        steps, guidance: sampler settings of calibration (the model's defaults if None); use
            those you will sample with.
        seed: first calibration seed.
        progress: called with (prompts done, total) during calibration.

    Returns:
        A new :class:`LoadedModel` whose transformer holds :class:`~trdq.layers.QuantLinear` layers.
    """
    prepared = calibrate(prepare(model, config), calibration_prompts, steps, guidance, seed, progress=progress)
    return convert(prepared)
