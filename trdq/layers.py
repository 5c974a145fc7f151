"""The simulated quantized linear layer with per-time-group transforms (docs/method.md §3-§4).

For time group g, with smoothing factors ``s_g`` (``Delta_g = diag(s_g)``) and an orthogonal
rotation ``R_g`` (``R1_g P_g R2_g`` or a randomised Hadamard),

    Y = [X Delta_g^-1 R_g] [W Delta_g R_g]^T + b,

both brackets quantized: the weight bracket once per group (per output channel), the activation
bracket per token at every call. Quantization is simulated in floating point ("fake quant"):
the numerics are the method's, the speed and memory are not (see the real integer path).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trdq import cpu, kernels, quantizer
from trdq.rotation import OnlineRotation, Rotation, rotate_rows
from trdq.siblings import SharedInput, shared
from trdq.timegroups import GroupState

EXECUTION = "simulated"
ONLINE_TRANSFORM = "trdq::online_transform"  # profiler label of the real path's activation transforms
_fused_fake_quant = None  # quantizer.fake_quant_per_token compiled, inside fused_fake_quant()


@functools.cache
def _compiled_fake_quant():
    return torch.compile(quantizer.fake_quant_per_token, dynamic=True)


@contextlib.contextmanager
def fused_fake_quant(enabled: bool = True):
    """Within this context, run the simulated layers' per-token activation fake quantization (and
    the alpha_g search's) as one fused loop under ``torch.compile`` (else eagerly, the default).
    The values are the same bit for bit (min/max, one division, round half to even, clamp and one
    product per element, in the same order; a test compares them), in fewer passes over memory,
    after a compilation of a few seconds per bit width. ``python -m trdq eval``
    runs in it; interactive use keeps the eager default, which answers at once."""
    global _fused_fake_quant
    before = _fused_fake_quant
    _fused_fake_quant = _compiled_fake_quant() if enabled else None
    try:
        yield
    finally:
        _fused_fake_quant = before


def fake_quant_activations(x: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """:func:`trdq.quantizer.fake_quant_per_token`, fused within :func:`fused_fake_quant`."""
    return (_fused_fake_quant or quantizer.fake_quant_per_token)(x, bits, symmetric)


@dataclass(frozen=True)
class GroupTransform:
    """The transforms of one layer in one time group; None means "not applied".

    Attributes:
        delta: (C_in,) smoothing factors ``s``.
        rotation: orthogonal (C_in, C_in) transform applied after smoothing, through its factors
            (never as a dense matrix, which would cost C_in^2 memory per layer and group).
        alpha: the smoothing strength that produced ``delta``.
    """

    delta: torch.Tensor | None = None
    rotation: Rotation | None = None
    alpha: float | None = None

    @property
    def kind(self) -> str:
        return {(False, False): "none", (True, False): "smooth", (False, True): "rotate",
                (True, True): "both"}[(self.delta is not None, self.rotation is not None)]

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """``W Delta R`` in float64, (C_out, C_in); rows rotate like activations."""
        w = w.double()
        if self.delta is not None:
            w = w * self.delta.double()
        return self.rotation.apply(w) if self.rotation is not None else w

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """``X Delta^-1 R`` in ``x``'s dtype, (..., C_in)."""
        if self.delta is not None:
            x = x / self.delta.to(x)
        return self.rotation.apply(x) if self.rotation is not None else x


