"""Moving shapes: the video caption grammar and a clip renderer, built on the shapes world.

Captions follow ``a {size} {color} {shape} moving {direction}``, e.g. ``a large green star moving
right``; sizes, colours and shapes are those of :mod:`trdq.demo.shapes`. A clip shows the object sliding
in a straight line at constant speed; start, speed, the cross-axis position, the radius and the
colour are jittered per clip and kept fixed across its frames (the object keeps its identity).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

from trdq.demo import shapes

DIRECTIONS = ("left", "right", "up", "down")
ATTRIBUTES = {"size": shapes.SIZES, "color": shapes.COLORS, "shape": shapes.SHAPES, "direction": DIRECTIONS}
GRAMMAR = "a {size} {color} {shape} moving {direction} with " + "; ".join(
    f"{name} in {{{', '.join(values)}}}" for name, values in ATTRIBUTES.items()
)
VOCABULARY = frozenset(
    w for phrase in itertools.chain(["a", "moving"], *ATTRIBUTES.values()) for w in phrase.split()
)
NUM_FRAMES = 8
# Unit step of each direction in image coordinates (x right, y down).
STEPS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
TRAVEL = (0.30, 0.50)  # distance covered over the clip, as a fraction of the side
CROSS = (0.35, 0.65)  # range of the coordinate that does not change

_CAPTION_RE = re.compile(r"^a (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) moving (?P<direction>\w+)$")


@dataclass(frozen=True)
class MovingScene:
    """One object moving in one direction, described by its four attributes."""

    size: str
    color: str
    shape: str
    direction: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.shape} moving {self.direction}"


def parse_caption(caption: str) -> MovingScene:
    """Parse a caption of the video grammar into a :class:`MovingScene`.

    Raises:
        ValueError: if the caption is not in the grammar; the message states the grammar.
    """
    match = _CAPTION_RE.match(shapes.normalize(caption))
    if match is not None:
        fields = match.groupdict()
        if all(fields[name] in values for name, values in ATTRIBUTES.items()):
            return MovingScene(**fields)
    raise ValueError(f"{caption!r} is not a caption of the moving-shapes world. Expected: {GRAMMAR}.")


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` that the moving-shapes vocabulary does not contain."""
    return [w for w in shapes.normalize(prompt).split() if w not in VOCABULARY]


def all_scenes() -> list[MovingScene]:
    """Every scene of the grammar (2 x 6 x 4 x 4 = 192), in a fixed order."""
    return [MovingScene(*combo) for combo in itertools.product(*ATTRIBUTES.values())]


def sample_scenes(n: int, seed: int = 0) -> list[MovingScene]:
    """``n`` scenes spread evenly over the grammar: whole shuffled passes over all 192 scenes."""
    return shapes.spread(all_scenes(), n, seed)


def trajectory(scene: MovingScene, rng: np.random.Generator, frames: int = NUM_FRAMES) -> np.ndarray:
    """Object centres (frames, 2) as fractions of the side: a straight line at constant speed."""
    r = shapes.RADII[scene.size]
    travel = rng.uniform(*TRAVEL)
    dx, dy = STEPS[scene.direction]
    lo, hi = 0.8 * r, 1.0 - 0.8 * r - travel  # start so the path stays (nearly) inside the frame
    along = rng.uniform(lo, max(lo, hi))
    cross = rng.uniform(*CROSS)
    start_along = along if dx + dy > 0 else 1.0 - along  # left/up start on the far side
    t = np.linspace(0.0, 1.0, frames)
    pos_along = start_along + (dx + dy) * travel * t
    fixed = np.full(frames, cross)
    return np.stack([pos_along, fixed] if dx else [fixed, pos_along], 1)


def render_clip(scene: MovingScene | str, rng: np.random.Generator | None = None, frames: int = NUM_FRAMES,
                size: int = shapes.IMAGE_SIZE) -> np.ndarray:
    """Draw a clip as a uint8 array (frames, size, size, 3).

    Args:
        scene: a :class:`MovingScene` or a caption of the video grammar.
        rng: source of the jitter; a fresh unseeded generator if None.
        frames: number of frames.
        size: side of each square frame in pixels.
    """
    if isinstance(scene, str):
        scene = parse_caption(scene)
    rng = rng if rng is not None else np.random.default_rng()
    centres = trajectory(scene, rng, frames)
    r = shapes.RADII[scene.size] * rng.uniform(0.88, 1.12)
    color = np.array(shapes.RGB[scene.color], dtype=float) + rng.uniform(-15, 15, size=3)
    draw = shapes.draw_object
    return np.stack([np.asarray(draw(scene.shape, color, cx, cy, r, size)) for cx, cy in centres])


def render_clips(scenes: list[MovingScene], seed: int = 0, frames: int = NUM_FRAMES,
                 size: int = shapes.IMAGE_SIZE) -> np.ndarray:
    """Render scenes into a uint8 array of shape (N, frames, size, size, 3)."""
    rng = np.random.default_rng(seed)
    return np.stack([render_clip(s, rng, frames, size) for s in scenes])
