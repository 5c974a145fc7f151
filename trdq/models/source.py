"""What a model source holds before it is loaded: where its files are (a local folder, or a hub id
found in the local Hugging Face cache, never downloaded), which transformer it has, and how much
memory loading it takes. The app checks a user's model with these before it spends minutes or
the machine's memory on it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from trdq.models.adapters import ADAPTERS, UnsupportedArchitectureError

#: Bytes per element of the safetensors dtypes that load as float32.
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class ModelSource:
    """A diffusers pipeline folder, checked.

    Attributes:
        name: what the user gave (a folder path or a hub id).
        folder: the pipeline folder (for a hub id, its snapshot in the local cache).
        pipeline: the pipeline class ``model_index.json`` names.
        transformer: the transformer class it names.
        family: the trdq adapter family of that class (``pixart``, ``latte``, ...).
        quantization: for a quantized folder (:func:`trdq.save_pretrained`'s), its transformer's
            ``quantization_config`` (method, bits, groups, the base model it was made from); else None.
    """

    name: str
    folder: Path
    pipeline: str
    transformer: str
    family: str
    quantization: dict | None = None


def supported_transformers() -> list[str]:
    """Every transformer class an adapter drives."""
    return [c for a in ADAPTERS.values() for c in a.classes]


def locate(name: str) -> Path:
    """The folder of a local pipeline folder or of a hub id's snapshot in the local Hugging Face
    cache; nothing is downloaded.

    Raises:
        FileNotFoundError: for a path that is not a folder, or a hub id the cache does not hold (saying
            how to fetch it).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name!r} is neither a folder nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise FileNotFoundError(
            f"{name} is not in the local Hugging Face cache, and trdq does not download: fetch it once on a "
            f"machine with network (`huggingface-cli download {name}`, then copy the cache or the folder "
            "here) and give the hub id again or the folder's path") from None


def inspect_source(name: str) -> ModelSource:
    """Locate ``name`` and check that it is a diffusers pipeline whose transformer trdq supports.

    Raises:
        FileNotFoundError: as :func:`locate`.
        ValueError: for a folder without ``model_index.json``.
        UnsupportedArchitectureError: for a pipeline without a supported transformer (a UNet one,
            say), naming the classes that are supported.
    """
    folder = locate(name)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{name} is a folder but not a diffusers pipeline (no model_index.json); save one "
                         "with pipe.save_pretrained(folder)")
    config = json.loads(index.read_text())
    transformer_config = folder / "transformer" / "config.json"
    quantization = None
    if transformer_config.is_file():
        quantization = json.loads(transformer_config.read_text()).get("quantization_config")
    entry = config.get("transformer")
    transformer = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    for adapter in ADAPTERS.values():
        if transformer in adapter.classes:
            return ModelSource(name, folder, config.get("_class_name", "?"), transformer, adapter.family,
                               quantization)
    denoiser = transformer or next((v[1] for k, v in config.items() if k in ("unet", "prior") and
                                    isinstance(v, list) and len(v) == 2), "no transformer")
    raise UnsupportedArchitectureError(
        f"{name} is a {config.get('_class_name', 'diffusers')} pipeline with {denoiser}; trdq quantizes "
        f"diffusion transformers: {', '.join(supported_transformers())}")


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def loaded_bytes(folder: str | Path, float_bytes: int = 4) -> int:
    """The bytes the weights of every ``*.safetensors`` under ``folder`` take once loaded: read from
    the files' headers, floating tensors at ``float_bytes`` an element (4: float32; 2: a
    half-precision load), others as stored."""
    total = 0
    for path in Path(folder).rglob("*.safetensors"):
        for key, info in _safetensors_header(path.resolve()).items():
            if key == "__metadata__":
                continue
            numel = 1
            for d in info["shape"]:
                numel *= d
            total += numel * (float_bytes if info["dtype"] in _FLOAT_DTYPES else _DTYPE_BYTES.get(info["dtype"], 4))
    return total


def disk_bytes(folder: str | Path) -> int:
    """The bytes of every ``*.safetensors`` under ``folder`` as stored."""
    return sum(p.resolve().stat().st_size for p in Path(folder).rglob("*.safetensors"))


def placement(family: str, cuda: bool | None = None, bf16: bool | None = None) -> tuple[str, torch.dtype]:
    """Where and in which dtype a user's pipeline of ``family`` runs: on the GPU when there is one,
    in the family's half precision (:attr:`~trdq.models.adapters.Adapter.gpu_dtype`; fp16 on a GPU
    without bf16); else on the CPU in float32 (half precision there is slow without native kernels,
    and the integer path keeps float32 outside its GEMMs). ``cuda`` and ``bf16`` default to what
    this machine has."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        return "cpu", torch.float32
    dtype = ADAPTERS[family].gpu_dtype
    if dtype == torch.bfloat16 and not (torch.cuda.is_bf16_supported() if bf16 is None else bf16):
        dtype = torch.float16
    return "cuda", dtype


def available_memory(device: str = "cpu") -> int | None:
    """Bytes of memory the system (or the GPU, for ``cuda``) can still give (``MemAvailable``;
    the CUDA driver's free memory), or None where unknown."""
    if device != "cpu":
        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None
