import dataclasses

import numpy as np
import pytest

from trdq.sampling import generate, text_embeddings


def test_one_seed_gives_one_image_in_any_batch(shapes_t2i):
    prompts = ["a large red circle in the center", "a small blue star on the left"]
    both = generate(shapes_t2i, prompts, [7, 8], steps=3)
    alone = generate(shapes_t2i, prompts[1:], [8], steps=3)
    assert both.shape == (2, 64, 64, 3) and both.dtype == np.uint8
    assert np.abs(both[1].astype(int) - alone[0].astype(int)).max() <= 2
    other_seed = generate(shapes_t2i, prompts[1:], [9], steps=3)
    assert np.abs(other_seed[0].astype(int) - alone[0].astype(int)).mean() > 1


def test_mismatched_seeds_are_rejected(shapes_t2i):
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate(shapes_t2i, ["a large red circle in the center"], [1, 2])


@pytest.mark.parametrize("kwargs,match", [
    ({"guidance": float("nan")}, "guidance must be a finite number"), ({"guidance": float("inf")}, "finite"),
    ({"seeds": [2 ** 63]}, "seeds must be integers in 0..2"), ({"seeds": [-1]}, "seeds"),
    ({"seeds": [1.5]}, "seeds"), ({"steps": 0}, "steps"), ({"batch_size": 0}, "batch_size"),
])
def test_values_that_would_sample_something_else_are_rejected_before_sampling(shapes_t2i, kwargs, match):
    def never(*a, **k):
        raise AssertionError("sampled")

    model = dataclasses.replace(shapes_t2i, pipe=type("Pipe", (), {"__call__": never})())
    with pytest.raises(ValueError, match=match):
        generate(model, ["a small red circle on the left"], **{"seeds": [0], **kwargs})


def test_a_video_model_gives_clips_and_one_seed_one_clip_in_any_batch(tiny_latte):
    prompts = ["a large red circle moving left", "a small blue star moving up"]
    both = generate(tiny_latte, prompts, [7, 8], steps=2)
    alone = generate(tiny_latte, prompts[1:], [8], steps=2)
    assert both.shape == (2, 4, 32, 32, 3) and both.dtype == np.uint8
    assert np.abs(both[1].astype(int) - alone[0].astype(int)).max() <= 2


def test_video_captions_are_encoded_in_the_fixed_layout(tiny_latte):
    pipe = tiny_latte.pipe
    cond, uncond = text_embeddings(pipe, ["a small red circle moving up"], 16)
    assert cond.shape == uncond.shape == (1, 16, 128)
    real = len(pipe.tokenizer("a small red circle moving up").input_ids)  # 6 words + </s>
    assert cond[0, real:].abs().max() == 0 and cond[0, :real].abs().min() > 0
    assert uncond[0, 1:].abs().amax(-1).min() > 0  # the empty caption is not masked
