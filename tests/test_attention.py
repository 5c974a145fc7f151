import dataclasses

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from trdq.attention import (
    AttentionQuant,
    CFGAttnProcessor,
    QuantAttnProcessor,
    ShareRule,
    Similarity,
    measure_similarity,
    quantize_attention,
    select_layers,
    self_attention_layers,
    share_attention,
)
from trdq.sampling import generate

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]
CLIP_PROMPTS = ["a large red circle moving left", "a small blue star moving up"]


def _attn_inputs(attn, batch=4, tokens=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, attn.to_q.in_features, generator=gen)


def test_measuring_leaves_the_output_unchanged_and_sharing_changes_only_the_uncond_half(tiny_pixart):
    transformer = tiny_pixart.pipe.transformer
    name, attn = next(iter(self_attention_layers(transformer).items()))
    x = _attn_inputs(attn)
    with torch.no_grad():
        reference = attn.processor(attn, x)
        measured = CFGAttnProcessor(name)(attn, x)
        shared = CFGAttnProcessor(name, share=True)(attn, x)
        # by hand: uncond rows use the cond rows' probabilities
        q, k, v = (f(x).view(4, 6, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        probs = (q[2:] @ k[2:].transpose(-1, -2) * attn.scale).softmax(-1)
        by_hand = torch.cat([probs @ v[:2], probs @ v[2:]]).transpose(1, 2).reshape(4, 6, -1)
        by_hand = attn.to_out[0](by_hand)
    torch.testing.assert_close(measured, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared[2:], reference[2:], atol=1e-5, rtol=1e-5)
    assert (shared[:2] - reference[:2]).abs().max() > 1e-3
    torch.testing.assert_close(shared, by_hand, atol=1e-5, rtol=1e-5)


def test_odd_batches_and_masks_fall_back_to_standard_attention(tiny_pixart):
    name, attn = next(iter(self_attention_layers(tiny_pixart.pipe.transformer).items()))
    x = _attn_inputs(attn, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(CFGAttnProcessor(name, share=True)(attn, x), attn.processor(attn, x))


def test_similarity_covers_every_layer_step_and_head(tiny_pixart):
    sim = measure_similarity(tiny_pixart, PROMPTS, steps=3)
    layers = self_attention_layers(tiny_pixart.pipe.transformer)
    assert sim.layers == list(layers) and len(sim.timesteps) == 3
    assert sim.cosine.shape == (len(layers), 3, 2)
    assert ((sim.cosine > 0) & (sim.cosine <= 1 + 1e-9)).all()
    assert sim.per_group(3).shape == (len(layers), 3)
    assert len(sim.records()) == sim.cosine.size
    # 2 prompts, 16 tokens of 2 heads of 32 channels per pair
    assert (sim.score_flops == 2 * 2 * 16 * 16 * 32).all()


def test_selection_by_threshold_budget_and_names(tiny_pixart):
    sim = measure_similarity(tiny_pixart, PROMPTS, steps=2)
    best = sim.layers[int(np.argmax(sim.per_layer()))]
    assert select_layers(sim, budget=1).layers == (best,)
    assert select_layers(sim, budget=0).skipped == 0
    everything = select_layers(sim, threshold=0.0)
    assert everything.layers == tuple(sim.layers) and everything.skipped == pytest.approx(1.0)
    assert select_layers(sim, layers=[best]).skipped == pytest.approx(1 / len(sim.layers))
    with pytest.raises(ValueError, match="exactly one"):
        select_layers(sim, threshold=0.5, budget=1)
    with pytest.raises(ValueError, match="unknown self-attention"):
        select_layers(sim, layers=["blocks.9.attn1"])


def test_selection_by_compute_takes_the_most_similar_layers_until_the_share_is_skipped():
    # four layers; the most similar one is cheap, so a compute budget reaches past it
    cosine = np.array([0.7, 0.99, 0.9, 0.8])[:, None, None] * np.ones((4, 2, 1))
    sim = Similarity(layers=["a", "b", "c", "d"], timesteps=[900, 100], cosine=cosine,
                     score_flops=np.array([40.0, 10.0, 30.0, 20.0]))
    assert select_layers(sim, compute=0.1).layers == ("b",)
    plan = select_layers(sim, compute=0.25)  # b (10%) is not enough: b + c (40%)
    assert plan.layers == ("b", "c") and plan.skipped == pytest.approx(0.4)
    assert select_layers(sim, compute=0.0).layers == ()
    assert select_layers(sim, compute=1.0).skipped == pytest.approx(1.0)
    assert select_layers(sim, rule=ShareRule.parse("25%")) == plan
    with pytest.raises(ValueError, match="compute"):
        select_layers(sim, compute=1.5)


@pytest.mark.parametrize("text, rule", [("8", ShareRule(budget=8)), ("0.95", ShareRule(threshold=0.95)),
                                        ("25%", ShareRule(compute=0.25)), (" 100% ", ShareRule(compute=1.0))])
def test_share_rule_parses_layers_threshold_and_compute(text, rule):
    assert ShareRule.parse(text) == rule


@pytest.mark.parametrize("text", ["1.5", "120%", "x", "-1", "%"])
def test_share_rule_refuses_what_it_cannot_read_with_the_forms_it_takes(text):
    with pytest.raises(ValueError, match="25%"):
        ShareRule.parse(text)


def test_sharing_changes_only_the_uncond_half_of_a_transformer_and_restores_processors(tiny_pixart):
    from trdq.models.adapters import adapter_for

    transformer = tiny_pixart.pipe.transformer
    before = {n: a.processor for n, a in self_attention_layers(transformer).items()}
    inputs = adapter_for(transformer).example_inputs(transformer, 4, 500.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = transformer(**inputs, return_dict=False)[0]
        with share_attention(tiny_pixart, list(before)):
            shared = transformer(**inputs, return_dict=False)[0]
    assert {n: a.processor for n, a in self_attention_layers(transformer).items()} == before
    torch.testing.assert_close(shared[2:], reference[2:], atol=1e-4, rtol=1e-4)
    assert (shared[:2] - reference[:2]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="not self-attention layers"):
        with share_attention(tiny_pixart, ["transformer_blocks.0.attn2"]):
            pass


def test_video_models_share_spatial_and_temporal_attention(tiny_latte):
    sim = measure_similarity(tiny_latte, CLIP_PROMPTS, steps=2)
    assert any(n.startswith("temporal_transformer_blocks.") for n in sim.layers)
    assert any(n.startswith("transformer_blocks.") for n in sim.layers)
    spatial = sim.score_flops[sim.layers.index("transformer_blocks.0.attn1")]
    temporal = sim.score_flops[sim.layers.index("temporal_transformer_blocks.0.attn1")]
    assert spatial == 2 * 4 * 2 * 16 * 16 * 32  # prompts x frames x heads x tokens^2 x head width
    assert temporal == 2 * 16 * 2 * 4 * 4 * 32  # prompts x tokens x heads x frames^2 x head width
    with share_attention(tiny_latte, select_layers(sim, threshold=0.0)):
        clips = generate(tiny_latte, CLIP_PROMPTS, [0, 1], steps=2)
    assert clips.shape == (2, 4, 32, 32, 3)


# ----------------------------------------------------------------------------- quantized attention scores


def _sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.double().pow(2).sum() / (x.double() - ref.double()).pow(2).sum()))


def _cross_inputs(attn, batch=4, tokens=6, text=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, text, attn.to_k.in_features, generator=gen)
    keep = torch.ones(batch, text)
    keep[:, 3:] = 0  # the last two text tokens are padding, as PixArt's encoder mask marks them
    return _attn_inputs(attn, batch, tokens, seed), context, ((1 - keep) * -10000.0).unsqueeze(1)


def test_quantized_processor_is_close_to_float_attention_and_real_matches_simulated(tiny_pixart):
    block = tiny_pixart.pipe.transformer.transformer_blocks[0]
    x, context, mask = _cross_inputs(block.attn2)
    cases = [(block.attn1, dict(hidden_states=x)),
             (block.attn2, dict(hidden_states=x, encoder_hidden_states=context, attention_mask=mask))]
    with torch.no_grad():
        for attn, inputs in cases:
            reference = AttnProcessor2_0()(attn, **inputs)
            simulated = QuantAttnProcessor(AttentionQuant(8))(attn, **inputs)
            real = QuantAttnProcessor(AttentionQuant(8, real=True))(attn, **inputs)
            assert 30 < _sqnr_db(reference, simulated) < 120  # quantized, and close
            torch.testing.assert_close(real, simulated, atol=1e-5, rtol=1e-5)
            assert _sqnr_db(reference, QuantAttnProcessor(AttentionQuant(4))(attn, **inputs)) < \
                _sqnr_db(reference, simulated)
        # the mask holds: without it the padding tokens would be attended to
        unmasked = QuantAttnProcessor(AttentionQuant(8))(block.attn2, x, context)
        masked = QuantAttnProcessor(AttentionQuant(8))(block.attn2, x, context, mask)
        assert _sqnr_db(AttnProcessor2_0()(block.attn2, x, context, mask), masked) > \
            _sqnr_db(AttnProcessor2_0()(block.attn2, x, context, mask), unmasked) + 10


def test_shared_layers_reuse_the_quantized_probabilities(tiny_pixart):
    name, attn = next(iter(self_attention_layers(tiny_pixart.pipe.transformer).items()))
    x = _attn_inputs(attn)
    quantized = QuantAttnProcessor(AttentionQuant(8))
    with torch.no_grad():
        own = quantized(attn, x)
        shared = CFGAttnProcessor(name, share=True, previous=quantized)(attn, x)
        measured = CFGAttnProcessor(name, previous=quantized)(attn, x)
        float_shared = CFGAttnProcessor(name, share=True)(attn, x)
        # odd batches fall back to the layer's quantized processor, not to float attention
        odd = CFGAttnProcessor(name, share=True, previous=quantized)(attn, x[:3])
    torch.testing.assert_close(shared[2:], own[2:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(measured, own, atol=1e-5, rtol=1e-5)
    assert (shared[2:] - float_shared[2:]).abs().max() > 1e-6
    torch.testing.assert_close(odd, quantized(attn, x[:3]), atol=1e-6, rtol=1e-6)


def test_quantize_attention_installs_and_removes_and_refuses_a_model_without_standard_attention(tiny_pixart):
    import copy

    transformer = copy.deepcopy(tiny_pixart.pipe.transformer)
    attns = [m for m in transformer.modules() if isinstance(m, Attention)]
    assert quantize_attention(transformer, AttentionQuant(6)) == len(attns) == 4  # 2 blocks x (self, cross)
    assert all(isinstance(m.processor, QuantAttnProcessor) and m.processor.quant.bits == 6 for m in attns)
    assert quantize_attention(transformer, None) == 4
    assert all(type(m.processor) is AttnProcessor2_0 for m in attns)

    class Joint:  # a processor of another kind (e.g. SD3's joint attention)
        def __call__(self, *args, **kwargs):
            raise AssertionError("not called")

    for m in attns:
        m.set_processor(Joint())
    with pytest.raises(ValueError, match="attention_bits=None"):
        quantize_attention(transformer, AttentionQuant(8))
    with pytest.raises(ValueError, match="attention_bits"):
        AttentionQuant(9)


def test_a_model_quantized_with_attention_bits_runs_them_simulated_and_real_and_shares_them(tiny_pixart):
    from trdq.api import quantize, realize
    from trdq.config import QuantConfig, TimeGroups
    from trdq.demo.eval.metrics import psnr

    config = QuantConfig(method="trdq", w_bits=8, a_bits=8, time_groups=TimeGroups(2), block_size=32)
    linear_only = quantize(tiny_pixart, config, PROMPTS, steps=3)
    with_attention = quantize(tiny_pixart, dataclasses.replace(config, attention_bits=8), PROMPTS, steps=3)
    real = realize(with_attention)

    def processors(model):
        return [m.processor for m in model.pipe.transformer.modules() if isinstance(m, Attention)]

    assert all(type(p) is AttnProcessor2_0 for p in processors(linear_only))
    assert all(isinstance(p, QuantAttnProcessor) and not p.quant.real for p in processors(with_attention))
    assert all(isinstance(p, QuantAttnProcessor) and p.quant.real for p in processors(real))
    images = {name: generate(m, PROMPTS, [0, 1], steps=3)
              for name, m in [("linear", linear_only), ("attention", with_attention), ("real", real)]}
    # the attention is quantized, and close
    assert (psnr(images["attention"], images["linear"]) > 25).all()
    assert not np.array_equal(images["attention"], images["linear"])
    assert (psnr(images["real"], images["attention"]) > 40).all()
    plan = select_layers(measure_similarity(with_attention, PROMPTS, steps=3), budget=2)
    with share_attention(with_attention, plan):
        shared = generate(with_attention, PROMPTS, [0, 1], steps=3)
        assert all(isinstance(p, CFGAttnProcessor) and p.quant == AttentionQuant(8)
                   for n, p in zip(plan.layers, [with_attention.pipe.transformer.get_submodule(n).processor
                                                 for n in plan.layers]))
    assert all(isinstance(p, QuantAttnProcessor) for p in processors(with_attention))
    assert not np.array_equal(shared, images["attention"])
