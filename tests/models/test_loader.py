import pytest
import torch
from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

from trdq.models.loader import EMBEDDED, folder_settings, load_model, pipeline_defaults, resolve


def test_embedded_model_is_a_real_pixart_alpha_pipeline(shapes_t2i):
    pipe = shapes_t2i.pipe
    assert isinstance(pipe, PixArtAlphaPipeline)
    assert isinstance(pipe.transformer, PixArtTransformer2DModel)
    assert shapes_t2i.settings.world == "shapes" and shapes_t2i.settings.max_sequence_length == 16
    ids = pipe.tokenizer("a small red circle on the left").input_ids
    assert pipe.tokenizer.unk_token_id not in ids and ids[-1] == pipe.tokenizer.eos_token_id


def test_a_saved_copy_loads_from_its_folder(shapes_t2i, tmp_path):
    shapes_t2i.pipe.save_pretrained(tmp_path / "copy")
    copy = load_model(str(tmp_path / "copy"))
    assert copy.settings.world is None  # settings travel only with trdq's own folders
    assert (copy.settings.steps, copy.settings.guidance) == (20, 4.5)  # PixArt-alpha's own defaults
    a, b = copy.pipe.transformer.state_dict(), shapes_t2i.pipe.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_model_names_say_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match="shapes-t2i"):
        resolve("no-such-model")
    with pytest.raises(ValueError, match="model_index.json"):
        resolve(str(tmp_path))


def test_hub_ids_pass_through_to_diffusers():
    assert resolve("PixArt-alpha/PixArt-XL-2-512x512") == "PixArt-alpha/PixArt-XL-2-512x512"


def test_an_uncached_hub_id_fails_offline_with_advice():
    with pytest.raises(OSError, match="local Hugging Face cache"):
        load_model("trdq-tests/does-not-exist")


def test_a_folder_without_trdq_settings_samples_with_its_pipelines_own_defaults(tmp_path):
    assert pipeline_defaults("PixArtAlphaPipeline") == {"steps": 20, "guidance": 4.5}
    assert pipeline_defaults("LattePipeline") == {"steps": 50, "guidance": 7.5}
    assert pipeline_defaults("StableDiffusion3Pipeline") == {"steps": 28, "guidance": 7.0}
    assert pipeline_defaults("NoSuchPipeline") == {}
    (tmp_path / "model_index.json").write_text('{"_class_name": "LattePipeline"}')
    assert (folder_settings(tmp_path).steps, folder_settings(tmp_path).guidance) == (50, 7.5)
    embedded = folder_settings(EMBEDDED["shapes-t2v"])  # trdq's own settings win
    assert (embedded.world, embedded.steps, embedded.guidance, embedded.num_frames) == ("moving-shapes", 20, 4.5, 8)
