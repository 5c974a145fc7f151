import pytest
import torch

from trdq.calibrate import InputObserver


def _feed(observer, batches):
    for x, group in batches:
        observer.update(x, group)


@pytest.mark.parametrize("rows", [16, 300])  # below and above the reservoir's size
def test_merged_groups_are_what_one_group_records(rows):
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(rows, 8, generator=gen) * (g + 1), g) for _ in range(5) for g in range(3)]
    grouped, single = InputObserver("l", 3, 8, sample_tokens=64, seed=7), InputObserver("l", 1, 8, sample_tokens=64, seed=7)
    _feed(grouped, batches)
    _feed(single, [(x, 0) for x, _ in batches])
    merged = grouped.merged()
    assert torch.equal(merged.absmax, single.absmax) and torch.equal(merged.tokens, single.tokens)
    if 15 * rows > 64:  # a reservoir that overflowed keeps its rows in key order: the same rows, the same order
        assert torch.equal(merged.sample(0), single.sample(0))
    else:
        assert sorted(map(tuple, merged.sample(0).tolist())) == sorted(map(tuple, single.sample(0).tolist()))


def test_the_reservoir_keeps_a_uniform_sample_of_bounded_size():
    obs = InputObserver("l", 1, 1, sample_tokens=200, seed=1)
    for start in range(0, 20_000, 500):
        obs.update(torch.arange(start, start + 500, dtype=torch.float32)[:, None], 0)
    sample = obs.sample(0).flatten()
    assert len(sample) == 200 and len(sample.unique()) == 200
    assert obs.tokens.item() == 20_000 and obs.absmax.item() == 19_999
    assert abs(sample.mean().item() - 10_000) < 1_500  # uniform over 0..19999 (sd of the mean ~400)


def test_non_finite_inputs_are_refused_with_the_layer_name():
    obs = InputObserver("blocks.0.attn1.to_q", 1, 4)
    with pytest.raises(ValueError, match="blocks.0.attn1.to_q"):
        obs.update(torch.tensor([[1.0, float("inf"), 0.0, 0.0]]), 0)
