import gradio as gr
import pytest

import app

DEFAULTS = dict(method="rtn", bits="w8a8", groups=1, rotation="none", search_alpha=True, alpha=0.5)


def _compare(prompt="a large red circle in the center", seed=0, steps=3, guidance=4.5, **kw):
    return app.compare(prompt, seed, steps, guidance, **{**DEFAULTS, **kw})


def test_compare_returns_both_images_labelled():
    fp_image, fp_info, q_image, q_info = _compare()
    assert fp_image.shape == q_image.shape == (64, 64, 3)
    assert "full precision" in fp_info
    assert "simulated" in q_info and "PSNR vs FP" in q_info and "W8A8" in q_info


def test_quantized_models_are_cached_per_configuration():
    _compare()
    hits = app.executed_model.cache_info().hits
    _compare(seed=5)
    assert app.executed_model.cache_info().hits == hits + 1


@pytest.mark.parametrize("kw,match", [
    ({"prompt": ""}, "Type a prompt"),
    ({"steps": 0}, "between 1 and 100"),
    ({"groups": 8, "steps": 4}, "time groups"),
    ({"bits": "w9a8"}, "2..8"),
])
def test_bad_input_is_a_ui_error_that_says_what_to_change(kw, match):
    with pytest.raises(gr.Error, match=match):
        _compare(**kw)


def test_demo_is_a_blocks_app():
    assert isinstance(app.demo, gr.Blocks)


@pytest.mark.parametrize("execution", ["real integer (per-group weights)", "real integer (one shared weight copy)"])
def test_real_integer_execution_is_labelled(execution):
    _, _, q_image, q_info = _compare(execution=execution, bits="w4a8")
    assert q_image.shape == (64, 64, 3) and "real integer" in q_info and "W4A8" in q_info


def test_unknown_execution_is_a_ui_error():
    with pytest.raises(gr.Error, match="Unknown execution"):
        _compare(execution="gpu")
