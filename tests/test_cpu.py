"""trdq.cpu: the machine's class and the execution choices that follow from it."""

import pytest
import torch

from trdq import cpu, kernels
from trdq.cpu import CPUInfo

AVX2 = CPUInfo("AMD EPYC", "AVX2", frozenset({"avx2", "fma"}))
VNNI_BF16 = CPUInfo("Xeon", "AVX512", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
AMX = CPUInfo("Xeon", "AVX512", frozenset({"avx512f", "avx512_vnni", "amx_int8", "amx_bf16"}))
AVX_VNNI = CPUInfo("Core", "AVX2", frozenset({"avx2", "avx_vnni"}))
ARM = CPUInfo("Apple M2", "DEFAULT", frozenset(), machine="arm64")


@pytest.mark.parametrize("info, cls, dtype", [
    (AVX2, "AVX2 (no VNNI, no BF16)", torch.float32),
    (VNNI_BF16, "AVX-512 VNNI + BF16", torch.bfloat16),
    (AMX, "AMX + BF16", torch.bfloat16),
    (AVX_VNNI, "AVX-VNNI (no BF16)", torch.float32),
    (ARM, "arm64 (DEFAULT)", torch.float32),
])
def test_class_and_float_dtype_follow_the_flags(info, cls, dtype):
    assert info.cpu_class == cls
    assert cpu.float_dtype("cpu", info) == dtype
    assert cpu.float_dtype("cuda", info) == torch.bfloat16  # GPUs run bf16 natively
    assert info.describe()["cpu_class"] == cls


def test_int8_gemm_is_int_mm_only_with_int8_dot_products():
    for info in (VNNI_BF16, AMX, AVX_VNNI):
        assert cpu.int8_gemm(8, "cpu", info) == cpu.int8_gemm(4, "cpu", info) == "int_mm"
    fbgemm = "fbgemm" if cpu.fbgemm_available() else "fp32"
    # without VNNI: fbgemm where it is exact (weights of 7 bits or fewer), fp32 chunks for 8 bits
    assert [cpu.int8_gemm(b, "cpu", AVX2) for b in (2, 4, 7, 8)] == [fbgemm] * 3 + ["fp32"]
    assert cpu.int8_gemm(8, "cuda", AVX2) == "int_mm"


def test_this_machine_is_read_once_and_agrees_with_torch():
    info = cpu.cpu_info()
    assert info is cpu.cpu_info()
    assert info.isa == torch.backends.cpu.get_cpu_capability()
    assert cpu.int8_gemm(8) in kernels.GEMMS and cpu.int8_gemm(4) in kernels.GEMMS
