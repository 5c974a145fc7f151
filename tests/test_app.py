"""The app's handlers, called directly as the UI calls them, and one gradio_client round trip."""

import json

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

import app

IMAGE = "shapes-t2i (image, PixArt)"
CONFIG = dict(method="rtn", bits="w8a8", groups=1, rotation="none", block_size=64, search_alpha=True,
              cfg_split=False, uncond_bits="same")
ALPHAS = [0.5] * app.MAX_GROUPS


def _config(**kw):
    c = {**CONFIG, **{k: v for k, v in kw.items() if k in CONFIG}}
    return [c[k] for k in CONFIG]


def _compare(prompt="a large red circle in the center", seed=0, steps=3, guidance=4.5, share="off",
             execution="simulated", model=IMAGE, alphas=ALPHAS, **kw):
    return app.compare(model, prompt, seed, steps, guidance, *_config(**kw), share, execution, *alphas)


def test_compare_returns_both_images_with_their_facts():
    fp_image, fp_info, q_image, q_info = _compare()
    assert fp_image.shape == q_image.shape == (256, 256, 3)
    assert "full precision" in fp_info and "transformer weights" in fp_info and "s ·" in fp_info
    assert "simulated" in q_info and "PSNR vs FP" in q_info and "W8A8" in q_info and "peak RSS" in q_info


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
    ({"groups": 12, "steps": 20, "search_alpha": False}, "search alpha_g instead"),
    ({"cfg_split": True, "share": "1"}, "turn off the CFG split"),
    ({"model": "sdxl"}, "Unknown model"),
    ({"share": "many"}, "cosine threshold"),
])
def test_bad_input_is_a_ui_error_that_says_what_to_change(kw, match):
    with pytest.raises(gr.Error, match=match):
        _compare(**kw)


def test_demo_is_a_blocks_app_with_its_tabs():
    assert isinstance(app.demo, gr.Blocks)
    labels = {b.label for b in app.demo.blocks.values() if isinstance(b, gr.Tab)}
    assert {"Compare", "Quantize", "Distributions", "Trajectory", "Benchmark"} <= labels


@pytest.mark.parametrize("execution", ["real integer (per-group weights)", "real integer (one shared weight copy)"])
def test_real_integer_execution_is_labelled(execution):
    _, _, q_image, q_info = _compare(execution=execution, bits="w4a8")
    assert q_image.shape == (256, 256, 3) and "real integer" in q_info and "W4A8" in q_info


def test_unknown_execution_is_a_ui_error():
    with pytest.raises(gr.Error, match="Unknown execution"):
        _compare(execution="gpu")


def test_quantize_sets_alpha_per_group_and_says_when_it_reuses_a_calibration():
    args = _config(method="viditq", groups=2, search_alpha=False)
    alphas = [0.3, 0.7] + [0.5] * (app.MAX_GROUPS - 2)
    first = app.quantize(IMAGE, *args, *alphas)
    assert "alpha_g 0.3, 0.7" in first and "2 time groups" in first
    assert "Taken from the cache" in app.quantize(IMAGE, *args, *alphas)


def test_attention_sharing_is_reported_with_the_compute_it_skips():
    _, _, _, q_info = _compare(share="1")
    assert "sharing 1 layers" in q_info and "of uncond scores" in q_info


def test_cfg_split_runs_with_coarser_uncond_bits():
    _, _, q_image, q_info = _compare(method="trdq", groups=2, bits="w8a8", cfg_split=True, uncond_bits="w4a4")
    assert q_image.shape == (256, 256, 3) and "W8A8/UNCOND-W4A4" in q_info


def test_distributions_and_trajectory_draw_their_figures():
    args = _config(method="trdq", groups=2, rotation="duquant", block_size=32)
    layer, group = app.layer_choices(IMAGE, *args, *ALPHAS)
    assert layer.value == "transformer_blocks.0.attn1.to_q" and group.maximum == 1
    *figs, table = app.distributions(IMAGE, layer.value, 1, 4, 4.5, *args, *ALPHAS)
    assert all(isinstance(f, go.Figure) for f in figs) and len(figs) == 4
    assert list(table["group"]) == [0, 1]
    curve, heat = app.trajectory(IMAGE, 4, 4.5, *args, *ALPHAS)
    assert len(curve.data[0].y) == 4 and isinstance(heat, go.Figure)
    with pytest.raises(gr.Error, match="Pick a layer"):
        app.distributions(IMAGE, "", 0, 4, 4.5, *args, *ALPHAS)


def test_benchmark_tab_reads_the_reports():
    files = app.benchmark_files()
    assert files, "assets/results holds the benchmark reports"
    table, fig = app.benchmark(files[0])
    assert "| backend |" in table and len(fig.data) == 2
    with pytest.raises(gr.Error, match="python -m trdq bench"):
        app.benchmark("bench-missing.json")


def test_a_clip_becomes_an_animated_gif(tmp_path):
    clip = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    for f in range(4):
        clip[f, :, 2 * f:2 * f + 8] = 200  # a bar moving right
    path = app.media(clip)
    assert path.endswith(".gif") and Image.open(path).n_frames == 4
    assert app.media(clip[0]).shape == (64, 64, 3)  # enlarged 4x, nearest neighbour
    assert (app.media(clip[0])[::4, ::4] == clip[0]).all()


def test_video_model_compares_clips(monkeypatch, tiny_latte):
    monkeypatch.setitem(app.MODELS, "tiny video", "tiny-latte")
    monkeypatch.setattr(app, "AVAILABLE", [*app.AVAILABLE, "tiny video"])
    monkeypatch.setitem(app.CALIBRATION, "tiny-latte", 2)
    monkeypatch.setitem(app.EXAMPLES, "tiny-latte", ["a small red circle moving up"])
    real_fp = app.fp_model
    monkeypatch.setattr(app, "fp_model", lambda name: tiny_latte if name == "tiny-latte" else real_fp(name))
    app.quantized_model.cache_clear()
    app.executed_model.cache_clear()
    fp_clip, _, q_clip, q_info = _compare(model="tiny video", prompt="a small red circle moving up", steps=2)
    assert fp_clip.endswith(".gif") and Image.open(q_clip).n_frames == 4 and "simulated" in q_info
    app.quantized_model.cache_clear()
    app.executed_model.cache_clear()


def test_gradio_client_round_trip():
    from gradio_client import Client

    _, url, _ = app.demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        files = app.benchmark_files()
        table, _ = client.predict(files[0], api_name="/benchmark")
        assert "| backend |" in table
        fp_image, fp_info, q_image, q_info = client.predict(
            IMAGE, "a small blue star on the left", 3, 2, 4.5, *_config(), "off", "simulated", *ALPHAS,
            api_name="/compare")
        assert "full precision" in fp_info and "simulated" in q_info
        assert np.asarray(Image.open(q_image)).shape == (256, 256, 3)
    finally:
        app.demo.close()


def test_benchmark_reports_are_json_with_results():
    for name in app.benchmark_files():
        assert "results" in json.loads((app.RESULTS / name).read_text())
