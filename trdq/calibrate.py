"""Calibration: running statistics of every target layer's input, per time group (docs/method.md §2).

Each :class:`InputObserver` keeps, per time group, the per-channel abs-max of the layer input and
a uniform sample of at most ``sample_tokens`` input rows (bottom-k reservoir sampling), which the
alpha search and the transform selection score candidates on. Memory is bounded whatever the
amount of calibration data.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trdq.cfg import branch_rows
from trdq.timegroups import GroupState


class InputObserver:
    """Per-group running statistics of one layer's input.

    Attributes:
        absmax: (G, C_in) running per-channel abs-max.
        tokens: (G,) number of input rows seen.
    """

    def __init__(self, name: str, num_groups: int, in_features: int, sample_tokens: int = 512, seed: int = 0):
        self.name = name
        self.absmax = torch.zeros(num_groups, in_features)
        self.tokens = torch.zeros(num_groups, dtype=torch.long)
        self._keys = [torch.empty(0) for _ in range(num_groups)]
        self._rows = [torch.empty(0, in_features) for _ in range(num_groups)]
        self._k = sample_tokens
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor, group: int) -> None:
        """Fold a batch of inputs (..., C_in) seen in time group ``group`` into the statistics."""
        x = x.detach().reshape(-1, x.shape[-1]).float().cpu()
        absmax = x.abs().amax(0)
        if not torch.isfinite(absmax).all():  # the abs-max is NaN or Inf where any input is
            raise ValueError(f"non-finite activations (NaN/Inf) entered {self.name} during calibration; "
                             "check the model in full precision, or exclude this layer")
        self.absmax[group] = torch.maximum(self.absmax[group], absmax)
        self.tokens[group] += len(x)
        new_keys = torch.rand(len(x), generator=self._gen)
        overflow = len(self._keys[group]) + len(new_keys) > self._k
        if overflow and len(self._keys[group]) == self._k:  # full: only keys below its largest can enter
            enter = new_keys < self._keys[group].max()
            new_keys, x = new_keys[enter], x[enter]
        keys = torch.cat([self._keys[group], new_keys])
        rows = torch.cat([self._rows[group], x])
        if overflow:
            keep = torch.topk(keys, self._k, largest=False).indices
            keys, rows = keys[keep], rows[keep]
        self._keys[group], self._rows[group] = keys, rows

    def sample(self, group: int) -> torch.Tensor:
        """(n <= sample_tokens, C_in) uniform sample of the inputs seen in ``group``."""
        return self._rows[group]

    def merged(self) -> InputObserver:
        """The statistics of all groups as one group: what a one-group observer fed the same inputs
        records. The abs-max is the groups' maximum; the sample is the union's ``sample_tokens`` rows
        of smallest key (each group keeps its own smallest, so the union holds the overall ones),
        the same rows a single reservoir keeps (in key order, which it also reaches once full)."""
        one = InputObserver(self.name, 1, self.absmax.shape[1], self._k)
        one.absmax, one.tokens = self.absmax.amax(0, keepdim=True), self.tokens.sum(0, keepdim=True)
        keys, rows = torch.cat(self._keys), torch.cat(self._rows)
        if len(keys) > self._k:
            keep = torch.topk(keys, self._k, largest=False).indices
            keys, rows = keys[keep], rows[keep]
        one._keys, one._rows = [keys], [rows]
        return one


class Calibration:
    """Context manager that feeds the inputs of ``layers`` to their observers.

    Args:
        layers: target linear layers by module name.
        state: the model's time-group state (driven by :func:`trdq.timegroups.track_timestep`).
        num_groups: number of time groups to keep statistics for.
        sample_tokens: rows kept per layer and group for the searches.
        branch: ``"cond"`` or ``"uncond"`` to record only that half of each CFG batch
            (:func:`trdq.cfg.branch_rows`); None records every row.
    """

    def __init__(self, layers: dict[str, nn.Linear], state: GroupState, num_groups: int,
                 sample_tokens: int = 512, seed: int = 0, branch: str | None = None):
        self.layers, self.state, self.branch = layers, state, branch
        self.observers = {name: InputObserver(name, num_groups, layer.in_features, sample_tokens, seed + i)
                          for i, (name, layer) in enumerate(layers.items())}
        self._handles: list = []

    def __enter__(self) -> Calibration:
        for name, layer in self.layers.items():
            observer = self.observers[name]
            self._handles.append(layer.register_forward_pre_hook(
                lambda _m, args, obs=observer: obs.update(branch_rows(args[0], self.branch),
                                                          self.state.group)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def merged(self) -> Calibration:
        """These statistics as one time group (:meth:`InputObserver.merged`), for one-group methods."""
        one = copy.copy(self)
        one.observers = {name: obs.merged() for name, obs in self.observers.items()}
        one._handles = []
        return one

    def check_complete(self) -> None:
        """Raise if some time group saw no calibration data (e.g. too few sampling steps)."""
        for name, obs in self.observers.items():
            empty = (obs.tokens == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"time groups {empty} of {name} saw no calibration data; calibrate with "
                                 "the sampler's full number of steps, or use fewer time groups")
