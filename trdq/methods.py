"""TR-DQ and the baselines as recipes over the same pieces (docs/method.md §3-§6).

A recipe says whether time groups are used, how smoothing is chosen (off, a fixed alpha, or a
searched alpha_g) and which rotation follows. :func:`fit_layer` turns one layer's weight and its
calibration statistics into one :class:`~trdq.layers.GroupTransform` per time group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trdq import quantizer
from trdq import rotation as rot
from trdq.calibrate import InputObserver
from trdq.config import QuantConfig
from trdq.layers import GroupTransform, fake_quant_activations
from trdq.smoothing import smoothing_factors

DEFAULT_FIXED_ALPHA = 0.5


@dataclass(frozen=True)
class Recipe:
    """How one method builds its transforms.

    Attributes:
        time_groups: use the config's time groups (else one group for all steps).
        smoothing: ``none``, ``fixed`` (config.alpha or 0.5) or ``search`` (alpha_g over the grid).
        rotation: ``none``, ``hadamard`` or ``duquant``; ``config`` takes ``QuantConfig.rotation``.
        select: may drop transforms that do not lower the calibration error.
    """

    time_groups: bool
    smoothing: str
    rotation: str
    select: bool = False


RECIPES = {
    "rtn": Recipe(time_groups=False, smoothing="none", rotation="none"),
    "smoothquant": Recipe(time_groups=False, smoothing="fixed", rotation="none"),
    "quarot": Recipe(time_groups=False, smoothing="none", rotation="hadamard"),
    "duquant": Recipe(time_groups=False, smoothing="fixed", rotation="duquant"),
    "viditq": Recipe(time_groups=True, smoothing="fixed", rotation="none"),
    "trdq": Recipe(time_groups=True, smoothing="search", rotation="config", select=True),
}


def recipe_for(config: QuantConfig) -> Recipe:
    recipe = RECIPES[config.method]
    if recipe.rotation == "config":
        recipe = Recipe(recipe.time_groups, recipe.smoothing, config.rotation, config.select_transforms)
    if recipe.smoothing == "search" and config.alpha is not None:
        recipe = Recipe(recipe.time_groups, "fixed", recipe.rotation, recipe.select)
    return recipe


def num_groups(config: QuantConfig) -> int:
    """Time groups the method keeps statistics and weights for."""
    return config.time_groups.num_groups if recipe_for(config).time_groups else 1


def fit_rotation(kind: str, sample: torch.Tensor, absmax: torch.Tensor, block_size: int, steps: int,
                 seed: int) -> rot.Rotation | None:
    """The (C_in, C_in) rotation of ``kind`` for (already smoothed) inputs, in factored form.

    Args:
        sample: (n, C_in) calibration rows, used to measure channel maxima between R1 and R2.
        absmax: (C_in,) per-channel abs-max of the inputs.
    """
    return fit_rotations(kind, [sample], [absmax], block_size, steps, seed)[0]


def fit_rotations(kind: str, samples: list[torch.Tensor], absmaxes: list[torch.Tensor], block_size: int,
                  steps: int, seed: int) -> list[rot.Rotation | None]:
    """:func:`fit_rotation` of several candidates (e.g. one per alpha) of one layer, fitted together."""
    if kind == "none":
        return [None] * len(absmaxes)
    c_in = absmaxes[0].numel()
    if kind == "hadamard":
        return [rot.hadamard_rotation(c_in, seed) for _ in absmaxes]
    block = min(block_size, c_in)
    r1s = rot.greedy_block_reflections(torch.stack(absmaxes), block, steps, seed)
    m1s = [rot.apply_block_diag(x.double() if len(x) else m.double()[None], r1.blocks()).abs().amax(0)
           for x, m, r1 in zip(samples, absmaxes, r1s)]
    perms = [rot.zigzag_permutation(m1, block) for m1 in m1s]
    r2s = rot.greedy_block_reflections(torch.stack([m1[p] for m1, p in zip(m1s, perms)]), block, steps, seed + 1)
    return [rot.duquant_rotation(r1, p, r2) for r1, p, r2 in zip(r1s, perms, r2s)]


def _error(t: GroupTransform, x: torch.Tensor, w: torch.Tensor, ref: torch.Tensor, config: QuantConfig) -> float:
    """MSE of the quantized layer output against ``ref = x w^T``; float32 is plenty for ranking."""
    xq = fake_quant_activations(t.activation(x.float()), config.a_bits, config.a_symmetric)
    wq = quantizer.fake_quant_weight(t.weight(w), config.w_bits, True, config.w_group_size).float()
    return float((xq @ wq.T - ref).pow(2).mean())


def _candidates(alphas: list[float | None], rotation: str, x: torch.Tensor, absmax: torch.Tensor,
                w_absmax: torch.Tensor, config: QuantConfig) -> list[GroupTransform]:
    """One transform per alpha (None: no smoothing), each followed by a ``rotation`` fitted to the
    inputs as that smoothing leaves them."""
    deltas = [None if a is None else smoothing_factors(absmax, w_absmax, a) for a in alphas]
    xs = [x.double() if d is None else x.double() / d for d in deltas]
    ms = [absmax.double() if d is None else absmax.double() / d for d in deltas]
    rotations = fit_rotations(rotation, xs, ms, config.block_size, config.rotation_steps, config.seed)
    return [GroupTransform(delta=d, rotation=r, alpha=a) for a, d, r in zip(alphas, deltas, rotations)]


#: What a search decides per layer and time group: the smoothing alpha (None: no smoothing) and the
#: transform kind (:attr:`GroupTransform.kind`: none, smooth, rotate or both).
Choice = tuple[float | None, str]


def fit_group(w: torch.Tensor, x: torch.Tensor, absmax: torch.Tensor, recipe: Recipe,
              config: QuantConfig, group: int = 0, choice: Choice | None = None) -> GroupTransform:
    """The transform of one layer in one time group.

    Args:
        w: (C_out, C_in) weight.
        x: (n, C_in) calibration sample of that group's inputs.
        absmax: (C_in,) running abs-max of that group's inputs.
        group: the time group (for a per-group fixed alpha).
        choice: fit this candidate only, skipping the search (e.g. what an earlier search on the
            same statistics chose: then the transform is the one it fitted).
    """
    w_absmax = w.abs().amax(0)
    if choice is not None:
        alpha, kind = choice
        rotation = recipe.rotation if kind in ("rotate", "both") else "none"
        return _candidates([alpha], rotation, x, absmax, w_absmax, config)[0]
    if recipe.smoothing == "none":
        alphas: list[float | None] = [None]
    elif recipe.smoothing == "fixed":
        alphas = [config.alphas()[group] if config.alpha is not None else DEFAULT_FIXED_ALPHA]
    else:
        alphas = list(config.alpha_grid)
    both = recipe.rotation != "none" and recipe.smoothing != "none"
    # beyond the paper, with select: a transform that does not pay is not applied, so the
    # candidates also hold no transform, the rotation alone and the smoothing alone
    rotated = _candidates(alphas + [None] * (recipe.select and both), recipe.rotation, x, absmax, w_absmax, config)
    candidates = rotated[:len(alphas)]
    if recipe.select:
        candidates += [GroupTransform(), *rotated[len(alphas):]]
        if both:
            candidates += _candidates(alphas, "none", x, absmax, w_absmax, config)
    if len(candidates) == 1:
        return candidates[0]
    ref = x.float() @ w.float().T
    return min(candidates, key=lambda t: _error(t, x, w, ref, config))


def choice_error(w: torch.Tensor, x: torch.Tensor, absmax: torch.Tensor, config: QuantConfig,
                 choice: Choice, group: int = 0) -> float:
    """The score the search gives ``choice`` on one time group's statistics (arguments as in
    :func:`fit_group`): the mean squared error of the quantized layer's output against ``x w^T``.
    Lower is better; the search keeps the lowest."""
    w = w.detach().double().cpu()
    t = fit_group(w, x, absmax, recipe_for(config), config, group, choice)
    return _error(t, x, w, x.float() @ w.float().T, config)


def fit_layer(w: torch.Tensor, observer: InputObserver, config: QuantConfig,
              choices: list[Choice] | None = None) -> list[GroupTransform]:
    """One transform per time group for a layer, from its calibration statistics (and, given
    ``choices``, one per group, the chosen candidates without a search)."""
    recipe = recipe_for(config)
    w = w.detach().double().cpu()
    groups = range(observer.absmax.shape[0])
    return [fit_group(w, observer.sample(g), observer.absmax[g], recipe, config, g, choices[g] if choices else None)
            for g in groups]


def check_choices(choices: dict[str, list], layers: list[str], num_groups: int, config: QuantConfig) -> None:
    """Raise a ValueError unless ``choices`` give every one of ``layers`` one :data:`Choice` per
    time group that ``config``'s method can make."""
    recipe = recipe_for(config)
    if sorted(choices) != sorted(layers):
        missing, extra = sorted(set(layers) - set(choices)), sorted(set(choices) - set(layers))
        raise ValueError(f"choices must name exactly the quantized layers; missing {missing[:3]}, "
                         f"not quantized {extra[:3]}")
    for name, per_group in choices.items():
        if len(per_group) != num_groups:
            raise ValueError(f"choices of {name}: {len(per_group)} entries for {num_groups} time groups")
        for alpha, kind in per_group:
            if kind not in ("none", "smooth", "rotate", "both"):
                raise ValueError(f"choices of {name}: unknown kind {kind!r} (none, smooth, rotate, both)")
            if (alpha is not None) != (kind in ("smooth", "both")) or (alpha is not None and not 0 <= alpha <= 1):
                raise ValueError(f"choices of {name}: {kind!r} with alpha {alpha!r}; smoothing kinds take an "
                                 "alpha in [0, 1], the others None")
            if kind in ("rotate", "both") and recipe.rotation == "none":
                raise ValueError(f"choices of {name}: {kind!r} but {config.method} applies no rotation")
            if kind in ("smooth", "both") and recipe.smoothing == "none":
                raise ValueError(f"choices of {name}: {kind!r} but {config.method} applies no smoothing")
