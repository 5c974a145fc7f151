import numpy as np
import pytest

from trdq.demo import shapes


def test_every_scene_round_trips_through_its_caption():
    scenes = shapes.all_scenes()
    assert len(scenes) == 240
    assert all(shapes.parse_caption(s.caption) == s for s in scenes)


def test_parse_is_tolerant_of_case_space_and_full_stop():
    assert shapes.parse_caption("  A Small  RED circle on the left.") == shapes.Scene(
        "small", "red", "circle", "on the left")


@pytest.mark.parametrize("bad", ["a tiny red circle on the left", "a small red hexagon at the top",
                                 "a small red circle", "red circle on the left", ""])
def test_captions_outside_the_grammar_are_rejected_with_the_grammar(bad):
    with pytest.raises(ValueError, match="Expected: a {size}"):
        shapes.parse_caption(bad)


def test_unknown_words():
    assert shapes.unknown_words("a small red circle on the left") == []
    assert shapes.unknown_words("a fluffy red cat") == ["fluffy", "cat"]


def test_sample_scenes_covers_the_grammar_evenly():
    scenes = shapes.sample_scenes(480, seed=3)
    counts = {s: scenes.count(s) for s in set(scenes)}
    assert len(counts) == 240 and set(counts.values()) == {2}


def test_render_is_seeded_and_jittered():
    scene = shapes.Scene("large", "green", "star", "at the top")
    a = np.asarray(shapes.render(scene, np.random.default_rng(0)))
    b = np.asarray(shapes.render(scene, np.random.default_rng(0)))
    c = np.asarray(shapes.render(scene, np.random.default_rng(1)))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _object_mask(image: np.ndarray) -> np.ndarray:
    return np.abs(image.astype(int) - np.array(shapes.BACKGROUND)).sum(-1) > 60


@pytest.mark.parametrize("position", shapes.POSITIONS)
def test_object_centre_lies_at_its_position(position):
    image = np.asarray(shapes.render(f"a large red square {position}", jitter=False))
    ys, xs = np.nonzero(_object_mask(image))
    expected = np.array(shapes.CENTRES[position]) * 64
    assert np.allclose([xs.mean() + 0.5, ys.mean() + 0.5], expected, atol=1.5)


def test_large_objects_cover_more_pixels_than_small_ones_and_carry_their_colour():
    for shape in shapes.SHAPES:
        small = np.asarray(shapes.render(f"a small blue {shape} in the center", jitter=False))
        large = np.asarray(shapes.render(f"a large blue {shape} in the center", jitter=False))
        assert _object_mask(large).sum() > 2 * _object_mask(small).sum()
        centre = large[32, 32].astype(int)
        assert np.abs(centre - np.array(shapes.RGB["blue"])).max() < 5
