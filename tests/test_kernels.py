"""Real integer kernels: exactness against their *_ref twins and against the simulated path."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from trdq import cpu, kernels
from trdq.kernels import (
    block_diag_apply,
    block_diag_apply_ref,
    dequantize_int,
    exact_fp32_chunk,
    fbgemm_prepack,
    fwht,
    fwht_ref,
    int4_linear,
    int4_linear_ref,
    int8_linear,
    int8_linear_ref,
    int_gemm,
    int_mm,
    int_mm_ref,
    pack_int4,
    quantize_per_token_int8,
    quantize_weight_int8,
    sylvester_hadamard,
    unpack_int4,
    weight_rowsum,
)
from trdq.quantizer import fake_quant_per_token, fake_quant_weight
from trdq.rotation import hadamard, random_hadamard

needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _activations(shape, seed=0):
    """Gaussian activations with a few outlier channels, as in a DiT block."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    x[..., :3] *= 20.0
    return x + 0.5  # off-centre, so asymmetric grids have a non-trivial zero point


def _int8(shape, lo=-128, hi=127, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)


# ----------------------------------------------------------------------------- int4 packing


def test_pack_int4_round_trip_is_exact_over_all_codes():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)  # (3, 32): every pair position
    codes = torch.cat([codes, codes.flip(-1)], dim=-1)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 32)
    assert torch.equal(unpack_int4(packed), codes)


def test_pack_int4_byte_layout_low_nibble_first():
    packed = pack_int4(torch.tensor([1, -2, -8, 7], dtype=torch.int8))
    assert packed.tolist() == [0xE1, 0x78]


@pytest.mark.parametrize(
    ("codes", "match"),
    [
        (torch.tensor([0, 8], dtype=torch.int8), r"\[-8, 7\].*bits <= 4"),
        (torch.tensor([-9, 0], dtype=torch.int8), r"\[-8, 7\]"),
        (torch.zeros(2, 3, dtype=torch.int8), "even last dim"),
        (torch.zeros(4), "integer codes"),
    ],
)
def test_pack_int4_rejects_bad_codes_with_a_fix(codes, match):
    with pytest.raises(ValueError, match=match):
        pack_int4(codes)


def test_unpack_int4_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        unpack_int4(torch.zeros(4, dtype=torch.int8))


# ----------------------------------------------------------------------------- quantization


@pytest.mark.parametrize(("bits", "symmetric"), [(8, False), (8, True), (4, False), (4, True), (2, False)])
def test_per_token_codes_dequantize_to_fake_quant_bit_for_bit(bits, symmetric):
    x = _activations((2, 5, 72))
    codes, scale, zero = quantize_per_token_int8(x, bits, symmetric)
    assert codes.dtype == torch.int8 and scale.shape == (2, 5, 1)
    assert torch.equal(dequantize_int(codes, scale, zero), fake_quant_per_token(x, bits, symmetric))
    half = 2 ** (bits - 1)
    if symmetric:
        assert zero is None and codes.abs().max() <= half - 1
    else:
        assert zero.dtype == torch.int32 and zero.shape == (2, 5, 1)
        assert codes.min() >= -half and codes.max() <= half - 1
        assert zero.min() >= -half and zero.max() <= half - 1


def test_asymmetric_8bit_codes_use_the_full_int8_range():
    codes, _, _ = quantize_per_token_int8(_activations((4, 64)), 8, symmetric=False)
    assert int(codes.min()) == -128 and int(codes.max()) == 127


def test_bits_out_of_range_raise():
    with pytest.raises(ValueError, match="2..8"):
        quantize_per_token_int8(torch.randn(2, 8), bits=9)


def test_weight_codes_dequantize_to_fake_quant_weight():
    w = torch.randn(48, 72, generator=torch.Generator().manual_seed(1))
    for bits in (8, 4):
        codes, scale = quantize_weight_int8(w, bits)
        assert scale.shape == (48, 1) and codes.abs().max() <= 2 ** (bits - 1) - 1
        assert torch.equal(dequantize_int(codes, scale), fake_quant_weight(w, bits))


# ----------------------------------------------------------------------------- int8 GEMM


