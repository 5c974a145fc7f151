"""Statistics of activations and weights that say how hard they are to quantize; pure maths.

Every function takes tensors whose last dimension is the channel axis (activations (..., C_in),
or a weight (C_out, C_in), whose input channels are its last axis too) and returns numbers or
small dataclasses; nothing here hooks a model. Fake quantization is :mod:`trdq.quantizer`'s, so
the SQNR measured here is the SQNR the quantized layers see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trdq import quantizer

DEFAULT_K = 8.0  # a channel is an outlier when its abs-max exceeds k x the median channel abs-max
DEFAULT_BINS = 101


def channel_absmax(x: torch.Tensor) -> torch.Tensor:
    """Per-channel abs-max over every leading dimension.

    Args:
        x: (..., C) activations, or a (C_out, C_in) weight (gives the per-input-channel abs-max).

    Returns:
        (C,) float64.
    """
    return x.detach().reshape(-1, x.shape[-1]).double().abs().amax(0)


@dataclass(frozen=True)
class Histogram:
    """Counts of values in bins.

    Attributes:
        edges: (bins + 1,) increasing bin edges.
        counts: (bins,) number of values per bin (the last bin includes its right edge).
        outside: values that fell outside ``[edges[0], edges[-1]]``.
    """

    edges: torch.Tensor
    counts: torch.Tensor
    outside: int

    @property
    def centres(self) -> torch.Tensor:
        return (self.edges[1:] + self.edges[:-1]) / 2


def symmetric_edges(*tensors: torch.Tensor, bins: int = DEFAULT_BINS) -> torch.Tensor:
    """``bins + 1`` equal-width edges over ``[-m, m]``, ``m`` the largest |value| of all tensors,
    so that histograms of several tensors (before and after a transform) share one axis.

    Raises:
        ValueError: for fewer than one bin or no tensors.
    """
    if bins < 1 or not tensors:
        raise ValueError(f"symmetric_edges needs at least one tensor and one bin, got {len(tensors)} "
                         f"tensors and bins={bins}")
    limit = max(float(t.detach().abs().max()) if t.numel() else 0.0 for t in tensors)
    limit = limit if limit > 0 else 1.0  # an all-zero tensor still gets a usable axis
    return torch.linspace(-limit, limit, bins + 1, dtype=torch.float64)


def histogram(x: torch.Tensor, edges: torch.Tensor | None = None, bins: int = DEFAULT_BINS) -> Histogram:
    """Histogram of every value of ``x``.

    Args:
        x: any shape.
        edges: increasing bin edges; None takes :func:`symmetric_edges` of ``x`` with ``bins`` bins.

    Raises:
        ValueError: if ``edges`` has fewer than two entries or does not increase.
    """
    edges = symmetric_edges(x, bins=bins) if edges is None else edges.detach().double().cpu()
    if edges.ndim != 1 or len(edges) < 2 or bool((edges[1:] <= edges[:-1]).any()):
        raise ValueError("histogram edges must be a 1-D increasing tensor of at least two values, "
                         "e.g. analysis.stats.symmetric_edges(x, bins=101)")
    values = x.detach().reshape(-1).double().cpu()
    counts = torch.histogram(values, bins=edges).hist.round().long()
    return Histogram(edges, counts, int(values.numel() - counts.sum()))


def kurtosis(x: torch.Tensor) -> float:
    """Pearson kurtosis ``E[(x - mu)^4] / E[(x - mu)^2]^2`` of all values of ``x``: 3 for a
    Gaussian, 1.8 for a uniform distribution, large when a few values dwarf the rest.

    Raises:
        ValueError: for an empty or constant tensor (kurtosis is undefined).
    """
    values = x.detach().reshape(-1).double()
    if values.numel() == 0 or bool((values == values[0]).all()):
        raise ValueError("kurtosis is undefined for an empty or constant tensor")
    centred = values - values.mean()
    return float(centred.pow(4).mean() / centred.pow(2).mean() ** 2)


@dataclass(frozen=True)
class Outliers:
    """How far a tensor's outlier channels stand out.

    Attributes:
        fraction: share of channels whose abs-max exceeds ``k`` x the median channel abs-max.
        count: number of such channels.
        ratio: largest channel abs-max / median channel abs-max.
        k: the threshold factor used.
    """

    fraction: float
    count: int
    ratio: float
    k: float


def outliers(x: torch.Tensor, k: float = DEFAULT_K) -> Outliers:
    """Outlier channels of ``x`` (..., C), judged by their abs-max against the median channel.

    Raises:
        ValueError: if ``k`` is not positive.
    """
    if k <= 0:
        raise ValueError(f"the outlier threshold k must be positive (a multiple of the median), got {k}")
    absmax = channel_absmax(x)
    median = absmax.median().clamp_min(1e-12)
    count = int((absmax > k * median).sum())
    return Outliers(count / absmax.numel(), count, float(absmax.max() / median), k)


def sqnr_per_token(x: torch.Tensor, bits: int, symmetric: bool = False) -> float:
    """SQNR (dB) of ``x`` (..., C) fake-quantized per token at ``bits``, as the quantized layers
    quantize activations (:func:`trdq.quantizer.fake_quant_per_token`); higher is better."""
    xd = x.detach().double()
    return quantizer.sqnr_db(xd, quantizer.fake_quant_per_token(xd, bits, symmetric))


@dataclass(frozen=True)
class ActivationStats:
    """The numbers the report's per-layer table shows for one tensor.

    Attributes:
        outlier_fraction, outlier_ratio: see :class:`Outliers`.
        kurtosis: see :func:`kurtosis` (NaN for a constant tensor).
        sqnr_db: per-token SQNR at the layer's activation bits.
    """

    outlier_fraction: float
    outlier_ratio: float
    kurtosis: float
    sqnr_db: float


def describe(x: torch.Tensor, bits: int, symmetric: bool = False, k: float = DEFAULT_K) -> ActivationStats:
    """:class:`ActivationStats` of activations ``x`` (..., C) quantized per token at ``bits``."""
    out = outliers(x, k)
    try:
        kurt = kurtosis(x)
    except ValueError:
        kurt = float("nan")
    return ActivationStats(out.fraction, out.ratio, kurt, sqnr_per_token(x, bits, symmetric))
