"""Stand-alone quantized checkpoints in the diffusers folder layout (docs/method.md §7).

:func:`save_pretrained` writes a quantized transformer as a diffusers model folder: ``config.json``
is the transformer's own configuration plus a ``quantization_config`` entry (trdq's config, the
time-group thresholds and, per quantized layer, its alphas and rotation structure), and
``diffusion_pytorch_model.safetensors`` holds everything the model needs: the layers left in
floating point as they are, and for each quantized layer its integer codes (packed two per byte at
4 bits or fewer), scales, bias, smoothing factors and rotation factors (a greedy rotation as its
pivots). A quantized pipeline is written as a diffusers pipeline folder whose ``transformer``
is such a folder. :func:`from_pretrained` reads either back without the full-precision weights,
as the simulated model or straight into real integer layers.

Loading checks what it reads as :func:`trdq.load` does (each problem one
:class:`~trdq.serialization.SavedModelError` naming the file and field), builds the transformer's
skeleton without allocating its full-precision weights, and converts layer by layer, so that
memory stays near the folder's size.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from trdq import kernels
from trdq.api import (
    Model,
    QuantInfo,
    finish_real,
    integer_layer,
    quant_info,
    replace_module,
    track_quantized,
    transformer_of,
)
from trdq.cfg import CFGSplitTransformer
from trdq.config import QuantConfig
from trdq.layers import EXECUTION, IntLinear, QuantLinear
from trdq.serialization import (
    MANIFEST,
    SavedModelError,
    check_layers,
    check_thresholds,
    checked,
    field_error,
    put_rotation,
    read_layer,
    replace_folder,
    storable,
)
from trdq.timegroups import GroupIndex, GroupState

FORMAT = "trdq-pretrained-v1"
CONFIG, WEIGHTS, PIPELINE_INDEX = "config.json", "diffusion_pytorch_model.safetensors", "model_index.json"
EXECUTIONS = (EXECUTION, "real integer")


def save_pretrained(qmodel: Model, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a quantized model to ``folder`` so that it loads without its full-precision weights.

    A transformer is written as a diffusers model folder, a pipeline (or a model from
    :func:`trdq.load_model`) as a diffusers pipeline folder whose ``transformer`` is one, with its
    sampling defaults. Written beside ``folder`` and renamed into place.

    Args:
        qmodel: a simulated quantized model (what :func:`trdq.quantize` or :func:`trdq.load` return).
        dtype: store the transformer's layers left in floating point in this dtype (e.g.
            ``torch.bfloat16``, as a bf16 checkpoint would; a smaller file, their values rounded);
            None keeps theirs. Loading gives them back their dtype. The quantized layers' codes,
            scales and transforms are stored as they are either way.

    Raises:
        ValueError: for a model that is not simulated and quantized, or a ``folder`` that holds
            something other than an earlier such save.
    """
    info = quant_info(qmodel)
    if info is None or info.execution != EXECUTION:
        raise ValueError("save_pretrained() takes a simulated quantized model (the output of trdq.quantize or "
                         "trdq.load); real integer models are rebuilt with from_pretrained(..., execution="
                         "'real integer')")
    folder = check_destination(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.saving-"))
    try:
        pipe = getattr(qmodel, "pipe", qmodel if hasattr(qmodel, "components") else None)
        if pipe is None:
            _save_transformer(transformer_of(qmodel), info, staging, dtype)
        else:
            for name, component in pipe.components.items():
                if component is not None and name != "transformer":
                    component.save_pretrained(staging / name)
            pipe.save_config(staging)  # model_index.json
            index = json.loads((staging / PIPELINE_INDEX).read_text())
            model = pipe.transformer.cond if isinstance(pipe.transformer, CFGSplitTransformer) else pipe.transformer
            index["transformer"] = ["diffusers", type(model).__name__]  # a CFG split's wrapper is no diffusers class
            (staging / PIPELINE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
            _save_transformer(pipe.transformer, info, staging / "transformer", dtype)
            if (settings := getattr(qmodel, "settings", None)) is not None:
                from trdq.models.loader import SETTINGS_FILE

                (staging / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _save_transformer(transformer: nn.Module, info: QuantInfo, folder: Path, dtype: torch.dtype | None) -> None:
    """A model folder: the layers left in floating point once (in ``dtype`` if given), and each
    branch's quantized layers (a CFG split's under ``uncond.`` and ``cond.``)."""
    split = isinstance(transformer, CFGSplitTransformer)
    branches = {"uncond": transformer.uncond, "cond": transformer.cond} if split else {"": transformer}
    tensors: dict[str, torch.Tensor] = {}
    entries = {}
    for branch, t in branches.items():
        prefix = f"{branch}." if branch else ""
        quantized = {name for name, m in t.named_modules() if isinstance(m, QuantLinear)}
        for k, v in t.state_dict().items():
            if k.rsplit(".", 1)[0] in quantized:
                tensors[prefix + k] = v.detach().clone()
            elif k not in tensors:
                tensors[k] = v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).clone()
            elif not torch.equal(tensors[k], v.detach().to(tensors[k].dtype)):  # a CFG split's second branch
                raise ValueError(f"the CFG branches differ in {k}, which neither quantizes; they cannot share it")
        layers = {}
        for name, m in t.named_modules():
            if name not in quantized:
                continue
            if t.trdq_info.config.w_bits <= 4 and m.w_codes.dim() == 3 and m.in_features % 2 == 0 and not m.packed:
                tensors[f"{prefix}{name}.w_codes"] = kernels.pack_int4(m.w_codes)  # half a byte per weight on disk
            for g, gt in enumerate(m.transforms):
                if gt.delta is not None:
                    tensors[f"{prefix}{name}.{g}.delta"] = gt.delta
            rotations = [None if gt.rotation is None else put_rotation(tensors, f"{prefix}{name}.{g}", gt.rotation)
                         for g, gt in enumerate(m.transforms)]
            layers[name] = {"alphas": [gt.alpha for gt in m.transforms], "rotations": rotations,
                            "a_bits": m.a_bits, "a_symmetric": m.a_symmetric}
        entries[branch] = {"config": t.trdq_info.config.to_dict(), "thresholds": list(t.trdq_info.index.thresholds),
                           "layers": layers}
    first = next(iter(branches.values()))
    config = json.loads(first.to_json_string())
    config["quantization_config"] = {
        "quant_method": "trdq", "format": FORMAT, "execution": EXECUTION, "base_model": info.base_model,
        "float_dtype": str(first.dtype).removeprefix("torch."),  # what the float parts run in
        "base_fingerprint": info.base_fingerprint, "config": info.config.to_dict(),
        **({"branches": entries} if split else {k: v for k, v in entries[""].items() if k != "config"}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(storable(tensors), str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")


def check_destination(folder: str | Path) -> Path:
    """``folder`` as a :func:`save_pretrained` destination: a new or empty folder, or an earlier
    quantized folder.

    Raises:
        ValueError: for a file, or a folder holding something else.
    """
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or is_quantized_folder(folder))):
        raise ValueError(f"{folder} exists and is not a trdq quantized folder; choose a new or empty folder")
    return folder


def is_quantized_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a :func:`save_pretrained` folder (a transformer, or a pipeline whose
    transformer is one)."""
    folder = Path(folder)
    config = folder / "transformer" / CONFIG if (folder / PIPELINE_INDEX).is_file() else folder / CONFIG
    try:
        return json.loads(config.read_text()).get("quantization_config", {}).get("quant_method") == "trdq"
    except (OSError, ValueError, AttributeError):
        return False


def from_pretrained(folder: str | Path, execution: str = EXECUTION, dtype: torch.dtype | None = None,
                    compile: bool = False, gemm: str | None = None, compact_rotations: bool = True) -> Model:
    """Load a :func:`save_pretrained` folder; no full-precision weights are needed.

    Args:
        folder: a quantized transformer folder, or a pipeline folder whose transformer is one.
        execution: ``"simulated"`` (what was saved, as :func:`trdq.quantize` made it) or
            ``"real integer"`` (per-group integer layers built directly, as
            :func:`trdq.realize` would make them, layer by layer).
        dtype, compile, gemm, compact_rotations: for ``"real integer"``, as in :func:`trdq.realize`;
            rotations are compact by default here (a checkpoint is loaded to be small: dense blocks
            would add ``2 b`` floats per input channel and layer).

    Returns:
        A :class:`~trdq.models.loader.LoadedModel` for a pipeline folder, else the transformer.

    Raises:
        FileNotFoundError: for a folder that does not exist.
        SavedModelError: (a ``ValueError``) naming the file and field of the first problem, or
            saying how to re-save a folder of the earlier format (:func:`trdq.save`'s).
    """
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; choose one of {', '.join(EXECUTIONS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    if (folder / MANIFEST).is_file():
        raise SavedModelError(f"{folder} was written by trdq.save (it needs the full-precision model): load it with "
                              "trdq.load(folder, base=<that model>) and write a stand-alone copy with "
                              "trdq.save_pretrained(model, new_folder)")
    real = dict(execution=execution, dtype=dtype, compile=compile, gemm=gemm, compact_rotations=compact_rotations)
    if not (folder / PIPELINE_INDEX).is_file():
        return _load_transformer(folder, **real)
    from trdq.models.loader import load_model

    transformer = _load_transformer(folder / "transformer", **real)
    split = isinstance(transformer, CFGSplitTransformer)  # not a diffusers model: joins after loading
    loaded = load_model(str(folder), transformer=transformer.cond if split else transformer)
    if split:
        loaded.pipe = type(loaded.pipe)(**{**loaded.pipe.components, "transformer": transformer})
        loaded.pipe.set_progress_bar_config(disable=True)
    loaded.quant = transformer.trdq_info
    return loaded


def _load_transformer(folder: Path, execution: str, dtype: torch.dtype | None, compile: bool, gemm: str | None,
                      compact_rotations: bool | None) -> nn.Module:
    import diffusers

    where, data = folder / CONFIG, folder / WEIGHTS
    try:
        config = json.loads(where.read_text())
    except FileNotFoundError:
        raise SavedModelError(f"{where}: (whole file): missing; {folder} is not a model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise field_error(where, "(whole file)", f"not valid JSON ({err})") from None
    qc = config.pop("quantization_config", None) if isinstance(config, dict) else None
    if not isinstance(qc, dict) or qc.get("quant_method") != "trdq":
        raise field_error(where, "quantization_config", "no trdq quantization here: a full-precision model folder "
                                                  "loads with trdq.load_model")
    if qc.get("format") != FORMAT:
        raise field_error(where, "quantization_config.format", f"unsupported format {qc.get('format')!r}; expected "
                                                         f"{FORMAT} (quantize and save the model again)")
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise field_error(where, "_class_name", f"{config.get('_class_name')!r} is not a diffusers model class")
    quant = checked(where, "quantization_config.config", lambda: QuantConfig.from_dict(qc["config"]))
    float_dtype = getattr(torch, str(qc.get("float_dtype", "float32")), None)
    if not isinstance(float_dtype, torch.dtype) or not float_dtype.is_floating_point:
        raise field_error(where, "quantization_config.float_dtype", f"{qc.get('float_dtype')!r} is not a float dtype")
    if quant.cfg_split:
        branches = qc.get("branches")
        if not (isinstance(branches, dict) and set(branches) == {"uncond", "cond"}):
            raise field_error(where, "quantization_config.branches", "a CFG-split model needs its uncond and cond branches")
        parts = {b: _branch(where, f"quantization_config.branches.{b}", branches[b], None) for b in ("uncond", "cond")}
    else:
        parts = {"": _branch(where, "quantization_config", qc, quant)}
    tensors = _LazyTensors(data)  # read one tensor at a time: memory stays near the model's size
    built = {}
    for branch, (bquant, index, layers) in parts.items():
        with _parameters_on_meta():  # the skeleton: no full-precision weights are allocated
            transformer = checked(where, "(configuration)", lambda: cls.from_config(config))
        view = _Prefixed(tensors, f"{branch}." if branch else "")
        state = GroupState(index)
        for name in layers:  # one layer at a time, its tensors dropped as it is built
            codes, scale, bias, transforms, a_bits, a_symmetric, used = read_layer(
                (where, data), name, layers[name], view, transformer, bquant, index.num_groups, keep_packed=True)
            layer = QuantLinear(codes, scale, bias, transforms, a_bits, a_symmetric, state)
            if execution != EXECUTION:
                layer = integer_layer(layer, bquant.w_bits, dtype=dtype, compile=compile, gemm=gemm,
                                      compact_rotations=compact_rotations)
            replace_module(transformer, name, layer)
            for key in used:
                del view[key]
            _release_freed_memory()
        built[branch] = (transformer, state, QuantInfo(bquant, index, str(qc.get("base_model")), EXECUTION,
                                                       base_fingerprint=qc.get("base_fingerprint")))
    rest = {k: tensors[k] for k in tensors}  # the float parts: one copy, shared by a CFG split's branches
    for transformer, state, info in built.values():
        _, unexpected = transformer.load_state_dict(rest, strict=False, assign=True)
        if unexpected:
            raise field_error(data, unexpected[0], f"a tensor the {cls.__name__} does not have ({len(unexpected)} such)")
        if still := [k for k, v in transformer.state_dict().items() if v.is_meta]:
            raise field_error(data, still[0], f"missing ({len(still)} tensors of the model are not in the file)")
        _cast_float_parts(transformer, float_dtype)  # stored in another dtype (save_pretrained(dtype=...)): as it ran
        transformer.eval()
        if execution == EXECUTION:
            track_quantized(transformer, state, info)
        else:
            finish_real(transformer, state, info, dtype)
    if not quant.cfg_split:
        return built[""][0]
    split = CFGSplitTransformer(built["uncond"][0], built["cond"][0])
    split.trdq_info = dataclasses.replace(built["cond"][2], config=quant, execution=execution)
    return split


def _branch(where: Path, field: str, entry, quant: QuantConfig | None) -> tuple[QuantConfig, GroupIndex, dict]:
    """One quantized transformer's config (``quant``, or its own entry's), time groups and layers."""
    if not isinstance(entry, dict):
        raise field_error(where, field, "not an object")
    if quant is None:
        quant = checked(where, f"{field}.config", lambda: QuantConfig.from_dict(entry["config"]))
    if not isinstance(entry.get("thresholds"), list):
        raise field_error(where, f"{field}.thresholds", "missing or not a list")
    index = GroupIndex(check_thresholds(where, entry["thresholds"]))
    return quant, index, check_layers(where, entry.get("layers") if isinstance(entry.get("layers"), dict) else {})


class _Prefixed:
    """The keys of a tensor mapping that start with ``prefix``, without it (one CFG branch's)."""

    def __init__(self, tensors, prefix: str):
        self._tensors, self._prefix = tensors, prefix

    def get(self, key: str, default=None):
        return self._tensors.get(self._prefix + key, default)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[self._prefix + key]

    def __contains__(self, key: str) -> bool:
        return self._prefix + key in self._tensors

    def __delitem__(self, key: str) -> None:
        del self._tensors[self._prefix + key]


class _LazyTensors:
    """The tensors of a safetensors file, each read when asked with plain file reads into memory of
    its own (not memory-mapped: the mapped file would stay resident beside the model built from
    it), the mapping :func:`read_layer` takes; ``del`` forgets a key, iteration gives those left."""

    DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}

    def __init__(self, where: Path):
        self._where = where
        try:
            size = where.stat().st_size
            with open(where, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
        except FileNotFoundError:
            raise field_error(where, "(whole file)", "missing") from None
        except (OSError, ValueError) as err:
            raise field_error(where, "(whole file)", f"not a readable safetensors file ({err})") from None
        if not isinstance(header, dict):
            raise field_error(where, "(whole file)", "not a readable safetensors file (no header)")
        header.pop("__metadata__", None)
        for key, entry in header.items():
            ok = (isinstance(entry, dict) and entry.get("dtype") in self.DTYPES and isinstance(entry.get("shape"), list)
                  and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2)
            if ok:
                start, end = entry["data_offsets"]
                count = 1
                for d in entry["shape"]:
                    count *= d
                ok = (0 <= start <= end <= size - 8 - n
                      and end - start == count * self.DTYPES[entry["dtype"]].itemsize)
            if not ok:
                raise field_error(where, key, "a malformed entry in the safetensors header")
        self._base, self._keys = 8 + n, header
        self._last: tuple[str, torch.Tensor] | None = None

    def get(self, key: str, default=None):
        if key not in self._keys:
            return default
        if self._last is None or self._last[0] != key:  # a layer's codes are asked for twice in a row
            entry = self._keys[key]
            start, end = entry["data_offsets"]
            buffer = bytearray(end - start)
            with open(self._where, "rb") as f:
                f.seek(self._base + start)
                f.readinto(buffer)
            flat = (torch.frombuffer(buffer, dtype=self.DTYPES[entry["dtype"]]) if buffer
                    else torch.empty(0, dtype=self.DTYPES[entry["dtype"]]))
            self._last = (key, flat.reshape(entry["shape"]))
        return self._last[1]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __delitem__(self, key: str) -> None:
        del self._keys[key]
        if self._last is not None and self._last[0] == key:
            self._last = None

    def __iter__(self):
        return iter(list(self._keys))


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps them otherwise). Building a
    layer frees several temporaries of its size, and kept between the layers' long-lived tensors
    they would add up: loading PixArt-XL's first 4 blocks took 310 MiB without this, 143 with it,
    for 106 MiB of model."""
    if (trim := _malloc_trim()) is not None:
        trim(0)


def _cast_float_parts(transformer: nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating parameters and buffers outside the quantized layers to ``dtype``."""
    for m in transformer.modules():
        if isinstance(m, QuantLinear | IntLinear):
            continue
        for store in (m._parameters, m._buffers):
            for k, v in store.items():
                if v is not None and v.is_floating_point() and v.dtype != dtype:
                    store[k] = nn.Parameter(v.to(dtype), requires_grad=False) if k in m._parameters else v.to(dtype)


@contextlib.contextmanager
def _parameters_on_meta():
    """Modules built inside get their parameters on the meta device (buffers stay real: some are
    computed at construction and not saved), the way diffusers builds a model before loading it."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
