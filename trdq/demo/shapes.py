"""The shapes world: a caption grammar and a renderer that draws any caption of it.

Captions follow ``a {size} {color} {shape} {position}``, e.g. ``a small red circle on the left``.
Every render jitters placement, size and colour a little, so a model trained on it must generalise
rather than memorise 240 pictures. Everything here is procedural: nothing is downloaded.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZES = ("small", "large")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
ATTRIBUTES = {"size": SIZES, "color": COLORS, "shape": SHAPES, "position": POSITIONS}

GRAMMAR = "a {size} {color} {shape} {position} with " + "; ".join(
    f"{name} in {{{', '.join(values)}}}" for name, values in ATTRIBUTES.items()
)
VOCABULARY = frozenset(
    w for phrase in itertools.chain(["a"], *ATTRIBUTES.values()) for w in phrase.split()
)

IMAGE_SIZE = 64
BACKGROUND = (236, 236, 236)
RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
# Object centre as a fraction of the image side, (x, y) with y pointing down.
CENTRES = {
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
    "in the center": (0.5, 0.5),
}
# Circumradius as a fraction of the image side.
RADII = {"small": 0.13, "large": 0.22}

_CAPTION_RE = re.compile(
    r"^a (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) (?P<position>(on the|at the|in the) \w+)$"
)


@dataclass(frozen=True)
class Scene:
    """One object of the shapes world, described by its four attributes."""

    size: str
    color: str
    shape: str
    position: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.shape} {self.position}"

    def labels(self) -> dict[str, int]:
        """Class index of every attribute, in the order of :data:`ATTRIBUTES`."""
        return {name: values.index(getattr(self, name)) for name, values in ATTRIBUTES.items()}


def normalize(caption: str) -> str:
    """Lower-case a caption and collapse whitespace and trailing punctuation."""
    return " ".join(caption.lower().strip().rstrip(".").split())


def parse_caption(caption: str) -> Scene:
    """Parse a caption of the grammar into a :class:`Scene`.

    Raises:
        ValueError: if the caption is not in the grammar; the message states the grammar.
    """
    text = normalize(caption)
    match = _CAPTION_RE.match(text)
    if match is not None:
        fields = match.groupdict()
        if all(fields[name] in values for name, values in ATTRIBUTES.items()):
            return Scene(**{name: fields[name] for name in ATTRIBUTES})
    raise ValueError(f"{caption!r} is not a caption of the shapes world. Expected: {GRAMMAR}.")


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` that the shapes world's vocabulary does not contain."""
    return [w for w in normalize(prompt).split() if w not in VOCABULARY]


def all_scenes() -> list[Scene]:
    """Every scene of the grammar (2 x 6 x 4 x 5 = 240), in a fixed order."""
    return [Scene(*combo) for combo in itertools.product(*ATTRIBUTES.values())]


def sample_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` scenes spread evenly over the grammar: whole shuffled passes over all 240 scenes."""
    return spread(all_scenes(), n, seed)


def spread(items: list, n: int, seed: int = 0) -> list:
    """``n`` items in whole shuffled passes over ``items``, so every item appears equally often."""
    rng = np.random.default_rng(seed)
    out: list = []
    while len(out) < n:
        out.extend(items[i] for i in rng.permutation(len(items)))
    return out[:n]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = 0.82 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        angles = [-90, 30, 150]
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in angles]
    if shape == "star":
        points = []
        for k in range(10):
            rad = 1.15 * r if k % 2 == 0 else 0.5 * r
            a = math.radians(-90 + 36 * k)
            points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return points
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(scene: Scene | str, rng: np.random.Generator | None = None, size: int = IMAGE_SIZE,
           jitter: bool = True) -> Image.Image:
    """Draw a scene as an RGB image of ``size`` x ``size`` pixels on a plain background.

    Args:
        scene: a :class:`Scene` or a caption of the grammar.
        rng: source of the jitter; a fresh unseeded generator if None.
        size: side of the square output image in pixels.
        jitter: perturb placement (+-5% of the side), radius (+-12%) and colour (+-15 per channel).

    Returns:
        The image, antialiased by drawing at 4x and downsampling.
    """
    if isinstance(scene, str):
        scene = parse_caption(scene)
    rng = rng if rng is not None else np.random.default_rng()
    cx, cy = CENTRES[scene.position]
    r = RADII[scene.size]
    color = np.array(RGB[scene.color], dtype=float)
    if jitter:
        cx, cy = cx + rng.uniform(-0.05, 0.05), cy + rng.uniform(-0.05, 0.05)
        r *= rng.uniform(0.88, 1.12)
        color = color + rng.uniform(-15, 15, size=3)
    return draw_object(scene.shape, color, cx, cy, r, size)


def draw_object(shape: str, color, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw one shape of circumradius ``r`` centred at (``cx``, ``cy``), all as fractions of the side.

    The image is drawn at 4x and downsampled (antialiasing); ``color`` is an RGB triple.
    """
    fill = tuple(int(c) for c in np.clip(np.asarray(color, dtype=float), 0, 255))
    ss = 4 * size
    image = Image.new("RGB", (ss, ss), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cx, cy, r = cx * ss, cy * ss, r * ss
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def render_batch(scenes: list[Scene], seed: int = 0, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render scenes into a uint8 array of shape (N, size, size, 3)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(render(s, rng, size)) for s in scenes])
