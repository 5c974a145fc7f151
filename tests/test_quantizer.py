import pytest
import torch

from trdq import quantizer as Q


@pytest.mark.parametrize("bits", [1, 9, 4.0, "8"])
def test_unsupported_bit_widths_are_rejected_with_the_range(bits):
    with pytest.raises(ValueError, match="2..8"):
        Q.check_bits(bits)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_codes_stay_on_the_grid_and_error_is_at_most_half_a_step(bits, symmetric):
    x = torch.randn(32, 64, dtype=torch.float64) * 3
    p = Q.per_token_params(x, bits, symmetric)
    q = Q.quantize(x, p)
    qmin, qmax = Q.qrange(bits, symmetric)
    assert q.min() >= qmin and q.max() <= qmax and torch.equal(q, q.round())
    err = (Q.dequantize(q, p) - x).abs()
    assert torch.all(err <= p.scale / 2 + 1e-12)


def test_symmetric_8bit_codes_fit_int8_without_the_most_negative_value():
    assert Q.qrange(8, True) == (-127, 127) and Q.qrange(4, False) == (0, 15)


def test_zero_is_exact_and_constant_rows_do_not_divide_by_zero():
    x = torch.tensor([[0.0, 0.5, 1.0], [2.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    for symmetric in (True, False):
        y = Q.fake_quant_per_token(x, 4, symmetric)
        assert torch.isfinite(y).all() and y[2].eq(0).all() and y[0, 0] == 0


def test_grouped_weights_are_at_least_as_accurate_as_per_channel():
    w = torch.randn(16, 128, dtype=torch.float64)
    w[:, 5] *= 20  # one outlier column hurts whole rows, but only one group per row
    per_channel = Q.sqnr_db(w, Q.fake_quant_weight(w, 4))
    grouped = Q.sqnr_db(w, Q.fake_quant_weight(w, 4, group_size=32))
    assert grouped > per_channel + 3
    with pytest.raises(ValueError, match="divide"):
        Q.per_channel_params(w, 4, True, group_size=48)


def test_sqnr_grows_about_6db_per_bit():
    w = torch.randn(64, 256, dtype=torch.float64)
    s4, s8 = (Q.sqnr_db(w, Q.fake_quant_weight(w, b)) for b in (4, 8))
    assert 20 < s8 - s4 < 28
