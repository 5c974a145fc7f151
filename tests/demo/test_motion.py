import numpy as np
import pytest

from trdq.demo import motion, shapes
from trdq.demo.eval.clips import track


def test_every_scene_round_trips_through_its_caption():
    scenes = motion.all_scenes()
    assert len(scenes) == 2 * 6 * 4 * 4
    assert all(motion.parse_caption(s.caption) == s for s in scenes)
    assert motion.parse_caption(" A Large GREEN star moving right.") == motion.MovingScene(
        "large", "green", "star", "right")


@pytest.mark.parametrize("bad", ["a small red circle on the left", "a small red circle moving sideways",
                                 "a small red circle moving", "a huge red circle moving up", ""])
def test_captions_outside_the_grammar_are_rejected_with_the_grammar(bad):
    with pytest.raises(ValueError, match="Expected: a {size} {color} {shape} moving {direction}"):
        motion.parse_caption(bad)


def test_vocabulary_extends_the_shapes_words_by_the_motion_words():
    assert motion.VOCABULARY - shapes.VOCABULARY == {"moving", "up", "down"}
    assert motion.unknown_words("a small red circle moving sideways") == ["sideways"]


def test_sample_scenes_covers_the_grammar_evenly():
    scenes = motion.sample_scenes(2 * 192, seed=3)
    assert sorted(map(str, scenes)) == sorted(map(str, motion.all_scenes() * 2))


@pytest.mark.parametrize("direction", motion.DIRECTIONS)
def test_a_clip_moves_its_object_in_the_caption_direction(direction):
    rng = np.random.default_rng(0)
    clip = motion.render_clip(motion.MovingScene("large", "blue", "square", direction), rng, frames=8, size=48)
    assert clip.shape == (8, 48, 48, 3) and clip.dtype == np.uint8
    centres, area = track(clip[None])
    step = np.diff(centres[0], axis=0)  # per-frame displacement (x, y)
    dx, dy = motion.STEPS[direction]
    along = step @ np.array([dx, dy])
    assert (along > 0).all() and along.sum() > motion.TRAVEL[0] * 0.9
    across = step @ np.array([dy, dx])
    assert np.abs(across).max() < 0.01
    assert area[0].std() / area[0].mean() < 0.05  # same object in every frame


def test_clips_are_reproducible_and_jittered():
    scenes = motion.sample_scenes(4, seed=0)
    a, b = motion.render_clips(scenes, seed=1), motion.render_clips(scenes, seed=1)
    assert (a == b).all()
    assert (a != motion.render_clips(scenes, seed=2)).any()