@pytest.mark.parametrize(("m", "k", "n"), list(itertools.product((1, 3, 17, 33), (5, 72, 130), (7, 64, 96))))
def test_int_mm_is_exact_on_odd_shapes(m, k, n):
    a, b = _int8((m, k), seed=m), _int8((k, n), seed=k + n)
    out = int_mm(a, b)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out, int_mm_ref(a, b))
    assert torch.equal(out.long(), a.long() @ b.long())


def test_int_mm_extreme_codes_do_not_saturate():
    k = 2048  # -128 * -128 * k = 2^25: far beyond int16, exact in int32
    a, b = torch.full((3, k), -128, dtype=torch.int8), torch.full((k, 5), -128, dtype=torch.int8)
    assert torch.equal(int_mm(a, b), torch.full((3, 5), 128 * 128 * k, dtype=torch.int32))


def test_int_mm_takes_transposed_weight_views():
    a, w = _int8((9, 40), seed=2), _int8((24, 40), seed=3)  # w as a linear layer stores it
    assert torch.equal(int_mm(a, w.T), int_mm_ref(a, w.T))


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_int_mm_without_onednn_is_exact():
    a, b = _int8((5, 72), seed=4), _int8((72, 7), seed=5)
    with torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(int_mm(a, b), int_mm_ref(a, b))


@pytest.mark.parametrize(("m", "k", "n"), [(1, 5, 7), (3, 130, 96), (17, 72, 64), (33, 9, 1)])
def test_int_mm_padding_for_cuda_rules_is_exact_on_cpu(monkeypatch, m, k, n):
    """CUDA's M > 16, K % 8, N % 8 padding, exercised on CPU so it is tested without a GPU."""
    monkeypatch.setitem(kernels.INT_MM_CONSTRAINTS, "cpu", kernels.INT_MM_CONSTRAINTS["cuda"])
    a, b = _int8((m, k), seed=6), _int8((k, n), seed=7)
    assert torch.equal(int_mm(a, b), int_mm_ref(a, b))


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(3, 2), "int8"),
        (torch.zeros(2, 3, dtype=torch.int8), torch.zeros(4, 2, dtype=torch.int8), r"\(M, K\) @ \(K, N\)"),
        (torch.zeros(1, 2, 3, dtype=torch.int8), torch.zeros(3, 2, dtype=torch.int8), r"\(M, K\) @ \(K, N\)"),
    ],
)
def test_int_mm_rejects_bad_operands(a, b, match):
    with pytest.raises(ValueError, match=match):
        int_mm(a, b)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_int_mm_on_cuda_pads_to_cublas_rules(device):
    for m, k, n in [(1, 5, 7), (3, 72, 96), (17, 130, 64), (33, 5, 7)]:
        a, b = _int8((m, k), seed=m).to(device), _int8((k, n), seed=n).to(device)
        assert torch.equal(int_mm(a, b).cpu(), int_mm_ref(a.cpu(), b.cpu()))


# ----------------------------------------------------------------------------- W8A8 / W4A8 linear


def _close(actual, expected, rtol):
    """Max error relative to the output's scale (its largest magnitude)."""
    err = (actual.double() - expected.double()).abs().max()
    return bool(err <= rtol * expected.double().abs().max())


LINEAR_CASES = list(itertools.product((False, True), (False, True), ((2, 5), (1,))))


@pytest.mark.parametrize(("symmetric", "with_bias", "lead"), LINEAR_CASES)
def test_int8_linear_matches_ref_and_simulated_path(symmetric, with_bias, lead):
    gen = torch.Generator().manual_seed(8)
    x, w = _activations((*lead, 72), seed=9), torch.randn(48, 72, generator=gen) * 0.1
    bias = torch.randn(48, generator=gen) if with_bias else None
    x_codes, x_scale, x_zero = quantize_per_token_int8(x, 8, symmetric)
    w_codes, w_scale = quantize_weight_int8(w, 8)

    y = int8_linear(x_codes, x_scale, x_zero, w_codes, w_scale, bias)
    assert y.shape == (*lead, 48) and y.dtype == torch.float32
    assert _close(y, int8_linear_ref(x_codes, x_scale, x_zero, w_codes, w_scale, bias), 1e-5)
    simulated = F.linear(fake_quant_per_token(x, 8, symmetric), fake_quant_weight(w, 8), bias)
    assert _close(y, simulated, 1e-5)


