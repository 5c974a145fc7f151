import pytest

from trdq.config import QuantConfig, TimeGroups, parse_bits


def test_parse_bits():
    assert parse_bits("W4A8") == (4, 8)
    for bad in ("w4", "8a8", "w1a8", "w4a9"):
        with pytest.raises(ValueError):
            parse_bits(bad)


def test_uniform_groups_split_steps_contiguously():
    assert TimeGroups(4).step_to_group(20) == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    assert TimeGroups(3).step_to_group(7) == [0, 0, 0, 1, 1, 2, 2]
    assert TimeGroups(20).step_to_group(20) == list(range(20))


def test_explicit_boundaries():
    assert TimeGroups(boundaries=(0, 2, 10)).step_to_group(12) == [0, 0] + [1] * 8 + [2, 2]


@pytest.mark.parametrize("groups,steps,match", [
    (TimeGroups(21), 20, "at most 20 groups"),
    (TimeGroups(boundaries=(0, 5, 25)), 20, "below 20"),
])
def test_groups_that_do_not_fit_the_sampler_are_rejected(groups, steps, match):
    with pytest.raises(ValueError, match=match):
        groups.step_to_group(steps)


@pytest.mark.parametrize("kwargs,match", [
    ({"boundaries": (1, 5)}, "start at step 0"),
    ({"boundaries": (0, 5, 5)}, "strictly increase"),
    ({"num_groups": 0}, "positive integer"),
    ({"boundaries": (0, 2.5)}, "integer steps"), ({"num_groups": True}, "positive integer"),
])
def test_bad_time_groups(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TimeGroups(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"w_bits": 9}, "2..8"), ({"a_bits": 1}, "2..8"), ({"method": "gptq"}, "choose one of"),
    ({"rotation": "givens"}, "choose one of"), ({"alpha": 1.5}, r"\[0, 1\]"),
    ({"include": "*attn*"}, "tuple of patterns"), ({"block_size": 1}, "at least 2"),
    # wrong types fail here, not later as something else
    ({"alpha": "0.5"}, "alpha must be a number"), ({"alpha": float("nan")}, "alpha must be a number"),
    ({"a_symmetric": "no"}, "True or False"), ({"cfg_split": 1}, "True or False"),
    ({"rotation_steps": -3}, "rotation_steps must be an integer of at least 1"),
    ({"block_size": 2.5}, "block_size must be an integer"), ({"block_size": float("nan")}, "block_size"),
    ({"seed": -1}, "seed"), ({"seed": 2 ** 63}, "below 2\\*\\*63"), ({"w_group_size": 0}, "w_group_size"),
    ({"alpha_grid": (0.5, float("inf"))}, "alpha_grid"), ({"time_groups": 4}, "TimeGroups"),
    ({"attention_bits": 9}, "attention_bits must be an integer in 2..8"), ({"attention_bits": "8"}, "attention_bits"),
])
def test_bad_quant_configs_say_how_to_fix_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_bits_label():
    assert QuantConfig(w_bits=4, a_bits=8).bits == "w4a8"


def test_attention_bits_round_trip_and_older_configs_read_as_float_attention():
    config = QuantConfig(attention_bits=8)
    assert QuantConfig.from_dict(config.to_dict()) == config
    older = QuantConfig().to_dict()
    del older["attention_bits"]  # written before the field existed
    assert QuantConfig.from_dict(older).attention_bits is None
