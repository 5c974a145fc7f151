"""Frozen, validated configuration of a quantization run (docs/method.md §1-§6 and §8).

Invalid values raise ``ValueError`` with the fix in the message. Strings from the command line or
the app become these objects at the boundary (see :func:`parse_bits`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from trdq.quantizer import check_bits


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: Seeds must lie below this: torch's generator wraps larger seeds onto small ones.
SEED_LIMIT = 2 ** 63
METHODS = ("rtn", "smoothquant", "quarot", "duquant", "viditq", "trdq")
ROTATIONS = ("none", "hadamard", "duquant")
DEFAULT_ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def parse_bits(text: str) -> tuple[int, int]:
    """``"w4a8"`` -> ``(4, 8)``; raises ``ValueError`` naming the expected form."""
    match = re.fullmatch(r"w(\d+)a(\d+)", text.strip().lower())
    if match is None:
        raise ValueError(f"bit setting {text!r} is not of the form WxAy, e.g. w8a8, w4a8, w4a4")
    w, a = int(match.group(1)), int(match.group(2))
    return check_bits(w, "weight bits"), check_bits(a, "activation bits")


@dataclass(frozen=True)
class TimeGroups:
    """Contiguous groups of sampling steps, each with its own quantization parameters.

    Attributes:
        num_groups: split the steps into this many near-equal groups (ignored with ``boundaries``).
        boundaries: explicit first step of every group, starting at 0 and increasing,
            e.g. ``(0, 5, 10, 15)`` for four groups of a 20-step sampler.
    """

    num_groups: int = 1
    boundaries: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.boundaries is not None:
            if isinstance(self.boundaries, str) or not all(_is_int(s) for s in self.boundaries):
                raise ValueError(f"time-group boundaries must be a tuple of integer steps, e.g. (0, 5, 10, 15), "
                                 f"got {self.boundaries!r}")
            b = tuple(self.boundaries)
            object.__setattr__(self, "boundaries", b)
            if not b or b[0] != 0:
                raise ValueError(f"time-group boundaries must start at step 0, got {b}: "
                                 "every step needs a group")
            if any(y <= x for x, y in zip(b, b[1:])):
                raise ValueError(f"time-group boundaries must strictly increase, got {b}")
            object.__setattr__(self, "num_groups", len(b))
        elif not _is_int(self.num_groups) or self.num_groups < 1:
            raise ValueError(f"num_groups must be a positive integer, got {self.num_groups!r}")

    def step_to_group(self, num_steps: int) -> list[int]:
        """Group index of every step of a ``num_steps``-step sampler.

        Raises:
            ValueError: with more groups than steps, or boundaries past the last step.
        """
        if self.num_groups > num_steps:
            raise ValueError(f"{self.num_groups} time groups cannot split {num_steps} sampling steps; "
                             f"use at most {num_steps} groups or sample with more steps")
        if self.boundaries is None:
            return [step * self.num_groups // num_steps for step in range(num_steps)]
        if self.boundaries[-1] >= num_steps:
            raise ValueError(f"time-group boundaries {self.boundaries} do not fit {num_steps} steps: "
                             f"every boundary must be below {num_steps}")
        return [sum(step >= b for b in self.boundaries) - 1 for step in range(num_steps)]


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    Attributes:
        method: one of :data:`METHODS`; ``trdq`` is the paper's method, the rest are baselines.
        w_bits, a_bits: weight and activation bit widths, 2..8.
        w_group_size: input channels per weight quantization group (None: one per output channel).
        a_symmetric: symmetric per-token activation grid (default asymmetric).
        time_groups: how sampling steps are grouped (TR-DQ and ViDiT-Q-style use them).
        alpha: smoothing strength: one value for every group, a tuple of one value per time group
            (alpha_g; methods without time groups use the first), or None to search alpha_g per group over
            ``alpha_grid``.
        rotation: ``duquant`` (R1 P R2), ``hadamard`` (randomised) or ``none``.
        block_size: rotation block size (clipped to the layer width).
        rotation_steps: greedy steps per block of the DuQuant rotation.
        select_transforms: per layer and group, keep only the transforms (smoothing, rotation)
            that lower the calibration output error.
        include, exclude: fnmatch patterns over module names of the transformer; None takes the
            architecture adapter's defaults (the blocks' linear layers, see
            :mod:`trdq.models.adapters`).
        seed: seed of the random signs and rotations.
        cfg_split: quantize the classifier-free-guidance branches apart: each gets its own
            calibration statistics and quantization parameters, and runs as its own pass
            (:mod:`trdq.cfg`).
        uncond_bits: (w_bits, a_bits) of the unconditional branch when ``cfg_split`` (None: the
            same as the conditional branch), e.g. ``(4, 4)`` beside a W4A8 conditional branch.
        attention_bits: quantize every attention layer's scores ``Q K^T`` too: queries and
            mean-subtracted keys on symmetric per-token grids of this width (2..8; 8 is the intended
            use), softmax in float32, ``P V`` in floating point (docs/method.md §10; beyond the paper).
            None (default): attention stays in floating point.
        shared_inputs: layers that read one input (an attention's q/k/v, a cross-attention's k/v;
            :mod:`trdq.siblings`) get one transform per time group, its smoothing and rotation fitted
            to their weights stacked, so their activations are transformed and quantized once per
            call instead of once per layer (beyond the paper; off by default: the fit is joint,
            so the quantized model differs).
    """

    method: str = "trdq"
    w_bits: int = 8
    a_bits: int = 8
    w_group_size: int | None = None
    a_symmetric: bool = False
    time_groups: TimeGroups = field(default_factory=TimeGroups)
    alpha: float | tuple[float, ...] | None = None
    alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
    rotation: str = "duquant"
    block_size: int = 128
    rotation_steps: int = 8
    select_transforms: bool = True
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    seed: int = 0
    cfg_split: bool = False
    uncond_bits: tuple[int, int] | None = None
    attention_bits: int | None = None
    shared_inputs: bool = False

    def __post_init__(self):
        self._check_types()
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        check_bits(self.w_bits, "w_bits")
        check_bits(self.a_bits, "a_bits")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation {self.rotation!r}; choose one of {', '.join(ROTATIONS)}")
        if isinstance(self.alpha, (tuple, list)):
            object.__setattr__(self, "alpha", tuple(float(a) for a in self.alpha))
            if len(self.alpha) != self.time_groups.num_groups:
                raise ValueError(f"alpha gives {len(self.alpha)} values for {self.time_groups.num_groups} time "
                                 "groups: give one per group, one value for all, or None to search")
        if self.alpha is not None and not all(0.0 <= a <= 1.0 for a in self.alphas()):
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not self.alpha_grid or any(not 0.0 <= a <= 1.0 for a in self.alpha_grid):
            raise ValueError(f"alpha_grid must be a non-empty tuple of values in [0, 1], got {self.alpha_grid}")
        if self.uncond_bits is not None:
            if not self.cfg_split:
                raise ValueError("uncond_bits needs cfg_split=True: the branches share one model otherwise")
            w, a = self.uncond_bits
            checked = (check_bits(w, "uncond w_bits"), check_bits(a, "uncond a_bits"))
            object.__setattr__(self, "uncond_bits", checked)
        if self.attention_bits is not None:
            check_bits(self.attention_bits, "attention_bits")
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise ValueError("include/exclude take a tuple of patterns, e.g. include=('*attn1*',)")

    def _check_types(self) -> None:
        """Reject values of the wrong type before they act as something else (``"no"`` as True)."""
        for name in ("a_symmetric", "select_transforms", "cfg_split", "shared_inputs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name, low in (("block_size", 2), ("rotation_steps", 1), ("seed", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"seed must be below 2**63 (torch's generator range), got {self.seed}")
        if self.w_group_size is not None and (not _is_int(self.w_group_size) or self.w_group_size < 1):
            raise ValueError(f"w_group_size must be a positive integer or None, got {self.w_group_size!r}")
        if not isinstance(self.time_groups, TimeGroups):
            raise ValueError(f"time_groups must be a TimeGroups, e.g. TimeGroups(4), got {self.time_groups!r}")
        alphas = self.alpha if isinstance(self.alpha, tuple | list) else (() if self.alpha is None else (self.alpha,))
        if not all(_is_number(a) for a in alphas) or isinstance(self.alpha, str):
            raise ValueError(f"alpha must be a number in [0, 1], one per time group, or None to search; "
                             f"got {self.alpha!r}")
        if not isinstance(self.alpha_grid, tuple | list) or not all(_is_number(a) for a in self.alpha_grid):
            raise ValueError(f"alpha_grid must be a tuple of numbers in [0, 1], got {self.alpha_grid!r}")

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["time_groups"] = {"num_groups": self.time_groups.num_groups,
                            "boundaries": list(self.time_groups.boundaries) if self.time_groups.boundaries else None}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        d = dict(d)
        tg = d.pop("time_groups")
        tg = TimeGroups(boundaries=tuple(tg["boundaries"])) if tg.get("boundaries") else TimeGroups(tg["num_groups"])
        if isinstance(d.get("alpha"), list):
            d["alpha"] = tuple(d["alpha"])
        for key in ("alpha_grid", "include", "exclude", "uncond_bits"):
            d[key] = None if d.get(key) is None else tuple(d[key])
        return cls(time_groups=tg, **d)

    def alphas(self) -> tuple[float, ...]:
        """The fixed alpha of every time group (empty when alpha is searched)."""
        if self.alpha is None:
            return ()
        if isinstance(self.alpha, tuple):
            return self.alpha
        return (float(self.alpha),) * self.time_groups.num_groups

    @property
    def bits(self) -> str:
        """The WxAy label, e.g. ``w4a8``; a CFG split with other unconditional bits reads
        ``w4a8/uncond-w4a4``."""
        label = f"w{self.w_bits}a{self.a_bits}"
        if self.cfg_split and self.uncond_bits is not None and self.uncond_bits != (self.w_bits, self.a_bits):
            label += f"/uncond-w{self.uncond_bits[0]}a{self.uncond_bits[1]}"
        return label
