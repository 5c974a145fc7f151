import pytest
import torch
from torch import nn

from trdq import cpu, kernels, layers
from trdq import quantizer as Q
from trdq import rotation as R
from trdq.layers import (
    GroupTransform,
    IntLinear,
    OnlineTransform,
    QuantLinear,
    SharedIntLinear,
    fbgemm_quantized_linear,
    quantized_linear,
)
from trdq.smoothing import smoothing_factors
from trdq.timegroups import GroupIndex, GroupState


def _linear(c_in=72, c_out=48):
    torch.manual_seed(0)
    lin = nn.Linear(c_in, c_out)
    x = torch.randn(4, 16, c_in)
    x[..., 5] *= 40  # an outlier channel
    return lin, x


def test_transforms_leave_the_full_precision_output_unchanged():
    lin, x = _linear()
    s = smoothing_factors(x.abs().flatten(0, 1).amax(0), lin.weight.abs().amax(0), 0.5)
    t = GroupTransform(delta=s, rotation=R.hadamard_rotation(72, seed=1), alpha=0.5)
    y = t.activation(x.double()) @ t.weight(lin.weight).T + lin.bias.double()
    assert torch.allclose(y.float(), lin(x), atol=1e-4)
    assert t.kind == "both" and GroupTransform().kind == "none"


def test_8bit_layer_is_close_and_rotation_helps_at_4_bits():
    lin, x = _linear()
    ref = lin(x)
    state = GroupState()
    plain8 = QuantLinear.from_linear(lin, [GroupTransform()], 8, 8, state)
    assert Q.sqnr_db(ref, plain8(x)) > 25
    plain = QuantLinear.from_linear(lin, [GroupTransform()], 8, 4, state)
    rotated = QuantLinear.from_linear(lin, [GroupTransform(rotation=R.hadamard_rotation(72))], 8, 4, state)
    assert Q.sqnr_db(ref, rotated(x)) > Q.sqnr_db(ref, plain(x)) + 3


def test_each_time_group_uses_its_own_weights():
    lin, x = _linear()
    state = GroupState(GroupIndex((500.0,)))
    layer = QuantLinear.from_linear(lin, [GroupTransform(), GroupTransform(rotation=R.hadamard_rotation(72))],
                                    4, 8, state)
    rotated = QuantLinear.from_linear(lin, [GroupTransform(rotation=R.hadamard_rotation(72))], 4, 8, GroupState())
    plain = QuantLinear.from_linear(lin, [GroupTransform()], 4, 8, GroupState())
    state.set_timestep(900)  # group 0: no transform
    y0 = layer(x)
    state.set_timestep(100)  # group 1: the Hadamard rotation
    y1 = layer(x)
    assert layer.num_groups == 2 and torch.equal(y0, plain(x)) and torch.equal(y1, rotated(x))
    assert not torch.allclose(y0, y1)
    assert "simulated" in repr(layer)


def _two_group_layer(w_bits, a_bits, a_symmetric=False, c_in=72):
    """Group 0: smoothing and DuQuant's rotation (as a fit makes it: reflections), group 1: a Hadamard."""
    lin, x = _linear(c_in=c_in)
    s = smoothing_factors(x.abs().flatten(0, 1).amax(0), lin.weight.abs().amax(0), 0.5)
    absmax = (x / s).abs().flatten(0, 1).amax(0).double()
    r1 = R.greedy_block_reflections(absmax[None], 32)[0]
    perm = R.zigzag_permutation(R.apply_block_diag(absmax[None], r1.blocks()).abs()[0], 32)
    duquant = R.duquant_rotation(r1, perm, R.greedy_block_reflections(absmax[perm][None], 32, seed=1)[0])
    transforms = [GroupTransform(delta=s, rotation=duquant, alpha=0.5), GroupTransform(rotation=R.hadamard_rotation(c_in))]
    state = GroupState(GroupIndex((500.0,)))
    return QuantLinear.from_linear(lin, transforms, w_bits, a_bits, state, a_symmetric=a_symmetric), x, state


