"""The trainers' resume state (``OUT/state.pt``): weights, optimizer state and counters.

The file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only, so a crafted file cannot run code. It is written atomically, so an interrupted
save leaves the previous state in place.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch


def save_state(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: Path, required: tuple[str, ...] = ("model", "opt", "step")) -> dict:
    """Read a state written by :func:`save_state`.

    Raises:
        ValueError: naming the file, if it holds anything but tensors and plain data (a pickled
            object is refused, never run), is not a torch file, or lacks a key of ``required``.
    """
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path} is not a trdq training state this version can read safely ({reason}); "
                         "delete it to start over, or move it away") from None
    if not isinstance(state, dict) or (missing := [k for k in required if k not in state]):
        raise ValueError(f"{path} is not a trdq training state: it lacks "
                         f"{', '.join(missing) if isinstance(state, dict) else 'a dict of model, opt and step'}")
    return state
