import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file, save_file

import trdq
from trdq.api import quantize, realize
from trdq.attention import AttentionQuant, QuantAttnProcessor
from trdq.config import QuantConfig, TimeGroups
from trdq.pretrained import from_pretrained, is_quantized_folder, save_pretrained
from trdq.sampling import generate
from trdq.serialization import SavedModelError, save

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]
W4A8 = QuantConfig(method="trdq", w_bits=4, a_bits=8, time_groups=TimeGroups(2), block_size=32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny PixArt quantized with TR-DQ W4A8 at 2 groups, and its stand-alone folder."""
    from tests.conftest import build_tiny_pixart

    q = quantize(build_tiny_pixart((3, 24)), W4A8, PROMPTS, steps=4)
    return q, save_pretrained(q, tmp_path_factory.mktemp("pretrained") / "q")


def test_a_saved_pipeline_loads_without_the_fp_weights_and_gives_the_same_images(saved):
    q, folder = saved
    assert is_quantized_folder(folder) and (folder / "model_index.json").is_file()
    weights = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    layer = "transformer_blocks.0.attn1.to_q"
    assert f"{layer}.weight" not in weights  # no full-precision weight of a quantized layer
    assert weights[f"{layer}.w_codes"].dtype == torch.uint8  # 4-bit codes packed two per byte
    assert weights[f"{layer}.w_codes"].shape[-1] * 2 == q.pipe.transformer.get_submodule(layer).in_features
    config = json.loads((folder / "transformer" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "trdq"
    assert config["quantization_config"]["config"]["method"] == "trdq"

    loaded = from_pretrained(folder)
    assert loaded.quant.config == W4A8 and loaded.settings == q.settings
    held, made = loaded.pipe.transformer.get_submodule(layer), q.pipe.transformer.get_submodule(layer)
    assert held.packed and held.w_codes.dtype == torch.uint8  # held as stored: half a byte per weight
    assert torch.equal(held.codes(), made.w_codes) and held.in_features == made.in_features
    assert np.array_equal(generate(q, PROMPTS, [3, 4], steps=4), generate(loaded, PROMPTS, [3, 4], steps=4))
    again = save_pretrained(loaded, folder.parent / "again")  # and written back as it was read
    assert torch.equal(load_file(str(again / "transformer" / "diffusion_pytorch_model.safetensors"))[
        f"{layer}.w_codes"], weights[f"{layer}.w_codes"])
    assert torch.equal(trdq.realize(loaded).pipe.transformer.get_submodule(layer)._codes(0), made.w_codes[0])
    real = from_pretrained(folder, execution="real integer")
    assert real.quant.execution == "real integer"
    assert np.array_equal(generate(realize(q, compact_rotations=True), PROMPTS, [3, 4], steps=4), generate(real, PROMPTS, [3, 4], steps=4))


def test_a_bare_transformer_round_trips(saved, tmp_path):
    q, _ = saved
    folder = save_pretrained(q.pipe.transformer, tmp_path / "t")
    assert not (folder / "model_index.json").exists() and is_quantized_folder(folder)
    loaded = from_pretrained(folder)
    assert isinstance(loaded, type(q.pipe.transformer))
    gen = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(2, 4, 8, 8, generator=gen),
              "encoder_hidden_states": torch.randn(2, 5, q.pipe.transformer.config.caption_channels, generator=gen),
              "timestep": torch.tensor([700.0, 700.0])}
    with torch.no_grad():
        assert torch.equal(q.pipe.transformer(**inputs).sample, loaded(**inputs).sample)


@pytest.mark.slow
def test_a_fresh_process_loads_the_folder_alone(saved, tmp_path):
    """Nothing of the full-precision model is in memory: a new process reads only the folder."""
    q, folder = saved
    code = ("import numpy as np, trdq; m = trdq.from_pretrained({f!r}, execution='real integer'); "
            "np.save({o!r}, trdq.generate(m, {p!r}, [3, 4], steps=4))").format(
        f=str(folder), o=str(tmp_path / "img.npy"), p=PROMPTS)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    assert np.array_equal(np.load(tmp_path / "img.npy"), generate(realize(q, compact_rotations=True), PROMPTS, [3, 4], steps=4))


def test_saving_refuses_what_it_cannot_write(saved, tiny_pixart, tmp_path):
    q, _ = saved
    with pytest.raises(ValueError, match="simulated quantized model"):
        save_pretrained(tiny_pixart, tmp_path / "fp")
    with pytest.raises(ValueError, match="simulated quantized model"):
        save_pretrained(realize(q), tmp_path / "real")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a trdq quantized folder"):
        save_pretrained(q, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_loading_says_what_is_wrong_with_a_folder(saved, tiny_pixart, tmp_path):
    q, folder = saved
    save(q, tmp_path / "old")
    with pytest.raises(SavedModelError, match="trdq.save_pretrained"):  # the earlier format: how to re-save
        from_pretrained(tmp_path / "old")
    tiny_pixart.pipe.save_pretrained(tmp_path / "fp")
    with pytest.raises(SavedModelError, match="no trdq quantization here"):
        from_pretrained(tmp_path / "fp")
    with pytest.raises(ValueError, match="unknown execution"):
        from_pretrained(folder, execution="fast")

    def tampered(name, change):
        import shutil

        copy = tmp_path / name
        shutil.copytree(folder / "transformer", copy)
        weights = load_file(str(copy / "diffusion_pytorch_model.safetensors"))
        change(weights)
        save_file(weights, str(copy / "diffusion_pytorch_model.safetensors"))
        return copy

    missing = tampered("missing", lambda w: w.pop("pos_embed.proj.weight"))
    with pytest.raises(SavedModelError, match="pos_embed.proj.weight: missing"):
        from_pretrained(missing)
    extra = tampered("extra", lambda w: w.__setitem__("evil", torch.zeros(1)))
    with pytest.raises(SavedModelError, match="evil: a tensor the PixArtTransformer2DModel does not have"):
        from_pretrained(extra)
    garbage = tampered("garbage", lambda w: None)
    (garbage / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10" + b"\0" * 63)
    with pytest.raises(SavedModelError, match="not a readable safetensors file"):
        from_pretrained(garbage)
    off_grid = tampered("grid", lambda w: w["transformer_blocks.0.attn1.to_q.w_codes"].fill_(0x88))
    with pytest.raises(SavedModelError, match="codes outside -7..7"):
        from_pretrained(off_grid)


def test_the_top_level_names_the_stand_alone_pair():
    assert trdq.save_pretrained is save_pretrained and trdq.from_pretrained is from_pretrained


def test_float_parts_can_be_stored_in_bf16_and_a_real_load_keeps_rotations_compact(saved, tmp_path):
    from trdq.demo.bench.measure import compact_rotations

    q, _ = saved
    folder = save_pretrained(q.pipe.transformer, tmp_path / "bf16", dtype=torch.bfloat16)
    weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    layer = "transformer_blocks.0.attn1.to_q"
    assert weights["pos_embed.proj.weight"].dtype == torch.bfloat16  # left in floating point: cast
    assert weights[f"{layer}.w_scale"].dtype == torch.float64 and weights[f"{layer}.bias"].dtype == torch.float32
    real = from_pretrained(folder, execution="real integer")
    assert compact_rotations(real) is True
    assert compact_rotations(from_pretrained(folder, execution="real integer", compact_rotations=False)) is False
    loaded = from_pretrained(folder)  # the float parts back in the dtype the model ran in, their values rounded
    assert loaded.pos_embed.proj.weight.dtype == torch.float32
    assert torch.equal(loaded.pos_embed.proj.weight, q.pipe.transformer.pos_embed.proj.weight.bfloat16().float())


def test_a_cfg_split_model_saves_both_branches_over_one_copy_of_the_float_parts(tiny_pixart, tmp_path):
    config = QuantConfig(method="trdq", w_bits=8, a_bits=8, time_groups=TimeGroups(2), block_size=32,
                         cfg_split=True, uncond_bits=(4, 8), attention_bits=8)
    q = quantize(tiny_pixart, config, PROMPTS[:1], steps=2)
    folder = save_pretrained(q, tmp_path / "split")
    weights = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    layer = "transformer_blocks.0.attn1.to_q"
    assert weights[f"uncond.{layer}.w_codes"].dtype == torch.uint8 and weights[f"cond.{layer}.w_codes"].dtype == torch.int8
    assert "pos_embed.proj.weight" in weights and "cond.pos_embed.proj.weight" not in weights
    loaded = from_pretrained(folder)
    assert loaded.quant.config == config
    uncond, cond = loaded.pipe.transformer.uncond, loaded.pipe.transformer.cond
    assert uncond.pos_embed.proj.weight.data_ptr() == cond.pos_embed.proj.weight.data_ptr()  # shared
    assert np.array_equal(generate(q, PROMPTS, [3, 4], steps=2), generate(loaded, PROMPTS, [3, 4], steps=2))
    real = from_pretrained(folder, execution="real integer")
    assert real.quant.execution == "real integer"
    assert np.array_equal(generate(realize(q, compact_rotations=True), PROMPTS, [3, 4], steps=2), generate(real, PROMPTS, [3, 4], steps=2))
    for model, is_real in ((loaded, False), (real, True)):  # both branches keep their quantized attention
        processors = [m.processor for branch in (model.pipe.transformer.uncond, model.pipe.transformer.cond)
                      for m in branch.modules() if isinstance(m, Attention)]
        assert processors and all(isinstance(p, QuantAttnProcessor) and p.quant == AttentionQuant(8, is_real)
                                  for p in processors)