@pytest.mark.parametrize("w_bits, a_bits, a_symmetric", [(8, 8, False), (4, 8, False), (8, 8, True), (4, 4, False)])
def test_real_integer_layer_matches_the_simulated_one(w_bits, a_bits, a_symmetric):
    sim, x, state = _two_group_layer(w_bits, a_bits, a_symmetric)
    real = IntLinear.from_quant(sim, w_bits)
    assert real.packed == (w_bits <= 4)
    for group in (0, 1):
        state.group = group
        y_sim, y_real = sim(x), real(x)
        # same codes, another order of float operations: only float32 rounding differs here
        # (an activation on a rounding boundary could move one code; none does on this input)
        assert Q.sqnr_db(y_sim, y_real) > 90
        assert (y_sim - y_real).abs().max() < 1e-4 * y_sim.abs().max()


def test_identical_group_codes_are_stored_once_and_4_bit_weights_take_half_a_byte():
    lin, x = _linear()
    state = GroupState(GroupIndex((500.0, 100.0)))
    sim = QuantLinear.from_linear(lin, [GroupTransform()] * 3, 4, 8, state)
    real = IntLinear.from_quant(sim, 4)
    assert real.w_store.shape[0] == 1 and real.copy_of_group == [0, 0, 0]
    assert real.w_store.dtype == torch.uint8 and real.w_store.numel() == lin.weight.numel() // 2
    assert torch.equal(real._codes(0), sim.w_codes[0])


def test_real_layer_rejects_grouped_weights():
    lin, _ = _linear()
    sim = QuantLinear.from_linear(lin, [GroupTransform()], 4, 8, GroupState(), w_group_size=8)
    with pytest.raises(ValueError, match="w_group_size=None"):
        IntLinear.from_quant(sim, 4)


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("group", [0, 1])
def test_online_transform_folds_smoothing_into_the_rotation_and_keeps_the_weight_side(group, compact):
    sim, x, _ = _two_group_layer(8, 8, False)
    t = sim.transforms[group]
    online = OnlineTransform.of(t, compact=compact)
    assert torch.allclose(online.apply(x).double(), t.activation(x.double()), atol=1e-4)
    w = torch.randn(48, 72, dtype=torch.float64)
    assert torch.allclose(online.weight(w.float()).double(), t.weight(w), atol=1e-3)
    # the smoothing is held once: by the rotation where it reads it back (compact reflections, signs)
    assert (online.delta is None) == (online.rotation.input_scale() is not None)
    assert (online.delta is None) == (compact or group == 1)


def test_bf16_weights_undo_exactly_the_rounded_scale_their_activations_get():
    """With the smoothing read back from the rotation, (x S R)(W S^-1 R)^T = x W^T for the rounded S."""
    sim, x, _ = _two_group_layer(8, 8, False)
    online = OnlineTransform.of(sim.transforms[0], torch.bfloat16, compact=True)
    w = torch.randn(48, 72)
    x32 = x.reshape(-1, 72).float()
    exact = x32 @ w.T
    rotated = OnlineTransform(online.delta, online.rotation.map(lambda t: t.float() if t.is_floating_point() else t),
                              torch.float32)  # the bf16-rounded factors, applied in float32
    y = rotated.apply(x32) @ rotated.weight(w).T
    assert (y - exact).abs().max() < 1e-4 * exact.abs().max()


def test_memory_deployments_keep_rotations_as_reflections_with_the_same_outputs():
    sim, x, state = _two_group_layer(8, 8, False, c_in=128)
    lin = nn.Linear(128, 48)
    lin.weight.data = sim.w_codes[1].float() * sim.w_scale[1].float()  # any weight: both layers rebuild from it
    dense = SharedIntLinear.from_weight(sim, lin.weight, 8, keep_active=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SharedIntLinear, "compact_rotations", False)
        fast = SharedIntLinear.from_weight(sim, lin.weight, 8, keep_active=False)

    def factor_floats(layer):  # group 0's own floats (a compact stage's signs are one copy per width)
        return sum(f.numel() for kind, v in layer.transforms[0].rotation.stages
                   for f in R._flat_tensors(v[1:] if kind == "reflections" else v) if f.is_floating_point())

    assert [k for k, _ in dense.transforms[0].rotation.stages] == ["reflections", "perm", "reflections"]
    assert factor_floats(dense) < factor_floats(fast) / 4
    state.group = 0
    assert (dense(x) - fast(x)).abs().max() < 1e-4 * fast(x).abs().max()


