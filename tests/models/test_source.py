"""A model source checked before loading: where it is, which transformer, how much memory."""

import json

import pytest
import torch
from safetensors.torch import save_file

from trdq.models.adapters import UnsupportedArchitectureError
from trdq.models.source import available_memory, float32_bytes, inspect_source, locate


def test_float32_bytes_read_from_the_headers_count_floats_at_four_bytes_and_others_as_stored(tmp_path):
    (tmp_path / "a").mkdir()
    save_file({"w": torch.zeros(3, 5, dtype=torch.bfloat16), "i": torch.zeros(7, dtype=torch.int8)},
              str(tmp_path / "a" / "x.safetensors"))
    save_file({"b": torch.zeros(2, dtype=torch.float16)}, str(tmp_path / "y.safetensors"))
    assert float32_bytes(tmp_path) == 3 * 5 * 4 + 7 + 2 * 4


def test_a_pipeline_folder_names_its_transformer_and_family(tiny_pixart, tmp_path):
    tiny_pixart.pipe.save_pretrained(tmp_path / "p")
    found = inspect_source(str(tmp_path / "p"))
    assert (found.pipeline, found.transformer, found.family) == ("PixArtAlphaPipeline", "PixArtTransformer2DModel",
                                                                  "pixart")
    params = sum(p.numel() for m in (tiny_pixart.pipe.transformer, tiny_pixart.pipe.text_encoder, tiny_pixart.pipe.vae)
                 for p in m.state_dict().values() if p.is_floating_point())
    assert float32_bytes(found.folder) >= 4 * params * 0.99  # every component's weights, in float32
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
