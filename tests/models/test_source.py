"""A model source checked before loading: where it is, which transformer, how much memory."""

import json

import pytest
import torch
from safetensors.torch import save_file

from trdq.models.adapters import UnsupportedArchitectureError
from trdq.models.source import available_memory, disk_bytes, inspect_source, loaded_bytes, locate, placement


def test_weight_bytes_read_from_the_headers_count_floats_at_four_bytes_and_others_as_stored(tmp_path):
    (tmp_path / "a").mkdir()
    save_file({"w": torch.zeros(3, 5, dtype=torch.bfloat16), "i": torch.zeros(7, dtype=torch.int8)},
              str(tmp_path / "a" / "x.safetensors"))
    save_file({"b": torch.zeros(2, dtype=torch.float16)}, str(tmp_path / "y.safetensors"))
    assert loaded_bytes(tmp_path) == 3 * 5 * 4 + 7 + 2 * 4


def test_a_pipeline_folder_names_its_transformer_and_family(tiny_pixart, tmp_path):
    tiny_pixart.pipe.save_pretrained(tmp_path / "p")
    found = inspect_source(str(tmp_path / "p"))
    assert (found.pipeline, found.transformer, found.family) == ("PixArtAlphaPipeline", "PixArtTransformer2DModel",
                                                                  "pixart")
    params = sum(p.numel() for m in (tiny_pixart.pipe.transformer, tiny_pixart.pipe.text_encoder, tiny_pixart.pipe.vae)
                 for p in m.state_dict().values() if p.is_floating_point())
    assert loaded_bytes(found.folder) >= 4 * params * 0.99  # every component's weights, in float32
    assert (available_memory() or 1) > 0


def test_what_is_not_a_supported_pipeline_says_why(tmp_path):
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "model_index.json").write_text(json.dumps(
        {"_class_name": "SomePipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    with pytest.raises(UnsupportedArchitectureError, match="FluxTransformer2DModel; trdq quantizes .*SanaTransformer"):
        inspect_source(str(tmp_path / "dit"))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download someone/absent"):
        locate("someone/absent")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a hub id"):
        locate("./missing/folder")


def test_a_model_goes_to_the_gpu_in_its_familys_half_precision_else_to_the_cpu_in_float32():
    assert placement("pixart", cuda=False) == placement("sana", cuda=False) == ("cpu", torch.float32)
    assert placement("pixart", cuda=True, bf16=True) == ("cuda", torch.float16)
    assert placement("sana", cuda=True, bf16=True) == placement("sd3", cuda=True, bf16=True) == ("cuda", torch.bfloat16)
    assert placement("sana", cuda=True, bf16=False) == ("cuda", torch.float16)  # a GPU without bf16
    assert placement("latte") == (("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32))


def test_half_precision_loads_count_two_bytes_a_floating_element(tmp_path):
    save_file({"w": torch.zeros(3, 5), "i": torch.zeros(7, dtype=torch.int8)}, str(tmp_path / "x.safetensors"))
    assert loaded_bytes(tmp_path, 2) == 3 * 5 * 2 + 7
    assert disk_bytes(tmp_path) == (tmp_path / "x.safetensors").stat().st_size
