"""Orthogonal transforms that flatten outlier channels (docs/method.md §4); pure maths.

- :func:`hadamard`: normalised Hadamard matrices of order ``2^k * m`` for ``m`` in 1, 2 and the
  orders that Paley's constructions give (12, 20, 28, 36, ...), e.g. 1152 = 36 x 32 and 192 = 12 x 16.
- :func:`random_hadamard`: QuaRot's randomised Hadamard ``diag(signs) H``.
- :func:`greedy_block_rotation`: DuQuant-style block rotation fitted to per-channel abs-maxima
  (:func:`greedy_block_rotations` for several candidates at once); :func:`greedy_block_reflections`
  returns the same rotation as :class:`Reflections`, the pivot channel of each greedy step, from
  which the blocks are rebuilt (a few bytes per block instead of ``b^2`` floats).
- :func:`zigzag_permutation`: deals channels to blocks so each block gets a similar share of outliers.

All matrices are float64 and orthogonal: ``x @ R`` rotates activations (tokens, C) and
``w @ R`` the matching weights (C_out, C), so ``(x R)(w R)^T = x w^T``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from trdq import kernels

DTYPE = torch.float64


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = Legendre symbol of (j - i) mod q, for a prime q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=DTYPE)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(order: int) -> torch.Tensor | None:
    """An unnormalised Hadamard matrix of ``order`` from Paley I or II, or None."""
    q = order - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: H = I + [[0, 1^T], [-1, Q]]
        s = torch.zeros(order, order, dtype=DTYPE)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        return torch.eye(order, dtype=DTYPE) + s
    q = order // 2 - 1
    if order % 2 == 0 and _is_prime(q) and q % 4 == 1:  # Paley II from a symmetric conference matrix
        c = torch.zeros(order // 2, order // 2, dtype=DTYPE)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
        one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=DTYPE)
        zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=DTYPE)
        return torch.kron(c, one) + torch.kron(torch.eye(order // 2, dtype=DTYPE), zero)
    return None


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=DTYPE)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard_factors(n: int) -> tuple[int, int] | None:
    """``(m, 2^k)`` with ``n = m * 2^k`` and a constructible order-``m`` Hadamard, or None."""
    if n < 1:
        return None
    power = n & -n  # largest power of two dividing n
    for k_pow in [power >> i for i in range(power.bit_length())]:  # prefer a small odd part
        m = n // k_pow
        if m in (1, 2) or _paley(m) is not None:
            return m, k_pow
    return None


@functools.lru_cache(maxsize=64)
def hadamard(n: int) -> torch.Tensor:
    """Orthonormal Hadamard matrix of order ``n`` (float64, ``H @ H.T = I``).

    Raises:
        ValueError: if ``n`` is not ``2^k`` times 1, 2 or a Paley order; the message says which
            widths work and suggests a block size.
    """
    factors = hadamard_factors(n)
    if factors is None:
        raise ValueError(
            f"no Hadamard matrix of order {n} can be built here (orders 2^k times 1, 12, 20, 28, 36, "
            "... work); rotate in blocks whose size divides the width, or use the DuQuant rotation."
        )
    m, k_pow = factors
    base = _sylvester(m) if m in (1, 2) else _paley(m)
    return torch.kron(base, _sylvester(k_pow)) / n**0.5


def random_signs(n: int, seed: int) -> torch.Tensor:
    """A seeded vector of +-1 (float64)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=gen).to(DTYPE) * 2 - 1


def random_hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """QuaRot's randomised Hadamard ``diag(signs) @ H``: random signs first, so the all-ones row
    of ``H`` no longer gathers every token's mean into one channel."""
    return random_signs(n, seed)[:, None] * hadamard(n)


def random_orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    return q * torch.sign(torch.diagonal(r))


def random_hadamard_any(n: int, seed: int = 0) -> torch.Tensor:
    """Randomised Hadamard for any width ``n``, dense (see :func:`hadamard_rotation`)."""
    return hadamard_rotation(n, seed).matrix()


