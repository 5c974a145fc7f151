import numpy as np
import pytest

from trdq.demo import shapes
from trdq.demo.eval.metrics import adherence, frechet_distance, psnr, ssim


def test_adherence_counts_all_attributes_right():
    scenes = [shapes.Scene("small", "red", "circle", "on the left"),
              shapes.Scene("large", "blue", "star", "at the top")]
    preds = {name: np.array([s.labels()[name] for s in scenes]) for name in shapes.ATTRIBUTES}
    assert adherence(preds, scenes)["adherence"] == 1.0
    preds["color"] = np.array([preds["color"][0], 0])  # second image: red instead of blue
    scores = adherence(preds, scenes)
    assert scores["adherence"] == 0.5 and scores["acc_color"] == 0.5 and scores["acc_shape"] == 1.0


def test_frechet_distance_is_zero_on_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    near = frechet_distance(a, rng.normal(size=(500, 8)))
    far = frechet_distance(a, rng.normal(size=(500, 8)) + 2.0)
    assert 0 < near < 1.0 and far == pytest.approx(32.0, rel=0.1)


def test_frechet_distance_matches_closed_form_for_scaled_gaussians():
    # N(0, I) vs N(0, 4 I) in d dims: tr(I + 4I - 2*2I) = d.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20000, 4)), 2 * rng.normal(size=(20000, 4))
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    ref = shapes.render_batch(shapes.sample_scenes(4), seed=0)
    assert np.all(np.isinf(psnr(ref, ref)))
    assert np.allclose(ssim(ref, ref), 1.0)
    noisy = np.clip(ref + rng.normal(0, 8, ref.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(ref + rng.normal(0, 32, ref.shape), 0, 255).astype(np.uint8)
    assert np.all(psnr(noisy, ref) > psnr(noisier, ref))
    assert np.all(ssim(noisy, ref) > ssim(noisier, ref))
    # 8-level Gaussian noise on [0, 255] is about 30 dB.
    assert np.allclose(psnr(noisy, ref), 20 * np.log10(255 / 8), atol=1.0)
