import pytest
import torch

from trdq import rotation as R


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 64, 72, 96, 192, 1152, 5120])
def test_hadamard_is_orthonormal_with_equal_magnitudes(n):
    h = R.hadamard(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(h.abs(), torch.full_like(h, n**-0.5))


@pytest.mark.parametrize("n", [3, 10, 100, 0])
def test_impossible_hadamard_orders_raise_with_advice(n):
    with pytest.raises(ValueError, match="blocks"):
        R.hadamard(n)


def test_random_signs_remove_the_all_ones_row():
    n = 64
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, n, generator=gen, dtype=torch.float64) + 5.0  # tokens with a large common mean
    plain = (x @ R.hadamard(n)).abs().amax(0)
    signed = (x @ R.random_hadamard(n, seed=0)).abs().amax(0)
    assert plain.max() / plain.median() > 3 * signed.max() / signed.median()


def test_rotation_preserves_the_linear_layer_output_while_mixing_every_channel():
    x = torch.randn(10, 192, dtype=torch.float64)
    w = torch.randn(32, 192, dtype=torch.float64)
    r = R.random_hadamard(192, seed=3)
    assert torch.allclose(r @ r.T, torch.eye(192, dtype=torch.float64), atol=1e-12)
    # every entry of a Hadamard has magnitude 1/sqrt(n): each output channel mixes all inputs
    assert torch.allclose(r.abs(), torch.full_like(r, 192 ** -0.5))
    assert torch.allclose((x @ r) @ (w @ r).T, x @ w.T, atol=1e-9)


@pytest.mark.parametrize("n,block", [(64, 16), (72, 32), (96, 64)])
def test_greedy_block_rotation_is_orthogonal_and_flattens_outliers(n, block):
    m = torch.rand(n, dtype=torch.float64) + 0.5
    m[[3, 40]] = 50.0
    blocks = R.greedy_block_rotation(m, block)
    assert [b.shape[0] for b in blocks] == R.block_sizes(n, block)
    rot = R.block_diag(blocks)
    assert torch.allclose(rot @ rot.T, torch.eye(n, dtype=torch.float64), atol=1e-10)
    assert (m @ rot).abs().max() < 0.5 * m.max()


def test_zigzag_spreads_the_largest_channels_over_all_blocks():
    m = torch.arange(64, dtype=torch.float64)  # channel 63 is the largest
    perm = R.zigzag_permutation(m, 16)
    assert sorted(perm.tolist()) == list(range(64))
    top_blocks = {perm.tolist().index(c) // 16 for c in (63, 62, 61, 60)}
    assert top_blocks == {0, 1, 2, 3}
    sums = m[perm].view(4, 16).sum(1)
    assert sums.max() - sums.min() <= 16
    x = torch.randn(3, 64, dtype=torch.float64)
    assert torch.equal(x @ R.permutation_matrix(perm), x[:, perm])


@pytest.mark.parametrize("n, block", [(192, 64), (72, 32), (7, 3), (65, 64), (1, 64), (10, 1)])
def test_greedy_rotation_is_the_reference_fit(n, block):
    """The batched fit makes the reference's choices with its random signs; only rounding differs
    (seeded input: an exact tie between two steps' maxima could go either way)."""
    absmax = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n * 100 + block)) ** 8 * 10
    fast, ref = R.greedy_block_rotation(absmax, block, seed=4), R.greedy_block_rotation_ref(absmax, block, seed=4)
    assert [b.shape for b in fast] == [b.shape for b in ref]
    assert max((a - b).abs().max().item() for a, b in zip(fast, ref)) < 1e-12


def test_candidates_fitted_together_are_fitted_as_alone():
    absmax = torch.rand(3, 72, dtype=torch.float64) + torch.where(torch.arange(72) % 11 == 0, 20.0, 0.0)
    together = R.greedy_block_rotations(absmax, 32, seed=5)
    for row, blocks in zip(absmax, together):
        assert all(torch.equal(a, b) for a, b in zip(blocks, R.greedy_block_rotation(row, 32, seed=5)))