class QuantLinear(nn.Module):
    """A drop-in for ``nn.Linear`` that fake-quantizes with the current time group's transforms.

    Build it with :meth:`from_linear`; every instance of one model shares one :class:`GroupState`.
    """

    def __init__(self, w_codes: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 transforms: list[GroupTransform], a_bits: int, a_symmetric: bool, state: GroupState):
        """Args:
            w_codes: (G, C_out, C_in) int8 symmetric weight codes, one set per time group (for
                grouped weights: (G, C_out, C_in // group_size, group_size)); or, for codes of 4
                bits or fewer, (G, C_out, C_in // 2) uint8 packed two per byte
                (:func:`trdq.kernels.pack_int4`), kept packed (a loaded checkpoint's memory stays
                near its file's) and unpacked by :meth:`codes` where needed.
            w_scale: float64 scales broadcastable against ``w_codes`` (its unpacked shape).
        """
        super().__init__()
        self.packed = w_codes.dtype == torch.uint8
        self.register_buffer("w_codes", w_codes if self.packed else w_codes.to(torch.int8))
        self.register_buffer("w_scale", w_scale.double())
        # (G, C_out, C_in) dequantized weights, made at the first forward: converting to the real
        # integer path never needs them, and for a large model they are the biggest tensors here
        self.register_buffer("weights_fq", None, persistent=False)
        self.out_features = w_codes.shape[1]
        self.in_features = w_codes.shape[2] * (w_codes.shape[3] if w_codes.dim() == 4 else 2 if self.packed else 1)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.transforms = transforms
        self.a_bits, self.a_symmetric = quantizer.check_bits(a_bits, "a_bits"), a_symmetric
        self.state = state
        # set on layers that read one input with one transform (trdq.siblings; shared_inputs=True)
        self.shared_input: SharedInput | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, transforms: list[GroupTransform], w_bits: int, a_bits: int,
                    state: GroupState, w_group_size: int | None = None, a_symmetric: bool = False) -> QuantLinear:
        """Quantize ``linear``'s weight once per group, under that group's transforms."""
        w = linear.weight.detach()
        codes, scales = [], []
        for t in transforms:
            wt = t.weight(w)
            p = quantizer.per_channel_params(wt, w_bits, symmetric=True, group_size=w_group_size)
            if w_group_size is not None:
                wt = wt.reshape(wt.shape[0], -1, w_group_size)
            codes.append(quantizer.quantize(wt, p))
            scales.append(p.scale)
        return cls(torch.stack(codes), torch.stack(scales), linear.bias, transforms, a_bits, a_symmetric, state)

    @property
    def num_groups(self) -> int:
        return len(self.transforms)

    def codes(self) -> torch.Tensor:
        """The int8 weight codes, (G, C_out, C_in) (grouped: (G, C_out, C_in // gs, gs)), unpacked
        if they are stored packed."""
        return kernels.unpack_int4(self.w_codes) if self.packed else self.w_codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C_in) -> (..., C_out)
        g = self.state.group
        if g >= self.num_groups:
            raise RuntimeError(f"time group {g} but this layer was calibrated with {self.num_groups} groups")
        if self.weights_fq is None or self.weights_fq.dtype != x.dtype:
            fq = self.codes().double() * self.w_scale
            self.weights_fq = fq.reshape(fq.shape[0], fq.shape[1], -1).to(x.dtype)  # grouped -> (G, C_out, C_in)
        xq = shared(self.shared_input, x, g, lambda: fake_quant_activations(self.transform_input(x, g), self.a_bits,
                                                                             self.a_symmetric))
        return F.linear(xq, self.weights_fq[g], self.bias)

    def transform_input(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """``x`` under time group ``g``'s transform, as this layer applies it before quantizing."""
        return self.transforms[g].activation(x)

    def extra_repr(self) -> str:
        kinds = ",".join(t.kind for t in self.transforms)
        return (f"in={self.in_features}, out={self.out_features}, a_bits={self.a_bits}, "
                f"groups={self.num_groups} [{kinds}], {EXECUTION}")


@dataclass(frozen=True)
class OnlineTransform:
    """What a real integer layer keeps of one group's :class:`GroupTransform`, in the dtype it
    is applied in (float32, or bf16 for a bf16 model; no float64 copies).

    Attributes:
        delta: the smoothing factors ``s`` (C_in,), or None; None also where they are folded into
            the rotation in a form it reads back (:meth:`OnlineRotation.input_scale`), which
            then holds them once.
        rotation: the prepared rotation factors, with ``Delta^-1`` folded into the first one
            (``Delta^-1 R``, folded in float64 before the cast): activations take one pass fewer.
    """

    delta: torch.Tensor | None
    rotation: OnlineRotation | None
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, t: GroupTransform, dtype: torch.dtype = torch.float32, compact: bool = False) -> OnlineTransform:
        """``t`` prepared in ``dtype``; with ``compact``, DuQuant's block rotations are kept as
        their reflections and rebuilt at every call (see :meth:`trdq.rotation.Rotation.online`)."""
        delta = None if t.delta is None else t.delta.to(dtype)
        if t.rotation is None:
            return cls(delta, None, dtype)
        rotation = t.rotation if t.delta is None else t.rotation.with_input_scale(1 / t.delta.double())
        online = rotation.online(dtype, compact=compact)
        return cls(delta if online.input_scale() is None else None, online, dtype)

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """``W Delta R`` for w (C_out, C_in) in w's dtype: ``(W Delta^2)(Delta^-1 R)`` when the
        smoothing is folded into the rotation (``Delta^-1`` read back from it where it can be, so
        the weights undo exactly the rounded scale the activations get)."""
        if self.rotation is None:
            return w if self.delta is None else w * self.delta.to(w.dtype)
        if self.delta is not None:
            w = w * self.delta.to(w.dtype) ** 2
        elif (scale := self.rotation.input_scale()) is not None:
            w = w / scale.to(w.dtype) ** 2
        return self.rotation.apply(w)

    def apply(self, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """``X Delta^-1 R`` for x (..., C_in), computed and returned in :attr:`dtype`
        (block rotations through ``torch.compile`` if ``compiled``).

        With a rotation, the smoothing is folded into it. Block rotations run channels-first
        (:meth:`OnlineRotation.apply_rows`); on CPU their result is returned as a transposed view,
        which per-token quantization reads in place.
        """
        if self.rotation is None:
            x = x.to(self.dtype)
            return x if self.delta is None else x / self.delta
        if not self.rotation.channel_major:
            return self.rotation.apply(x.to(self.dtype))
        y = self.rotation.apply_rows(x.reshape(-1, x.shape[-1]), compiled).T
        # CPU quantizes the transposed view in place; on a GPU, per-token reads along a strided
        # axis are uncoalesced (H200, 2048 x 4608: 431 us for the layer against 196 us for its
        # parts), so the result is made contiguous there
        return (y if x.device.type == "cpu" else y.contiguous()).reshape(x.shape)

    def map(self, fn) -> OnlineTransform:
        """The same transform with ``fn`` applied to its tensors (see :meth:`IntLinear._apply`)."""
        delta = None if self.delta is None else fn(self.delta)
        rotation = None if self.rotation is None else self.rotation.map(fn)
        dtype = delta.dtype if delta is not None else rotation.dtype if rotation is not None else self.dtype
        return OnlineTransform(delta, rotation, dtype)


def quantized_linear(xt: torch.Tensor, w_store: torch.Tensor, w_scale: torch.Tensor, w_rowsum: torch.Tensor,
                     packed: bool, bias: torch.Tensor | None, a_bits: int, a_symmetric: bool,
                     out_dtype: torch.dtype, gemm: str = "int_mm", prepared=None) -> torch.Tensor:
    """What a real integer layer does after its online transform, as one function: per-token int8
    codes of the transformed activations ``xt`` (computed in float32), the weight codes (unpacked
    when ``packed``), the int8 GEMM ``gemm`` (with its ``prepared`` weight, see
    :func:`trdq.kernels.int_gemm`) and its dequantizing epilogue; (..., C_in) -> (..., C_out)
    in ``out_dtype``. This is what :func:`compiled_quantized_linear` fuses."""
    codes, scale, zero = kernels.quantize_per_token_int8(xt.float(), a_bits, a_symmetric)
    w_codes = kernels.unpack_int4(w_store) if packed else w_store
    return kernels.int8_linear(codes, scale, zero, w_codes, w_scale, bias, out_dtype=out_dtype, w_rowsum=w_rowsum,
                               gemm=gemm, prepared=prepared)


def _float_codes(xt: torch.Tensor, a_bits: int, a_symmetric: bool):
    """Per-token codes of ``xt`` as float32 integers (what fbgemm's op reads), scale and zero."""
    codes, scale, zero = kernels.quantize_per_token_int8(xt.float(), a_bits, a_symmetric)
    return codes.float(), scale, zero


@functools.cache
def compiled_fbgemm_stages():
    """The activation quantization and the epilogue around fbgemm's GEMM, each under
    ``torch.compile``: fbgemm's packed weight is an opaque object compile does not trace, so
    the GEMM stays eager between two fused stages."""
    return torch.compile(_float_codes, dynamic=True), torch.compile(kernels.int8_epilogue, dynamic=True)


def fbgemm_quantized_linear(xt: torch.Tensor, packed_w, w_scale: torch.Tensor, w_rowsum: torch.Tensor,
                            bias: torch.Tensor | None, a_bits: int, a_symmetric: bool, out_dtype: torch.dtype,
                            compiled: bool = False) -> torch.Tensor:
    """:func:`quantized_linear` for the fbgemm GEMM (``packed_w`` from :func:`trdq.kernels.fbgemm_prepack`):
    rows (M, C_in) -> (M, C_out), with the stages around the GEMM compiled if ``compiled``."""
    quantize, epilogue = compiled_fbgemm_stages() if compiled else (_float_codes, kernels.int8_epilogue)
    codes, scale, zero = quantize(xt, a_bits, a_symmetric)
    acc = kernels.int_gemm(codes, None, "fbgemm", packed_w)  # (M, C_out) float32 integers
    return epilogue(acc, scale, zero, w_rowsum, w_scale, bias, out_dtype)


# Largest int32 accumulator (rows x C_out) one CPU call makes. glibc serves blocks above its mmap
# threshold (32 MiB at most) with fresh pages on every call, and faulting them in cost about as
# much as the GEMM itself (2048 x 1152 -> 4608: 21 ms unsplit, 12 ms in two halves, here).
ACC_CHUNK_BYTES = 16 * 2**20


def row_chunk(rows: int, out_features: int, device: torch.device) -> int:
    """Rows per integer GEMM call: all of them on accelerators; on CPU, as many as keep the int32
    accumulator within :data:`ACC_CHUNK_BYTES` (a multiple of 64, per-token quantization makes
    the split exact)."""
    if device.type != "cpu" or rows * out_features * 4 <= ACC_CHUNK_BYTES:
        return max(rows, 1)
    return max(64, ACC_CHUNK_BYTES // (out_features * 4) // 64 * 64)


@functools.cache
def compiled_quantized_linear():
    """:func:`quantized_linear` under ``torch.compile`` (built once per process): the activation
    quantization, the int4 unpacking and the epilogue become a few fused loops around the int8
    GEMM, where eager PyTorch makes several passes over the activations. Every layer and group
    shares it; shapes are traced as dynamic, so a model compiles one graph per layer structure
    (a handful), not one per layer. Block-rotation transforms are compiled separately, with
    static shapes (:func:`trdq.rotation.compiled_rotate_rows`): Inductor's dynamic-shape code for
    their batched matmuls was slower than eager."""
    # one graph per structure (packing, bias, bits, output dtype), all shapes dynamic
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(quantized_linear, dynamic=True)


def rebuilt_codes(master: torch.Tensor, master_scale: torch.Tensor, delta: torch.Tensor | None,
                  inv_delta: torch.Tensor | None, stages: tuple, dtype: torch.dtype,
                  w_bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One group's weight codes rebuilt from an int8 master, as one function (what
    :func:`compiled_rebuilt_codes` fuses): ``Q(W_master Delta^2 (Delta^-1 R))`` per output channel,
    symmetric at ``w_bits``, with ``Delta`` given as ``delta`` or as the ``inv_delta`` a rotation
    folds in (:meth:`OnlineTransform.weight`), the rotation's ``stages`` applied channels-first in
    ``dtype``.

    Returns:
        codes (C_out, C_in) int8, scales (C_out, 1) float32 and code row sums (C_out,) int32, the
        same as the eager rebuild of :meth:`SharedIntLinear._stored`.
    """
    w = master.float() * master_scale
    if delta is not None:
        w = w * delta.float() ** 2
    elif inv_delta is not None:
        w = w / inv_delta.float() ** 2
    wt = rotate_rows(w, stages, dtype).float()  # (C_in, C_out): each output channel is a column
    qmax = 2 ** (w_bits - 1) - 1
    scale = (wt.abs().amax(0) / qmax).clamp_min(quantizer.EPS)
    codes = torch.round(wt / scale).clamp(-qmax, qmax).to(torch.int8).T.contiguous()
    return codes, scale[:, None], codes.sum(1, dtype=torch.int32)


@functools.cache
def compiled_rebuilt_codes():
    """:func:`rebuilt_codes` under ``torch.compile`` with static shapes, built once per process:
    the dequantization, scaling, transposes, per-channel range and quantization around the
    rotation's batched matmuls become a few fused loops (a 1152 x 4608 weight on this 2-core CPU:
    about 2x faster than eager, the same codes). Layers of one shape and rotation structure share
    a graph."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(rebuilt_codes, dynamic=False)


class IntLinear(nn.Module):
    """The real integer twin of :class:`QuantLinear` (docs/method.md §7, deployment ``per-group``).

    Per call: the current group's transform is applied to the activations online (``X Delta^-1``
    then the factored rotation, never a dense (C, C) product), the result is quantized per token
    to int8 codes, and one int8 GEMM with int32 accumulation runs against that group's weight
    codes (:func:`trdq.kernels.int8_linear`). Weights of 4 bits or fewer are stored packed two
    per byte and unpacked at call time, so their memory really is 4-bit. Groups whose weight
    codes are identical share one stored copy.

    Build it with :meth:`from_quant`; its outputs match the simulated layer's up to float32
    rounding (the same codes, a different order of operations).
    """

    execution = "real integer"
    compiled = False  # realize(compile=True) sets it: compiled_quantized_linear(), compiled block rotations
    # DuQuant's block rotations as dense blocks (the fast form) or as reflections rebuilt per call
    # (a few bytes per channel instead of 2 b floats per channel, group and layer; the memory
    # deployments' form)
    compact_rotations = False
    gemm = "int_mm"  # the int8 GEMM (trdq.kernels.GEMMS); realize() picks it for the machine (trdq.cpu.int8_gemm)

    def __init__(self, w_store: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 transforms: list[GroupTransform], copy_of_group: list[int], w_bits: int, a_bits: int,
                 a_symmetric: bool, state: GroupState, in_features: int,
                 transform_dtype: torch.dtype = torch.float32, compact_rotations: bool | None = None):
        """Args:
            w_store: (copies, C_out, C_in) int8 codes, or (copies, C_out, C_in // 2) uint8 packed
                int4 codes when ``w_bits <= 4``.
            w_scale: (copies, C_out, 1) float32 per-channel scales.
            copy_of_group: the stored copy each time group uses.
            transform_dtype: dtype the online transforms are kept and applied in.
            compact_rotations: keep DuQuant's block rotations as reflections (None: the class's
                :attr:`compact_rotations`).
        """
        super().__init__()
        if compact_rotations is not None:
            self.compact_rotations = compact_rotations
        self.register_buffer("w_store", w_store)
        self.register_buffer("w_scale", w_scale.float())
        rowsums = [kernels.weight_rowsum(self._codes(c)) for c in range(w_store.shape[0])]
        self.register_buffer("w_rowsum", torch.stack(rowsums))  # (copies, C_out) int32
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.transforms = [OnlineTransform.of(t, transform_dtype, self.compact_rotations) for t in transforms]
        self.copy_of_group = copy_of_group
        self.prepared: dict = {}  # stored copy -> what the GEMM needs beyond the codes (see _prepare)
        self.w_bits, self.a_bits, self.a_symmetric, self.state = w_bits, a_bits, a_symmetric, state
        self.in_features, self.out_features = in_features, w_scale.shape[1]
        self.shared_input: SharedInput | None = None  # as on QuantLinear

    @property
    def packed(self) -> bool:
        return self.w_store.dtype == torch.uint8

    def _apply(self, fn, recurse=True):
        """``.to(device)`` and friends move the online transforms with the buffers (they live
        in a plain attribute, which ``nn.Module`` would leave behind)."""
        super()._apply(fn, recurse)
        self.transforms = [t.map(fn) for t in self.transforms]
        self.prepared = {}  # made again from the moved codes
        if self.shared_input is not None:  # nothing computed before the move is kept
            self.shared_input.clear()
        return self

    def use_gemm(self, gemm: str) -> IntLinear:
        """Run the int8 GEMM ``gemm`` (a name of :data:`trdq.kernels.GEMMS`) from now on."""
        if gemm not in kernels.GEMMS:
            raise ValueError(f"unknown int8 GEMM {gemm!r}; choose one of {', '.join(kernels.GEMMS)}")
        if gemm == "fbgemm" and self.w_bits > cpu.FBGEMM_MAX_W_BITS:
            raise ValueError(f"fbgemm's int8 kernel saturates on {self.w_bits}-bit weights without VNNI; "
                             f"use it for weights of at most {cpu.FBGEMM_MAX_W_BITS} bits, or gemm='fp32'")
        self.gemm, self.prepared = gemm, {}
        return self

    def _prepare(self, copy: int, w_codes: torch.Tensor | None = None):
        """What :attr:`gemm` needs of stored copy ``copy`` besides its codes, made once and kept
        in :attr:`prepared` (fbgemm's packed weight; the exact K chunk of the fp32 GEMM)."""
        if copy not in self.prepared:
            codes = self._codes(copy) if w_codes is None else w_codes
            self.prepared[copy] = (kernels.fbgemm_prepack(codes) if self.gemm == "fbgemm"
                                   else kernels.exact_fp32_chunk(max(1, int(codes.abs().max()))))
        return self.prepared[copy]

    def prepared_bytes(self) -> int:
        """Bytes of the GEMM's own weight copies in :attr:`prepared` (fbgemm packs one int8 copy of
        every stored weight copy it has used), which the tensor buffers do not show."""
        return sum(self.in_features * self.out_features for p in self.prepared.values() if not isinstance(p, int))

    def _codes(self, copy: int) -> torch.Tensor:  # (C_out, C_in) int8
        return kernels.unpack_int4(self.w_store[copy]) if self.packed else self.w_store[copy]

    @classmethod
    def from_quant(cls, layer: QuantLinear, w_bits: int, transform_dtype: torch.dtype = torch.float32,
                   compact_rotations: bool | None = None) -> IntLinear:
        """Store ``layer``'s weight codes for integer execution (transforms in ``transform_dtype``;
        ``compact_rotations`` as in the constructor).

        Raises:
            ValueError: for grouped weights (``w_group_size``).
        """
        if layer.w_codes.dim() != 3:
            raise ValueError("the real integer path quantizes weights per output channel; "
                             "quantize with w_group_size=None")
        copies, copy_of_group = [], []
        for g in range(layer.num_groups):  # (packed codes are equal where the codes are)
            same = next((i for i, h in enumerate(copies) if torch.equal(layer.w_codes[h], layer.w_codes[g])
                         and torch.equal(layer.w_scale[h], layer.w_scale[g])), None)
            if same is None:
                copies.append(g)
                same = len(copies) - 1
            copy_of_group.append(same)
        codes = layer.codes()[copies]  # (copies, C_out, C_in) int8
        store = kernels.pack_int4(codes) if w_bits <= 4 and codes.shape[-1] % 2 == 0 else codes
        return cls(store, layer.w_scale[copies].float(), layer.bias, layer.transforms, copy_of_group, w_bits,
                   layer.a_bits, layer.a_symmetric, layer.state, layer.in_features, transform_dtype, compact_rotations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C_in) -> (..., C_out)
        g = self.state.group
        if g >= len(self.transforms):
            raise RuntimeError(f"time group {g} but this layer was calibrated with {len(self.transforms)} groups")
        with torch.profiler.record_function(ONLINE_TRANSFORM):  # the benchmark sums its time
            xt = shared(self.shared_input, x, g, lambda: self.transform_input(x, g))
        gemm = self.gemm if x.device.type == "cpu" else "int_mm"  # the choice is the CPU's
        bias = None if self.bias is None else self.bias.detach()  # a plain tensor: compile keeps its size dynamic
        stored = self._stored(g)
        prepared = None if gemm == "int_mm" else self._prepare(self.copy_of_group[g])
        rows = xt.reshape(-1, self.in_features)
        step = row_chunk(len(rows), self.out_features, x.device)
        if gemm == "fbgemm":
            _, w_scale, w_rowsum = stored
            out = [fbgemm_quantized_linear(rows[i:i + step], prepared, w_scale, w_rowsum, bias, self.a_bits,
                                           self.a_symmetric, x.dtype, self.compiled)
                   for i in range(0, len(rows), step)]
        else:
            call = compiled_quantized_linear() if self.compiled else quantized_linear
            out = [call(rows[i:i + step], *stored, self.packed, bias, self.a_bits, self.a_symmetric, x.dtype,
                        gemm, prepared) for i in range(0, len(rows), step)]
        return (out[0] if len(out) == 1 else torch.cat(out)).reshape(*x.shape[:-1], self.out_features)

    def transform_input(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """``x`` under time group ``g``'s online transform, as this layer applies it before quantizing."""
        return self.transforms[g].apply(x, self.compiled)

    def _stored(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group ``g``'s stored weight codes (packed when :attr:`packed`), scales (C_out, 1) and
        code row sums (C_out,)."""
        c = self.copy_of_group[g]
        return self.w_store[c], self.w_scale[c], self.w_rowsum[c]

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w_bits={self.w_bits}"
                f"{' packed' if self.packed else ''}, a_bits={self.a_bits}, groups={len(self.transforms)}, "
                f"weight copies={self.w_store.shape[0]}, gemm={self.gemm}, {self.execution}")


class SharedIntLinear(IntLinear):
    """Real integer linear with one stored weight copy (docs/method.md §7, ``shared`` and ``jit``).

    The layer keeps an int8 master of its full-precision weight (per output channel, in the
    original frame) and, when the time group changes, rebuilds that group's weight codes from it
    online: ``Q(W_master Delta_g R_g)`` with the factored rotation. Memory is the master plus the
    active group's codes (packed when 4-bit) instead of one copy per group, and DuQuant's block
    rotations are kept as their reflections (:attr:`compact_rotations`); the price is a rebuild
    at every group switch, the rotation blocks built at every call, and the master's 8-bit
    rounding under the group's codes.

    With ``keep_active=False`` (the ``jit`` deployment) the active codes are built at every call
    and dropped after it: the weights at rest are the master alone, about one int8 copy whatever
    the number of groups, for a rebuild per call instead of per group switch.
    """

    keep_active = True
    compact_rotations = True

    def __init__(self, master: torch.Tensor, master_scale: torch.Tensor, bias: torch.Tensor | None,
                 transforms: list[GroupTransform], w_bits: int, a_bits: int, a_symmetric: bool, state: GroupState,
                 transform_dtype: torch.dtype = torch.float32, compact_rotations: bool | None = None):
        nn.Module.__init__(self)
        if compact_rotations is not None:
            self.compact_rotations = compact_rotations
        self.register_buffer("master", master.to(torch.int8))  # (C_out, C_in)
        self.register_buffer("master_scale", master_scale.float())  # (C_out, 1)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.transforms = [OnlineTransform.of(t, transform_dtype, self.compact_rotations) for t in transforms]
        self.copy_of_group = list(range(len(transforms)))
        self.w_bits, self.a_bits, self.a_symmetric, self.state = w_bits, a_bits, a_symmetric, state
        self.out_features, self.in_features = master.shape
        self.shared_input: SharedInput | None = None
        self._active: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.prepared = {}
        self.register_buffer("w_store", torch.empty(0, dtype=torch.int8), persistent=False)  # the active copy

    @classmethod
    def from_weight(cls, layer: QuantLinear, weight: torch.Tensor, w_bits: int,
                    transform_dtype: torch.dtype = torch.float32, keep_active: bool = True,
                    compact_rotations: bool | None = None) -> SharedIntLinear:
        """Args:
            layer: the simulated layer (for its transforms, bias and activation settings).
            weight: the full-precision weight (C_out, C_in) it was made from.
            transform_dtype: dtype the transforms are kept and applied in (the weight rebuild too).
            keep_active: keep the active group's codes until the group changes (``shared``), or
                build them at every call and drop them after it (``jit``).
            compact_rotations: as in :class:`IntLinear` (None: True).
        """
        p = quantizer.per_channel_params(weight.detach().double(), 8, symmetric=True)
        master = quantizer.quantize(weight.detach().double(), p)
        shared = cls(master, p.scale, layer.bias, layer.transforms, w_bits, layer.a_bits, layer.a_symmetric,
                     layer.state, transform_dtype, compact_rotations)
        shared.keep_active = keep_active
        return shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C_in) -> (..., C_out)
        try:
            return super().forward(x)
        finally:
            if not self.keep_active:  # jit: nothing but the master stays between calls
                self._active, self.prepared = None, {}
                self.w_store = torch.empty(0, dtype=torch.int8, device=self.master.device)

    @property
    def packed(self) -> bool:
        return self.w_bits <= 4 and self.in_features % 2 == 0

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._active = None  # rebuilt where the master now lives
        return self

    def _codes(self, copy: int) -> torch.Tensor:  # (C_out, C_in) int8 of the active group
        return kernels.unpack_int4(self.w_store) if self.packed else self.w_store

    def _stored(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._active is None or self._active[0] != g:
            t = self.transforms[g]
            if self.compiled and t.rotation is not None and t.rotation.channel_major:  # fused around the matmuls
                inv_delta = None if t.delta is not None else t.rotation.input_scale()
                codes, scale, rowsum = compiled_rebuilt_codes()(self.master, self.master_scale, t.delta, inv_delta,
                                                                t.rotation.stages, t.rotation.dtype, self.w_bits)
            else:
                w = t.weight(self.master.float() * self.master_scale)  # (C_out, C_in)
                p = quantizer.per_channel_params(w, self.w_bits, symmetric=True)
                codes = quantizer.quantize(w, p).to(torch.int8)
                scale, rowsum = p.scale, kernels.weight_rowsum(codes)
            self.w_store = kernels.pack_int4(codes) if self.packed else codes
            self._active = (g, scale, rowsum)
            self.prepared = {}  # the GEMM's copy of the previous group's codes
        _, scale, rowsum = self._active
        return self.w_store, scale, rowsum

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w_bits={self.w_bits}"
                f"{' packed' if self.packed else ''}, a_bits={self.a_bits}, groups={len(self.transforms)}, "
                f"one int8 master + {'the active group' if self.keep_active else 'codes built per call'}, "
                f"gemm={self.gemm}, {self.execution}")
