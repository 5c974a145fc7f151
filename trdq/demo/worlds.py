"""The caption worlds of the embedded models, by the name a model's settings give (``world``).

Each world is a module with ``GRAMMAR``, ``parse_caption``, ``unknown_words``, ``all_scenes`` and
``sample_scenes``: :mod:`trdq.demo.shapes` for still images, :mod:`trdq.demo.motion` for clips.
"""

from __future__ import annotations

from types import ModuleType

from trdq.demo import motion, shapes

WORLDS: dict[str, ModuleType] = {"shapes": shapes, "moving-shapes": motion}


def world(name: str | None) -> ModuleType:
    """The world module called ``name``.

    Raises:
        ValueError: for a model outside the embedded worlds (its prompts cannot be scored).
    """
    if name not in WORLDS:
        raise ValueError(
            f"this model's prompts come from no known caption world ({name!r}); prompt adherence is "
            f"scored in {sorted(WORLDS)} only. Use --model shapes-t2i or shapes-t2v (or a folder trained "
            "with trdq.demo.train)."
        )
    return WORLDS[name]
