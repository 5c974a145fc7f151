"""Every supported family quantizes through its adapter, on tiny random diffusers transformers.

Widths: 64 (a power of two) and 72 (neither a power of two nor a multiple of the rotation block).
Bare transformers are calibrated on their forward inputs with a 4-step schedule in 2 time groups.
"""

import pytest
import torch
from diffusers import (
    DiTTransformer2DModel,
    LatteTransformer3DModel,
    PixArtTransformer2DModel,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DModel,
)

import trdq
from trdq.api import quant_info
from trdq.layers import QuantLinear
from trdq.models.adapters import UnsupportedArchitectureError, adapter_for
from trdq.quantizer import sqnr_db

TIMESTEPS = [999.0, 749.0, 499.0, 249.0]


def _pixart(heads, dim):
    return PixArtTransformer2DModel(num_attention_heads=heads, attention_head_dim=dim, in_channels=4, out_channels=4,
                                    num_layers=2, cross_attention_dim=heads * dim, sample_size=8, patch_size=2,
                                    caption_channels=32, use_additional_conditions=False)


def _latte(heads, dim):
    return LatteTransformer3DModel(num_attention_heads=heads, attention_head_dim=dim, in_channels=4, out_channels=8,
                                   num_layers=2, cross_attention_dim=heads * dim, sample_size=8, patch_size=2,
                                   caption_channels=32, video_length=3, norm_type="ada_norm_single",
                                   num_embeds_ada_norm=1000)


def _dit(heads, dim):
    return DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=dim, in_channels=4, num_layers=2,
                                 sample_size=8, patch_size=2, num_embeds_ada_norm=10)


def _sd3(heads, dim):
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=dim,
                                 num_attention_heads=heads, joint_attention_dim=32, caption_projection_dim=heads * dim,
                                 pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8)


def _sana(heads, dim):
    return SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=dim,
                                  num_layers=2, num_cross_attention_heads=heads, cross_attention_head_dim=dim,
                                  cross_attention_dim=heads * dim, caption_channels=32, sample_size=8, patch_size=1)


BUILDERS = {"pixart": _pixart, "latte": _latte, "dit": _dit, "sd3": _sd3, "sana": _sana}
# Layers each family quantizes by default in 2 blocks: embedders, adaLN and the final layer stay FP.
EXPECTED_LAYERS = {"pixart": 20, "latte": 32, "dit": 12, "sd3": 2 * 12 - 3, "sana": 16}


def _build(family, width):
    torch.manual_seed(0)
    return BUILDERS[family](*{64: (2, 32), 72: (3, 24)}[width]).eval()


def _inputs(transformer, n=4):
    adapter, gen = adapter_for(transformer), torch.Generator().manual_seed(0)
    return [adapter.example_inputs(transformer, 2, TIMESTEPS[i % len(TIMESTEPS)], gen) for i in range(n)]


def _run(transformer, inputs):
    with torch.no_grad():
        return transformer(**inputs).sample


@pytest.mark.slow
@pytest.mark.parametrize("width", [64, 72])
@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_each_family_quantizes_close_to_fp(family, width):
    fp = _build(family, width)
    calib = _inputs(fp)
    config = trdq.QuantConfig(method="trdq", time_groups=trdq.TimeGroups(2), block_size=32)
    q = trdq.quantize(fp, config, calib, timesteps=TIMESTEPS)
    layers = [n for n, m in q.named_modules() if isinstance(m, QuantLinear)]
    assert len(layers) == EXPECTED_LAYERS[family]
    assert not any(".norm" in n or "emb" in n for n in layers)
    assert quant_info(q).config == config and quant_info(fp) is None
    for t, inputs in zip(TIMESTEPS, _inputs(fp, 2)):  # fresh inputs, not the calibration ones
        inputs["timestep"] = torch.full((2,), t)
        assert sqnr_db(_run(fp, inputs), _run(q, inputs)) > 40


def test_positional_timestep_sets_the_group():
    fp = _build("latte", 64)  # Latte takes timestep second, not third
    q = trdq.quantize(fp, trdq.QuantConfig(time_groups=trdq.TimeGroups(2)), _inputs(fp), timesteps=TIMESTEPS)
    inputs = _inputs(fp, 1)[0]
    hidden = inputs.pop("hidden_states")
    state = next(m for m in q.modules() if isinstance(m, QuantLinear)).state
    for t, group in [(999.0, 0), (100.0, 1)]:
        inputs.pop("timestep", None)
        with torch.no_grad():
            q(hidden, torch.full((2,), t), **inputs)
        assert state.group == group


def test_bare_transformer_save_load_is_bit_identical(tmp_path):
    fp = _build("dit", 72)
    q = trdq.quantize(fp, trdq.QuantConfig(w_bits=4, time_groups=trdq.TimeGroups(2)), _inputs(fp), timesteps=TIMESTEPS)
    trdq.save(q, tmp_path / "q")
    reloaded = trdq.load(tmp_path / "q", base=fp)
    inputs = _inputs(fp, 1)[0]
    assert torch.equal(_run(q, inputs), _run(reloaded, inputs))


def test_bare_transformer_needs_timesteps_for_groups():
    fp = _build("pixart", 64)
    with pytest.raises(ValueError, match="timesteps="):
        trdq.quantize(fp, trdq.QuantConfig(time_groups=trdq.TimeGroups(2)), _inputs(fp))


def test_bare_transformer_rejects_non_dict_inputs():
    fp = _build("pixart", 64)
    with pytest.raises(ValueError, match="dicts of forward"):
        trdq.quantize(fp, trdq.QuantConfig(), ["a red circle"])


def test_unsupported_architecture_is_a_clear_error():
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4)
    with pytest.raises(UnsupportedArchitectureError, match="no trdq adapter for UNet2DModel.*register"):
        trdq.prepare(unet, trdq.QuantConfig())
    with pytest.raises(ValueError, match="cannot quantize a str"):
        trdq.prepare("PixArt-alpha/PixArt-XL-2-512x512", trdq.QuantConfig())
