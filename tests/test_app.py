import gradio as gr
import numpy as np
import pytest

import app


def test_generate_handler_returns_an_image_labelled_full_precision():
    image, info = app.generate_fp("a large red circle in the center", 0, 3, 4.5)
    assert image.shape == (64, 64, 3)
    assert "full precision" in info


@pytest.mark.parametrize("prompt,steps", [("", 20), ("a large red circle in the center", 0)])
def test_bad_input_is_a_ui_error(prompt, steps):
    with pytest.raises(gr.Error):
        app.generate_fp(prompt, 0, steps, 4.5)


def test_demo_is_a_blocks_app():
    assert isinstance(app.demo, gr.Blocks)
