import json

import numpy as np
import pytest

from trdq.api import quantize
from trdq.config import QuantConfig, TimeGroups
from trdq.sampling import generate
from trdq.serialization import load, save

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]


@pytest.mark.parametrize("config", [
    QuantConfig(method="trdq", w_bits=4, a_bits=8, time_groups=TimeGroups(2), block_size=32),
    QuantConfig(method="quarot", w_bits=6, a_bits=6, w_group_size=24),
])
def test_save_then_load_gives_bit_identical_images(tiny_pixart_72, tmp_path, config):
    q = quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    save(q, tmp_path / "q")
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["execution"] == "simulated" and manifest["config"]["method"] == config.method
    reloaded = load(tmp_path / "q", base=tiny_pixart_72)
    assert reloaded.quant.config == config
    a = generate(q, PROMPTS, [3, 4], steps=4)
    b = generate(reloaded, PROMPTS, [3, 4], steps=4)
    assert np.array_equal(a, b)


def test_save_refuses_an_fp_model_and_load_a_foreign_folder(tiny_pixart, tmp_path):
    with pytest.raises(ValueError, match="not quantized"):
        save(tiny_pixart, tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load(tmp_path, base=tiny_pixart)