def test_int8_linear_precomputed_rowsum_and_1d_scale_give_the_same_result():
    x_codes, x_scale, x_zero = quantize_per_token_int8(_activations((3, 40)), 8)
    w_codes, w_scale = quantize_weight_int8(torch.randn(16, 40, generator=torch.Generator().manual_seed(2)))
    y = int8_linear(x_codes, x_scale, x_zero, w_codes, w_scale)
    y_pre = int8_linear(x_codes, x_scale, x_zero, w_codes, w_scale.flatten(), w_rowsum=weight_rowsum(w_codes))
    assert torch.equal(y, y_pre)


def test_int8_linear_out_dtype():
    x_codes, x_scale, x_zero = quantize_per_token_int8(_activations((3, 40)), 8)
    w_codes, w_scale = quantize_weight_int8(torch.randn(16, 40, generator=torch.Generator().manual_seed(3)))
    y = int8_linear(x_codes, x_scale, x_zero, w_codes, w_scale, out_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert _close(y, int8_linear_ref(x_codes, x_scale, x_zero, w_codes, w_scale), 2**-8)


@pytest.mark.parametrize(("symmetric", "with_bias", "lead"), LINEAR_CASES)
def test_int4_linear_matches_ref_and_simulated_4bit_weights(symmetric, with_bias, lead):
    gen = torch.Generator().manual_seed(10)
    x, w = _activations((*lead, 72), seed=11), torch.randn(48, 72, generator=gen) * 0.1
    bias = torch.randn(48, generator=gen) if with_bias else None
    x_codes, x_scale, x_zero = quantize_per_token_int8(x, 8, symmetric)
    w_codes, w_scale = quantize_weight_int8(w, 4)
    w_packed = pack_int4(w_codes)
    assert w_packed.shape == (48, 36)

    y = int4_linear(x_codes, x_scale, x_zero, w_packed, w_scale, bias)
    assert y.shape == (*lead, 48)
    assert _close(y, int4_linear_ref(x_codes, x_scale, x_zero, w_packed, w_scale, bias), 1e-5)
    simulated = F.linear(fake_quant_per_token(x, 8, symmetric), fake_quant_weight(w, 4), bias)
    assert _close(y, simulated, 1e-5)


# ----------------------------------------------------------------------------- int8 GEMMs for CPUs without VNNI

needs_fbgemm = pytest.mark.skipif(not cpu.fbgemm_available(), reason="this torch build has no fbgemm")


@pytest.mark.parametrize(("m", "k", "n"), [(1, 5, 7), (33, 1152, 17), (17, 2100, 9)])
def test_fp32_gemm_is_exact_at_the_extreme_codes(m, k, n):
    # every product at +-128 * 127: a single fp32 GEMM over K > 1032 would round; chunks do not
    a = torch.full((m, k), -128, dtype=torch.int8)
    w = torch.full((n, k), 127, dtype=torch.int8)
    assert torch.equal(int_gemm(a, w, "fp32"), int_mm_ref(a, w.T).float())
    a, w = _int8((m, k), seed=1), _int8((n, k), -127, 127, seed=2)
    assert torch.equal(int_gemm(a, w, "fp32"), int_mm_ref(a, w.T).float())


def test_exact_fp32_chunk_keeps_partial_sums_below_2_to_24():
    assert exact_fp32_chunk(127) == 1032 and 1032 * 128 * 127 < 2**24 <= 1033 * 128 * 127
    assert exact_fp32_chunk(7) > 16_000  # 4-bit codes need no split at any width here


@needs_fbgemm
@pytest.mark.parametrize("w_max", [7, 8, 63])
def test_fbgemm_gemm_is_exact_for_weights_up_to_7_bits(w_max):
    # the worst case for fbgemm's saturating int16 pair sums without VNNI: adjacent products of
    # the largest activation (127, seen by fbgemm as 255) and the largest 7-bit weight
    a = torch.full((5, 130), 127, dtype=torch.int8)
    a[:, 1::2] = -128
    w = torch.full((9, 130), w_max, dtype=torch.int8)
    w[:, 1::2] = -w_max
    assert torch.equal(int_gemm(a, w, "fbgemm"), int_mm_ref(a, w.T).float())
    a, w = _int8((17, 72), seed=3), _int8((6, 72), -w_max, w_max, seed=4)
    assert torch.equal(int_gemm(a, w, "fbgemm", fbgemm_prepack(w)), int_mm_ref(a, w.T).float())


@pytest.mark.parametrize("gemm", [pytest.param("fbgemm", marks=needs_fbgemm), "fp32", "int_mm"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int8_linear_is_the_same_with_every_gemm(gemm, symmetric):
    gen = torch.Generator().manual_seed(12)
    x, w = _activations((3, 5, 72), seed=13), torch.randn(48, 72, generator=gen) * 0.1
    bias = torch.randn(48, generator=gen)
    x_codes, x_scale, x_zero = quantize_per_token_int8(x, 8, symmetric)
    w_codes, w_scale = quantize_weight_int8(w, 4)
    y = int8_linear(x_codes, x_scale, x_zero, None if gemm == "fbgemm" else w_codes, w_scale, bias,
                    w_rowsum=weight_rowsum(w_codes), gemm=gemm,
                    prepared=fbgemm_prepack(w_codes) if gemm == "fbgemm" else None)
    assert _close(y, int8_linear_ref(x_codes, x_scale, x_zero, w_codes, w_scale, bias), 1e-6)


def test_int_gemm_rejects_an_unknown_kernel():
    with pytest.raises(ValueError, match="int_mm, fbgemm, fp32"):
        int_gemm(_int8((2, 4)), _int8((3, 4)), "vnni")


# ----------------------------------------------------------------------------- online rotation

# fast-hadamard-transform's rule (STYLE.md): err_fast <= 2 * err_ref + atol against fp64,
# with atol a small multiple of the dtype's eps times the output's scale.
ROTATION_DTYPES = [(torch.float32, 1e-7), (torch.bfloat16, 1e-3)]


def _errors(fast, ref, truth):
    truth = truth.double()
    return (fast.double() - truth).abs().max(), (ref.double() - truth).abs().max(), truth.abs().max()


@pytest.mark.parametrize(("dtype", "atol"), ROTATION_DTYPES)
@pytest.mark.parametrize("n", [1, 2, 64, 256])
def test_fwht_within_twice_the_dense_error(dtype, atol, n):
    x = _activations((3, 4, n), seed=n).to(dtype)
    truth = fwht_ref(x.double())
    err_fast, err_ref, scale = _errors(fwht(x), fwht_ref(x), truth)
    assert fwht(x).dtype == dtype
    assert err_fast <= 2 * err_ref + atol * scale


def test_fwht_is_the_sylvester_hadamard_of_trdq_rotation():
    for n in (2, 8, 64):
        # rotation.hadamard must be Sylvester-ordered for powers of two, or an online fwht would
        # not undo the rotation folded into the weights.
        assert torch.equal(hadamard(n), sylvester_hadamard(n))
        x = _activations((5, n), seed=n).double()
        assert torch.allclose(fwht(x), x @ hadamard(n), rtol=0, atol=1e-12)
        assert torch.allclose(fwht(fwht(x)), x, rtol=0, atol=1e-12)


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two.*block_diag_apply"):
        fwht(torch.randn(2, 72))


def _hadamard_blocks(num_blocks, b):
    return torch.stack([random_hadamard(b, seed=i) for i in range(num_blocks)])


@pytest.mark.parametrize(("dtype", "atol"), ROTATION_DTYPES)
@pytest.mark.parametrize(("num_blocks", "b"), [(3, 24), (9, 8), (1, 64)])
def test_block_diag_apply_within_twice_the_dense_error(dtype, atol, num_blocks, b):
    blocks = _hadamard_blocks(num_blocks, b)  # float64; cast to x's dtype inside
    x = _activations((2, 3, num_blocks * b), seed=b).to(dtype)
    truth = block_diag_apply_ref(x.double(), blocks)
    fast = block_diag_apply(x, blocks)
    err_fast, err_ref, scale = _errors(fast, block_diag_apply_ref(x, blocks), truth)
    assert fast.dtype == dtype and fast.shape == x.shape
    assert err_fast <= 2 * err_ref + atol * scale


def test_block_diag_apply_rejects_blocks_that_do_not_cover_the_width():
    with pytest.raises(ValueError, match="num_blocks \\* b"):
        block_diag_apply(torch.randn(2, 72), _hadamard_blocks(2, 32))


# ----------------------------------------------------------------------------- int8 attention scores


def _sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.double().pow(2).sum() / (x.double() - ref.double()).pow(2).sum()))


def _qkv(seed=0, batch=2, heads=3, lq=40, lk=24, d=16):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, d, generator=gen) for n in (lq, lk, lk))
    return q, k, v


