"""trdq.realize: real integer execution of whole models matches the simulated path."""

import numpy as np
import pytest
import torch

import trdq
from trdq.api import quant_info
from trdq.demo.eval.metrics import psnr
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
def test_jit_deployment_keeps_only_the_master_and_gives_the_shared_images(tiny_pixart_72, w_bits):
    config = trdq.QuantConfig(w_bits=w_bits, a_bits=8, time_groups=trdq.TimeGroups(2), block_size=32)
    sim = trdq.quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    shared = trdq.realize(sim, deployment="shared", base=tiny_pixart_72)
    jit = trdq.realize(sim, deployment="jit", base=tiny_pixart_72)
    images_shared = generate(shared, PROMPTS, [0, 1], steps=4)
    images_jit = generate(jit, PROMPTS, [0, 1], steps=4)
    assert np.array_equal(images_jit, images_shared)  # the same codes, built at another time
    layers = [m for m in jit.pipe.transformer.modules() if isinstance(m, SharedIntLinear)]
    assert len(layers) == 20 and all(not m.keep_active for m in layers)
    for m in layers:  # between calls: the master, and no codes of any group
        assert m.w_store.numel() == 0 and not m.prepared
    with pytest.raises(ValueError, match="pass base="):
        trdq.realize(sim, deployment="jit")


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


def test_bf16_outside_the_integer_layers_keeps_the_pipeline_in_float32(tiny_pixart_72):
    config = trdq.QuantConfig(w_bits=8, a_bits=8, time_groups=trdq.TimeGroups(2), block_size=32)
    sim = trdq.quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    real = trdq.realize(sim, dtype=torch.bfloat16)
    transformer = real.pipe.transformer
    layer = next(m for m in transformer.modules() if isinstance(m, IntLinear))
    assert layer.w_store.dtype == torch.int8 and layer.w_scale.dtype == torch.float32  # scales stay exact
    floats = [p for m in transformer.modules() if not isinstance(m, IntLinear)
              for p in m.parameters(recurse=False) if p.is_floating_point()]
    assert floats and all(p.dtype == torch.bfloat16 for p in floats)
    images_sim = generate(sim, PROMPTS, [0, 1], steps=4)
    images_bf16 = generate(real, PROMPTS, [0, 1], steps=4)
    # bf16 attention and norms: further from the simulated images than the float32 real path
    # (~86 dB), in the range of the W8A8 error itself on this tiny random model (~51 vs ~58 dB)
    assert 45 < np.minimum(psnr(images_bf16, images_sim), 100).mean() < 70


@pytest.mark.slow
@pytest.mark.parametrize("deployment", ["per-group", "shared"])
def test_compiled_integer_layers_give_the_eager_outputs(tiny_pixart_72, deployment):
    config = trdq.QuantConfig(w_bits=4, a_bits=8, time_groups=trdq.TimeGroups(2), block_size=32)
    sim = trdq.quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    base = tiny_pixart_72 if deployment == "shared" else None
    eager = trdq.realize(sim, deployment=deployment, base=base)
    compiled = trdq.realize(sim, deployment=deployment, base=base, compile=True)
    assert all(m.compiled for m in compiled.pipe.transformer.modules() if isinstance(m, IntLinear))
    images_eager = generate(eager, PROMPTS, [0, 1], steps=4)
    images_compiled = generate(compiled, PROMPTS, [0, 1], steps=4)
    # the same codes in fused loops: at most a rounding tie resolved the other way
    assert np.minimum(psnr(images_compiled, images_eager), 100).mean() > 60


@pytest.mark.parametrize("w_bits", [8, 4])
def test_every_int8_gemm_gives_the_same_images(tiny_pixart_72, w_bits):
    from trdq import cpu

    config = trdq.QuantConfig(w_bits=w_bits, a_bits=8, time_groups=trdq.TimeGroups(2), block_size=32)
    sim = trdq.quantize(tiny_pixart_72, config, PROMPTS, steps=4)
    gemms = ["int_mm", "fp32"] + (["fbgemm"] if w_bits <= cpu.FBGEMM_MAX_W_BITS and cpu.fbgemm_available() else [])
    images = {}
    for gemm in gemms:
        real = trdq.realize(sim, gemm=gemm)
        assert {m.gemm for m in real.pipe.transformer.modules() if isinstance(m, IntLinear)} == {gemm}
        images[gemm] = generate(real, PROMPTS, [0, 1], steps=4)
    for gemm in gemms[1:]:  # the same integer products; only the epilogue's float rounding may differ
        assert np.minimum(psnr(images[gemm], images["int_mm"]), 100).mean() > 80
    auto = trdq.realize(sim)  # this machine's choice
    assert {m.gemm for m in auto.pipe.transformer.modules() if isinstance(m, IntLinear)} == {cpu.int8_gemm(w_bits)}


def test_realize_refuses_an_unknown_or_inexact_gemm(tiny_pixart):
    sim = trdq.quantize(tiny_pixart, trdq.QuantConfig(w_bits=8, a_bits=8), PROMPTS, steps=4)
    with pytest.raises(ValueError, match="int_mm, fbgemm, fp32"):
        trdq.realize(sim, gemm="vnni")
    with pytest.raises(ValueError, match="saturates on 8-bit weights"):
        trdq.realize(sim, gemm="fbgemm")
