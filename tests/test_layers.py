import torch
from torch import nn

from trdq import quantizer as Q
from trdq import rotation as R
from trdq.layers import GroupTransform, QuantLinear
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
    state.set_timestep(900)
    y0 = layer(x)
    state.set_timestep(100)
    y1 = layer(x)
    assert layer.num_groups == 2 and not torch.allclose(y0, y1)
    assert "simulated" in repr(layer)
