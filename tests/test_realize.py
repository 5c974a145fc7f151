"""trdq.realize: real integer execution of whole models matches the simulated path."""

import numpy as np
import pytest
import torch

import trdq
from trdq.api import quant_info
from trdq.eval.metrics import psnr
from trdq.layers import IntLinear, QuantLinear, SharedIntLinear
from trdq.quantizer import sqnr_db
from trdq.sampling import generate

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]


@pytest.mark.parametrize("bits", [(8, 8), (4, 8)])
def test_realized_pipeline_matches_the_simulated_one(tiny_pixart_72, bits):
    config = trdq.QuantConfig(w_bits=bits[0], a_bits=bits[1], time_groups=trdq.TimeGroups(2), block_size=32)
    sim = trdq.quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    real = trdq.realize(sim)
    assert real.quant.execution == "real integer" and sim.quant.execution == "simulated"
    assert not any(isinstance(m, QuantLinear) for m in real.pipe.transformer.modules())
    assert sum(isinstance(m, IntLinear) for m in real.pipe.transformer.modules()) == 20
    images_sim = generate(sim, PROMPTS, [0, 1], steps=4)
    images_real = generate(real, PROMPTS, [0, 1], steps=4)
    # the same integer codes: images agree far beyond the quantization error itself (~45-60 dB)
    assert np.minimum(psnr(images_real, images_sim), 100).mean() > 65
    # the simulated model is untouched and still simulated
    assert all(isinstance(m, QuantLinear) for n, m in sim.pipe.transformer.named_modules() if n.endswith("to_q"))


def test_realized_transformer_follows_the_time_groups():
    from tests.models.test_adapters import TIMESTEPS, _build, _inputs, _run

    fp = _build("latte", 72)
    sim = trdq.quantize(fp, trdq.QuantConfig(w_bits=4, time_groups=trdq.TimeGroups(2), block_size=32),
                        _inputs(fp), timesteps=TIMESTEPS)
    real = trdq.realize(sim)
    assert quant_info(real).execution == "real integer"
    layer = next(m for m in real.modules() if isinstance(m, IntLinear))
    for t, group in [(999.0, 0), (100.0, 1)]:
        inputs = _inputs(fp, 1)[0]
        inputs["timestep"] = torch.full((2,), t)
        out_sim, out_real = _run(sim, inputs), _run(real, inputs)
        assert layer.state.group == group
        assert sqnr_db(out_sim, out_real) > 90  # another group's weights would give ~40 dB


def test_realize_needs_a_simulated_quantized_model(tiny_pixart):
    with pytest.raises(ValueError, match="simulated quantized model"):
        trdq.realize(tiny_pixart)


def test_real_models_are_not_saved(tiny_pixart, tmp_path):
    real = trdq.realize(trdq.quantize(tiny_pixart, trdq.QuantConfig(), PROMPTS, steps=4))
    with pytest.raises(ValueError, match="realize\\(\\) after trdq.load"):
        trdq.save(real, tmp_path / "q")
    assert np.isfinite(generate(real, PROMPTS[:1], [0], steps=2)).all()


@pytest.mark.parametrize("w_bits", [8, 4])
def test_shared_deployment_keeps_one_master_and_stays_close(tiny_pixart_72, w_bits):
    config = trdq.QuantConfig(w_bits=w_bits, a_bits=8, time_groups=trdq.TimeGroups(2), block_size=32)
    sim = trdq.quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    shared = trdq.realize(sim, deployment="shared", base=tiny_pixart_72)
    layers = [m for m in shared.pipe.transformer.modules() if isinstance(m, SharedIntLinear)]
    assert len(layers) == 20
    images_fp = generate(tiny_pixart_72, PROMPTS, [0, 1], steps=4)
    images_sim = generate(sim, PROMPTS, [0, 1], steps=4)
    images_shared = generate(shared, PROMPTS, [0, 1], steps=4)
    # the 8-bit master adds its rounding under each group's codes: close to, not equal to, (a)
    assert psnr(images_shared, images_fp).mean() > psnr(images_sim, images_fp).mean() - 3
    for m in layers:
        assert m.master.dtype == torch.int8 and m.master.shape == (m.out_features, m.in_features)
        assert m.w_store.numel() in (m.master.numel(), m.master.numel() // 2)  # one active copy


def test_shared_deployment_needs_the_base_model(tiny_pixart):
    sim = trdq.quantize(tiny_pixart, trdq.QuantConfig(), PROMPTS, steps=4)
    with pytest.raises(ValueError, match="pass base="):
        trdq.realize(sim, deployment="shared")
    with pytest.raises(ValueError, match="per-group, shared"):
        trdq.realize(sim, deployment="folded")
