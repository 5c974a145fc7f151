import dataclasses
import logging

import numpy as np
import pytest
import torch

import trdq
from trdq.api import calibrate, choices_of, convert, link_siblings, prepare, quantize
from trdq.config import QuantConfig, TimeGroups
from trdq.demo.eval.metrics import psnr
from trdq.layers import IntLinear, QuantLinear
from trdq.sampling import generate
from trdq.siblings import SharedInput, input_siblings

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]
CONFIG = QuantConfig(w_bits=4, a_bits=6, time_groups=TimeGroups(2), block_size=16, shared_inputs=True)


def _images(model):
    return generate(model, PROMPTS, [0, 1], steps=4)


def _quantized(model) -> dict[str, torch.nn.Module]:
    transformer = model.pipe.transformer
    return {n: m for n, m in transformer.named_modules() if isinstance(m, QuantLinear | IntLinear)}


def _unlinked(model):
    for m in _quantized(model).values():
        m.shared_input = None


def _linked_then_alone(model, cls, monkeypatch):
    """Images and transform computations of ``model`` with its siblings linked, then unlinked."""
    calls = []
    transform = cls.transform_input
    monkeypatch.setattr(cls, "transform_input", lambda self, x, g: calls.append(self) or transform(self, x, g))
    linked = _images(model), len(calls)
    _unlinked(model)
    calls.clear()
    return linked, (_images(model), len(calls))


@pytest.fixture(scope="module")
def shared(tiny_pixart):
    return quantize(tiny_pixart, CONFIG, PROMPTS, steps=4)


def test_siblings_are_self_attention_qkv_and_cross_attention_kv(tiny_pixart):
    transformer = tiny_pixart.pipe.transformer
    names = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    found = input_siblings(transformer, names)
    assert ("transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k",
            "transformer_blocks.0.attn1.to_v") in found
    assert ("transformer_blocks.1.attn2.to_k", "transformer_blocks.1.attn2.to_v") in found
    assert len(found) == 4  # 2 blocks x (self, cross); attn2.to_q reads the image tokens alone
    assert input_siblings(transformer, ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k"]) == [
        ("transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k")]  # only layers asked about
    assert input_siblings(transformer, ["transformer_blocks.0.attn1.to_q"]) == []


def test_shared_input_hands_one_value_to_the_other_siblings_then_forgets_it():
    holder, x = SharedInput(3), torch.ones(2, 4)
    assert holder.get(x, 0) is None
    holder.put(x, 0, "t(x)")
    assert holder.get(x.clone(), 0) is None and holder.get(x, 1) is None  # another tensor, another group
    assert holder.get(x, 0) == "t(x)" and holder.get(x, 0) == "t(x)"
    assert holder.get(x, 0) is None and holder.x is None  # all three read it: dropped
    holder.put(x, 0, "t(x)")
    x.add_(1)  # changed in place since: not the input it was computed from
    assert holder.get(x, 0) is None
    with torch.inference_mode():  # inference tensors keep no version counter: identity decides
        y = torch.ones(2, 4)
        holder.put(y, 0, "t(y)")
        assert holder.get(y, 0) == "t(y)" and holder.get(y.clone(), 0) is None


def test_siblings_share_one_fitted_transform_and_compute_it_once(shared, monkeypatch):
    layers = _quantized(shared)
    qkv = [layers[f"transformer_blocks.0.attn1.to_{p}"] for p in "qkv"]
    kv = [layers[f"transformer_blocks.0.attn2.to_{p}"] for p in "kv"]
    assert qkv[0].transforms is qkv[1].transforms is qkv[2].transforms
    assert kv[0].transforms is kv[1].transforms and kv[0].transforms is not qkv[0].transforms
    assert qkv[0].shared_input is qkv[2].shared_input is not None and kv[0].shared_input is kv[1].shared_input
    assert layers["transformer_blocks.0.attn2.to_q"].shared_input is None
    assert layers["transformer_blocks.0.ff.net.0.proj"].shared_input is None

    try:
        (with_sharing, shared_calls), (alone, alone_calls) = _linked_then_alone(shared, QuantLinear, monkeypatch)
        # per block: q, k, v and k, v read one input each time: 5 layers computed by 2
        assert shared_calls == alone_calls * 7 // 10
        assert np.array_equal(with_sharing, alone)  # the same values, computed once
    finally:
        link_siblings(shared.pipe.transformer)