@pytest.mark.parametrize("n, block", [(40, 16), (64, 16), (7, 3), (1, 4)])
def test_zigzag_deals_largest_first_back_and_forth(n, block):
    absmax = torch.rand(n, dtype=torch.float64)
    perm = R.zigzag_permutation(absmax, block)
    sizes = R.block_sizes(n, block)
    ranks = torch.empty(n, dtype=torch.long)
    ranks[torch.argsort(absmax, descending=True)] = torch.arange(n)
    blocks = [ranks[perm[s:s + b]].tolist() for s, b in zip([sum(sizes[:i]) for i in range(len(sizes))], sizes)]
    assert sorted(perm.tolist()) == list(range(n))
    first = [b[0] for b in blocks if b]  # the largest channels open the blocks, one each
    assert sorted(first) == list(range(len(first)))


def test_zigzag_handles_a_remainder_block():
    perm = R.zigzag_permutation(torch.rand(40, dtype=torch.float64), 16)
    assert sorted(perm.tolist()) == list(range(40))


@pytest.mark.parametrize("n", [192, 100, 15, 1])
def test_random_hadamard_any_is_orthogonal_for_every_width(n):
    r = R.random_hadamard_any(n, seed=2)
    assert torch.allclose(r @ r.T, torch.eye(n, dtype=torch.float64), atol=1e-10)


def test_apply_block_diag_matches_the_dense_product():
    blocks = R.greedy_block_rotation(torch.rand(40, dtype=torch.float64), 16)
    x = torch.randn(5, 40, dtype=torch.float64)
    assert torch.allclose(R.apply_block_diag(x, blocks), x @ R.block_diag(blocks), atol=1e-12)


