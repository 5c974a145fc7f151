"""Shared fixtures. Every test runs offline: nothing may reach a model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from trdq.models.loader import load_model  # noqa: E402


@pytest.fixture(scope="session")
def shapes_t2i():
    """The shipped text-to-image pipeline, loaded once for the whole session."""
    return load_model("shapes-t2i")


def build_tiny_pixart(width_heads=(2, 32), num_layers=2, seed=0):
    """A 2-block PixArt-alpha pipeline with random weights (width = heads x head_dim)."""
    import torch
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

    from trdq.demo.train import components
    from trdq.models.loader import LoadedModel, ModelSettings

    torch.manual_seed(seed)
    heads, head_dim = width_heads
    tokenizer = components.build_tokenizer()
    transformer = PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=4,
        num_layers=num_layers, cross_attention_dim=heads * head_dim, sample_size=8, patch_size=2,
        caption_channels=components.TEXT_DIM, use_additional_conditions=False)
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=components.build_text_encoder(len(tokenizer)),
                               vae=components.build_vae(), transformer=transformer,
                               scheduler=components.build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel("tiny-pixart", pipe, ModelSettings(world="shapes", max_sequence_length=16, steps=4))


@pytest.fixture(scope="session")
def tiny_pixart():
    """Width 64 (a power of two)."""
    return build_tiny_pixart((2, 32))


@pytest.fixture(scope="session")
def tiny_pixart_72():
    """Width 72: not a power of two, and not a multiple of the default rotation block."""
    return build_tiny_pixart((3, 24))


def build_tiny_latte(num_frames=4, seed=0):
    """A 2-layer Latte pipeline (width 64) with random weights, on the moving-shapes vocabulary."""
    import torch
    from diffusers import LattePipeline, LatteTransformer3DModel

    from trdq.demo import motion
    from trdq.demo.train import components
    from trdq.models.loader import LoadedModel, ModelSettings

    torch.manual_seed(seed)
    tokenizer = components.build_tokenizer(motion.VOCABULARY)
    transformer = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=64, attention_bias=True, sample_size=8, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=components.TEXT_DIM,
        video_length=num_frames)
    pipe = LattePipeline(tokenizer=tokenizer, text_encoder=components.build_text_encoder(len(tokenizer)),
                         vae=components.build_vae(), transformer=transformer, scheduler=components.build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    settings = ModelSettings(world="moving-shapes", max_sequence_length=16, steps=4, num_frames=num_frames)
    return LoadedModel("tiny-latte", pipe, settings)


@pytest.fixture(scope="session")
def tiny_latte():
    """A tiny random text-to-video pipeline (4 frames of 32x32)."""
    return build_tiny_latte()
