import numpy as np
import pytest

from trdq.demo import motion, shapes
from trdq.demo.eval.clips import directions, recentre, score_clips, track
from trdq.demo.eval.detector import load_detector

SCENES = motion.sample_scenes(48, seed=1)


@pytest.fixture(scope="module")
def detector():
    return load_detector()


@pytest.fixture(scope="module")
def clips():
    return motion.render_clips(SCENES, seed=5)


def test_renders_of_the_grammar_score_full_adherence(clips, detector):
    scores = score_clips(clips, SCENES, detector)
    assert scores["adherence"] == 1.0 and scores["acc_direction"] == 1.0
    assert scores["temporal_consistency"] > 0.95


def test_reversed_clips_get_every_direction_wrong(clips, detector):
    scores = score_clips(clips[:, ::-1].copy(), SCENES, detector)
    assert scores["acc_direction"] == 0.0 and scores["adherence"] == 0.0
    assert scores["acc_color"] == 1.0


def test_an_object_that_changes_identity_lowers_temporal_consistency(clips, detector):
    swapped = clips.copy()
    other = motion.render_clips([motion.MovingScene("small", s.color, "star" if s.shape != "star" else "circle",
                                                     s.direction) for s in SCENES], seed=5)
    swapped[:, 4:] = other[:, 4:]  # second half: another shape and size
    base = score_clips(clips, SCENES, detector)["temporal_consistency"]
    assert score_clips(swapped, SCENES, detector)["temporal_consistency"] < base - 0.2


def test_a_blank_clip_has_no_direction_and_no_consistency(detector):
    blank = np.full((1, 8, 64, 64, 3), shapes.BACKGROUND, dtype=np.uint8)
    assert directions(track(blank)[0]).tolist() == [-1]
    assert score_clips(blank, SCENES[:1], detector)["temporal_consistency"] == 0.0


def test_recentre_moves_the_object_to_the_middle(clips):
    frames = clips[:4].reshape(-1, 64, 64, 3)
    centres = track(frames[None])[0][0]
    moved = track(recentre(frames, centres)[None])[0][0]
    assert np.abs(moved - 0.5).max() < 0.03


def test_a_clip_count_that_does_not_match_the_scenes_is_rejected(clips, detector):
    with pytest.raises(ValueError, match="one scene per clip"):
        score_clips(clips[:2], SCENES[:3], detector)
