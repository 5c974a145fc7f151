import pytest
import torch
from diffusers import DDIMScheduler

from trdq.config import TimeGroups
from trdq.timegroups import GroupIndex, GroupState, track_timestep


def _ddim_timesteps(steps):
    s = DDIMScheduler(num_train_timesteps=1000, steps_offset=1)
    s.set_timesteps(steps)
    return s.timesteps.tolist()


@pytest.mark.parametrize("groups,expected", [
    (TimeGroups(1), [0] * 20), (TimeGroups(4), [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5),
    (TimeGroups(20), list(range(20))), (TimeGroups(boundaries=(0, 3, 12)), [0] * 3 + [1] * 9 + [2] * 8),
])
def test_every_step_of_the_calibration_schedule_maps_to_its_group(groups, expected):
    ts = _ddim_timesteps(20)
    index = GroupIndex.from_schedule(groups, ts)
    assert [index.group_of(t) for t in ts] == expected


def test_other_step_counts_map_by_timestep():
    index = GroupIndex.from_schedule(TimeGroups(2), _ddim_timesteps(20))
    ts50 = _ddim_timesteps(50)
    groups = [index.group_of(t) for t in ts50]
    assert groups == sorted(groups) and groups[0] == 0 and groups[-1] == 1


def test_non_decreasing_schedules_are_rejected():
    with pytest.raises(ValueError, match="decrease"):
        GroupIndex.from_schedule(TimeGroups(2), [1, 500, 999])


def test_the_hook_sets_the_group_once_per_call():
    state = GroupState(GroupIndex((500.0,)))
    seen = []

    class Toy(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states=None, timestep=None):
            seen.append(state.group)
            return hidden_states

    model = Toy()
    handle = track_timestep(model, state)
    model(torch.zeros(1), timestep=torch.tensor([900, 900]))
    model(torch.zeros(1), None, torch.tensor([100]))
    assert seen == [0, 1]
    with pytest.raises(ValueError, match="without a timestep"):
        model(torch.zeros(1))
    handle.remove()
