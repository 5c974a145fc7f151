"""Pure metrics: prompt adherence, a Frechet distance, and PSNR/SSIM against a reference.

Images are uint8 arrays of shape (N, H, W, 3) throughout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trdq.demo import shapes


def adherence(predictions: dict[str, np.ndarray], scenes: list[shapes.Scene]) -> dict[str, float]:
    """GenEval-style scores: per-attribute accuracy and the all-attributes-right fraction.

    Args:
        predictions: predicted class index per attribute, each of shape (N,).
        scenes: the N scenes the prompts asked for.

    Returns:
        ``{"adherence": ..., "acc_size": ..., "acc_color": ..., "acc_shape": ..., "acc_position": ...}``
    """
    if len(scenes) == 0:
        raise ValueError("adherence needs at least one image")
    hits = {
        name: predictions[name] == np.array([s.labels()[name] for s in scenes])
        for name in shapes.ATTRIBUTES
    }
    out = {"adherence": float(np.logical_and.reduce(list(hits.values())).mean())}
    out.update({f"acc_{name}": float(h.mean()) for name, h in hits.items()})
    return out


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets, each (N, D).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, computed with symmetric
    eigendecompositions in float64 (stable for the singular covariances of small N).
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least two samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_root = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_root)


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).double() / 255.0


def psnr(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB (peak 1.0) of (N, H, W, 3) uint8 images against a reference.

    Identical images give ``inf``.
    """
    mse = ((_to_float(images) - _to_float(reference)) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).numpy()


def ssim(images: np.ndarray, reference: np.ndarray, window: int = 7, sigma: float = 1.5) -> np.ndarray:
    """Per-image SSIM (Gaussian window, constants of Wang et al. 2004), averaged over channels."""
    x, y = _to_float(images), _to_float(reference)
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=3)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).numpy()
