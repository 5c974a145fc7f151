import copy

import pytest
import torch

import trdq
from analysis import examples
from analysis.compare import CALIBRATION, DEFAULT_SLOTS, calibration_prompts, default_config
from trdq.api import choices_of

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]


def _config(method="trdq"):
    return trdq.QuantConfig(method=method, w_bits=4, a_bits=4, time_groups=trdq.TimeGroups(2), block_size=16)


@pytest.mark.slow
def test_shipped_choices_are_used_only_for_their_weights_calibration_and_config(tiny_pixart, tmp_path):
    q = trdq.quantize(tiny_pixart, _config(), PROMPTS, steps=4)
    (tmp_path / "tiny").mkdir()
    examples.write_choices(tmp_path / "tiny" / "choices.json", tiny_pixart, PROMPTS,
                           [(_config(), q), (_config("viditq"), q)])
    found = examples.load_choices("tiny", _config(), tiny_pixart, PROMPTS, folder=tmp_path)
    assert found == choices_of(q)
    assert examples.load_choices("tiny", _config("viditq"), tiny_pixart, PROMPTS, folder=tmp_path) is None  # no search
    assert examples.load_choices("tiny", trdq.QuantConfig(w_bits=3, a_bits=3), tiny_pixart, PROMPTS, folder=tmp_path) is None
    assert examples.load_choices("tiny", _config(), tiny_pixart, PROMPTS[:1], folder=tmp_path) is None
    assert examples.load_choices("other", _config(), tiny_pixart, PROMPTS, folder=tmp_path) is None
    other = copy.deepcopy(tiny_pixart)  # the same architecture, other weights
    with torch.no_grad():
        next(m for m in other.pipe.transformer.modules() if isinstance(m, torch.nn.Linear)).weight.mul_(2)
    assert examples.load_choices("tiny", _config(), other, PROMPTS, folder=tmp_path) is None


@pytest.mark.slow
def test_the_shipped_choices_are_what_the_search_chooses_now(shapes_t2i):
    """Guards the app's fast default: re-run `python -m analysis examples` when this fails."""
    prompts = calibration_prompts(shapes_t2i, CALIBRATION["shapes-t2i"])
    searching = [default_config(m, b) for m, b in DEFAULT_SLOTS if examples.searches(default_config(m, b))]
    assert searching
    prepared = trdq.calibrate(trdq.prepare(shapes_t2i, searching[0]), prompts)
    for config in searching:
        shipped = examples.load_choices("shapes-t2i", config, shapes_t2i, prompts)
        assert shipped is not None, f"no shipped choices for {config.method} {config.bits}"
        assert shipped == choices_of(trdq.convert(prepared, config))