@pytest.mark.parametrize("n", [64, 72, 512, 1152, 30, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factored_hadamard_applies_like_its_matrix(n, dtype):
    r = R.hadamard_rotation(n, seed=3)
    assert torch.allclose(r.matrix() @ r.matrix().T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    x = torch.randn(6, n, dtype=torch.float64) * torch.linspace(0.1, 20, n, dtype=torch.float64)
    exact = x @ r.matrix()
    err_fast = (r.apply(x.to(dtype)).double() - exact).abs().max()
    err_ref = ((x.to(dtype) @ r.matrix().to(dtype)).double() - exact).abs().max()
    assert err_fast <= 2 * err_ref + 1e-5 * exact.abs().max()


@pytest.mark.parametrize("n, block", [(192, 64), (72, 32)])
def test_factored_duquant_rotation_matches_its_dense_form(n, block):
    absmax = torch.rand(n, dtype=torch.float64) + torch.where(torch.arange(n) % 17 == 0, 30.0, 0.0)
    r1 = R.greedy_block_rotation(absmax, block)
    perm = R.zigzag_permutation(R.apply_block_diag(absmax[None], r1).abs()[0], block)
    r2 = R.greedy_block_rotation(absmax[perm], block, seed=1)
    rot = R.duquant_rotation(r1, perm, r2)
    dense = R.block_diag(r1) @ R.permutation_matrix(perm) @ R.block_diag(r2)
    assert torch.allclose(rot.matrix(), dense, atol=1e-12)
    x = torch.randn(5, n, dtype=torch.float64)
    assert torch.allclose(rot.apply(x.float()).double(), x @ dense, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_duquant_rotation_runs_channels_first_on_any_leading_shape(dtype):
    r1 = R.greedy_block_rotation(torch.rand(72, dtype=torch.float64) + 1, 32)  # 2 blocks of 32 + one of 8
    perm = torch.randperm(72, generator=torch.Generator().manual_seed(0))
    rot = R.duquant_rotation(r1, perm, R.greedy_block_rotation(torch.rand(72, dtype=torch.float64) + 1, 32, seed=1))
    online = rot.online(dtype)
    assert online.channel_major and not R.hadamard_rotation(72).online().channel_major
    x = torch.randn(3, 5, 72, dtype=torch.float64)
    exact = x @ rot.matrix()
    y = online.apply(x.to(dtype))
    assert y.shape == x.shape and y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (y.double() - exact).abs().max() < tol * exact.abs().max()
    assert torch.equal(online.apply_rows(x.reshape(-1, 72).to(dtype)), y.reshape(-1, 72).T)


@pytest.mark.parametrize("n, block", [(192, 64), (72, 32), (65, 64), (1, 4)])  # 3-wide blocks tie often
def test_reflections_keep_pivots_only_and_rebuild_the_reference_blocks(n, block):
    absmax = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) ** 8 * 10
    r = R.greedy_block_reflections(absmax[None], block, seed=2)[0]
    assert r.pivots.dtype == torch.long and r.pivots.shape == (len(R.block_sizes(n, block)), 8)
    assert [t for t in R._flat_tensors(r)] == [r.pivots]  # no b x b floats kept
    ref = R.greedy_block_rotation_ref(absmax, block, seed=2)
    assert max((a - b).abs().max().item() for a, b in zip(r.blocks(), ref)) < 1e-12
    u, w = R.wy_factors(r.vectors()[0])  # the WY form of the reflections is orthogonal
    q = torch.eye(u.shape[-1], dtype=torch.float64) - u.transpose(1, 2) @ w
    assert torch.allclose(q @ q.transpose(1, 2), torch.eye(u.shape[-1], dtype=torch.float64).expand_as(q), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, block", [(72, 32), (128, 32)])
def test_compact_reflections_apply_like_their_dense_blocks(dtype, n, block):
    """A real layer's rotation (compact: blocks built per call) equals the simulated path's dense one
    to the dtype's rounding, with a folded input scale too, and keeps no b x b factors."""
    gen = torch.Generator().manual_seed(1)
    absmax = torch.rand(n, dtype=torch.float64, generator=gen) + torch.where(torch.arange(n) % 13 == 0, 20.0, 0.0)
    r1, r2 = R.greedy_block_reflections(absmax[None], block, seed=3)[0], R.greedy_block_reflections(absmax[None], block, seed=4)[0]
    rot = R.duquant_rotation(r1, torch.randperm(n, generator=gen), r2).with_input_scale(torch.rand(n, dtype=torch.float64) + 0.5)
    compact, dense = rot.online(dtype), rot.online(dtype, compact=False)
    assert [k for k, _ in compact.stages] == ["reflections", "perm", "reflections"]
    assert [k for k, _ in dense.stages] == ["blocks", "perm", "blocks"]
    floats = sum(t.numel() for _, v in compact.stages for t in R._flat_tensors(v) if t.is_floating_point())
    assert floats < sum(t.numel() for _, v in dense.stages for t in R._flat_tensors(v) if t.is_floating_point()) / 2
    x = torch.randn(3, 5, n, dtype=torch.float64, generator=gen)
    exact = x @ rot.matrix()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for online in (compact, dense):
        y = online.apply(x.to(dtype))
        assert y.dtype == dtype and (y.double() - exact).abs().max() < tol * exact.abs().max()
    assert (compact.apply(x.to(dtype)).double() - dense.apply(x.to(dtype)).double()).abs().max() < tol * exact.abs().max()


def test_layers_of_one_width_share_the_online_signs_and_hadamard_factors():
    a, b = (R.greedy_block_reflections(torch.rand(1, 64, dtype=torch.float64), 32, seed=0)[0] for _ in range(2))
    sa, sb = (R.Rotation(64, (("reflections", r),)).online().stages[0][1][0] for r in (a, b))
    assert sa.data_ptr() == sb.data_ptr()
    ha, hb = (R.hadamard_rotation(1152, seed=s).online().stages[1][1][0] for s in (0, 1))
    assert ha.data_ptr() == hb.data_ptr()


@pytest.mark.parametrize("first", ["blocks", "reflections", "signs", "dense", "hadamard", "perm"])
def test_input_scale_folds_into_the_first_stage_or_comes_before_it(first):
    n = 48
    d = torch.rand(n, dtype=torch.float64) + 0.5
    stage = {"blocks": ("blocks", R.greedy_block_rotation(torch.rand(n, dtype=torch.float64), 16)),
             "reflections": ("reflections", R.greedy_block_reflections(torch.rand(1, n, dtype=torch.float64), 16)[0]),
             "signs": ("signs", R.random_signs(n, 0)), "dense": ("dense", R.random_orthogonal(n, 0)),
             "hadamard": ("hadamard", n), "perm": ("perm", torch.randperm(n))}[first]
    rot = R.Rotation(n, (stage, ("hadamard", n)))
    scaled = rot.with_input_scale(d)
    assert torch.allclose(scaled.matrix(), torch.diag(d) @ rot.matrix(), atol=1e-12)
    assert len(scaled.stages) == (3 if first in ("hadamard", "perm") else 2)
