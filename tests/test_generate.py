import numpy as np
import pytest

from trdq.generate import generate_images


def test_one_seed_gives_one_image_in_any_batch(shapes_t2i):
    prompts = ["a large red circle in the center", "a small blue star on the left"]
    both = generate_images(shapes_t2i, prompts, [7, 8], steps=3)
    alone = generate_images(shapes_t2i, prompts[1:], [8], steps=3)
    assert both.shape == (2, 64, 64, 3) and both.dtype == np.uint8
    assert np.abs(both[1].astype(int) - alone[0].astype(int)).max() <= 2
    other_seed = generate_images(shapes_t2i, prompts[1:], [9], steps=3)
    assert np.abs(other_seed[0].astype(int) - alone[0].astype(int)).mean() > 1


def test_mismatched_seeds_are_rejected(shapes_t2i):
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate_images(shapes_t2i, ["a large red circle in the center"], [1, 2])
