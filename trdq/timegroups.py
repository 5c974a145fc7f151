"""Timestep -> time group, found once per model call and read by every quantized layer.

Groups are defined on sampling steps (:class:`trdq.config.TimeGroups`), but a layer only sees the
diffusion timestep. Calibration turns the step grouping into timestep thresholds (midpoints between
the last timestep of one group and the first of the next), so the mapping needs no scheduler at
inference and stays sensible when a user samples with a different number of steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from trdq.config import TimeGroups


@dataclass(frozen=True)
class GroupIndex:
    """Descending timestep thresholds: ``t >= thresholds[0]`` is group 0, and so on.

    Attributes:
        thresholds: (G - 1) decreasing timestep values between consecutive groups.
    """

    thresholds: tuple[float, ...] = ()

    @property
    def num_groups(self) -> int:
        return len(self.thresholds) + 1

    @classmethod
    def from_schedule(cls, groups: TimeGroups, timesteps: Sequence[float]) -> GroupIndex:
        """Thresholds for a sampler whose steps run at ``timesteps`` (first step first).

        Raises:
            ValueError: if the timesteps do not decrease, or the groups do not fit the steps.
        """
        ts = [float(t) for t in timesteps]
        if any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError("sampler timesteps must strictly decrease from the first step to the last")
        of_step = groups.step_to_group(len(ts))
        return cls(tuple((ts[i] + ts[i + 1]) / 2 for i in range(len(ts) - 1) if of_step[i + 1] != of_step[i]))

    def group_of(self, timestep: float) -> int:
        return sum(timestep < th for th in self.thresholds)


@dataclass
class GroupState:
    """The current time group of one model, shared by all its quantized layers."""

    index: GroupIndex = field(default_factory=GroupIndex)
    group: int = 0

    def set_timestep(self, timestep) -> None:
        t = timestep.flatten()[0].item() if torch.is_tensor(timestep) else float(timestep)
        self.group = self.index.group_of(t)


def track_timestep(transformer: nn.Module, state: GroupState,
                   position: int = 2) -> torch.utils.hooks.RemovableHandle:
    """Set ``state.group`` from the ``timestep`` argument at the start of every model call.

    Args:
        position: index of ``timestep`` among ``forward``'s positional arguments, used when it is
            not passed by keyword (diffusers pipelines pass it by keyword); see
            :class:`trdq.models.adapters.Adapter`.
    """

    def hook(_module, args, kwargs):
        timestep = kwargs.get("timestep", args[position] if len(args) > position else None)
        if timestep is None:
            raise ValueError("the quantized transformer was called without a timestep; time groups "
                             "need it (pass timestep=... as diffusers pipelines do)")
        state.set_timestep(timestep)

    return transformer.register_forward_pre_hook(hook, with_kwargs=True)
