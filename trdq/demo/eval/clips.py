"""Scores of generated clips of the moving-shapes world: adherence and temporal consistency.

Clips are uint8 arrays of shape (N, frames, H, W, 3). Colour and shape are read per frame by the
shapes detector, on frames recentred on the object, and decided per clip by majority; the motion
direction comes from the trajectory of the object's centre, found as the centroid of the pixels
that differ from the background.
"""

from __future__ import annotations

import numpy as np

from trdq.demo import motion, shapes
from trdq.demo.eval.detector import ShapesDetector

FOREGROUND_THRESHOLD = 48  # max |pixel - background| over channels that marks the object


def track(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object centres (N, frames, 2) as fractions of the side (x right, y down; NaN where a frame
    shows no object) and object areas (N, frames) as fractions of the frame."""
    diff = np.abs(clips.astype(np.int16) - np.array(shapes.BACKGROUND, dtype=np.int16)).max(-1)
    mask = diff > FOREGROUND_THRESHOLD
    h, w = mask.shape[-2:]
    area = mask.sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask * (np.arange(w) + 0.5)).sum((-2, -1)) / area / w
        cy = (mask * (np.arange(h)[:, None] + 0.5)).sum((-2, -1)) / area / h
    return np.stack([cx, cy], -1), area / (h * w)


def recentre(frames: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Shift each (H, W, 3) frame so its object's centre lands on the middle; the background fills
    what the shift uncovers. The detector learnt objects at the grammar's five places; moving
    objects cross anywhere, so they are read where it knows them best. Frames without an object
    (NaN centre) are left as they are."""
    out = np.empty_like(frames)
    out[:] = np.array(shapes.BACKGROUND, dtype=frames.dtype)
    h, w = frames.shape[1:3]
    for i, (frame, (cx, cy)) in enumerate(zip(frames, centres)):
        if np.isnan(cx):
            out[i] = frame
            continue
        dx, dy = int(round((0.5 - cx) * w)), int(round((0.5 - cy) * h))
        src = frame[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def directions(centres: np.ndarray) -> np.ndarray:
    """Index into :data:`motion.DIRECTIONS` of each clip's motion, or -1 where fewer than two
    frames show the object. The velocity is the least-squares slope of the centre over frames; the
    direction is that of its larger component."""
    out = np.full(len(centres), -1)
    t = np.arange(centres.shape[1], dtype=float)
    for i, c in enumerate(centres):
        seen = ~np.isnan(c[:, 0])
        if seen.sum() < 2:
            continue
        vx, vy = (np.polyfit(t[seen], c[seen, k], 1)[0] for k in range(2))
        name = ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")
        out[i] = motion.DIRECTIONS.index(name)
    return out


def _majority(values: np.ndarray) -> np.ndarray:
    """Most frequent value along the last axis (ties: the smallest)."""
    rows = values.reshape(-1, values.shape[-1])
    return np.array([np.bincount(v).argmax() for v in rows]).reshape(values.shape[:-1])


def _read_frames(clips: np.ndarray, detector: ShapesDetector) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Size, colour and shape read per frame on recentred frames, each (N, frames), with the
    object centres (N, frames, 2) and areas (N, frames) of :func:`track`."""
    n, frames = clips.shape[:2]
    centres, area = track(clips)
    flat = recentre(clips.reshape(n * frames, *clips.shape[2:]), centres.reshape(n * frames, 2))
    preds, _ = detector.read(flat)
    return {name: preds[name].reshape(n, frames) for name in ("size", "color", "shape")}, centres, area


def read_clips(clips: np.ndarray, detector: ShapesDetector) -> dict[str, np.ndarray]:
    """What the evaluator reads in each clip, as :func:`score_clips` decides it.

    Args:
        clips: uint8 (N, frames, H, W, 3).

    Returns:
        (N,) class indices: ``size``, ``color`` and ``shape`` into :data:`trdq.demo.shapes.ATTRIBUTES`
        (majority over frames), ``direction`` into :data:`trdq.demo.motion.DIRECTIONS` (-1 where fewer
        than two frames show the object).
    """
    per_frame, centres, _ = _read_frames(clips, detector)
    return {**{name: _majority(p) for name, p in per_frame.items()}, "direction": directions(centres)}


def score_clips(clips: np.ndarray, scenes: list[motion.MovingScene],
                detector: ShapesDetector) -> dict[str, float]:
    """Adherence, per-attribute accuracies and temporal consistency of generated clips.

    Returns:
        ``adherence`` (colour, shape and direction all right), ``acc_size``, ``acc_color``,
        ``acc_shape``, ``acc_direction``, and ``temporal_consistency``: per clip, the fraction of
        frames whose colour and shape agree with the clip's majority, times the size stability
        ``1 - min(1, std(area) / mean(area))`` over the frames that show the object; averaged.
    """
    if len(scenes) == 0 or len(clips) != len(scenes):
        raise ValueError(f"got {len(clips)} clips for {len(scenes)} scenes; "
                         "give one scene per clip (at least one)")
    n = len(clips)
    per_frame, centres, area = _read_frames(clips, detector)
    voted = {name: _majority(p) for name, p in per_frame.items()}
    hits = {name: voted[name] == np.array([shapes.ATTRIBUTES[name].index(getattr(s, name)) for s in scenes])
            for name in voted}
    asked = np.array([motion.DIRECTIONS.index(s.direction) for s in scenes])
    hits["direction"] = directions(centres) == asked
    same = {name: per_frame[name] == voted[name][:, None] for name in ("color", "shape")}
    agree = (same["color"] & same["shape"]).mean(1)
    stability = np.zeros(n)
    for i in range(n):
        seen = area[i][area[i] > 0]
        if len(seen):
            stability[i] = 1.0 - min(1.0, seen.std() / seen.mean())
    out = {"adherence": float((hits["color"] & hits["shape"] & hits["direction"]).mean())}
    out.update({f"acc_{name}": float(h.mean()) for name, h in hits.items()})
    out["temporal_consistency"] = float((agree * stability).mean())
    return out
