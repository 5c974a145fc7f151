"""Save and load quantized models: safetensors for tensors, a JSON manifest for the rest.

A saved folder holds ``manifest.json`` (format, execution label, base model, config, time-group
thresholds, per-layer alphas, transform kinds and rotation structure) and ``quantized.safetensors``
(int8 weight codes and float64 scales per group, biases, smoothing factors, and the rotations as
their factors: blocks, permutations, signs; a Hadamard is rebuilt from its order). Everything else comes from
the base model, so loading needs the base model but no calibration, and gives bit-identical outputs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trdq.api import Model, QuantInfo, quant_info, replace_module, rewrap, track_quantized, transformer_of
from trdq.config import QuantConfig
from trdq.layers import EXECUTION, GroupTransform, QuantLinear
from trdq.models.loader import load_model
from trdq.rotation import Rotation
from trdq.timegroups import GroupIndex, GroupState

FORMAT = "trdq-simulated-v2"  # v2: rotations stored as their factors
MANIFEST, TENSORS = "manifest.json", "quantized.safetensors"


def save(qmodel: Model, path: str | Path) -> Path:
    """Write a quantized model's quantized state to folder ``path`` (created if needed).

    Args:
        qmodel: what :func:`trdq.quantize` returned (a model, a pipeline or a transformer).

    Raises:
        ValueError: if ``qmodel`` is not a quantized model.
    """
    info = quant_info(qmodel)
    if info is None:
        raise ValueError(f"this {type(qmodel).__name__} is not quantized; save the output of trdq.quantize()")
    if info.execution != EXECUTION:
        raise ValueError("save the simulated model (the output of trdq.quantize) and call trdq.realize() "
                         "after trdq.load(); real integer models are rebuilt, not saved")
    if info.config.cfg_split:
        raise ValueError("CFG-split models (cfg_split=True) cannot be saved yet; quantize them again "
                         "from the FP model, or save a model quantized without cfg_split")
    transformer = transformer_of(qmodel)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    layers = {}
    for name, m in transformer.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        tensors[f"{name}.w_codes"], tensors[f"{name}.w_scale"] = m.w_codes, m.w_scale
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.detach()
        for g, t in enumerate(m.transforms):
            if t.delta is not None:
                tensors[f"{name}.{g}.delta"] = t.delta
        rotations = [None if t.rotation is None else _put_rotation(tensors, f"{name}.{g}", t.rotation)
                     for g, t in enumerate(m.transforms)]
        layers[name] = {"alphas": [t.alpha for t in m.transforms], "kinds": [t.kind for t in m.transforms],
                        "rotations": rotations, "a_bits": m.a_bits, "a_symmetric": m.a_symmetric}
    manifest = {
        "format": FORMAT, "execution": info.execution, "base_model": info.base_model,
        "transformer_class": type(transformer).__name__,
        "config": info.config.to_dict(), "thresholds": list(info.index.thresholds), "layers": layers,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / TENSORS))
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _put_rotation(tensors: dict[str, torch.Tensor], key: str, rotation: Rotation) -> list:
    """Store a rotation's factors under ``key.rot<i>...``; returns the manifest entry
    ``[size, [kind, extra], ...]`` (extra: the Hadamard order, or the number of blocks)."""
    entry: list = [rotation.size]
    for i, (kind, value) in enumerate(rotation.stages):
        if kind == "hadamard":
            entry.append([kind, value])
            continue
        if kind == "blocks":
            for j, block in enumerate(value):
                tensors[f"{key}.rot{i}.{j}"] = block
            entry.append([kind, len(value)])
            continue
        tensors[f"{key}.rot{i}"] = value
        entry.append([kind, None])
    return entry


def _get_rotation(tensors: dict[str, torch.Tensor], key: str, entry: list | None) -> Rotation | None:
    if entry is None:
        return None
    size, *stages = entry
    out = []
    for i, (kind, extra) in enumerate(stages):
        if kind == "hadamard":
            out.append((kind, extra))
        elif kind == "blocks":
            out.append((kind, [tensors[f"{key}.rot{i}.{j}"] for j in range(extra)]))
        else:
            out.append((kind, tensors[f"{key}.rot{i}"]))
    return Rotation(size, tuple(out))


def load(path: str | Path, base: Model | None = None) -> Model:
    """Rebuild a quantized model saved by :func:`save`.

    Args:
        path: the saved folder.
        base: the full-precision model it was made from (a model, a pipeline or a transformer);
            loaded by the manifest's name if None.

    Returns:
        The same kind of object as ``base`` (a :class:`LoadedModel` when loaded by name).

    Raises:
        FileNotFoundError / ValueError: for a folder that is not a trdq save, or a base model of
            another architecture.
    """
    path = Path(path)
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(f"{path} holds no {MANIFEST}; it was not written by trdq.save()")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported format {manifest.get('format')!r}; expected {FORMAT}")
    base = base if base is not None else load_model(manifest["base_model"])
    fp = transformer_of(base)
    if type(fp).__name__ != manifest["transformer_class"]:
        raise ValueError(f"{path} quantizes a {manifest['transformer_class']}, but the base model has a "
                         f"{type(fp).__name__}; pass the model it was made from")
    tensors = load_file(str(path / TENSORS))
    transformer = copy.deepcopy(fp)
    index = GroupIndex(tuple(manifest["thresholds"]))
    state = GroupState(index)
    for name, meta in manifest["layers"].items():
        transforms = [GroupTransform(delta=tensors.get(f"{name}.{g}.delta"), alpha=alpha,
                                     rotation=_get_rotation(tensors, f"{name}.{g}", stages))
                      for g, (alpha, stages) in enumerate(zip(meta["alphas"], meta["rotations"]))]
        replace_module(transformer, name, QuantLinear(
            tensors[f"{name}.w_codes"], tensors[f"{name}.w_scale"], tensors.get(f"{name}.bias"), transforms,
            meta["a_bits"], meta["a_symmetric"], state))
    info = QuantInfo(QuantConfig.from_dict(manifest["config"]), index, manifest["base_model"], manifest["execution"])
    track_quantized(transformer, state, info)
    return rewrap(base, transformer)
