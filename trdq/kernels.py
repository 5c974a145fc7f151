"""Real integer kernels (docs/method.md §7): int8 GEMMs, int4 packing and the online rotation.

The simulated path (``QuantLinear`` with :mod:`trdq.quantizer`'s fake quantization) rounds values
to the integer grid but multiplies in floating point, so it shows accuracy and nothing else.
Results computed through this module are labelled "real integer": activations and weights are
stored as integer codes, the matrix product of the codes is exact (``torch._int_mm``, int8 x int8
-> int32; on CPUs without VNNI fbgemm's int8 kernel or fp32 GEMMs over exact K chunks, see
:func:`int_gemm`) and floats come back only through one rescale per output. Both paths share the
quantizer's grids, so they agree up to float32 rounding, which the tests check.

Every function is pure (tensors in, tensors out, on the inputs' device); the GEMMs are tested
against :func:`int_mm_ref`, and the others have a plain-torch ``*_ref`` twin that states what
they compute; the twins are for tests, not for speed.

Grids: weights are symmetric per output channel, codes in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
Activations are quantized per token; asymmetric codes are shifted by ``2^(b-1)`` from the
quantizer's ``[0, 2^b - 1]`` so they fit ``torch.int8`` (the zero point moves with them).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from trdq.quantizer import check_bits, per_channel_params, per_token_params, quantize

# The int32 accumulator holds |sum_k (x_k - z) w_k| <= 255 * 128 * K < 2^31 for K up to 2^16.
MAX_K = 2**16

# (min rows M, K multiple, N multiple) that torch._int_mm needs per device type. CPU takes any
# 2-D int8 shapes (oneDNN with AVX512-VNNI, else a plain loop); CUDA's cuBLAS path checks
# M > 16 and K, N positive multiples of 8. Devices not listed are called unpadded.
INT_MM_CONSTRAINTS: dict[str, tuple[int, int, int]] = {"cuda": (17, 8, 8)}


# ----------------------------------------------------------------------------- int4 packing


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack signed 4-bit codes two per byte along the last dim.

    Byte ``j`` holds code ``2j`` in its low nibble and code ``2j + 1`` in its high nibble, each
    as a two's-complement nibble.

    Args:
        codes: integer tensor (..., 2n) with values in [-8, 7].

    Returns:
        uint8 tensor (..., n).

    Raises:
        ValueError: for a float dtype, an odd or missing last dim, or codes outside [-8, 7].
    """
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
        raise ValueError(f"pack_int4 needs integer codes, got {codes.dtype}; round and cast with .to(torch.int8)")
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError(
            f"pack_int4 needs an even last dim, got shape {tuple(codes.shape)}; "
            "pad it with a zero code, e.g. F.pad(codes, (0, 1))"
        )
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ValueError(
            f"pack_int4 needs codes in [-8, 7], got [{int(codes.min())}, {int(codes.max())}]; "
            "quantize with bits <= 4 (symmetric 4-bit codes lie in [-7, 7])"
        )
    nibbles = (codes.to(torch.int16) & 0x0F).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`.

    Args:
        packed: uint8 tensor (..., n).

    Returns:
        int8 codes (..., 2n) in [-8, 7].
    """
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 needs the uint8 output of pack_int4, got {packed.dtype}")
    signed = packed.view(torch.int8)
    low, high = (signed << 4) >> 4, signed >> 4  # arithmetic shifts sign-extend each nibble
    return torch.stack((low, high), dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- quantization


def quantize_per_token_int8(
    x: torch.Tensor, bits: int = 8, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Dynamic per-token activation quantization to int8 codes for an int8 GEMM.

    Uses :func:`trdq.quantizer.per_token_params` and :func:`~trdq.quantizer.quantize`, so
    ``dequantize_int(*quantize_per_token_int8(x, b, s)) == fake_quant_per_token(x, b, s)``
    exactly for float32 ``x``. Asymmetric codes and zero points are shifted by ``2^(b-1)``
    (128 for 8 bits) from the quantizer's ``[0, 2^b - 1]``; ``codes - zero`` is unchanged.

    Args:
        x: activations (..., K).
        bits: grid width, 2..8.
        symmetric: symmetric grid (no zero point) or asymmetric.

    Returns:
        ``(codes, scale, zero)``: int8 codes (..., K); scale (..., 1) in ``x``'s dtype;
        zero (..., 1) int32 in ``[-2^(b-1), 2^(b-1) - 1]``, or None for symmetric grids.
    """
    p = per_token_params(x, check_bits(bits), symmetric)
    q = quantize(x, p)  # float codes in x's dtype
    if p.zero is None:
        return q.to(torch.int8), p.scale, None
    offset = 2 ** (bits - 1)
    return (q - offset).to(torch.int8), p.scale, (p.zero - offset).to(torch.int32)


def quantize_weight_int8(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Static symmetric per-output-channel weight codes, as :func:`fake_quant_weight` rounds them.

    Args:
        w: weight (N, K).
        bits: grid width, 2..8 (pack 2..4-bit codes with :func:`pack_int4`).

    Returns:
        ``(codes, scale)``: int8 codes (N, K) and scale (N, 1) in ``w``'s dtype.
    """
    p = per_channel_params(w, check_bits(bits), symmetric=True)
    return quantize(w, p).to(torch.int8), p.scale


def dequantize_int(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
    """Real values ``(codes - zero) * scale`` in ``scale``'s dtype (zero None: ``codes * scale``)."""
    q = codes.to(scale.dtype)
    return (q - zero.to(scale.dtype)) * scale if zero is not None else q * scale


def weight_rowsum(w_codes: torch.Tensor) -> torch.Tensor:
    """``w_codes.sum(1)`` as int32 (N,): precompute once for the zero-point correction."""
    return w_codes.sum(1, dtype=torch.int32)


# ----------------------------------------------------------------------------- int8 GEMM


def _check_int_mm_args(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise ValueError(f"int_mm needs int8 operands, got {a.dtype} and {b.dtype}; quantize them first")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int_mm needs (M, K) @ (K, N), got {tuple(a.shape)} @ {tuple(b.shape)}")
    if a.shape[1] > MAX_K:
        raise ValueError(f"K={a.shape[1]} overflows the int32 accumulator; split K into chunks of {MAX_K}")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 matrix product ``a @ b`` with int32 accumulation, via ``torch._int_mm``.

    Operands are zero-padded to the shape rules of their device (:data:`INT_MM_CONSTRAINTS`)
    and the result sliced back, so any M, K, N >= 1 works. ``b`` is padded through its
    transpose so a column-major ``w_codes.T`` view stays column-major, as cuBLAS prefers.

    Args:
        a: int8 (M, K).
        b: int8 (K, N), K <= :data:`MAX_K`.

    Returns:
        int32 (M, N).
    """
    _check_int_mm_args(a, b)
    (m, k), n = a.shape, b.shape[1]
    min_m, k_mult, n_mult = INT_MM_CONSTRAINTS.get(a.device.type, (1, 1, 1))
    pm, pk, pn = max(m, min_m) - m, _round_up(k, k_mult) - k, _round_up(n, n_mult) - n
    if pm or pk:
        a = F.pad(a, (0, pk, 0, pm))
    if pk or pn:
        b = F.pad(b.T, (0, pk, 0, pn)).T
    return torch._int_mm(a, b)[:m, :n]


def int_mm_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`int_mm` in float64, exact here: every partial sum is an integer below 2^53."""
    _check_int_mm_args(a, b)
    return (a.double() @ b.double()).to(torch.int32)


def exact_fp32_chunk(max_abs_b: int, max_abs_a: int = 128) -> int:
    """The longest K over which an fp32 GEMM of integer operands bounded by ``max_abs_a`` and
    ``max_abs_b`` stays exact: every partial sum is an integer below 2^24, fp32's last exact one."""
    return max(1, (2**24 - 1) // max(1, max_abs_a * max_abs_b))


def int_mm_fp32(a: torch.Tensor, b: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``a @ b`` for int8 operands through fp32 GEMMs, for CPUs where ``torch._int_mm`` has no fast
    kernel (it falls back to a plain loop without VNNI, some 70x slower than fp32).

    K is split into chunks of at most ``chunk`` (default :func:`exact_fp32_chunk` of the operands'
    8-bit bound), so each chunk's product is exact; the chunks' sums are added in fp32, which
    rounds like the float32 epilogue of :func:`int8_linear` does (one rounding per chunk).

    Args:
        a: int8 (M, K).
        b: int8 (K, N).
        chunk: K per exact fp32 GEMM; pass :func:`exact_fp32_chunk` of the weight codes' bound to
            take fewer, longer chunks (4-bit codes need no split below K = 16,384).

    Returns:
        float32 (M, N) holding the integer results (exact while below 2^24 in magnitude).
    """
    _check_int_mm_args(a, b)
    k = a.shape[1]
    pieces = -(-k // (chunk or exact_fp32_chunk(128)))
    chunk = -(-k // pieces)  # equal pieces: a short last GEMM runs far below peak
    af, bf = a.float(), b.float()
    acc = af[:, :chunk] @ bf[:chunk]
    for i in range(chunk, k, chunk):
        acc += af[:, i:i + chunk] @ bf[i:i + chunk]
    return acc


def fbgemm_prepack(w_codes: torch.Tensor):
    """fbgemm's packed form of int8 weight codes (N, K), scale 1, for :func:`int_mm_fbgemm`.

    Exact only for codes of at most 7 bits (:data:`trdq.cpu.FBGEMM_MAX_W_BITS`): without VNNI,
    fbgemm adds pairs of unsigned-8-bit x int8 products in saturating int16.
    """
    n = w_codes.shape[0]
    with warnings.catch_warnings():  # torch calls quantized tensors deprecated; fbgemm's op takes only them
        warnings.simplefilter("ignore", UserWarning)
        q = torch._make_per_channel_quantized_tensor(w_codes.to(torch.int8).contiguous(),
                                                     torch.ones(n, dtype=torch.double),
                                                     torch.zeros(n, dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(q, None)


def int_mm_fbgemm(a: torch.Tensor, packed) -> torch.Tensor:
    """``a @ w_codes.T`` for int8 ``a`` (M, K) and :func:`fbgemm_prepack` ``(w_codes)``, through
    fbgemm's int8 kernel (AVX2 and up): ``a`` goes in as unsigned codes ``a + 128`` with zero point
    128, so fbgemm's int32 accumulator is exactly ``a @ w_codes.T``; it returns that as float32."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(a.float(), 1.0, 128, packed)


GEMMS = ("int_mm", "fbgemm", "fp32")  # the int8 GEMMs int8_linear runs (see trdq.cpu.int8_gemm)
INT8_GEMM = "trdq::int8_gemm"  # profiler label of the fbgemm and fp32 int8 GEMMs


def int_gemm(a: torch.Tensor, w_codes: torch.Tensor, gemm: str = "int_mm", prepared=None) -> torch.Tensor:
    """``a @ w_codes.T`` for int8 activations (M, K) and weight codes (N, K), by ``gemm``.

    Args:
        gemm: ``"int_mm"`` (int32 result), ``"fbgemm"`` (``prepared`` is :func:`fbgemm_prepack`
            of ``w_codes``) or ``"fp32"`` (``prepared`` is the K chunk, or None); see :data:`GEMMS`.

    Returns:
        (M, N): int32 for ``int_mm``, float32 holding the same integers otherwise.
    """
    if gemm == "int_mm":
        return int_mm(a, w_codes.T)
    if gemm not in GEMMS:
        raise ValueError(f"unknown int8 GEMM {gemm!r}; choose one of {', '.join(GEMMS)}")
    with torch.profiler.record_function(INT8_GEMM):  # the benchmark counts it with torch._int_mm
        if gemm == "fbgemm":
            return int_mm_fbgemm(a, fbgemm_prepack(w_codes) if prepared is None else prepared)
        return int_mm_fp32(a, w_codes.T, prepared)


# ----------------------------------------------------------------------------- W8A8 / W4A8 linear


def int8_linear(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    w_codes: torch.Tensor | None,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    w_rowsum: torch.Tensor | None = None,
    gemm: str = "int_mm",
    prepared=None,
) -> torch.Tensor:
    """Real integer linear ``((x_codes - x_zero) * x_scale) @ (w_codes * w_scale).T + bias``.

    One int8 GEMM gives ``x_codes @ w_codes.T`` in int32; the zero point is removed in integers
    as ``x_zero * w_codes.sum(1)``; one float32 rescale by ``x_scale * w_scale.T`` follows.

    Args:
        x_codes: int8 activation codes (..., K), e.g. from :func:`quantize_per_token_int8`.
        x_scale: per-token scale (..., 1).
        x_zero: per-token integer zero point (..., 1), or None for symmetric activations.
        w_codes: int8 symmetric weight codes (N, K) (None for ``gemm="fbgemm"``, which multiplies
            its ``prepared`` copy; then ``w_rowsum`` is needed for asymmetric activations).
        w_scale: per-output-channel scale (N, 1) as :func:`per_channel_params` gives; (N,) works.
        bias: (N,) or None.
        out_dtype: dtype of the result.
        w_rowsum: precomputed :func:`weight_rowsum` (N,) int32; computed here when None.
        gemm, prepared: which int8 GEMM runs and its prepared weight (see :func:`int_gemm`).

    Returns:
        (..., N) in ``out_dtype``.
    """
    lead, n, k = x_codes.shape[:-1], w_scale.shape[0], x_codes.shape[-1]
    acc = int_gemm(x_codes.reshape(-1, k), w_codes, gemm, prepared)  # (M, N) int32, or float32 integers
    if x_zero is not None and w_rowsum is None:
        w_rowsum = weight_rowsum(w_codes)
    return int8_epilogue(acc, x_scale, x_zero, w_rowsum, w_scale, bias, out_dtype).reshape(*lead, n)


def int8_epilogue(acc: torch.Tensor, x_scale: torch.Tensor, x_zero: torch.Tensor | None,
                  w_rowsum: torch.Tensor | None, w_scale: torch.Tensor, bias: torch.Tensor | None,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """What follows the int8 GEMM in :func:`int8_linear`: the zero point removed as
    ``x_zero * w_rowsum``, one rescale by ``x_scale * w_scale.T``, the bias; acc (M, N) int32 or
    float32 integers, x_scale/x_zero (M, 1) (any leading shape flattening to M) -> (M, N)."""
    n = w_scale.shape[0]
    if x_zero is not None:
        acc = acc - x_zero.reshape(-1, 1).to(acc.dtype) * w_rowsum.reshape(1, n).to(acc.dtype)
    scale = x_scale.reshape(-1, 1).float() * w_scale.reshape(1, n).float()  # (M, N)
    y = acc.float() * scale
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def int8_linear_ref(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`int8_linear` as dequantize, then a float64 matmul (same arguments)."""
    x = dequantize_int(x_codes, x_scale.double(), x_zero)
    w = dequantize_int(w_codes, w_scale.double().reshape(-1, 1))
    y = x @ w.T
    if bias is not None:
        y = y + bias.double()
    return y.to(out_dtype)


def int4_linear(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    w_rowsum: torch.Tensor | None = None,
) -> torch.Tensor:
    """W4A8 linear: :func:`int8_linear` with a packed 4-bit weight unpacked at call time.

    Memory holds half a byte per weight; the product still runs in the int8 GEMM.

    Args:
        w_packed: uint8 (N, K // 2) from :func:`pack_int4` of 4-bit symmetric codes in [-7, 7].
        Others: as :func:`int8_linear`.

    Returns:
        (..., N) in ``out_dtype``.
    """
    w_codes = unpack_int4(w_packed)
    return int8_linear(x_codes, x_scale, x_zero, w_codes, w_scale, bias, out_dtype, w_rowsum)


def int4_linear_ref(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`int4_linear` as unpack, dequantize, float64 matmul."""
    return int8_linear_ref(x_codes, x_scale, x_zero, unpack_int4(w_packed), w_scale, bias, out_dtype)


# ----------------------------------------------------------------------------- online rotation


def _check_power_of_two(n: int) -> None:
    if n < 1 or n & (n - 1):
        raise ValueError(
            f"fwht needs a power-of-two last dim, got {n}; use block_diag_apply with Hadamard "
            "blocks of a power-of-two size that divides the width"
        )


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh-Hadamard transform along the last dim: ``x @ H / sqrt(n)``.

    ``H`` is the Sylvester Hadamard (``H_2n = [[H_n, H_n], [H_n, -H_n]]``), the same matrix as
    :func:`trdq.rotation.hadamard` for powers of two; it is symmetric, so ``fwht(fwht(x)) == x``.
    O(n log n) butterflies; half-precision inputs are transformed in float32 and cast back once.

    Args:
        x: (..., n) with n a power of two.

    Returns:
        (..., n) in ``x``'s dtype.
    """
    n = x.shape[-1]
    _check_power_of_two(n)
    y = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(-1, n)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)  # pairs (i, i + h) inside each block of 2h
        a, b = y[:, :, 0], y[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return (y.reshape(x.shape) * n**-0.5).to(x.dtype)


def sylvester_hadamard(n: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
    """Dense orthonormal Sylvester Hadamard (n, n), n a power of two."""
    _check_power_of_two(n)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(h2, h)
    return (h / n**0.5).to(dtype=dtype, device=device)


def fwht_ref(x: torch.Tensor) -> torch.Tensor:
    """:func:`fwht` as a dense matmul ``x @ H`` in ``x``'s dtype."""
    return x @ sylvester_hadamard(x.shape[-1], x.dtype, x.device)


def _check_blocks(x: torch.Tensor, blocks: torch.Tensor) -> None:
    if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
        raise ValueError(f"blocks must be (num_blocks, b, b), got {tuple(blocks.shape)}")
    if blocks.shape[0] * blocks.shape[1] != x.shape[-1]:
        raise ValueError(
            f"{blocks.shape[0]} blocks of size {blocks.shape[1]} do not cover width {x.shape[-1]}; "
            "num_blocks * b must equal the last dim of x"
        )


def block_diag_apply(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``x @ block_diag(*blocks)`` as one batched matmul, without the dense (n, n) matrix.

    Args:
        x: (..., n).
        blocks: (num_blocks, b, b) with ``num_blocks * b == n``; cast to ``x``'s dtype and device.

    Returns:
        (..., n) in ``x``'s dtype.
    """
    _check_blocks(x, blocks)
    nb, b = blocks.shape[:2]
    xb = x.reshape(-1, nb, b).transpose(0, 1)  # (nb, M, b)
    y = torch.bmm(xb, blocks.to(dtype=x.dtype, device=x.device))  # (nb, M, b)
    return y.transpose(0, 1).reshape(x.shape)


def block_diag_apply_ref(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """:func:`block_diag_apply` with the dense ``torch.block_diag`` matrix."""
    _check_blocks(x, blocks)
    return x @ torch.block_diag(*blocks).to(dtype=x.dtype, device=x.device)


# ----------------------------------------------------------------------------- int8 attention scores


def smooth_keys(k: torch.Tensor) -> torch.Tensor:
    """Keys minus their mean over tokens (dim -2).

    Subtracting one vector ``m`` from every key shifts all scores of a query row by the same
    ``q . m``, which softmax cancels; what goes is the offset the keys share, which would otherwise
    stretch every key's quantization range.
    """
    return k - k.mean(dim=-2, keepdim=True)


def quantize_qk(q: torch.Tensor, k: torch.Tensor, bits: int = 8
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric per-token int8 codes of queries and smoothed keys (one scale per token and head).

    Args:
        q: queries (..., Lq, d); k: keys (..., Lk, d); any float dtype (quantized in float32).

    Returns:
        ``(q_codes, q_scale, k_codes, k_scale)``: int8 codes (..., L, d) and float32 scales (..., L, 1).
    """
    q_codes, q_scale, _ = quantize_per_token_int8(q.float(), bits, symmetric=True)
    k_codes, k_scale, _ = quantize_per_token_int8(smooth_keys(k.float()), bits, symmetric=True)
    return q_codes, q_scale, k_codes, k_scale


def int_bmm(a: torch.Tensor, b: torch.Tensor, gemm: str = "int_mm") -> torch.Tensor:
    """``a @ b^T`` over leading batch dims for int8 ``a`` (..., M, K) and ``b`` (..., N, K), exact.

    Args:
        gemm: ``"int_mm"`` (``torch._int_mm`` per batch entry, int32 accumulation) or ``"fp32"``
            (batched fp32 matmuls of the codes over K chunks of :func:`exact_fp32_chunk`, each exact).

    Returns:
        float32 (..., M, N) holding the integer products.
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise ValueError(f"int_bmm needs int8 operands, got {a.dtype} and {b.dtype}; quantize them first")
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"int_bmm needs (..., M, K) and (..., N, K) with the same batch dims and K, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if gemm == "int_mm":
        a2, b2 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
        out = torch.stack([int_mm(x, y.T) for x, y in zip(a2, b2)]).float()
        return out.reshape(*a.shape[:-1], b.shape[-2])
    if gemm != "fp32":
        raise ValueError(f"int_bmm runs the 'int_mm' or 'fp32' GEMM, got {gemm!r}")
    k, chunk = a.shape[-1], exact_fp32_chunk(128)
    with torch.profiler.record_function(INT8_GEMM):
        af, bt = a.float(), b.float().transpose(-1, -2)
        acc = af[..., :chunk] @ bt[..., :chunk, :]
        for i in range(chunk, k, chunk):
            acc += af[..., i:i + chunk] @ bt[..., i:i + chunk, :]
    return acc


def quantized_scores(q: torch.Tensor, k: torch.Tensor, scale: float, bits: int = 8,
                     gemm: str = "int_mm") -> torch.Tensor:
    """Attention scores ``scale * Q K^T`` from int8 queries and smoothed keys: the codes' product
    exactly in integers (:func:`int_bmm`), rescaled once per (query, key) pair in float32.

    The scores differ from the float ones by a per-query-row constant (the key mean), which the
    softmax that follows cancels.

    Returns:
        float32 (..., Lq, Lk).
    """
    q_codes, q_scale, k_codes, k_scale = quantize_qk(q, k, bits)
    return int_bmm(q_codes, k_codes, gemm) * (q_scale * scale) * k_scale.transpose(-1, -2)


def quantized_scores_ref(q: torch.Tensor, k: torch.Tensor, scale: float, bits: int = 8) -> torch.Tensor:
    """:func:`quantized_scores` as fake quantization: the same codes, dequantized and multiplied in
    float32 (the simulated path)."""
    q_codes, q_scale, k_codes, k_scale = quantize_qk(q, k, bits)
    return (q_codes.float() * q_scale) @ (k_codes.float() * k_scale).transpose(-1, -2) * scale
