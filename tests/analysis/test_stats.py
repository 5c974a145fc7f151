"""The statistics of analysis.stats on hand-made tensors whose answers are known."""

import math

import pytest
import torch

from analysis import stats


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_kurtosis_of_known_distributions():
    assert stats.kurtosis(torch.randn(200_000, generator=_gen())) == pytest.approx(3.0, abs=0.05)
    assert stats.kurtosis(torch.rand(200_000, generator=_gen())) == pytest.approx(1.8, abs=0.02)
    assert stats.kurtosis(torch.tensor([-1.0, 1.0] * 50)) == pytest.approx(1.0)  # two equal spikes
    with pytest.raises(ValueError, match="constant"):
        stats.kurtosis(torch.ones(10))


def test_outliers_find_planted_channels():
    x = torch.randn(256, 64, generator=_gen())
    x[:, [5, 40, 41]] *= 50.0
    out = stats.outliers(x)
    assert out.count == 3 and out.fraction == pytest.approx(3 / 64) and out.k == stats.DEFAULT_K
    assert out.ratio > 8
    clean = stats.outliers(torch.randn(256, 64, generator=_gen(1)))
    assert clean.count == 0 and 1 <= clean.ratio < 3
    assert stats.outliers(x, k=1000).count == 0
    with pytest.raises(ValueError, match="positive"):
        stats.outliers(x, k=0)


def test_channel_absmax_reduces_all_but_the_last_dim():
    x = torch.zeros(2, 3, 4)
    x[1, 2, 3], x[0, 0, 1] = -7.0, 2.0
    assert stats.channel_absmax(x).tolist() == [0.0, 2.0, 0.0, 7.0]
    w = torch.tensor([[1.0, -5.0], [-3.0, 2.0]])  # (C_out, C_in): per input channel
    assert stats.channel_absmax(w).tolist() == [3.0, 5.0]


def test_per_token_sqnr_rises_about_6_db_per_bit():
    x = torch.randn(128, 64, generator=_gen())
    sqnr = [stats.sqnr_per_token(x, b) for b in (2, 4, 6, 8)]
    assert all(b > a for a, b in zip(sqnr, sqnr[1:]))
    assert 9 < sqnr[3] - sqnr[2] < 15
    x[:, 0] *= 100  # an outlier channel sets every token's scale: fewer levels for the rest
    assert stats.sqnr_per_token(x, 8) < sqnr[3]


def test_histogram_counts_every_value_on_symmetric_edges():
    x = torch.randn(1000, generator=_gen()) * 3
    h = stats.histogram(x, bins=51)
    assert h.counts.sum() == 1000 and h.outside == 0 and len(h.edges) == 52 and len(h.centres) == 51
    assert h.edges[0] == -h.edges[-1] == -x.abs().max().double()
    narrow = stats.histogram(x, edges=torch.linspace(-1, 1, 11))
    assert narrow.counts.sum() + narrow.outside == 1000
    assert narrow.counts.sum() == int((x.abs() <= 1).sum())
    shared = stats.symmetric_edges(x, 10 * x, bins=4)
    assert shared[-1] == pytest.approx(10 * float(x.abs().max()))
    with pytest.raises(ValueError, match="increasing"):
        stats.histogram(x, edges=torch.tensor([1.0, 0.0]))


def test_describe_collects_the_table_numbers():
    x = torch.randn(64, 32, generator=_gen())
    s = stats.describe(x, bits=8)
    assert s.sqnr_db == stats.sqnr_per_token(x, 8) and s.kurtosis == stats.kurtosis(x)
    assert s.outlier_fraction == 0.0
    assert math.isnan(stats.describe(torch.ones(4, 8), bits=8).kurtosis)
