"""analysis.collect records real layer inputs per time group and applies each group's transforms
exactly as the quantized layer does."""

import dataclasses

import pytest
import torch
from torch import nn

import trdq
from analysis import stats
from analysis.collect import collect_layer, collect_layers, group_activations, quantized_layers
from trdq.calibrate import InputObserver
from trdq.config import QuantConfig, TimeGroups
from trdq.demo import motion
from trdq.layers import GroupTransform, QuantLinear
from trdq.methods import fit_rotation
from trdq.timegroups import GroupState

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]
CONFIG = QuantConfig(method="trdq", w_bits=8, a_bits=8, time_groups=TimeGroups(2), block_size=32)
LAYER = "transformer_blocks.0.attn1.to_out.0"


@pytest.fixture(scope="module")
def quantized(tiny_pixart):
    return trdq.quantize(tiny_pixart, CONFIG, PROMPTS, steps=2)


@pytest.fixture(scope="module")
def collected(tiny_pixart, quantized):
    return collect_layers(tiny_pixart, quantized, [LAYER, "transformer_blocks.1.ff.net.2"], PROMPTS, steps=2)


def test_quantized_layers_are_the_configured_targets(tiny_pixart, quantized):
    assert quantized_layers(quantized) == list(trdq.prepare(tiny_pixart, CONFIG).layers)
    assert quantized_layers(tiny_pixart) == []


def test_groups_follow_the_quantized_models_group_index(collected, quantized):
    layer = collected[LAYER]
    assert layer.num_groups == 2 and [g.group for g in layer.groups] == [0, 1]
    # one step per group; 2 prompts x 2 CFG branches x 16 patch tokens per step
    assert [g.tokens for g in layer.groups] == [64, 64]
    q = quantized.pipe.transformer.get_submodule(LAYER)
    for g, t in zip(layer.groups, q.transforms):
        assert (g.kind, g.alpha) == (t.kind, t.alpha)
        assert g.x.shape == (64, q.in_features)
        torch.testing.assert_close(g.absmax, g.x.abs().amax(0))  # the whole group fits the sample


def test_stages_are_the_groups_transforms(collected, quantized):
    layer = collected[LAYER]
    q = quantized.pipe.transformer.get_submodule(LAYER)
    for g, t in zip(layer.groups, q.transforms):
        x = g.x.double()
        smoothed = x if t.delta is None else x / t.delta
        torch.testing.assert_close(g.smoothed.double(), smoothed, rtol=1e-5, atol=1e-6)
        rotated = smoothed if t.rotation is None else smoothed @ t.rotation.matrix()
        torch.testing.assert_close(g.rotated.double(), rotated, rtol=1e-5, atol=1e-6)
        # the rotation is orthogonal: every token keeps its L2 norm
        torch.testing.assert_close(g.rotated.norm(dim=1), g.smoothed.norm(dim=1), rtol=1e-5, atol=1e-6)
        # full precision: the transformed pair computes the original product
        torch.testing.assert_close(g.rotated @ g.weight.T, g.x @ layer.weight.T, rtol=1e-4, atol=1e-4)
        assert g.output_sqnr_db > 30  # W8A8


def _observer(x, name="planted"):
    observer = InputObserver(name, 1, x.shape[1], sample_tokens=len(x))
    observer.update(x, 0)
    return observer


def test_duquant_rotation_flattens_planted_outlier_channels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=gen)
    x[:, [3, 17, 50]] *= 40.0
    linear = nn.Linear(64, 32)
    rotation = fit_rotation("duquant", x.double(), x.abs().amax(0).double(), 32, 8, seed=0)
    layer = QuantLinear.from_linear(linear, [GroupTransform(rotation=rotation)], 8, 8, GroupState())
    g = group_activations(layer, linear.weight.detach(), linear.bias.detach(), _observer(x), 0)
    before, after = stats.outliers(g.x), stats.outliers(g.rotated)
    assert before.count == 3 and after.count == 0
    assert after.ratio < before.ratio / 4
    assert stats.sqnr_per_token(g.rotated, 4) > stats.sqnr_per_token(g.x, 4) + 3  # measured +4.3 dB
    torch.testing.assert_close(g.rotated.norm(dim=1), g.x.norm(dim=1), rtol=1e-5, atol=1e-5)
    assert g.smoothed is not g.rotated and torch.equal(g.smoothed, g.x)  # no smoothing in this group


def test_smoothing_alone_scales_channels():
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    linear = nn.Linear(8, 4)
    delta = torch.linspace(0.5, 4.0, 8, dtype=torch.float64)
    layer = QuantLinear.from_linear(linear, [GroupTransform(delta=delta, alpha=0.5)], 8, 8, GroupState())
    g = group_activations(layer, linear.weight.detach(), None, _observer(x), 0)
    torch.testing.assert_close(g.smoothed, (x.double() / delta).float())
    assert torch.equal(g.rotated, g.smoothed) and g.kind == "smooth" and g.alpha == 0.5


def test_clear_errors(tiny_pixart, quantized):
    with pytest.raises(ValueError, match="quantized_layers"):
        collect_layer(tiny_pixart, quantized, "transformer_blocks.0.nope", PROMPTS, steps=2)
    with pytest.raises(ValueError, match="trdq.quantize"):
        collect_layer(tiny_pixart, tiny_pixart, LAYER, PROMPTS, steps=2)
    with pytest.raises(ValueError, match="saw no input"):
        collect_layer(tiny_pixart, quantized, LAYER, PROMPTS, steps=1)


@pytest.mark.slow
def test_cfg_split_layers_see_their_own_branch(tiny_pixart, collected):
    q = trdq.quantize(tiny_pixart, dataclasses.replace(CONFIG, cfg_split=True), PROMPTS, steps=2)
    names = quantized_layers(q)
    assert f"cond.{LAYER}" in names and f"uncond.{LAYER}" in names
    cond = collect_layer(tiny_pixart, q, f"cond.{LAYER}", PROMPTS, steps=2)
    assert [g.tokens for g in cond.groups] == [32, 32]  # half of every CFG batch
    torch.testing.assert_close(cond.weight, collected[LAYER].weight)


@pytest.mark.slow
def test_video_model_temporal_layer(tiny_latte):
    calibration, analysis = [[s.caption] for s in motion.sample_scenes(2)]
    q = trdq.quantize(tiny_latte, CONFIG, calibration, steps=2)
    name = next(n for n in quantized_layers(q) if n.startswith("temporal_transformer_blocks"))
    layer = collect_layer(tiny_latte, q, name, analysis, steps=2, sample_tokens=16)
    assert layer.num_groups == 2 and all(len(g.x) == 16 and g.tokens > 16 for g in layer.groups)