@pytest.mark.parametrize("k_len", [20, 2100])
def test_int_bmm_is_the_exact_product_of_the_codes_on_both_gemms(k_len):
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (2, 3, 5, k_len), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (2, 3, 7, k_len), generator=gen, dtype=torch.int8)
    exact = (a.double() @ b.double().transpose(-1, -2))
    for gemm in ("int_mm", "fp32"):  # 2100 > exact_fp32_chunk(128): the fp32 GEMM splits K
        out = kernels.int_bmm(a, b, gemm)
        assert out.shape == (2, 3, 5, 7) and out.dtype == torch.float32
        assert torch.equal(out.double(), exact), gemm
    with pytest.raises(ValueError, match="int8 operands"):
        kernels.int_bmm(a.float(), b)
    with pytest.raises(ValueError, match="same batch dims"):
        kernels.int_bmm(a, b[:1])
    with pytest.raises(ValueError, match="'int_mm' or 'fp32'"):
        kernels.int_bmm(a, b, "fbgemm")


def test_quantized_scores_match_their_simulated_twin_and_differ_from_float_by_a_row_constant():
    q, k, _ = _qkv()
    real = kernels.quantized_scores(q, k, 0.25, 8, "fp32")
    torch.testing.assert_close(kernels.quantized_scores(q, k, 0.25, 8, "int_mm"), real, rtol=0, atol=0)
    torch.testing.assert_close(kernels.quantized_scores_ref(q, k, 0.25, 8), real, rtol=1e-5, atol=1e-5)
    # the key mean moves every score of a query row by q . mean(k): remove it from both to compare
    centred = (q @ kernels.smooth_keys(k).transpose(-1, -2)) * 0.25
    assert (real - centred).abs().max() < 0.05 * centred.abs().max()
    shift = (q @ k.transpose(-1, -2)) * 0.25 - centred
    assert torch.allclose(shift, shift[..., :1].expand_as(shift), atol=1e-5)  # constant along each row