def hadamard_rotation(n: int, seed: int = 0) -> Rotation:
    """Randomised Hadamard for any width ``n``, in factored form.

    A full Hadamard where one can be built; otherwise block-diagonal randomised Hadamards of the
    largest buildable order that divides ``n``; for odd ``n`` (no Hadamard block above 1 exists)
    a random orthogonal matrix.
    """
    if hadamard_factors(n) is not None:
        return Rotation(n, (("signs", random_signs(n, seed)), ("hadamard", n)))
    block = max((b for b in range(2, n // 2 + 1) if n % b == 0 and hadamard_factors(b)), default=None)
    if block is None:
        return Rotation(n, (("dense", random_orthogonal(n, seed)),))
    return Rotation(n, (("blocks", [random_hadamard(block, seed + i) for i in range(n // block)]),))


def duquant_rotation(r1: list[torch.Tensor] | Reflections, perm: torch.Tensor,
                     r2: list[torch.Tensor] | Reflections) -> Rotation:
    """DuQuant's ``R1 P R2``: block rotation, zigzag permutation, block rotation (each block
    rotation as dense blocks or as :class:`Reflections`)."""
    def stage(r):
        return ("reflections", r) if isinstance(r, Reflections) else ("blocks", r)

    return Rotation(int(perm.numel()), (stage(r1), ("perm", perm), stage(r2)))


@dataclass(frozen=True, eq=False)
class Rotation:
    """An orthogonal (C, C) matrix ``R`` kept as the factors it was built from; ``x -> x @ R``.

    Stages apply left to right: ``("signs", s)`` multiplies channels by +-1, ``("blocks", [B..])``
    multiplies by a block-diagonal matrix, ``("reflections", Reflections)`` by the block-diagonal
    matrix those reflections make, ``("perm", idx)`` reorders channels (``x[..., idx]``),
    ``("hadamard", n)`` multiplies by :func:`hadamard` ``(n)`` and ``("dense", M)`` by ``M``.

    :meth:`matrix` is the exact float64 matrix (for weight surgery and the simulated path);
    :meth:`apply` is the fast online form for the real integer path: O(C b) per token for blocks
    of b and O(C (m + 2^k)) for a Hadamard of order ``m * 2^k`` (one small matmul per Kronecker
    factor; in eager PyTorch on CPU a 32-wide matmul beats the butterflies of
    :func:`trdq.kernels.fwht`), never a dense (C, C) product.
    """

    size: int
    stages: tuple[tuple[str, object], ...]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def matrix(self) -> torch.Tensor:
        """Dense float64 ``R`` (C, C), built on demand (for tests and analysis; not kept)."""
        x = torch.eye(self.size, dtype=DTYPE)
        for kind, value in self.stages:
            x = _stage_exact(x, kind, value)
        return x

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ R`` for x (..., C), in ``x``'s dtype, through the factors (half-precision inputs
        are transformed in float32 and rounded once at the end)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        key = (dtype, x.device)
        online = self._cache.get(key)
        if online is None:
            online = self.online(dtype, x.device, compact=False)
            if dtype != DTYPE:  # kept for the per-call path; float64 is weight surgery, done once
                self._cache[key] = online
        return online.apply(x)

    def online(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               compact: bool = True) -> OnlineRotation:
        """The factors cast and laid out once for repeated :meth:`apply` calls in ``dtype``.

        With ``compact``, :class:`Reflections` stay reflections and their blocks are built at
        every call (what a real integer layer keeps: its rotations then weigh a few bytes per
        channel); otherwise they are expanded to dense blocks once (what the simulated path
        caches, for speed)."""
        return OnlineRotation(self.size, tuple(_prepare(kind, value, dtype, device, compact)
                                               for kind, value in self.stages), dtype)

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.stages]

    def with_input_scale(self, d: torch.Tensor) -> Rotation:
        """``diag(d) R`` (no longer orthogonal unless ``|d| = 1``): the channel scaling folded
        into the first stage when that is a block, sign or dense stage, else a scaling stage first.
        The real path uses it to fold smoothing ``Delta^-1`` into the rotation."""
        d = d.to(DTYPE)
        kind, value = self.stages[0]
        if kind == "reflections":
            first = (kind, value.with_scale(d))
        elif kind == "blocks":
            sizes = [b.shape[0] for b in value]
            first = (kind, [b.to(DTYPE) * part[:, None] for b, part in zip(value, d.split(sizes))])
        elif kind == "signs":
            first = (kind, value.to(DTYPE) * d)
        elif kind == "dense":
            first = (kind, value.to(DTYPE) * d[:, None])
        else:
            return Rotation(self.size, (("signs", d), *self.stages))
        return Rotation(self.size, (first, *self.stages[1:]))


@dataclass(frozen=True, eq=False)
class OnlineRotation:
    """A :class:`Rotation`'s factors prepared for the per-call path: cast to ``dtype``, equal
    blocks stacked for one batched matmul, Hadamard Kronecker factors built. Apply only; this is
    all a real integer layer keeps of its rotations."""

    size: int
    stages: tuple[tuple[str, object], ...]
    dtype: torch.dtype

    @property
    def channel_major(self) -> bool:
        """Whether :meth:`apply` goes through :meth:`apply_rows` (block and permutation stages,
        DuQuant's) rather than row by row (signs and Hadamard factors, QuaRot's, which need no
        transposed copy)."""
        return any(kind in ("blocks", "reflections", "perm") for kind, _ in self.stages)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ R`` for x (..., C) in ``x``'s dtype, computed in ``self.dtype``."""
        if self.channel_major:
            return self.apply_rows(x.reshape(-1, self.size)).T.reshape(x.shape).to(x.dtype)
        y = x.to(self.dtype)
        for kind, value in self.stages:
            y = _stage_fast(y, kind, value)
        return y.to(x.dtype)

    def input_scale(self) -> torch.Tensor | None:
        """The channel scaling folded into the first stage (see :meth:`Rotation.with_input_scale`),
        (C,) in the dtype it is applied in, where it can be read back: a compact reflections
        stage's scale, or the magnitudes of a sign stage; None otherwise (and for no scaling)."""
        kind, value = self.stages[0]
        if kind == "signs":
            return value.abs()
        return value[2] if kind == "reflections" else None

    def apply_rows(self, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """``(x @ R)^T`` (C, M) for rows x (M, C), channels first (:func:`rotate_rows`; through
        :func:`compiled_rotate_rows` if ``compiled``)."""
        return (compiled_rotate_rows() if compiled else rotate_rows)(x, self.stages, self.dtype)

    def map(self, fn) -> OnlineRotation:
        """The same rotation with ``fn`` applied to every factor tensor (``Module._apply``'s
        device or dtype moves); the dtype becomes what ``fn`` makes of it (compact reflections
        keep float32 factors whatever the dtype they are applied in)."""
        stages = tuple((kind, _map_tensors(value, fn)) for kind, value in self.stages)
        return OnlineRotation(self.size, stages, fn(torch.empty(0, dtype=self.dtype)).dtype)


def _stage_exact(x: torch.Tensor, kind: str, value) -> torch.Tensor:
    if kind == "signs":
        return x * value.to(x.dtype)
    if kind == "blocks":
        return apply_block_diag(x, value)
    if kind == "reflections":
        return apply_block_diag(x, value.blocks())
    if kind == "perm":
        return x[..., value]
    if kind == "hadamard":
        return x @ hadamard(value).to(x.dtype)
    return x @ value.to(x.dtype)  # dense


def _prepare(kind: str, value, dtype: torch.dtype, device: torch.device, compact: bool = True) -> tuple[str, object]:
    """A stage as ``(kind, factors)`` in the form and dtype :func:`_stage_fast` uses: reflections
    stay compact (:func:`_compact_reflections`) or become dense ``blocks``."""
    if kind == "reflections":
        if compact:
            return kind, _compact_reflections(value, dtype, device)
        kind, value = "blocks", value.blocks()
    if kind == "blocks":  # equal blocks first, at most a smaller remainder after them
        n_full = sum(v.shape[0] == value[0].shape[0] for v in value)
        rest = [v.to(dtype=dtype, device=device) for v in value[n_full:]]
        return kind, (torch.stack(value[:n_full]).to(dtype=dtype, device=device), rest)
    if kind == "hadamard":  # the same factors for every layer of a width: one shared copy
        return kind, _online_hadamard_factors(value, dtype, torch.device(device))
    if kind == "perm":  # int16 where it fits: the smallest index the stages widen per call
        return kind, value.to(dtype=torch.int16 if value.numel() <= 2**15 else torch.int32, device=device)
    return kind, value.to(dtype=dtype, device=device)  # signs, dense


@functools.lru_cache(maxsize=64)
def _online_hadamard_factors(n: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    return [f.to(dtype=dtype, device=device) for f in _hadamard_kron_factors(n)]


def _compact_reflections(r: Reflections, dtype: torch.dtype, device) -> tuple:
    """What a real layer keeps of :class:`Reflections` (see :func:`_built_blocks`): for the full
    blocks, the signs (n, s, b) float32 (one copy per width and seed, shared by every layer), the
    pivots (n, s) int16; the folded input scale (C,) in ``dtype``, or None; the remainder block,
    if any, dense and unscaled in ``dtype``. A few bytes per channel instead of ``b`` floats."""
    n_full = r.size // min(r.block_size, r.size)
    signs = _online_signs(r.size, r.block_size, r.steps, r.seed, torch.device(device))
    scale = None if r.scale is None else r.scale.to(dtype=dtype, device=device)
    rest = []
    if r.size % min(r.block_size, r.size):  # the remainder block, dense: the last width's reflections
        u, w = wy_factors(r.vectors()[-1])
        rest = [(torch.eye(u.shape[-1], dtype=DTYPE) - u[0].T @ w[0]).to(dtype=dtype, device=device)]
    return signs, r.pivots[:n_full].to(dtype=torch.int16, device=device), scale, rest


@functools.lru_cache(maxsize=64)
def _online_signs(size: int, block_size: int, steps: int, seed: int, device: torch.device) -> torch.Tensor:
    """The full blocks' greedy signs (n, s, b) in float32, one copy per width and seed shared by
    every layer."""
    b = min(block_size, size)
    return reflection_signs(size, b, steps, seed)[b].to(torch.float32).to(device)


def _built_blocks(value: tuple, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Compact reflections (:func:`_compact_reflections`) as dense ``blocks`` factors, built in
    float32 at every call: ``diag(scale) (I - U^T T U)`` per block from the WY form of its
    reflections (:func:`wy_factors`), a few small batched products."""
    signs, pivots, scale, rest = value
    u, w = wy_factors(householder_vectors(signs, pivots.long()))
    n, _, b = u.shape
    blocks = torch.eye(b, dtype=u.dtype, device=u.device) - u.transpose(1, 2) @ w
    if scale is None:
        return blocks.to(dtype), rest
    blocks = blocks * scale[:n * b].to(blocks.dtype).view(n, b, 1)
    rest, start = list(rest), n * b
    for i, blk in enumerate(rest):
        rest[i] = (blk.float() * scale[start:start + blk.shape[0], None].float()).to(dtype)
        start += blk.shape[0]
    return blocks.to(dtype), rest


MAX_KRON_FACTOR = 128


def _hadamard_kron_factors(n: int) -> list[torch.Tensor]:
    """Orthonormal factors whose Kronecker product is :func:`hadamard` ``(n)``: the order-m base,
    then Sylvester factors of at most :data:`MAX_KRON_FACTOR` (``H_ab = H_a kron H_b``)."""
    m, k = hadamard_factors(n)
    factors = [(_sylvester(m) if m <= 2 else _paley(m)) / m**0.5] if m > 1 else []
    while k > 1:
        a = min(k, MAX_KRON_FACTOR)
        factors.append(_sylvester(a) / a**0.5)
        k //= a
    return factors or [torch.ones(1, 1, dtype=DTYPE)]


def _stage_fast(x: torch.Tensor, kind: str, value) -> torch.Tensor:
    if kind == "reflections":
        kind, value = "blocks", _built_blocks(value, x.dtype)
    if kind == "blocks":
        full, rest = value
        cut = full.shape[0] * full.shape[1]
        head = kernels.block_diag_apply(x[..., :cut], full)
        return torch.cat([head, apply_block_diag(x[..., cut:], rest)], dim=-1) if rest else head
    if kind == "hadamard":  # x @ (F_1 kron F_2 kron ...): one small matmul along each factor's axis
        sizes = [f.shape[0] for f in value]
        y = x.reshape(-1, x.shape[-1])
        for j, f in enumerate(value):
            trail = math.prod(sizes[j + 1:])
            y = (y.reshape(-1, sizes[j]) @ f if trail == 1
                 else f.T @ y.reshape(-1, sizes[j], trail))  # (B, a, trail): mixes along axis j
        return y.reshape(x.shape)
    if kind == "signs":
        return x * value
    if kind == "perm":
        return x.index_select(-1, value.long())  # much faster than x[..., value] on CPU
    return x @ value  # dense


def _stage_channel_major(y: torch.Tensor, kind: str, value) -> torch.Tensor:
    """One stage of ``x @ R`` on ``y = x^T`` (C, M): returns ``(x @ stage)^T``, contiguous."""
    m = y.shape[1]
    if kind == "reflections":
        kind, value = "blocks", _built_blocks(value, y.dtype)
    if kind == "blocks":  # (B^T y) per block of rows
        full, rest = value
        nb, b = full.shape[:2]
        cut = nb * b
        head = torch.bmm(full.transpose(1, 2), y[:cut].view(nb, b, m)).view(cut, m)
        if not rest:
            return head
        tails, start = [], cut
        for block in rest:
            tails.append(block.T @ y[start:start + block.shape[0]])
            start += block.shape[0]
        return torch.cat([head, *tails])
    if kind == "hadamard":  # (F_1 kron F_2 kron ...)^T y: one matmul along each factor's axis
        sizes = [f.shape[0] for f in value]
        for j, f in enumerate(value):
            lead, trail = math.prod(sizes[:j]), math.prod(sizes[j + 1:]) * m
            y = (f.T @ y.view(lead, sizes[j], trail)).view(-1, m)
        return y
    if kind == "signs":
        return y * value[:, None]
    if kind == "perm":
        return y.index_select(0, value.long())  # whole rows: a memcpy each
    return value.T @ y  # dense


def rotate_rows(x: torch.Tensor, stages: tuple, dtype: torch.dtype) -> torch.Tensor:
    """``(x @ R)^T`` (C, M) for rows x (M, C), as a function of tensors (what
    :func:`compiled_rotate_rows` compiles): one copy writes ``x^T`` in ``dtype``, then each stage
    runs channels-first. Every stage is faster in that layout than on (M, C) rows: a block
    rotation is one batched matmul of (b, b) blocks against (b, M) slabs that are already
    contiguous, the permutation gathers whole rows (bf16 column gathers are slow on CPU) and each
    Hadamard Kronecker factor is one matmul whose other side has M or more columns."""
    y_t = torch.empty(x.shape[1], x.shape[0], dtype=dtype, device=x.device)
    y_t.copy_(x.T)
    for kind, value in stages:
        y_t = _stage_channel_major(y_t, kind, value)
    return y_t


@functools.cache
def compiled_rotate_rows():
    """:func:`rotate_rows` under ``torch.compile`` with static shapes, built once per process:
    the transposed copy fuses with the cast and the permutation with its neighbours, around the
    batched matmuls (2048 x 1152 in bf16 on this 2-core CPU: 1.7 ms against 3.0 ms eager). Every
    layer with the same stage structure and shapes shares a graph (a handful per model); with
    dynamic shapes Inductor's code for the batched matmuls was slower than eager."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(rotate_rows, dynamic=False)


def _flat_tensors(value) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, Reflections):
        return [t for t in (value.pivots, value.scale) if t is not None]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat_tensors(v)]
    return []


def _map_tensors(value, fn):
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, Reflections):
        return value.map(fn)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def block_sizes(n: int, block_size: int) -> list[int]:
    """Split ``n`` channels into blocks of ``block_size`` and one smaller remainder block."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    full, rest = divmod(n, block_size)
    return [block_size] * full + ([rest] if rest else [])


def block_diag(blocks: list[torch.Tensor]) -> torch.Tensor:
    """Dense block-diagonal matrix from square blocks."""
    return torch.block_diag(*blocks)


def apply_block_diag(x: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
    """``x @ block_diag(blocks)`` without building the dense matrix; x is (..., C)."""
    out, start = [], 0
    for b in blocks:
        n = b.shape[0]
        out.append(x[..., start:start + n] @ b.to(x.dtype))
        start += n
    return torch.cat(out, dim=-1)


def _spread_reflection(d: int, signs: torch.Tensor) -> torch.Tensor:
    """Householder reflection H (symmetric, orthogonal) with row d equal to ``signs / sqrt(b)``.

    ``x @ H`` moves whatever sits in channel d evenly onto all b channels of the block.
    """
    b = len(signs)
    u = signs / b**0.5
    v = -u
    v[d] += 1.0
    norm = v.norm()
    if norm < 1e-12:  # channel d is already spread
        return torch.eye(b, dtype=DTYPE)
    v = v / norm
    return torch.eye(b, dtype=DTYPE) - 2 * torch.outer(v, v)


def greedy_block_rotation_ref(absmax: torch.Tensor, block_size: int, max_steps: int = 8,
                              seed: int = 0) -> list[torch.Tensor]:
    """:func:`greedy_block_rotation` one block and one dense reflection at a time (the reference)."""
    gen = torch.Generator().manual_seed(seed)
    blocks, start = [], 0
    for b in block_sizes(absmax.numel(), block_size):
        v = absmax[start:start + b].to(DTYPE).clone()
        rot, best, best_max = torch.eye(b, dtype=DTYPE), torch.eye(b, dtype=DTYPE), v.abs().max()
        for _ in range(max_steps if b > 1 else 0):
            d = int(v.abs().argmax())
            signs = torch.randint(0, 2, (b,), generator=gen).to(DTYPE) * 2 - 1
            step = _spread_reflection(d, signs)
            v, rot = v @ step, rot @ step
            if v.abs().max() < best_max:
                best, best_max = rot.clone(), v.abs().max()
        blocks.append(best)
        start += b
    return blocks


def greedy_block_rotation(absmax: torch.Tensor, block_size: int, max_steps: int = 8,
                          seed: int = 0) -> list[torch.Tensor]:
    """DuQuant-style rotation of each block, fitted to per-channel input abs-maxima.

    In every block, repeatedly take the channel with the largest remaining magnitude and apply a
    reflection that spreads it evenly over the block; keep the prefix of steps whose result has
    the smallest maximum.

    Args:
        absmax: (C,) per-channel abs-max of the (smoothed) activations.
        block_size: channels per block (the last block takes the remainder).
        max_steps: greedy steps per block.
        seed: for the random signs of each spreading direction.

    Returns:
        Orthogonal blocks, (b, b) each, in channel order.
    """
    return greedy_block_rotations(absmax[None], block_size, max_steps, seed)[0]


def greedy_block_rotations(absmax: torch.Tensor, block_size: int, max_steps: int = 8,
                           seed: int = 0) -> list[list[torch.Tensor]]:
    """:func:`greedy_block_rotation` of K candidates' abs-maxima (K, C) at once, each with the
    same random signs (as K calls with one seed would draw), as dense blocks."""
    return [r.blocks() for r in greedy_block_reflections(absmax, block_size, max_steps, seed)]


def greedy_block_reflections(absmax: torch.Tensor, block_size: int, max_steps: int = 8,
                             seed: int = 0) -> list[Reflections]:
    """The greedy block rotations of K candidates' abs-maxima (K, C), as :class:`Reflections`.

    All blocks of one size, of every candidate, are fitted together and each reflection is applied
    as a rank-one update: the result of :func:`greedy_block_rotation_ref` to float64 rounding, at
    a fraction of its cost (the fits' Python overhead, not their arithmetic, dominates).
    """
    k, c = absmax.shape
    sizes = block_sizes(c, block_size)
    signs = reflection_signs(c, block_size, max_steps, seed)
    pivots: list[list[torch.Tensor]] = [[] for _ in range(k)]
    start = 0
    for b in dict.fromkeys(sizes):  # the full blocks, then the remainder
        count = sizes.count(b)
        v = absmax[:, start:start + count * b].to(DTYPE).reshape(k * count, b)
        chosen = _greedy_pivots(v, signs[b].repeat(k, 1, 1))
        for i in range(k):
            pivots[i].append(chosen[i * count:(i + 1) * count])
        start += count * b
    return [Reflections(c, block_size, max_steps, seed, torch.cat(p)) for p in pivots]


@functools.lru_cache(maxsize=64)
def reflection_signs(size: int, block_size: int, steps: int, seed: int) -> dict[int, torch.Tensor]:
    """The random signs of the greedy fit of a ``size``-wide layer: block width -> (count, steps,
    b) float64 of +-1, drawn from ``seed`` in the reference's order, full blocks first (1-wide
    blocks draw nothing and get zeros: they cannot be rotated). They depend on the shapes and the
    seed only, so a fitted rotation keeps just its pivots. Shared between callers: read only."""
    gen = torch.Generator().manual_seed(seed)
    sizes = block_sizes(size, block_size)
    return {b: (torch.randint(0, 2, (sizes.count(b), steps, b), generator=gen).to(DTYPE) * 2 - 1 if b > 1
                else torch.zeros(sizes.count(b), steps, 1, dtype=DTYPE))
            for b in dict.fromkeys(sizes)}


def householder_vectors(signs: torch.Tensor, pivots: torch.Tensor) -> torch.Tensor:
    """Unit reflection axes ``(e_d - signs / sqrt(b)) / norm`` (n, s, b) for pivots d (n, s);
    a zero axis (the identity) where the pivot is -1. In ``signs``' dtype."""
    b = signs.shape[-1]
    used = pivots >= 0
    u = torch.nn.functional.one_hot(pivots.clamp_min(0), b).to(signs.dtype) - signs / b**0.5
    u = u * used[..., None].to(u.dtype)
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def wy_factors(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, W)`` with ``H(u_1) H(u_2) ... H(u_s) = I - U^T W`` for unit or zero axes u (n, s, b)
    (the compact WY form of a product of Householder reflections ``H(u) = I - 2 u u^T``).

    ``W = T U`` where ``T^-1 = I / 2 + striu(U U^T)`` (Puglisi's closed form of the WY factor: one
    small triangular solve instead of a loop over the reflections); a zero axis contributes
    nothing whatever its diagonal entry."""
    s = u.shape[1]
    t_inv = torch.triu(u @ u.transpose(1, 2), diagonal=1) + 0.5 * torch.eye(s, dtype=u.dtype, device=u.device)
    return u, torch.linalg.solve_triangular(t_inv, u, upper=True)


def _greedy_pivots(v: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """The greedy rotation of n blocks of one size, v (n, b) and signs (n, steps, b): the channel
    each step spread (n, steps), -1 after the best prefix of steps."""
    n, b = v.shape
    rows = torch.arange(n)
    best_max, best_len = v.abs().amax(1), torch.zeros(n, dtype=torch.long)
    pivots = torch.full((n, signs.shape[1]), -1, dtype=torch.long)
    for step in range(signs.shape[1] if b > 1 else 0):
        d = v.abs().argmax(1)
        u = -signs[:, step] / b**0.5  # the reflection's axis: e_d - signs / sqrt(b), normalized
        u[rows, d] += 1.0
        u = u / u.norm(dim=1, keepdim=True)  # never zero for b > 1 (signs / sqrt(b) is no unit vector)
        v = v - 2 * (v * u).sum(1, keepdim=True) * u
        pivots[:, step] = d
        current = v.abs().amax(1)
        better = current < best_max
        best_len, best_max = torch.where(better, step + 1, best_len), torch.where(better, current, best_max)
    return torch.where(torch.arange(signs.shape[1]) < best_len[:, None], pivots, -1)


@dataclass(frozen=True, eq=False)
class Reflections:
    """A block-diagonal orthogonal matrix fitted by the greedy DuQuant search, kept as what the
    fit chose rather than as ``b x b`` blocks: each block is the product of the Householder
    reflections of its greedy steps, and a step's reflection is fixed by its pivot channel and
    the seeded signs (:func:`reflection_signs`), so the pivots and the seed are the whole matrix.

    Attributes:
        size: channels (C).
        block_size: channels per block (:func:`block_sizes`; the last block takes the remainder).
        steps: greedy steps per block (the signs' shape).
        seed: the signs' seed.
        pivots: (blocks, steps) long, the channel (within its block) each step spread; -1 for a
            step left out (the identity).
        scale: (C,) float64 row scaling ``diag(scale) B`` (folded smoothing, see
            :meth:`Rotation.with_input_scale`), or None.
    """

    size: int
    block_size: int
    steps: int
    seed: int
    pivots: torch.Tensor
    scale: torch.Tensor | None = None

    def vectors(self) -> list[torch.Tensor]:
        """Unit or zero reflection axes per block width, (count, steps, b) float64 each, full
        blocks first."""
        out, start = [], 0
        for b, signs in reflection_signs(self.size, self.block_size, self.steps, self.seed).items():
            count = signs.shape[0]
            out.append(householder_vectors(signs, self.pivots[start:start + count].cpu()))
            start += count
        return out

    def blocks(self) -> list[torch.Tensor]:
        """The dense float64 blocks in channel order (scaled rows if :attr:`scale`)."""
        blocks = []
        for u in self.vectors():
            u, w = wy_factors(u)
            blocks += list((torch.eye(u.shape[-1], dtype=DTYPE) - u.transpose(1, 2) @ w).unbind(0))
        if self.scale is not None:
            blocks = [blk * part[:, None] for blk, part in
                      zip(blocks, self.scale.to(DTYPE).cpu().split([blk.shape[0] for blk in blocks]))]
        return blocks

    def with_scale(self, d: torch.Tensor) -> Reflections:
        """``diag(d)`` times this matrix."""
        scale = d.to(DTYPE) if self.scale is None else self.scale.to(DTYPE) * d.to(DTYPE)
        return Reflections(self.size, self.block_size, self.steps, self.seed, self.pivots, scale)

    def map(self, fn) -> Reflections:
        return Reflections(self.size, self.block_size, self.steps, self.seed, fn(self.pivots),
                           None if self.scale is None else fn(self.scale))


def zigzag_permutation(absmax: torch.Tensor, block_size: int) -> torch.Tensor:
    """Channel order that deals channels, largest first, to blocks in zigzag order.

    Args:
        absmax: (C,) per-channel magnitudes.
        block_size: channels per block (as in :func:`block_sizes`).

    Returns:
        ``perm`` (C,) long: ``x[:, perm]`` puts channel ``perm[i]`` at position i.
    """
    order = torch.argsort(absmax, descending=True)
    return order[_zigzag_slots(absmax.numel(), block_size)]


@functools.lru_cache(maxsize=64)
def _zigzag_slots(n: int, block_size: int) -> torch.Tensor:
    """Where the dealing puts each rank: position i of the permutation holds the channel of rank
    ``slots[i]`` (the deal depends on the ranks only, not on the magnitudes)."""
    sizes = block_sizes(n, block_size)
    slots: list[list[int]] = [[] for _ in sizes]
    forward, i = True, 0
    for rank in range(n):
        while len(slots[i]) >= sizes[i]:  # skip full blocks (the remainder block fills first)
            i, forward = _next(i, forward, len(sizes))
        slots[i].append(rank)
        i, forward = _next(i, forward, len(sizes))
    return torch.tensor([r for slot in slots for r in slot], dtype=torch.long)


def _next(i: int, forward: bool, n: int) -> tuple[int, bool]:
    if forward:
        return (i + 1, True) if i + 1 < n else (i, False)
    return (i - 1, False) if i > 0 else (i, True)


def permutation_matrix(perm: torch.Tensor) -> torch.Tensor:
    """P with ``x @ P == x[:, perm]``."""
    return torch.eye(len(perm), dtype=DTYPE)[:, perm]
