"""Save and load quantized models: safetensors for tensors, a JSON manifest for the rest.

A saved folder holds ``manifest.json`` (format, execution label, base model, config, time-group
thresholds, per-layer alphas, transform kinds and rotation structure) and ``quantized.safetensors``
(int8 weight codes and float64 scales per group, biases, smoothing factors, and the rotations as
their factors: blocks, the greedy fit's pivots, permutations, signs; a Hadamard is rebuilt from its
order, a greedy block rotation from its pivots and seed). Everything else comes from
the base model, so loading needs the base model but no calibration, and gives bit-identical outputs.

Loading trusts nothing in the folder: every field and tensor is checked (presence, dtype, shape
against the base model's layers, finite positive scales, codes on the grid, rotations of the
layer's width) and the base model's weights against the fingerprint taken when the model was
quantized, before anything is built. Each problem is one :class:`SavedModelError` naming the file
and the field. Saving writes a new folder beside the target and renames it into place, so an
interrupted save leaves the previous one intact.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from trdq import kernels
from trdq.api import Model, QuantInfo, quant_info, replace_module, rewrap, track_quantized, transformer_of
from trdq.config import QuantConfig
from trdq.fingerprint import mismatch
from trdq.layers import EXECUTION, GroupTransform, QuantLinear
from trdq.models.loader import load_model
from trdq.quantizer import MAX_BITS, MIN_BITS
from trdq.rotation import Reflections, Rotation, block_sizes
from trdq.timegroups import GroupIndex, GroupState

FORMAT = "trdq-simulated-v3"  # v3: the base model's fingerprint, and every field validated on load
MANIFEST, TENSORS = "manifest.json", "quantized.safetensors"
STAGES = ("signs", "blocks", "reflections", "perm", "hadamard", "dense")


class SavedModelError(ValueError):
    """A saved quantized model that cannot be used as it is; the message names file and field."""


def save(qmodel: Model, path: str | Path) -> Path:
    """Write a quantized model's quantized state to folder ``path``.

    The folder is written beside ``path`` and renamed into place: an earlier save there is
    replaced only once the new one is complete.

    Args:
        qmodel: what :func:`trdq.quantize` returned (a model, a pipeline or a transformer).

    Raises:
        ValueError: if ``qmodel`` is not a quantized model, or ``path`` is a folder that holds
            something other than a trdq save.
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
    if info.base_fingerprint is None:
        raise ValueError("this quantized model lacks its base model's fingerprint; quantize it again to save it")
    path = check_destination(path)
    transformer = transformer_of(qmodel)
    tensors: dict[str, torch.Tensor] = {}
    layers = {}
    for name, m in transformer.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        tensors[f"{name}.w_codes"], tensors[f"{name}.w_scale"] = m.codes(), m.w_scale
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.detach()
        for g, t in enumerate(m.transforms):
            if t.delta is not None:
                tensors[f"{name}.{g}.delta"] = t.delta
        rotations = [None if t.rotation is None else put_rotation(tensors, f"{name}.{g}", t.rotation)
                     for g, t in enumerate(m.transforms)]
        layers[name] = {"alphas": [t.alpha for t in m.transforms], "kinds": [t.kind for t in m.transforms],
                        "rotations": rotations, "a_bits": m.a_bits, "a_symmetric": m.a_symmetric}
    manifest = {
        "format": FORMAT, "execution": info.execution, "base_model": info.base_model,
        "transformer_class": type(transformer).__name__, "base_fingerprint": info.base_fingerprint,
        "config": info.config.to_dict(), "thresholds": list(info.index.thresholds), "layers": layers,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.saving-"))
    try:
        save_file(storable(tensors), str(staging / TENSORS))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        replace_folder(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` made contiguous, each in memory of its own: safetensors refuses tensors that
    share memory, as the transforms of siblings fitted together (``shared_inputs``) do. Each layer
    then stores its copy, and loading links the siblings again (:func:`trdq.api.link_siblings`)."""
    seen, out = set(), {}
    for key, value in tensors.items():
        value = value.contiguous()
        where = value.untyped_storage().data_ptr()
        if value.numel() and where in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def check_destination(path: str | Path) -> Path:
    """``path`` as a :func:`save` destination: a new or empty folder, or an earlier trdq save.

    Raises:
        ValueError: for a file, or a folder holding something else.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / MANIFEST).exists())):
        raise ValueError(f"{path} exists and is not a trdq save; choose a new or empty folder")
    return path


def saved_base(path: str | Path) -> str | None:
    """The base model a folder written by :func:`save` names, or None for anything else (a model
    name, a diffusers folder); a malformed save raises :class:`SavedModelError`."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return None
    return _read_manifest(path)["base_model"]


def replace_folder(new: Path, path: Path) -> None:
    """Move folder ``new`` to ``path``; an existing ``path`` is moved aside first and removed last."""
    if not path.exists():
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.replace(path, old / "save")
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old / "save", path)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def put_rotation(tensors: dict[str, torch.Tensor], key: str, rotation: Rotation) -> list:
    """Store a rotation's factors under ``key.rot<i>...``; returns the manifest entry
    ``[size, [kind, extra], ...]`` (extra: the Hadamard order, the number of blocks, or the greedy
    fit's block size, steps and seed)."""
    entry: list = [rotation.size]
    for i, (kind, value) in enumerate(rotation.stages):
        if kind == "hadamard":
            entry.append([kind, value])
            continue
        if kind == "reflections":
            if value.scale is not None:  # GroupTransform keeps smoothing apart; only real layers fold it in
                raise ValueError("a rotation with a folded input scale cannot be saved; save the simulated model")
            tensors[f"{key}.rot{i}"] = value.pivots
            entry.append([kind, {"block_size": value.block_size, "steps": value.steps, "seed": value.seed}])
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
        elif kind == "reflections":
            out.append((kind, Reflections(size, extra["block_size"], extra["steps"], extra["seed"],
                                          tensors[f"{key}.rot{i}"])))
        elif kind == "blocks":
            out.append((kind, [tensors[f"{key}.rot{i}.{j}"] for j in range(extra)]))
        else:
            out.append((kind, tensors[f"{key}.rot{i}"]))
    return Rotation(size, tuple(out))


def load(path: str | Path, base: Model | str | None = None) -> Model:
    """Rebuild a quantized model saved by :func:`save`, after checking everything in the folder.

    Args:
        path: the saved folder.
        base: the full-precision model it was made from (a model, a pipeline or a transformer),
            or a name for :func:`trdq.load_model` (the manifest's ``base_model`` is only a hint:
            it is never loaded unless passed here).

    Returns:
        The same kind of object as ``base`` (a :class:`LoadedModel` when given a name).

    Raises:
        FileNotFoundError: for a folder without a manifest.
        SavedModelError: (a ``ValueError``) naming the file and field of the first problem: a
            missing, malformed or out-of-range field or tensor, or a base model whose weights are
            not those the model was quantized from.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    if base is None:
        raise ValueError(f"trdq.load({str(path)!r}) needs the full-precision model it was made from: "
                         f"pass base=... (the manifest says {manifest['base_model']!r}; pass that name to "
                         "load it, if you trust the folder)")
    if isinstance(base, str | Path):
        base = load_model(str(base))
    fp = transformer_of(base)
    where = path / MANIFEST
    if type(fp).__name__ != manifest["transformer_class"]:
        raise SavedModelError(f"{where}: transformer_class: {path} quantizes a {manifest['transformer_class']}, "
                              f"but the base model has a {type(fp).__name__}; pass the model it was made from")
    if differs := mismatch(manifest["base_fingerprint"], fp):
        raise SavedModelError(f"{where}: base_fingerprint: the base model is not the one {path} was quantized "
                              f"from ({differs}); pass that model ({manifest['base_model']!r})")
    config = checked(where, "config", lambda: QuantConfig.from_dict(manifest["config"]))
    thresholds = check_thresholds(where, manifest["thresholds"])
    tensors = _read_tensors(path / TENSORS)
    index = GroupIndex(thresholds)
    built = {name: read_layer((path / MANIFEST, path / TENSORS), name, meta, tensors, fp, config, index.num_groups)
             for name, meta in check_layers(where, manifest["layers"]).items()}
    if unused := sorted(set(tensors) - _expected_keys(built)):
        raise SavedModelError(f"{path / TENSORS}: {unused[0]}: a tensor no layer of the manifest uses "
                              f"({len(unused)} such); the folder was altered")
    transformer = copy.deepcopy(fp)
    state = GroupState(index)
    for name, (codes, scale, bias, transforms, a_bits, a_symmetric, _) in built.items():
        replace_module(transformer, name, QuantLinear(codes, scale, bias, transforms, a_bits, a_symmetric, state))
    info = QuantInfo(config, index, manifest["base_model"], manifest["execution"],
                     base_fingerprint=manifest["base_fingerprint"])
    track_quantized(transformer, state, info)
    return rewrap(base, transformer)


def field_error(where: Path, field: str, problem: str) -> SavedModelError:
    """The error for ``field`` of file ``where`` (shared with :mod:`trdq.pretrained`, as are the
    checks below)."""
    return SavedModelError(f"{where}: {field}: {problem}")


def checked(where: Path, field: str, build):
    """``build()``, its errors reported as a problem of ``field``."""
    try:
        return build()
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise field_error(where, field, f"{type(err).__name__}: {err}") from None


def _read_manifest(path: Path) -> dict:
    where = path / MANIFEST
    if not where.exists():
        raise FileNotFoundError(f"{path} holds no {MANIFEST}; it was not written by trdq.save()")
    try:
        manifest = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise field_error(where, "(whole file)", f"not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise field_error(where, "(whole file)", "not a JSON object")
    if manifest.get("format") != FORMAT:
        raise field_error(where, "format", f"unsupported format {manifest.get('format')!r}; expected {FORMAT} "
                                     "(quantize the model again with this version and save it)")
    for key, kind in (("execution", str), ("base_model", str), ("transformer_class", str),
                      ("base_fingerprint", dict), ("config", dict), ("thresholds", list), ("layers", dict)):
        if not isinstance(manifest.get(key), kind):
            raise field_error(where, key, f"missing or not a {kind.__name__}")
    if manifest["execution"] != EXECUTION:
        raise field_error(where, "execution", f"{manifest['execution']!r}; only {EXECUTION!r} models are saved")
    return manifest


def check_thresholds(where: Path, values: list) -> tuple[float, ...]:
    """Time-group thresholds that are finite and strictly decreasing."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise field_error(where, "thresholds", f"every threshold must be a finite number, got {values}")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise field_error(where, "thresholds", f"thresholds must strictly decrease, got {values}")
    return tuple(float(v) for v in values)


def check_layers(where: Path, layers: dict) -> dict:
    """A non-empty layer table whose entries have their alphas, rotations and activation bits."""
    if not layers:
        raise field_error(where, "layers", "empty: the model quantizes nothing")
    for name, meta in layers.items():
        if not isinstance(meta, dict):
            raise field_error(where, f"layers.{name}", "not an object")
        for key, kind in (("alphas", list), ("rotations", list), ("a_bits", int), ("a_symmetric", bool)):
            if not isinstance(meta.get(key), kind) or (kind is int and isinstance(meta[key], bool)):
                raise field_error(where, f"layers.{name}.{key}", f"missing or not a {kind.__name__}")
        if not MIN_BITS <= meta["a_bits"] <= MAX_BITS:
            raise field_error(where, f"layers.{name}.a_bits", f"{meta['a_bits']} is outside {MIN_BITS}..{MAX_BITS}")
    return layers


def _read_tensors(where: Path) -> dict[str, torch.Tensor]:
    if not where.exists():
        raise field_error(where, "(whole file)", "missing")
    try:
        return load_file(str(where))
    except (SafetensorError, OSError, ValueError) as err:
        raise field_error(where, "(whole file)", f"not a readable safetensors file ({err})") from None


def _tensor(tensors: dict, where: Path, key: str, dtype: torch.dtype, shape: tuple, finite: bool = True,
            positive: bool = False) -> torch.Tensor:
    t = tensors.get(key)
    if t is None:
        raise field_error(where, key, "missing")
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise field_error(where, key, f"{t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise field_error(where, key, "holds NaN or infinite values")
    if positive and not bool((t > 0).all()):
        raise field_error(where, key, "holds values that are not positive")
    return t


def read_layer(files: tuple[Path, Path], name: str, meta: dict, tensors: dict, fp: nn.Module, config: QuantConfig,
           num_groups: int, keep_packed: bool = False) -> tuple:
    """One layer's QuantLinear arguments, checked against the base's linear layer ``name`` (``files``:
    the JSON and the tensor file, for the messages); the last item lists the tensor keys it used.
    Codes of 4 bits or fewer may be stored packed two per byte (uint8, half the input width); with
    ``keep_packed`` they are returned so (QuantLinear keeps them packed), else unpacked."""
    where, data = files
    try:
        linear = fp.get_submodule(name)
    except AttributeError:
        raise field_error(where, f"layers.{name}", "the base model has no such module") from None
    if not isinstance(linear, nn.Linear):
        raise field_error(where, f"layers.{name}", f"a {type(linear).__name__} in the base model, not a linear layer")
    c_out, c_in = linear.out_features, linear.in_features
    for key in ("alphas", "rotations"):
        if len(meta[key]) != num_groups:
            raise field_error(where, f"layers.{name}.{key}", f"{len(meta[key])} entries for {num_groups} time groups")
    gs = config.w_group_size
    if gs is not None and c_in % gs:
        raise field_error(where, "config.w_group_size", f"{gs} does not divide {name}'s {c_in} input channels")
    code_shape = (num_groups, c_out, c_in) if gs is None else (num_groups, c_out, c_in // gs, gs)
    stored = tensors.get(f"{name}.w_codes")
    packed = None
    if stored is not None and stored.dtype == torch.uint8 and config.w_bits <= 4 and gs is None and c_in % 2 == 0:
        packed = _tensor(tensors, data, f"{name}.w_codes", torch.uint8, (num_groups, c_out, c_in // 2))
        codes = kernels.unpack_int4(packed)
    else:
        codes = _tensor(tensors, data, f"{name}.w_codes", torch.int8, code_shape)
    q = 2 ** (config.w_bits - 1) - 1
    if int(codes.abs().max()) > q:
        raise field_error(data, f"{name}.w_codes", f"codes outside -{q}..{q}, the {config.w_bits}-bit grid")
    scale = _tensor(tensors, data, f"{name}.w_scale", torch.float64, (*code_shape[:-1], 1), positive=True)
    used = [f"{name}.w_codes", f"{name}.w_scale"]
    bias = None
    if linear.bias is not None:
        bias = _tensor(tensors, data, f"{name}.bias", linear.bias.dtype, (c_out,))
        used.append(f"{name}.bias")
    transforms = []
    for g, (alpha, entry) in enumerate(zip(meta["alphas"], meta["rotations"])):
        if alpha is not None and not (isinstance(alpha, int | float) and 0 <= alpha <= 1):
            raise field_error(where, f"layers.{name}.alphas[{g}]", f"{alpha!r} is not None or a number in [0, 1]")
        delta = None
        if f"{name}.{g}.delta" in tensors:
            delta = _tensor(tensors, data, f"{name}.{g}.delta", torch.float64, (c_in,), positive=True)
            used.append(f"{name}.{g}.delta")
        rotation = _rotation(files, f"{name}.{g}", entry, tensors, c_in, used)
        transforms.append(GroupTransform(delta=delta, alpha=alpha, rotation=rotation))
    codes = packed if keep_packed and packed is not None else codes
    return codes, scale, bias, transforms, meta["a_bits"], meta["a_symmetric"], used


def _rotation(files: tuple[Path, Path], key: str, entry, tensors: dict, size: int, used: list) -> Rotation | None:
    """A rotation entry checked against the layer width ``size``: known stages, factors of the
    right shape and dtype, permutations that are permutations, a Hadamard of the layer's order."""
    if entry is None:
        return None
    where, data = files
    field = f"layers.{key.rsplit('.', 1)[0]}.rotations[{key.rsplit('.', 1)[1]}]"
    if not isinstance(entry, list) or not entry or entry[0] != size:
        raise field_error(where, field, f"must start with the layer's width {size}")
    for i, stage in enumerate(entry[1:]):
        if not (isinstance(stage, list) and len(stage) == 2 and stage[0] in STAGES):
            raise field_error(where, f"{field}[{i + 1}]", f"{stage!r} is not [kind, extra] with a kind of {STAGES}")
        kind, extra = stage
        name = f"{key}.rot{i}"
        if kind == "hadamard":
            if extra != size:  # also bounds the matrix hadamard() builds
                raise field_error(where, f"{field}[{i + 1}]", f"a Hadamard of order {extra!r} on a {size}-wide layer")
        elif kind == "blocks":
            if not isinstance(extra, int) or not 1 <= extra <= size:
                raise field_error(where, f"{field}[{i + 1}]", f"{extra!r} blocks on a {size}-wide layer")
            widths = []
            for j in range(extra):
                block = tensors.get(f"{name}.{j}")
                if block is None or block.dim() != 2 or block.shape[0] != block.shape[1]:
                    raise field_error(data, f"{name}.{j}", "missing or not a square block")
                _tensor(tensors, data, f"{name}.{j}", torch.float64, tuple(block.shape))
                widths.append(block.shape[0])
                used.append(f"{name}.{j}")
            if sum(widths) != size:
                raise field_error(data, f"{name}.*", f"blocks cover {sum(widths)} channels, not {size}")
        elif kind == "reflections":
            _check_reflections(where, f"{field}[{i + 1}]", data, name, extra, tensors, size)
            used.append(name)
        elif kind == "perm":
            perm = _tensor(tensors, data, name, torch.int64, (size,))
            if not torch.equal(perm.sort().values, torch.arange(size)):
                raise field_error(data, name, f"not a permutation of 0..{size - 1}")
            used.append(name)
        elif kind == "signs":
            signs = _tensor(tensors, data, name, torch.float64, (size,))
            if not bool((signs.abs() == 1).all()):
                raise field_error(data, name, "signs other than +1 and -1")
            used.append(name)
        else:
            _tensor(tensors, data, name, torch.float64, (size, size))
            used.append(name)
    return _get_rotation(tensors, key, entry)


def _check_reflections(where: Path, field: str, data: Path, name: str, extra, tensors: dict, size: int) -> None:
    """A greedy block rotation's entry (block size, steps, seed) and its pivots (blocks, steps):
    every pivot -1 (a step left out) or a channel of its block."""
    if not (isinstance(extra, dict) and set(extra) == {"block_size", "steps", "seed"}
            and all(isinstance(v, int) and not isinstance(v, bool) for v in extra.values())
            and 1 <= extra["block_size"] <= size and 0 <= extra["steps"] <= 4096 and extra["seed"] >= 0):
        raise field_error(where, field, f"{extra!r} is not {{block_size, steps, seed}} of a {size}-wide layer")
    widths = torch.tensor(block_sizes(size, extra["block_size"]))
    pivots = _tensor(tensors, data, name, torch.int64, (len(widths), extra["steps"]))
    if not bool(((pivots >= -1) & (pivots < widths[:, None])).all()):
        raise field_error(data, name, "pivots outside their blocks (each is -1 or a channel of its block)")


def _expected_keys(built: dict) -> set[str]:
    return {key for layer in built.values() for key in layer[-1]}
