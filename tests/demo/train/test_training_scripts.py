"""The training scripts run end to end (a few steps) and produce loadable artefacts."""

import argparse
from pathlib import Path

import pytest
import torch

from trdq.demo.eval.detector import load_detector
from trdq.demo.train import detector, t2i, vae
from trdq.models.loader import load_model


@pytest.mark.slow
def test_vae_then_t2i_make_a_pipeline_that_loads_and_resumes(tmp_path: Path):
    vae.train(tmp_path / "vae", steps=2, batch_size=2, lr=1e-3, kl_weight=1e-5, seed=0, save_every=1)
    args = argparse.Namespace(
        vae=tmp_path / "vae" / "vae", out=tmp_path / "t2i", export=tmp_path / "pipe", steps=2,
        batch_size=4, lr=1e-4, warmup=1, ema=0.9, caption_dropout=0.1, pool_size=8, refresh_every=1,
        bf16=False, seed=0, save_every=1, export_every=2, init_from=None, init_step=0, stop_after=None)
    t2i.train(args)
    args.steps = 3  # resume from state.pt for one more step
    t2i.train(args)
    model = load_model(str(tmp_path / "pipe"))
    assert model.settings.world == "shapes"
    args.out, args.init_from, args.init_step, args.steps = tmp_path / "fresh", tmp_path / "pipe", 3, 4
    t2i.train(args)  # a fresh machine: no state.pt, continue from the exported weights
    assert torch.load(tmp_path / "fresh" / "state.pt", weights_only=True)["step"] == 4


@pytest.mark.slow
def test_detector_training_saves_a_loadable_model(tmp_path: Path):
    acc = detector.train(tmp_path / "det", steps=2, batch_size=4, lr=1e-3, seed=0)
    assert set(acc) == {"size", "color", "shape", "position", "all"}
    load_detector(tmp_path / "det")


@pytest.mark.slow
def test_t2v_starts_from_the_image_model_and_resumes(tmp_path: Path):
    from diffusers import PixArtAlphaPipeline

    from trdq.demo import motion
    from trdq.demo.train import components, t2v
    from trdq.models.loader import EMBEDDED

    image = PixArtAlphaPipeline.from_pretrained(EMBEDDED["shapes-t2i"])
    tokenizer = components.build_tokenizer(motion.VOCABULARY)
    model = torch.nn.ModuleDict({"transformer": components.build_latte_transformer(4),
                                 "text_encoder": components.build_text_encoder(len(tokenizer))})
    t2v.init_from_image_model(model, EMBEDDED["shapes-t2i"], tokenizer)
    video, spatial = model["transformer"], image.transformer
    assert torch.equal(video.transformer_blocks[3].attn2.to_q.weight, spatial.transformer_blocks[3].attn2.to_q.weight)
    out = video.proj_out.weight.view(4, 8, -1)  # (patch position, channel, width)
    assert torch.equal(out[:, :4], spatial.proj_out.weight.view(4, 4, -1)) and out[:, 4:].abs().max() == 0
    assert all(b.attn1.to_out[0].weight.abs().max() == 0 for b in video.temporal_transformer_blocks)
    red_old, red_new = image.tokenizer.get_vocab()["red"], tokenizer.get_vocab()["red"]
    assert torch.equal(model["text_encoder"].shared.weight[red_new], image.text_encoder.shared.weight[red_old])

    args = argparse.Namespace(
        init_image=EMBEDDED["shapes-t2i"], out=tmp_path / "t2v", export=tmp_path / "pipe", frames=4, steps=2,
        stop_after=None, batch_size=2, lr=1e-4, warmup=1, ema=0.9, caption_dropout=0.5, pool_size=4,
        refresh_every=1, bf16=False, seed=0, save_every=1, export_every=2, init_from=None, init_step=0,
        temporal_lr_mult=3.0, high_noise=0.5, device="cpu", workers=1, time_budget=None)
    t2v.train(args)
    args.steps = 3  # resume from state.pt for one more step
    t2v.train(args)
    loaded = load_model(str(tmp_path / "pipe"))
    assert loaded.settings.world == "moving-shapes" and loaded.settings.num_frames == 4
    assert torch.load(tmp_path / "t2v" / "state.pt", weights_only=True)["step"] == 3


@pytest.mark.slow
def test_t2v_clip_pool_is_the_same_rendered_in_worker_processes():
    from diffusers import AutoencoderKL

    from trdq.demo.train import t2v
    from trdq.models.loader import EMBEDDED

    vae = AutoencoderKL.from_pretrained(EMBEDDED["shapes-t2i"], subfolder="vae").eval()
    alone = t2v.ClipPool(vae, size=6, frames=2, seed=3, chunk=4)
    workers = t2v.ClipPool(vae, size=6, frames=2, seed=3, workers=2, chunk=4)
    assert torch.equal(alone.labels, workers.labels)
    assert torch.allclose(alone.mean, workers.mean) and torch.allclose(alone.std, workers.std)
    other = t2v.ClipPool(vae, size=6, frames=2, seed=4, chunk=4)
    assert not torch.allclose(alone.mean, other.mean)
