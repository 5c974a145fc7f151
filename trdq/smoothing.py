"""Per-group smoothing Delta_g: the factors s for a strength alpha_g (docs/method.md §3).

``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``; ``X~ = X diag(s)^-1``, ``W~ = W diag(s)``, so
``X~ W~^T = X W^T`` exactly and quantization difficulty moves between activations and weights.
The search over alpha_g, joint with the rotation and the choice of transforms, is in
:mod:`trdq.methods`.
"""

from __future__ import annotations

import torch

EPS = 1e-5


def smoothing_factors(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel factors ``s`` (C_in,), float64.

    Args:
        x_absmax: (C_in,) abs-max of the layer input over one time group's calibration data.
        w_absmax: (C_in,) abs-max of each weight column.
        alpha: migration strength in [0, 1]: 1 flattens the activation channels fully (their
            abs-max moves into the weight), 0 flattens the weight columns instead.

    Channels that never fire (or have all-zero weights) get ``s = 1``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    x, w = x_absmax.double().clamp_min(EPS), w_absmax.double().clamp_min(EPS)
    s = x.pow(alpha) / w.pow(1.0 - alpha)
    dead = (x_absmax <= EPS) | (w_absmax <= EPS)
    return torch.where(dead, torch.ones_like(s), s).clamp(1e-4, 1e4)
