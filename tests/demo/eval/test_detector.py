import numpy as np

from trdq.demo.eval.detector import load_detector
from trdq.demo.train.detector import accuracy


def test_shipped_detector_reads_fresh_renders():
    """The evaluator's bar: all attributes right on at least 98% of unseen renders."""
    acc = accuracy(load_detector(), num=1000, seed=2024)
    assert acc["all"] >= 0.98, acc


def test_detector_features_have_the_documented_shape():
    from trdq.demo import shapes

    preds, feats = load_detector().read(shapes.render_batch(shapes.sample_scenes(3), seed=5))
    assert feats.shape == (3, 256) and set(preds) == set(shapes.ATTRIBUTES)
    assert np.isfinite(feats).all()
