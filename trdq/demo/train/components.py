"""The untrained parts of the embedded shapes-t2i pipeline, with their sizes in one place.

Each builder returns a fresh diffusers/transformers module of the same class a real PixArt-alpha
checkpoint uses, so everything downstream (quantization, the app) runs the real code path.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, LatteTransformer3DModel, PixArtTransformer2DModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from trdq.demo import shapes

IMAGE_SIZE = shapes.IMAGE_SIZE  # pixels
LATENT_SIZE = 16  # the VAE downsamples 4x: 64x64x3 -> 16x16x4
LATENT_CHANNELS = 4
TEXT_DIM = 128
MAX_TOKENS = 16  # longest caption of the grammar is 9 words + </s>
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def build_tokenizer(vocabulary=shapes.VOCABULARY) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a grammar's vocabulary; other words map to ``<unk>``."""
    words = list(SPECIAL_TOKENS) + sorted(vocabulary)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=120,
    )


def build_text_encoder(vocab_size: int) -> T5EncoderModel:
    """A 2-layer T5 encoder (d_model 128), trained jointly with the transformer."""
    config = T5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def build_vae() -> AutoencoderKL:
    """A small KL autoencoder: 64x64x3 images <-> 16x16x4 latents."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def build_transformer() -> PixArtTransformer2DModel:
    """A PixArt-alpha transformer: 8 blocks of width 192 (6 heads x 32) on 8x8 = 64 patches."""
    return PixArtTransformer2DModel(
        num_attention_heads=6, attention_head_dim=32, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, num_layers=8, cross_attention_dim=192,
        sample_size=LATENT_SIZE, patch_size=2, caption_channels=TEXT_DIM,
        use_additional_conditions=False,
    )


def build_latte_transformer(num_frames: int) -> LatteTransformer3DModel:
    """A Latte transformer shaped like :func:`build_transformer` (so its spatial blocks can start
    from the image model's), with one temporal block after each spatial one.

    ``out_channels`` is twice the latent channels because ``LattePipeline`` always keeps the first
    half of the prediction (the second half is the learned variance of real Latte checkpoints).
    """
    return LatteTransformer3DModel(
        num_attention_heads=6, attention_head_dim=32, in_channels=LATENT_CHANNELS,
        out_channels=2 * LATENT_CHANNELS, num_layers=8, cross_attention_dim=192, attention_bias=True,
        sample_size=LATENT_SIZE, patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=TEXT_DIM, video_length=num_frames,
    )


def build_scheduler() -> DDIMScheduler:
    """PixArt-alpha's linear beta schedule, sampled with DDIM (the safe default here)."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def images_to_tensor(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) array -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