def test_a_joint_fit_differs_from_separate_fits_and_stays_close_to_fp(tiny_pixart, shared):
    apart = quantize(tiny_pixart, dataclasses.replace(CONFIG, shared_inputs=False), PROMPTS, steps=4)
    a, b = _quantized(apart), _quantized(shared)
    assert all(m.shared_input is None for m in a.values())
    # separate fits link only where they happen to agree (e.g. the same rotation and no smoothing)
    assert len(link_siblings(apart.pipe.transformer)) < len(input_siblings(apart.pipe.transformer, a))
    members = [m for group in input_siblings(apart.pipe.transformer, a) for m in group]
    assert any(not torch.equal(a[m].codes(), b[m].codes()) for m in members)  # some fitted otherwise together
    fp = _images(tiny_pixart)
    assert psnr(_images(shared), fp).mean() > psnr(_images(apart), fp).mean() - 3


def test_siblings_stay_linked_through_save_load_and_realize(tiny_pixart, shared, tmp_path, monkeypatch):
    expected = _images(shared)
    trdq.save(shared, tmp_path / "q")
    loaded = trdq.load(tmp_path / "q", base=tiny_pixart)
    trdq.save_pretrained(shared, tmp_path / "p")
    pretrained = trdq.from_pretrained(tmp_path / "p")
    real = trdq.realize(shared)
    for model in (loaded, pretrained, real):
        layers = _quantized(model)
        assert layers["transformer_blocks.1.attn1.to_q"].shared_input is layers["transformer_blocks.1.attn1.to_v"].shared_input
        assert layers["transformer_blocks.1.attn1.to_q"].shared_input is not None
    assert np.array_equal(_images(loaded), expected) and np.array_equal(_images(pretrained), expected)
    (real_images, linked_calls), (alone, alone_calls) = _linked_then_alone(real, IntLinear, monkeypatch)
    assert np.array_equal(alone, real_images)  # the real path's shared transform changes nothing
    assert linked_calls == alone_calls * 7 // 10  # and is computed 7 times per block instead of 10
    assert psnr(real_images, expected).mean() > 40


def test_siblings_whose_calibration_inputs_differ_are_fitted_apart(tiny_pixart, caplog):
    prepared = calibrate(prepare(tiny_pixart, CONFIG), PROMPTS, steps=4)
    observer = prepared.calibration.observers["transformer_blocks.0.attn1.to_v"]
    observer.absmax = observer.absmax * 1.5  # as if a processor fed v another tensor
    with caplog.at_level(logging.WARNING, logger="trdq"):
        model = convert(prepared)
    assert "transformer_blocks.0.attn1.to_v saw different inputs" in caplog.text
    layers = _quantized(model)
    assert layers["transformer_blocks.0.attn1.to_q"].shared_input is None
    assert layers["transformer_blocks.1.attn1.to_q"].shared_input is not None  # the other block is fine


def test_choices_must_agree_across_siblings(tiny_pixart, shared):
    prepared = calibrate(prepare(tiny_pixart, CONFIG), PROMPTS, steps=4)
    choices = choices_of(shared)
    assert np.array_equal(_images(convert(prepared, choices=choices)), _images(shared))
    q = choices["transformer_blocks.0.attn1.to_q"]
    choices["transformer_blocks.0.attn1.to_k"] = [(None, "rotate") if c != (None, "rotate") else (None, "none") for c in q]
    with pytest.raises(ValueError, match="give them the same choices"):
        convert(prepared, choices=choices)


def test_config_round_trips_and_rejects_non_bools():
    assert QuantConfig.from_dict(CONFIG.to_dict()) == CONFIG
    old = CONFIG.to_dict()
    del old["shared_inputs"]  # a manifest written before the setting existed
    assert QuantConfig.from_dict(old).shared_inputs is False
    with pytest.raises(ValueError, match="shared_inputs must be True or False"):
        QuantConfig(shared_inputs="yes")
