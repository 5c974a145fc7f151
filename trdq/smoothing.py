"""Per-group smoothing Delta_g and the search for its strength alpha_g (METHOD.md section 5).

``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``; ``X~ = X diag(s)^-1``, ``W~ = W diag(s)``, so
``X~ W~^T = X W^T`` exactly and quantization difficulty moves between activations and weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

EPS = 1e-5


def smoothing_factors(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel factors ``s`` (C_in,), float64.

    Args:
        x_absmax: (C_in,) abs-max of the layer input over one time group's calibration data.
        w_absmax: (C_in,) abs-max of each weight column.
        alpha: migration strength in [0, 1]; 0 leaves activations alone, 1 flattens them fully.

    Channels that never fire (or have all-zero weights) get ``s = 1``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    x, w = x_absmax.double().clamp_min(EPS), w_absmax.double().clamp_min(EPS)
    s = x.pow(alpha) / w.pow(1.0 - alpha)
    dead = (x_absmax <= EPS) | (w_absmax <= EPS)
    return torch.where(dead, torch.ones_like(s), s).clamp(1e-4, 1e4)


def output_error(x: torch.Tensor, w: torch.Tensor, x_q: torch.Tensor, w_q: torch.Tensor) -> float:
    """Mean squared error of the layer output ``x w^T`` against its quantized counterpart."""
    return float(((x.double() @ w.double().T) - (x_q.double() @ w_q.double().T)).pow(2).mean())


def search_alpha(x: torch.Tensor, w: torch.Tensor, x_absmax: torch.Tensor, grid: Sequence[float],
                 quantize_pair: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 ) -> tuple[float, float]:
    """The alpha of ``grid`` whose smoothing gives the smallest output error on ``x``.

    Args:
        x: (tokens, C_in) calibration inputs of one time group.
        w: (C_out, C_in) weight.
        x_absmax: (C_in,) running abs-max of that group's inputs.
        grid: candidate alphas.
        quantize_pair: maps smoothed ``(x~, w~)`` to their fake-quantized versions (the caller
            puts any rotation and the bit widths in here).

    Returns:
        ``(best_alpha, its_error)``.
    """
    w_absmax = w.abs().amax(0)
    best = (float("nan"), float("inf"))
    for alpha in grid:
        s = smoothing_factors(x_absmax, w_absmax, alpha)
        xs, ws = x.double() / s, w.double() * s
        xq, wq = quantize_pair(xs, ws)
        err = output_error(x, w, xq, wq)
        if err < best[1]:
            best = (float(alpha), err)
    return best