def test_moving_a_real_layer_moves_its_online_transforms():
    sim, x, state = _two_group_layer(8, 8, False)
    lin = nn.Linear(72, 48)
    for real in (IntLinear.from_quant(sim, 8), SharedIntLinear.from_weight(sim, lin.weight, 8)):
        real(x)  # a shared layer builds its active copy
        real.to("meta")
        tensors = [f for t in real.transforms for _, s in t.rotation.stages for f in R._flat_tensors(s)]
        tensors += [t.delta for t in real.transforms if t.delta is not None]
        assert len(tensors) > 4 and all(v.device.type == "meta" for v in tensors)
        assert all(b.device.type == "meta" for b in real.buffers())


def test_large_cpu_outputs_are_computed_in_row_chunks_with_the_same_result(monkeypatch):
    sim, x, state = _two_group_layer(8, 8, False)
    real = IntLinear.from_quant(sim, 8)
    whole = real(x)
    monkeypatch.setattr(layers, "ACC_CHUNK_BYTES", 48 * 4 * 8)  # 8 rows of 48 int32 per call
    assert layers.row_chunk(64, 48, x.device) == 64  # never fewer than 64 rows
    assert layers.row_chunk(64, 48, torch.device("meta")) == 64
    x_long = torch.cat([x] * 3, dim=1)  # (4, 48, 72): 192 rows -> 3 calls
    assert torch.equal(real(x_long), torch.cat([whole] * 3, dim=1))


@pytest.mark.skipif(not cpu.fbgemm_available(), reason="this torch build has no fbgemm")
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fbgemm_layer_path_gives_the_int_mm_outputs(compiled, symmetric):
    gen = torch.Generator().manual_seed(5)
    x, w, bias = torch.randn(2, 70, 72, generator=gen), torch.randn(40, 72, generator=gen) * 0.1, torch.randn(40)
    codes, scale = kernels.quantize_weight_int8(w, 4)
    rowsum = kernels.weight_rowsum(codes)
    expected = quantized_linear(x.reshape(-1, 72), codes, scale, rowsum, False, bias, 8, symmetric, torch.float32)
    out = fbgemm_quantized_linear(x.reshape(-1, 72), kernels.fbgemm_prepack(codes), scale, rowsum, bias, 8,
                                  symmetric, torch.float32, compiled)
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("w_bits, dtype", [(8, torch.float32), (4, torch.float32), (8, torch.bfloat16)])
def test_a_compiled_jit_layer_rebuilds_the_eager_codes(w_bits, dtype):
    sim, x, state = _two_group_layer(w_bits, 8, c_in=128)
    weight = torch.randn(48, 128)
    eager = SharedIntLinear.from_weight(sim, weight, w_bits, dtype, keep_active=True)
    compiled = SharedIntLinear.from_weight(sim, weight, w_bits, dtype, keep_active=True)
    compiled.compiled = True
    for group in (0, 1):  # DuQuant reflections (compiled rebuild), then a Hadamard (eager either way)
        state.group = group
        assert torch.equal(eager._stored(group)[0], compiled._stored(group)[0])
        assert torch.equal(eager._stored(group)[1], compiled._stored(group)[1])
        assert torch.equal(eager._stored(group)[2], compiled._stored(group)[2])


@pytest.mark.slow
def test_fused_fake_quantization_gives_the_eager_values_bit_for_bit(tiny_pixart):
    """What `python -m trdq eval` runs (one compiled loop) against the eager default, on a whole
    quantized model, asymmetric and symmetric activations, 8 and 3 bits, and the alpha_g search."""
    import trdq
    from trdq.config import QuantConfig, TimeGroups
    from trdq.models.adapters import adapter_for

    for config in (QuantConfig(method="trdq", a_bits=8, time_groups=TimeGroups(2), block_size=32),
                   QuantConfig(method="trdq", w_bits=4, a_bits=3, a_symmetric=True, block_size=32)):
        eager = trdq.quantize(tiny_pixart, config, ["a red circle"], steps=2)
        with layers.fused_fake_quant():
            fused = trdq.quantize(tiny_pixart, config, ["a red circle"], steps=2)
            t = fused.pipe.transformer
            inputs = adapter_for(t).example_inputs(t, 2, 300.0, torch.Generator().manual_seed(0))
            with torch.no_grad():
                out_fused = t(**inputs).sample
        assert layers._fused_fake_quant is None  # the context restores the eager default
        with torch.no_grad():
            out_eager = eager.pipe.transformer(**inputs).sample
        assert torch.equal(out_fused, out_eager)  # the same search choices and the same activations
