import pytest
import torch

from trdq import quantizer as Q
from trdq.config import QuantConfig
from trdq.methods import RECIPES, choice_error, fit_group, recipe_for


def _outlier_layer():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen, dtype=torch.float64)
    x[:, [7, 21]] *= 30.0  # massive activation channels
    w = torch.randn(32, 64, generator=gen, dtype=torch.float64) * 0.1
    return x, w


def _error(t, x, w, config):
    xq = Q.fake_quant_per_token(t.activation(x), config.a_bits)
    wq = Q.fake_quant_weight(t.weight(w), config.w_bits)
    return float((xq @ wq.T - x @ w.T).pow(2).mean())


def test_trdq_search_beats_rtn_and_reports_its_alpha_on_outlier_activations():
    x, w = _outlier_layer()
    config = QuantConfig(method="trdq", w_bits=8, a_bits=4, block_size=32)
    t = fit_group(w, x, x.abs().amax(0), recipe_for(config), config)
    rtn = _error(fit_group(w, x, x.abs().amax(0), RECIPES["rtn"], config), x, w, config)
    assert t.kind != "none" and _error(t, x, w, config) < 0.5 * rtn
    assert t.delta is None or t.alpha in config.alpha_grid


def test_the_search_keeps_the_choice_of_lowest_error():
    x, w = _outlier_layer()
    config = QuantConfig(method="trdq", w_bits=4, a_bits=4, block_size=32)
    t = fit_group(w, x, x.abs().amax(0), recipe_for(config), config)
    kinds = [(a, k) for a in config.alpha_grid for k in ("smooth", "both")] + [(None, "rotate"), (None, "none")]
    scores = {c: choice_error(w, x, x.abs().amax(0), config, c) for c in kinds}
    assert (t.alpha, t.kind) in scores
    assert scores[(t.alpha, t.kind)] == min(scores.values())
    assert scores[(None, "none")] == pytest.approx(_error(fit_group(w, x, x.abs().amax(0), RECIPES["rtn"], config),
                                                          x, w, config), rel=1e-3)


def test_selection_never_does_worse_than_no_transform():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 64, generator=gen, dtype=torch.float64)  # no outliers at all
    w = torch.randn(32, 64, generator=gen, dtype=torch.float64)
    config = QuantConfig(method="trdq", w_bits=4, a_bits=8, block_size=32)
    t = fit_group(w, x, x.abs().amax(0), recipe_for(config), config)
    assert _error(t, x, w, config) <= _error(fit_group(w, x, x.abs().amax(0), RECIPES["rtn"], config), x, w, config) * 1.001


def test_a_fixed_alpha_turns_the_search_off():
    recipe = recipe_for(QuantConfig(method="trdq", alpha=0.3))
    assert recipe.smoothing == "fixed"


def test_a_fixed_alpha_per_time_group_is_used_in_its_group():
    from trdq.calibrate import InputObserver
    from trdq.config import QuantConfig, TimeGroups
    from trdq.methods import fit_layer

    torch.manual_seed(0)
    obs = InputObserver("x", 2, 16)
    for g in range(2):
        obs.update(torch.randn(64, 16) * torch.linspace(0.1, 10, 16), g)
    config = QuantConfig(method="viditq", time_groups=TimeGroups(2), alpha=(0.2, 0.8))
    transforms = fit_layer(torch.randn(8, 16), obs, config)
    assert [t.alpha for t in transforms] == [0.2, 0.8]
    with pytest.raises(ValueError, match="one per group"):
        QuantConfig(time_groups=TimeGroups(4), alpha=(0.2, 0.8))
    assert QuantConfig.from_dict(config.to_dict()).alpha == (0.2, 0.8)
