"""What this CPU runs fast, read once per process, and the execution choices that follow from it.

CPUs differ in the two things the real integer path leans on. Where the CPU has int8 dot-product
instructions (AVX-512 VNNI, AVX-VNNI, AMX), ``torch._int_mm`` runs on oneDNN and is faster than
an fp32 GEMM; where it has none (AVX2-only x86, many laptops and Spaces), ``torch._int_mm`` falls
back to a plain loop some 70x slower than fp32. Likewise bf16 matmuls are native only with
AVX512-BF16 or AMX; elsewhere a bf16 model runs over 100x slower than fp32. So the dtype outside
the integer layers and the int8 GEMM are chosen per machine (:func:`float_dtype`,
:func:`int8_gemm`), and every timed result names the class and kernel that ran
(:meth:`CPUInfo.describe`).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# fbgemm's AVX2 int8 kernel multiplies unsigned 8-bit activations by signed weights and adds
# pairs of products in saturating int16: 255 * (|w_2j| + |w_2j+1|) must stay below 2^15, which
# holds for any weight of at most 7 bits (|w| <= 63). 8-bit weights would saturate.
FBGEMM_MAX_W_BITS = 7


@dataclass(frozen=True)
class CPUInfo:
    """The CPU's name and the instruction sets that decide the fast paths.

    Attributes:
        name: the model name (``/proc/cpuinfo``'s "model name", else ``platform.processor()``).
        isa: torch's own reading, ``torch.backends.cpu.get_cpu_capability()`` ("AVX512", "AVX2",
            "DEFAULT", ...).
        flags: the CPU's feature flags as Linux names them (empty where they cannot be read).
        machine: ``platform.machine()`` ("x86_64", "arm64", ...).
    """

    name: str
    isa: str
    flags: frozenset[str]
    machine: str = "x86_64"

    @property
    def int8_dot(self) -> bool:
        """Native int8 dot products (VNNI or AMX), which ``torch._int_mm`` uses on the CPU."""
        return any(f in self.flags for f in INT8_DOT_FLAGS)

    @property
    def native_bf16(self) -> bool:
        """Native bf16 arithmetic (AVX512-BF16 or AMX)."""
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def cpu_class(self) -> str:
        """A short name of what matters here, e.g. "AVX-512 VNNI + BF16" or "AVX2 (no VNNI, no BF16)"."""
        if self.machine not in ("x86_64", "AMD64", "i386", "i686"):
            return f"{self.machine} ({self.isa})"
        if self.int8_dot:
            vnni = "AMX" if "amx_int8" in self.flags else "AVX-512 VNNI" if "avx512_vnni" in self.flags else "AVX-VNNI"
            return f"{vnni} + BF16" if self.native_bf16 else f"{vnni} (no BF16)"
        return f"{self.isa} (no VNNI, no BF16)" if not self.native_bf16 else f"{self.isa} + BF16 (no VNNI)"

    def describe(self) -> dict:
        """What a benchmark record or an app label says of the machine."""
        return {"cpu": self.name, "cpu_class": self.cpu_class, "isa": self.isa,
                "int8_dot": self.int8_dot, "native_bf16": self.native_bf16}


def _linux_cpuinfo() -> tuple[str, frozenset[str]]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return "", frozenset()
    name, flags = "", frozenset()
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name, flags


@functools.cache
def cpu_info() -> CPUInfo:
    """This machine's :class:`CPUInfo`, read once per process."""
    name, flags = _linux_cpuinfo()
    return CPUInfo(name=name or platform.processor() or "unknown CPU",
                   isa=torch.backends.cpu.get_cpu_capability(), flags=flags, machine=platform.machine())


def float_dtype(device: str | torch.device = "cpu", info: CPUInfo | None = None) -> torch.dtype:
    """The dtype to run the floating-point parts of a real integer model in: bf16 on a GPU or on a
    CPU with native bf16, float32 elsewhere (bf16 emulated in software is far slower than fp32)."""
    if torch.device(device).type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if (info or cpu_info()).native_bf16 else torch.float32


def fbgemm_available() -> bool:
    """Whether this torch build has fbgemm's int8 linear (x86 builds do)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32  # noqa: B018 (a lookup)
    except (AttributeError, RuntimeError):
        return False
    return True


def int8_gemm(w_bits: int, device: str | torch.device = "cpu", info: CPUInfo | None = None) -> str:
    """The int8 GEMM a real integer layer with ``w_bits``-bit weights uses here (a name from
    :data:`trdq.kernels.GEMMS`):

    - ``"int_mm"``: ``torch._int_mm`` (GPUs, and CPUs with VNNI or AMX);
    - ``"fbgemm"``: fbgemm's int8 kernel, on x86 CPUs without VNNI for weights of at most
      :data:`FBGEMM_MAX_W_BITS` bits, where it is exact and about 2x faster than fp32;
    - ``"fp32"``: the int8 codes multiplied by an fp32 GEMM in chunks of K small enough that every
      partial sum is an exact integer (8-bit weights on CPUs without VNNI, and CPUs without fbgemm).
    """
    if torch.device(device).type != "cpu":
        return "int_mm"
    info = info or cpu_info()
    if info.int8_dot:
        return "int_mm"
    if w_bits <= FBGEMM_MAX_W_BITS and fbgemm_available():
        return "fbgemm"
    return "fp32"


def attention_gemm(device: str | torch.device = "cpu", info: CPUInfo | None = None) -> str:
    """The int8 GEMM of quantized attention scores here (:func:`trdq.kernels.int_bmm`): ``torch._int_mm``
    on GPUs and on CPUs with VNNI or AMX, else fp32 GEMMs of the codes over exact K chunks (fbgemm
    takes prepacked weights, and both operands of ``Q K^T`` change at every call)."""
    if torch.device(device).type != "cpu" or (info or cpu_info()).int8_dot:
        return "int_mm"
    return "fp32"
