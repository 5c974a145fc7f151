import torch
from transformers import AutoTokenizer

from trdq.demo import shapes
from trdq.demo.train import components


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tok = components.build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for scene in shapes.all_scenes()[:20]:
        assert loaded(scene.caption).input_ids == tok(scene.caption).input_ids
    ids = loaded("a small red cat").input_ids
    assert ids[-1] == loaded.eos_token_id and ids.count(loaded.unk_token_id) == 1
    assert len(loaded("a large orange triangle at the bottom").input_ids) <= components.MAX_TOKENS


def test_vae_maps_images_to_16x16x4_latents():
    vae = components.build_vae()
    z = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, components.LATENT_CHANNELS, components.LATENT_SIZE, components.LATENT_SIZE)