def test_smoothing_the_keys_keeps_8_bit_attention_close_to_float_under_a_shared_key_offset():
    q, k, v = _qkv(seed=1)
    k = k + 12.0 * torch.randn(16, generator=torch.Generator().manual_seed(3)).abs()  # every key shares a large offset in every channel
    reference = F.scaled_dot_product_attention(q, k, v)
    smoothed = kernels.quantized_scores(q, k, 16 ** -0.5, 8, "fp32").softmax(-1) @ v
    # the same grid without the mean subtracted: the offset stretches every key's range
    q_codes, q_scale, _ = quantize_per_token_int8(q, 8, symmetric=True)
    k_codes, k_scale, _ = quantize_per_token_int8(k, 8, symmetric=True)
    raw = ((dequantize_int(q_codes, q_scale) @ dequantize_int(k_codes, k_scale).transpose(-1, -2))
           * 16 ** -0.5).softmax(-1) @ v
    assert _sqnr_db(reference, smoothed) > 35
    assert _sqnr_db(reference, smoothed) > _sqnr_db(reference, raw) + 10


def test_quantized_attention_error_falls_with_the_bits():
    q, k, v = _qkv(seed=2)
    reference = F.scaled_dot_product_attention(q, k, v)
    sqnr = [_sqnr_db(reference, kernels.quantized_scores(q, k, 0.25, bits, "fp32").softmax(-1) @ v)
            for bits in (4, 6, 8)]
    assert sqnr[0] < sqnr[1] < sqnr[2] and sqnr[2] > 35
