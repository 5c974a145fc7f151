"""Uniform round-to-nearest quantization maths (docs/method.md §1); no state, no modules.

Conventions: ``bits`` in 2..8; symmetric grids are ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (the most
negative code is unused so the grid is symmetric and 8-bit codes fit ``torch.int8`` GEMMs);
asymmetric grids are ``[0, 2^b - 1]`` with an integer zero point. Scales are never zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 2, 8
EPS = 1e-8


def check_bits(bits: int, what: str = "bits") -> int:
    """Return ``bits`` or raise ``ValueError`` saying which widths are supported."""
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest integer code of a ``bits``-wide grid."""
    check_bits(bits)
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


@dataclass(frozen=True)
class QParams:
    """Scale and zero point, broadcastable against the tensor they quantize."""

    scale: torch.Tensor
    zero: torch.Tensor | None  # None for symmetric grids
    bits: int

    @property
    def symmetric(self) -> bool:
        return self.zero is None


def params_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> QParams:
    """Quantization parameters that map ``[lo, hi]`` (elementwise) onto the integer grid."""
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        return QParams((amax / qmax).clamp_min(EPS), None, bits)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # zero must be exactly representable
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(EPS)
    zero = (qmin - lo / scale).round().clamp(qmin, qmax)
    return QParams(scale, zero, bits)


def quantize(x: torch.Tensor, p: QParams) -> torch.Tensor:
    """Integer codes (as floats of ``x``'s dtype) of ``x`` on the grid of ``p``."""
    qmin, qmax = qrange(p.bits, p.symmetric)
    q = torch.round(x / p.scale)
    if p.zero is not None:
        q = q + p.zero
    return q.clamp(qmin, qmax)


def dequantize(q: torch.Tensor, p: QParams) -> torch.Tensor:
    """Real values of integer codes ``q``."""
    return (q - p.zero) * p.scale if p.zero is not None else q * p.scale


def fake_quant(x: torch.Tensor, p: QParams) -> torch.Tensor:
    """``dequantize(quantize(x))``: the simulated effect of quantization, in ``x``'s dtype."""
    return dequantize(quantize(x, p), p)


def per_token_params(x: torch.Tensor, bits: int, symmetric: bool) -> QParams:
    """Dynamic activation parameters, one scale per token (row of the last dim).

    Args:
        x: activations (..., C_in).
    """
    return params_from_range(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), bits, symmetric)


def per_channel_params(w: torch.Tensor, bits: int, symmetric: bool, group_size: int | None = None) -> QParams:
    """Static weight parameters per output channel, optionally per group of input channels.

    Args:
        w: weight (C_out, C_in).
        group_size: input channels per group; must divide C_in. None for one group per row.

    Returns:
        Parameters of shape (C_out, 1), or (C_out, C_in // group_size, 1) for grouped weights
        (apply them to ``w.view(C_out, -1, group_size)``).
    """
    if group_size is not None:
        if group_size < 1 or w.shape[-1] % group_size:
            raise ValueError(f"group_size {group_size} must be positive and divide C_in={w.shape[-1]}")
        w = w.reshape(w.shape[0], -1, group_size)
    return params_from_range(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True), bits, symmetric)


def fake_quant_weight(w: torch.Tensor, bits: int, symmetric: bool = True, group_size: int | None = None) -> torch.Tensor:
    """Per-channel (or grouped) fake quantization of a (C_out, C_in) weight."""
    p = per_channel_params(w, bits, symmetric, group_size)
    if group_size is None:
        return fake_quant(w, p)
    return fake_quant(w.reshape(w.shape[0], -1, group_size), p).reshape(w.shape)


def fake_quant_per_token(x: torch.Tensor, bits: int, symmetric: bool = False) -> torch.Tensor:
    """Dynamic per-token fake quantization of activations (..., C_in)."""
    return fake_quant(x, per_token_params(x, bits, symmetric))


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(|ref|^2 / |ref - approx|^2)``."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum().clamp_min(1e-30)
    return float(10 * torch.log10(ref.pow(2).sum() / noise))
