import json
import re

import numpy as np
import pytest
import torch

from trdq.api import quantize
from trdq.config import QuantConfig, TimeGroups
from trdq.sampling import generate
from trdq.serialization import load, save

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]


@pytest.mark.parametrize("config", [
    QuantConfig(method="trdq", w_bits=4, a_bits=8, time_groups=TimeGroups(2), block_size=32),
    QuantConfig(method="quarot", w_bits=6, a_bits=6, w_group_size=24),
])
def test_save_then_load_gives_bit_identical_images(tiny_pixart_72, tmp_path, config):
    q = quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    save(q, tmp_path / "q")
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["execution"] == "simulated" and manifest["config"]["method"] == config.method
    reloaded = load(tmp_path / "q", base=tiny_pixart_72)
    assert reloaded.quant.config == config
    a = generate(q, PROMPTS, [3, 4], steps=4)
    b = generate(reloaded, PROMPTS, [3, 4], steps=4)
    assert np.array_equal(a, b)


def test_save_refuses_an_fp_model_and_load_a_foreign_folder(tiny_pixart, tmp_path):
    with pytest.raises(ValueError, match="not quantized"):
        save(tiny_pixart, tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load(tmp_path, base=tiny_pixart)


# --- a saved folder is validated before anything is built -------------------------------------

LAYER = "transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def saved(tiny_pixart_72, tmp_path_factory):
    """A DuQuant-rotated TR-DQ model (blocks, permutation, smoothing) saved once; tests copy it."""
    q = quantize(tiny_pixart_72, QuantConfig(method="trdq", w_bits=4, a_bits=8, time_groups=TimeGroups(2),
                                             rotation="duquant", alpha=0.5, block_size=32, select_transforms=False),
                 PROMPTS, steps=2)
    return q, save(q, tmp_path_factory.mktemp("saved") / "q")


def _tamper(folder, tmp_path, manifest=None, tensors=None):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "tampered"
    shutil.copytree(folder, copy)
    if manifest is not None:
        data = json.loads((copy / "manifest.json").read_text())
        manifest(data)
        (copy / "manifest.json").write_text(json.dumps(data))
    if tensors is not None:
        data = load_file(str(copy / "quantized.safetensors"))
        tensors(data)
        save_file(data, str(copy / "quantized.safetensors"))
    return copy


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _layer(key, value):
    return lambda d: d["layers"][LAYER].__setitem__(key, value)


def _rotation_of(d):
    return next(e for e in d["layers"][LAYER]["rotations"] if e)


TAMPERED = {
    "empty layer table": (dict(manifest=_set("layers", {})), "manifest.json: layers: empty"),
    "NaN scales": (dict(tensors=lambda t: t[f"{LAYER}.w_scale"].fill_(float("nan"))),
                   f"quantized.safetensors: {LAYER}.w_scale: holds NaN"),
    "codes off the grid": (dict(tensors=lambda t: t[f"{LAYER}.w_codes"].fill_(100)),
                           f"{LAYER}.w_codes: codes outside -7..7"),
    "entry moved onto a LayerNorm": (
        dict(manifest=lambda d: d["layers"].__setitem__("transformer_blocks.0.norm1", d["layers"].pop(LAYER))),
        "layers.transformer_blocks.0.norm1: a LayerNorm in the base model, not a linear layer"),
    "NaN threshold": (dict(manifest=_set("thresholds", [float("nan")])), "thresholds: every threshold"),
    "missing tensor": (dict(tensors=lambda t: t.pop(f"{LAYER}.w_scale")), f"{LAYER}.w_scale: missing"),
    "wrong shape": (dict(tensors=lambda t: t.__setitem__(f"{LAYER}.bias", torch.zeros(5))),
                    f"{LAYER}.bias: torch.float32 (5,), expected torch.float32 (72,)"),
    "huge Hadamard": (dict(manifest=lambda d: _rotation_of(d).__setitem__(1, ["hadamard", 2 ** 20])),
                      "a Hadamard of order 1048576 on a 72-wide layer"),
    "not a permutation": (dict(tensors=lambda t: t.__setitem__(
        next(k for k in t if k.startswith(LAYER) and t[k].dtype == torch.int64 and t[k].dim() == 1),
        torch.zeros(72, dtype=torch.int64))), "not a permutation of 0..71"),
    "pivot outside its block": (dict(tensors=lambda t: next(
        t[k] for k in t if k.startswith(LAYER) and t[k].dtype == torch.int64 and t[k].dim() == 2).fill_(32)),
        "pivots outside their blocks"),
    "reflections without a seed": (dict(manifest=lambda d: _rotation_of(d).__setitem__(
        1, ["reflections", {"block_size": 32, "steps": 8}])), "is not {block_size, steps, seed}"),
    "alpha out of range": (dict(manifest=_layer("alphas", [7, 7])), "alphas[0]: 7 is not None"),
    "a_bits wrong type": (dict(manifest=_layer("a_bits", "8")), f"layers.{LAYER}.a_bits: missing or not a int"),
    "bad config": (dict(manifest=lambda d: d["config"].__setitem__("block_size", -4)), "config: ValueError"),
    "other format": (dict(manifest=_set("format", "trdq-simulated-v2")), "format: unsupported format"),
    "extra tensor": (dict(tensors=lambda t: t.__setitem__("evil", torch.zeros(1))), "evil: a tensor no layer"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_save_is_refused_naming_file_and_field(saved, tiny_pixart_72, tmp_path, case):
    from trdq.serialization import SavedModelError

    change, message = TAMPERED[case]
    folder = _tamper(saved[1], tmp_path, **change)
    with pytest.raises(SavedModelError, match=re.escape(message)):
        load(folder, base=tiny_pixart_72)


def test_unreadable_files_are_one_clear_error(saved, tiny_pixart_72, tmp_path):
    from trdq.serialization import SavedModelError

    folder = _tamper(saved[1], tmp_path)
    (folder / "quantized.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(SavedModelError, match="quantized.safetensors: .whole file.: not a readable safetensors"):
        load(folder, base=tiny_pixart_72)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(SavedModelError, match="manifest.json: .whole file.: not valid JSON"):
        load(folder, base=tiny_pixart_72)


def test_the_wrong_base_model_is_refused_and_the_manifest_base_is_never_loaded_unasked(saved, tmp_path):
    from tests.conftest import build_tiny_pixart
    from trdq.serialization import SavedModelError

    other = build_tiny_pixart((3, 24), seed=1)  # same architecture, other weights
    with pytest.raises(SavedModelError, match="base_fingerprint: the base model is not the one"):
        load(saved[1], base=other)
    with pytest.raises(ValueError, match="needs the full-precision model it was made from"):
        load(saved[1])


def test_an_interrupted_save_leaves_the_earlier_save_intact(saved, tiny_pixart_72, tmp_path, monkeypatch):
    import shutil

    import trdq.serialization as serialization

    folder = tmp_path / "q"
    shutil.copytree(saved[1], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = quantize(tiny_pixart_72, QuantConfig(method="rtn", w_bits=8, a_bits=8), PROMPTS, steps=2)

    def crash(*args, **kwargs):  # after the tensors, before the manifest
        raise KeyboardInterrupt

    monkeypatch.setattr(serialization.Path, "write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        save(other, folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no staging folder left behind
    reloaded = load(folder, base=tiny_pixart_72)
    assert np.array_equal(generate(reloaded, PROMPTS, [3, 4], steps=2), generate(saved[0], PROMPTS, [3, 4], steps=2))
    save(other, folder)  # a completed save replaces it
    assert load(folder, base=tiny_pixart_72).quant.config.method == "rtn"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="is not a trdq save"):
        save(other, tmp_path / "mine")
