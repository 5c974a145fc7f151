import dataclasses

import numpy as np
import pytest
import torch

import trdq
from trdq.cfg import CFGSplitTransformer, branch_rows
from trdq.config import QuantConfig, TimeGroups
from trdq.demo.eval.metrics import psnr
from trdq.sampling import generate

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]
CONFIG = QuantConfig(method="trdq", w_bits=8, a_bits=8, time_groups=TimeGroups(2), block_size=32)


def test_branch_rows_take_the_halves_of_a_cfg_batch():
    x = torch.arange(6).view(6, 1)
    assert branch_rows(x, "uncond").flatten().tolist() == [0, 1, 2]
    assert branch_rows(x, "cond").flatten().tolist() == [3, 4, 5]
    assert branch_rows(x, None) is x
    with pytest.raises(ValueError, match="guidance > 1"):
        branch_rows(x[:5], "cond")


def test_a_split_transformer_sends_each_half_to_its_own_branch(tiny_pixart):
    from trdq.models.adapters import adapter_for

    fp = tiny_pixart.pipe.transformer
    other = type(fp).from_config(fp.config)  # fresh random weights
    split = CFGSplitTransformer(uncond=other, cond=fp)
    inputs = adapter_for(fp).example_inputs(fp, 4, 300.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = split(**inputs, return_dict=False)[0]
        half = {k: (v[2:] if torch.is_tensor(v) else v) for k, v in inputs.items()}
        torch.testing.assert_close(out[2:], fp(**half, return_dict=False)[0])
        half = {k: (v[:2] if torch.is_tensor(v) else v) for k, v in inputs.items()}
        torch.testing.assert_close(out[:2], other(**half, return_dict=False)[0])
        odd = {k: (v[:3] if torch.is_tensor(v) else v) for k, v in inputs.items()}
        torch.testing.assert_close(split(**odd, return_dict=False)[0], fp(**odd, return_dict=False)[0])


def test_cfg_split_calibrates_each_branch_on_its_own_rows(tiny_pixart):
    prepared = trdq.prepare(tiny_pixart, CONFIG)
    prepared.branch = "cond"
    cond = trdq.calibrate(prepared, PROMPTS, steps=2).calibration
    prepared = trdq.prepare(tiny_pixart, CONFIG)
    both = trdq.calibrate(prepared, PROMPTS, steps=2).calibration
    name = next(iter(cond.observers))
    assert (cond.observers[name].tokens * 2 == both.observers[name].tokens).all()
    assert (cond.observers[name].absmax <= both.observers[name].absmax).all()


def test_cfg_split_model_with_coarser_uncond_bits_runs_simulated_and_real(tiny_pixart):
    config = dataclasses.replace(CONFIG, w_bits=4, cfg_split=True, uncond_bits=(4, 4))
    assert config.bits == "w4a8/uncond-w4a4"
    q = trdq.quantize(tiny_pixart, config, PROMPTS, steps=2)
    split = q.pipe.transformer
    assert isinstance(split, CFGSplitTransformer) and q.quant.config.cfg_split
    assert split.uncond.trdq_info.config.a_bits == 4 and split.cond.trdq_info.config.a_bits == 8
    fp_images = generate(tiny_pixart, PROMPTS, [0, 1], steps=2)
    sim = generate(q, PROMPTS, [0, 1], steps=2)
    real = generate(trdq.realize(q), PROMPTS, [0, 1], steps=2)
    assert psnr(sim, fp_images).mean() > 20
    assert np.abs(real.astype(int) - sim.astype(int)).max() <= 2
    with pytest.raises(ValueError, match="cannot be saved yet"):
        trdq.save(q, "unused")
    from trdq.attention import share_attention

    with pytest.raises(ValueError, match="separate passes"):
        with share_attention(q, ["transformer_blocks.0.attn1"]):
            pass


def test_uncond_bits_need_cfg_split():
    with pytest.raises(ValueError, match="cfg_split=True"):
        QuantConfig(uncond_bits=(4, 4))
    assert QuantConfig.from_dict(QuantConfig(cfg_split=True, uncond_bits=(4, 4)).to_dict()).uncond_bits == (4, 4)
