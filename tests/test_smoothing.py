import pytest
import torch

from trdq.smoothing import smoothing_factors


def _layer(outlier_scale=30.0):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen, dtype=torch.float64)
    x[:, [7, 21]] *= outlier_scale  # massive activation channels
    w = torch.randn(32, 64, generator=gen, dtype=torch.float64) * 0.1
    return x, w


def test_smoothing_is_exact_in_full_precision_and_moves_the_outliers_into_the_weight():
    x, w = _layer()
    x_max, w_max = x.abs().amax(0), w.abs().amax(0)
    s = smoothing_factors(x_max, w_max, 0.5)
    assert torch.allclose(s, (x_max / w_max).sqrt())  # s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
    assert torch.allclose((x / s) @ (w * s).T, x @ w.T, atol=1e-9)
    # the outlier channels now stand out far less in the activation, and more in the weight
    ratio = lambda m: float(m.max() / m.median())  # noqa: E731
    assert ratio((x / s).abs().amax(0)) < ratio(x_max) / 4
    assert ratio((w * s).abs().amax(0)) > ratio(w_max)


def test_alpha_one_flattens_activation_channels():
    x, w = _layer()
    s = smoothing_factors(x.abs().amax(0), w.abs().amax(0), 1.0)
    m = (x / s).abs().amax(0)
    assert torch.allclose(m, torch.ones_like(m))


def test_dead_channels_are_left_alone_and_bad_alpha_rejected():
    s = smoothing_factors(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]), 0.5)
    assert torch.equal(s, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        smoothing_factors(torch.ones(2), torch.ones(2), -0.1)
