"""Orthogonal transforms that flatten outlier channels (docs/method.md §4); pure maths.

- :func:`hadamard`: normalised Hadamard matrices of order ``2^k * m`` for ``m`` in 1, 2 and the
  orders that Paley's constructions give (12, 20, 28, 36, ...), e.g. 1152 = 36 x 32 and 192 = 12 x 16.
- :func:`random_hadamard`: QuaRot's randomised Hadamard ``diag(signs) H``.
- :func:`greedy_block_rotation`: DuQuant-style block rotation fitted to per-channel abs-maxima
  (:func:`greedy_block_rotations` for several candidates at once).
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


def duquant_rotation(r1: list[torch.Tensor], perm: torch.Tensor, r2: list[torch.Tensor]) -> Rotation:
    """DuQuant's ``R1 P R2``: block rotation, zigzag permutation, block rotation."""
    return Rotation(int(perm.numel()), (("blocks", r1), ("perm", perm), ("blocks", r2)))


@dataclass(frozen=True, eq=False)
class Rotation:
    """An orthogonal (C, C) matrix ``R`` kept as the factors it was built from; ``x -> x @ R``.

    Stages apply left to right: ``("signs", s)`` multiplies channels by +-1, ``("blocks", [B..])``
    multiplies by a block-diagonal matrix, ``("perm", idx)`` reorders channels (``x[..., idx]``),
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
            online = self.online(dtype, x.device)
            if dtype != DTYPE:  # kept for the per-call path; float64 is weight surgery, done once
                self._cache[key] = online
        return online.apply(x)

    def online(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> OnlineRotation:
        """The factors cast and laid out once for repeated :meth:`apply` calls in ``dtype``."""
        return OnlineRotation(self.size, tuple((kind, _prepare(kind, value, dtype, device))
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
        if kind == "blocks":
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
        return any(kind in ("blocks", "perm") for kind, _ in self.stages)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ R`` for x (..., C) in ``x``'s dtype, computed in ``self.dtype``."""
        if self.channel_major:
            return self.apply_rows(x.reshape(-1, self.size)).T.reshape(x.shape).to(x.dtype)
        y = x.to(self.dtype)
        for kind, value in self.stages:
            y = _stage_fast(y, kind, value)
        return y.to(x.dtype)

    def apply_rows(self, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """``(x @ R)^T`` (C, M) for rows x (M, C), channels first (:func:`rotate_rows`; through
        :func:`compiled_rotate_rows` if ``compiled``)."""
        return (compiled_rotate_rows() if compiled else rotate_rows)(x, self.stages, self.dtype)

    def map(self, fn) -> OnlineRotation:
        """The same rotation with ``fn`` applied to every factor tensor (``Module._apply``'s
        device or dtype moves); the dtype follows the floating factors."""
        stages = tuple((kind, _map_tensors(value, fn)) for kind, value in self.stages)
        floats = [t for _, v in stages for t in _flat_tensors(v) if t.is_floating_point()]
        return OnlineRotation(self.size, stages, floats[0].dtype if floats else self.dtype)


def _stage_exact(x: torch.Tensor, kind: str, value) -> torch.Tensor:
    if kind == "signs":
        return x * value.to(x.dtype)
    if kind == "blocks":
        return apply_block_diag(x, value)
    if kind == "perm":
        return x[..., value]
    if kind == "hadamard":
        return x @ hadamard(value).to(x.dtype)
    return x @ value.to(x.dtype)  # dense


def _prepare(kind: str, value, dtype: torch.dtype, device: torch.device):
    """A stage's factors in the form and dtype :func:`_stage_fast` uses."""
    if kind == "blocks":  # equal blocks first, at most a smaller remainder after them
        n_full = sum(v.shape[0] == value[0].shape[0] for v in value)
        rest = [v.to(dtype=dtype, device=device) for v in value[n_full:]]
        return torch.stack(value[:n_full]).to(dtype=dtype, device=device), rest
    if kind == "hadamard":
        return [f.to(dtype=dtype, device=device) for f in _hadamard_kron_factors(value)]
    if kind == "perm":
        return value.to(device)
    return value.to(dtype=dtype, device=device)  # signs, dense


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
        return x.index_select(-1, value)  # much faster than x[..., value] on CPU
    return x @ value  # dense


def _stage_channel_major(y: torch.Tensor, kind: str, value) -> torch.Tensor:
    """One stage of ``x @ R`` on ``y = x^T`` (C, M): returns ``(x @ stage)^T``, contiguous."""
    m = y.shape[1]
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
        return y.index_select(0, value)  # whole rows: a memcpy each
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
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat_tensors(v)]
    return []


def _map_tensors(value, fn):
    if torch.is_tensor(value):
        return fn(value)
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
    same random signs (as K calls with one seed would draw).

    All blocks of one size, of every candidate, are fitted together and each reflection is applied
    as a rank-one update: the result of :func:`greedy_block_rotation_ref` to float64 rounding, at
    a fraction of its cost (the fits' Python overhead, not their arithmetic, dominates).
    """
    gen = torch.Generator().manual_seed(seed)
    k, c = absmax.shape
    sizes = block_sizes(c, block_size)
    fitted: list[list[torch.Tensor]] = [[] for _ in range(k)]
    start = 0
    for b in dict.fromkeys(sizes):  # the full blocks, then the remainder
        count = sizes.count(b)
        # one draw for all blocks of a size: the reference's stream, block by block, step by step
        signs = torch.randint(0, 2, (count, max_steps if b > 1 else 0, b), generator=gen).to(DTYPE) * 2 - 1
        v = absmax[:, start:start + count * b].to(DTYPE).reshape(k * count, b)
        blocks = _greedy_blocks(v, signs.repeat(k, 1, 1))
        for i in range(k):
            fitted[i] += blocks[i * count:(i + 1) * count]
        start += count * b
    return fitted


def _greedy_blocks(v: torch.Tensor, signs: torch.Tensor) -> list[torch.Tensor]:
    """The greedy rotation of n blocks of one size: v (n, b), signs (n, steps, b)."""
    n, b = v.shape
    rows = torch.arange(n)
    rot = torch.eye(b, dtype=DTYPE).repeat(n, 1, 1)
    best, best_max = rot.clone(), v.abs().amax(1)
    for step in range(signs.shape[1]):
        d = v.abs().argmax(1)
        u = -signs[:, step] / b**0.5  # the reflection's axis: e_d - signs / sqrt(b), normalized
        u[rows, d] += 1.0
        norm = u.norm(dim=1, keepdim=True)
        u = torch.where(norm < 1e-12, torch.zeros_like(u), u / norm.clamp_min(1e-12))  # spread already: H = I
        v = v - 2 * (v * u).sum(1, keepdim=True) * u
        rot = rot - 2 * (rot * u[:, None, :]).sum(2, keepdim=True) * u[:, None, :]  # batched GEMV is slow
        current = v.abs().amax(1)
        better = current < best_max
        best[better], best_max = rot[better], torch.where(better, current, best_max)
    return list(best.unbind(0))


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
