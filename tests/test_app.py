"""The app's handlers, called directly as the UI calls them, the grid's maths (error maps, detector
readings), the shipped examples, and one gradio_client round trip."""

import json

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

import app
import trdq
from analysis import compare as grid
from analysis import examples as shipped
from trdq.config import QuantConfig
from trdq.demo import motion, shapes
from trdq.demo.eval.detector import load_detector

IMAGE = "shapes-t2i (image, PixArt)"
RECIPE = dict(groups=1, rotation="none", block_size=64, search_alpha=True, cfg_split=False, uncond_bits="same",
              share="off", execution="simulated")
ALPHAS = (0.5,) * app.MAX_GROUPS
FP_PARTS, SLOT_PARTS = 4, 4  # header, FP title, output, facts; per slot title, output, error map, facts


def _compare(prompt="a large red circle in the center", seed=0, steps=3, guidance=4.5, model=IMAGE,
             slots=(("rtn", "w8a8"),), alphas=ALPHAS, **kw):
    return app.compare(model, prompt, seed, steps, guidance, slots, app.Recipe(**{**RECIPE, **kw}, alphas=alphas))


def _columns(values):
    """{"header", "fp": (title, output, facts), "slots": [(title, output, error map, facts), ...]}."""
    assert len(values) == FP_PARTS + SLOT_PARTS * app.NUM_SLOTS
    rest = values[FP_PARTS:]
    return {"header": values[0], "fp": tuple(values[1:FP_PARTS]),
            "slots": [tuple(rest[i:i + SLOT_PARTS]) for i in range(0, len(rest), SLOT_PARTS)]}


def _quantize_config(method="rtn", bits="w8a8", alphas=ALPHAS, **kw):
    """What the Quantize tab sends: method, bits and the recipe."""
    return method, bits, app.Recipe(**{**RECIPE, **kw}, alphas=alphas)


def _serve_tiny(monkeypatch, label: str, name: str, model, example: str) -> str:
    """Have the app serve ``model`` as one more model, ``label`` in the picker: grids calibrate in seconds."""
    monkeypatch.setitem(app.MODELS, label, name)
    monkeypatch.setattr(app, "AVAILABLE", [*app.AVAILABLE, label])
    monkeypatch.setitem(app.CALIBRATION, name, 2)
    monkeypatch.setitem(app.EXAMPLES, name, [example])
    real_fp = app.fp_model
    monkeypatch.setattr(app, "fp_model", lambda n: model if n == name else real_fp(n))
    app.MODEL_CACHE.clear()
    return label


@pytest.fixture
def tiny_image_model(monkeypatch, tiny_pixart):
    """The app serving a tiny random PixArt as a third model."""
    yield _serve_tiny(monkeypatch, "tiny image", "tiny-pixart", tiny_pixart, "a small red circle on the left")
    app.MODEL_CACHE.clear()


# ---------------------------------------------------------------- the grid


@pytest.mark.slow
def test_compare_grid_shows_fp_and_a_slot_with_error_map_reading_and_facts():
    cols = _columns(_compare())
    fp_title, fp_image, fp_facts = cols["fp"]
    title, q_image, error, facts = cols["slots"][0]
    assert fp_image.shape == q_image.shape == error.shape == (256, 256, 3)
    assert "full precision" in fp_title and "transformer weights" in fp_facts and " s · peak RSS" in fp_facts
    assert "rtn W8A8**<br>simulated" in title and "PSNR vs FP" in facts and "SSIM vs FP" in facts
    assert "detector" in facts and "position:" in facts and "peak RSS" in facts
    assert "|Q − FP| ×" in cols["header"] and "seed 0" in cols["header"] and "computed now" in cols["header"]
    assert cols["slots"][1:] == [tuple(app.EMPTY_SLOT)] * (app.NUM_SLOTS - 1)


def test_four_slots_make_four_columns_each_with_its_error_map_and_reading(tiny_image_model):
    slots = [("rtn", "w8a8"), ("smoothquant", "w4a4"), ("viditq", "w3a3"), ("trdq", "w3a3")]
    cols = _columns(_compare(model=tiny_image_model, prompt="a small red circle on the left", steps=4,
                             slots=slots, groups=2, rotation="duquant", block_size=32))
    for (method, bits), (title, output, error, facts) in zip(slots, cols["slots"]):
        assert f"{method} {bits.upper()}" in title
        assert output.shape == error.shape and error.dtype == np.uint8
        assert facts.count("✓") + facts.count("✗") == 4  # size, colour, shape, position marked
        assert "PSNR vs FP" in facts
    assert "✓" in cols["fp"][2] or "✗" in cols["fp"][2]


def test_quantized_models_are_cached_per_configuration(monkeypatch):
    _compare()
    calls = []
    monkeypatch.setattr(app.trdq, "quantize", lambda *a, **k: calls.append(a) or pytest.fail("calibrated again"))
    _compare(seed=5)
    assert calls == []


def test_the_model_cache_is_bounded_by_memory(monkeypatch, tiny_image_model):
    """Each tiny quantized model takes ~0.4 MB, ~0.9 MB once its first forward has built its
    dequantized weights: a 1 MB bound keeps only the newest calibration."""
    monkeypatch.setattr(app, "MODEL_CACHE", app.ModelCache(2**20))
    for bits in ("w8a8", "w4a4"):
        _compare(model=tiny_image_model, prompt="a small red circle on the left", steps=2, slots=[("rtn", bits)])
    assert len(app.MODEL_CACHE) == 1 and app.MODEL_CACHE.nbytes() < 2**20


@pytest.mark.parametrize("seed", [2 ** 64, -1, 1.5])
def test_out_of_range_seeds_get_a_message(seed):
    with pytest.raises(gr.Error, match="Seed must be a whole number from 0 to 2\\^63 - 1"):
        _compare(seed=seed)


def test_all_slots_off_shows_full_precision_alone():
    cols = _columns(_compare(slots=()))
    assert cols["fp"][1].shape == (256, 256, 3) and "|Q − FP|" not in cols["header"]
    assert all(s == tuple(app.EMPTY_SLOT) for s in cols["slots"])


@pytest.mark.parametrize("kw,match", [
    ({"prompt": ""}, "Type a prompt"),
    ({"steps": 0}, "between 1 and 100"),
    ({"groups": 8, "steps": 4}, "time groups"),
    ({"slots": [("rtn", "w9a8")]}, "2..8"),
    ({"slots": [("rtn", "w4")]}, "form WxAy"),
    ({"groups": 12, "steps": 20, "search_alpha": False}, "search alpha_g instead"),
    ({"cfg_split": True, "share": "1"}, "turn off the CFG split"),
    ({"model": "sdxl"}, "Unknown model"),
    ({"share": "many"}, "cosine threshold"),
])
@pytest.mark.slow
def test_bad_input_is_a_ui_error_that_says_what_to_change(kw, match):
    with pytest.raises(gr.Error, match=match):
        _compare(**kw)


@pytest.mark.parametrize("execution", [e for e in app.EXECUTIONS if e != "simulated"])
def test_real_integer_execution_is_labelled(execution):
    title, q_image, _, facts = _columns(_compare(execution=execution, slots=[("rtn", "w4a8")]))["slots"][0]
    assert q_image.shape == (256, 256, 3) and "real integer" in title and "W4A8" in title
    assert "simulated only" not in facts and "int8 GEMM" in facts  # W4A8 has kernels of its own


def test_real_integer_below_the_kernels_widths_says_its_savings_are_simulated():
    title, _, _, facts = _columns(_compare(execution="real integer (per-group weights)",
                                           slots=[("rtn", "w6a6")]))["slots"][0]
    assert "real integer" in title and "simulated only" in facts and "W8A8 containers" in facts


def test_quantized_attention_scores_are_a_recipe_setting_and_say_so_under_the_output():
    facts = _columns(_compare(attention="8-bit scores (QKᵀ)"))["slots"][0][3]
    assert "attention scores QKᵀ at 8 bits" in facts
    assert app.Recipe(attention="8-bit scores (QKᵀ)").config("trdq", "w8a8").attention_bits == 8
    assert app.Recipe().config("trdq", "w8a8").attention_bits is None


def test_widget_values_become_one_recipe():
    recipe = app.Recipe.from_widgets(2.0, "hadamard", 32.0, False, True, "w4a4", "6-bit scores (QKᵀ)", "25%",
                                     "simulated", *[0.25] * app.MAX_GROUPS)
    assert recipe == app.Recipe(groups=2, rotation="hadamard", block_size=32, search_alpha=False,
                                alphas=(0.25,) * app.MAX_GROUPS, cfg_split=True, uncond_bits="w4a4",
                                attention="6-bit scores (QKᵀ)", share="25%", execution="simulated")
    config = recipe.config("trdq", "w4a8")
    assert config.alpha == (0.25, 0.25) and config.uncond_bits == (4, 4) and config.attention_bits == 6
    with pytest.raises(gr.Error, match="Unknown attention"):
        app.Recipe(attention="int4")


def test_unknown_execution_is_a_ui_error():
    with pytest.raises(gr.Error, match="Unknown execution"):
        _compare(execution="gpu")


def test_attention_sharing_is_reported_with_the_compute_it_skips():
    facts = _columns(_compare(share="1"))["slots"][0][3]
    assert "sharing 1 layers" in facts and "of uncond scores" in facts


@pytest.mark.slow
def test_cfg_split_runs_with_coarser_uncond_bits():
    title, q_image, _, _ = _columns(_compare(slots=[("trdq", "w8a8")], groups=2, cfg_split=True,
                                             uncond_bits="w4a4"))["slots"][0]
    assert q_image.shape == (256, 256, 3) and "W8A8/UNCOND-W4A4" in title


def test_video_model_compares_clips_with_error_clips_and_direction(monkeypatch, tiny_latte):
    _serve_tiny(monkeypatch, "tiny video", "tiny-latte", tiny_latte, "a small red circle moving up")
    cols = _columns(_compare(model="tiny video", prompt="a small red circle moving up", steps=2))
    _, fp_clip, fp_facts = cols["fp"]
    title, q_clip, error, facts = cols["slots"][0]
    assert fp_clip.endswith(".gif") and Image.open(q_clip).n_frames == 4 and "simulated" in title
    assert Image.open(error).n_frames == 4
    assert "direction:" in facts and "size:" in facts and "(not scored)" in facts
    app.MODEL_CACHE.clear()


# ---------------------------------------------------------------- error maps


def test_error_map_is_black_where_outputs_agree_and_bright_where_they_differ():
    fp = np.full((8, 8, 3), 100, np.uint8)
    q = fp.copy()
    q[2, 3, 1] = 116  # 16 levels off in green
    emap = grid.error_map(q, fp, gain=8)
    assert emap.shape == (8, 8, 3) and emap.dtype == np.uint8
    assert emap[0, 0].tolist() == [0, 0, 0]
    assert emap[2, 3, 0] > 0  # 16 x 8 = 128 of 255: red, partly yellow
    assert grid.error_map(q, fp, gain=16)[2, 3].tolist() == [255, 255, 255]  # 16 x 16 saturates: white
    with pytest.raises(ValueError, match="cannot compare"):
        grid.error_map(q[:4], fp, gain=1)


def test_one_gain_per_grid_amplifies_at_least_four_times_and_more_when_every_error_is_faint():
    faint, strong = np.full((10, 10), 3, np.uint8), np.full((10, 10), 200, np.uint8)
    assert grid.error_gain([strong, faint]) == 4  # a saturating map does not hide the others
    assert grid.error_gain([faint, np.full((10, 10), 12, np.uint8)]) == 16  # 12 x 16 = 192 <= 255 < 12 x 32
    assert grid.error_gain([faint]) == 32 and grid.error_gain([np.zeros((4, 4), np.uint8)]) == 32  # capped
    assert "× 4" in grid.error_scale(4) and "white ≥ 64" in grid.error_scale(4)


def test_clip_error_maps_are_per_frame():
    fp = np.zeros((3, 4, 4, 3), np.uint8)
    q = fp.copy()
    q[1, 0, 0] = 255
    emap = grid.error_map(q, fp, gain=1)
    assert emap.shape == (3, 4, 4, 3) and emap[1, 0, 0].tolist() == [255, 255, 255] and emap[0].max() == 0


# ---------------------------------------------------------------- detector readings


@pytest.fixture(scope="module")
def detector():
    return load_detector()


def test_detector_reads_a_true_render_as_its_prompt(detector):
    scene = shapes.parse_caption("a large blue triangle on the left")
    image = np.asarray(shapes.render(scene, np.random.default_rng(0)))
    readings = grid.read_output(image, scene.caption, "shapes", detector)
    assert [r.attribute for r in readings] == ["size", "color", "shape", "position"]
    assert all(r.right for r in readings) and grid.adheres(readings)
    text = grid.readings_markdown(readings)
    assert "adheres" in text and text.count("✓") == 4 and "color: blue" in text


def test_detector_marks_what_differs_from_the_prompt(detector):
    image = np.asarray(shapes.render("a large blue triangle on the left", np.random.default_rng(0)))
    readings = grid.read_output(image, "a large red triangle on the left", "shapes", detector)
    wrong = [r for r in readings if r.right is False]
    assert [r.attribute for r in wrong] == ["color"] and grid.adheres(readings) is False
    assert "✗ color: blue (asked red)" in grid.readings_markdown(readings)


def test_a_prompt_outside_the_grammar_is_read_but_not_marked(detector):
    image = np.asarray(shapes.render("a small green star at the top", np.random.default_rng(1)))
    readings = grid.read_output(image, "a dog on a sofa", "shapes", detector)
    assert all(r.right is None for r in readings) and grid.adheres(readings) is None
    assert "outside the grammar" in grid.readings_markdown(readings)


def test_detector_reads_a_clip_with_its_direction(detector):
    scene = motion.parse_caption("a large green star moving right")
    clip = motion.render_clip(scene, np.random.default_rng(0))
    readings = {r.attribute: r for r in grid.read_output(clip, scene.caption, "moving-shapes", detector)}
    assert readings["direction"].read == "right" and readings["direction"].right
    assert readings["color"].right and readings["shape"].right and not readings["size"].scored


# ---------------------------------------------------------------- shipped answers


def test_page_opens_on_the_shipped_default_grid():
    cols = _columns(app.show_example(IMAGE))
    assert "precomputed" in cols["header"] and "|Q − FP| ×" in cols["header"]
    assert cols["fp"][1].shape == (256, 256, 3)
    for (method, bits), (title, output, error, facts) in zip(grid.DEFAULT_SLOTS, cols["slots"]):
        assert f"{method} {bits.upper()}" in title and output.shape == error.shape == (256, 256, 3)
        assert "detector" in facts and "PSNR vs FP" in facts


def test_shipped_grid_was_made_with_the_app_defaults():
    """The examples show what Compare computes with the page's default values."""
    meta, _, _ = shipped.load_grid("shapes-t2i")
    defaults = [app.Recipe().config(m, b) for m, b in grid.DEFAULT_SLOTS]
    assert defaults == [QuantConfig.from_dict(c) for c in meta["configs"]]
    assert (meta["steps"], meta["guidance"], meta["seed"]) == (20, 4.5, 0)
    assert meta["calibration_prompts"] == app.CALIBRATION["shapes-t2i"]
    assert shipped.shipped_prompts("shapes-t2i") == app.EXAMPLES["shapes-t2i"]


def test_an_example_prompt_shows_its_own_shipped_grid_and_a_model_switch_sets_its_prompt():
    prompt = app.EXAMPLES["shapes-t2i"][1]
    assert prompt in app.show_example(IMAGE, prompt)[0]
    values = app.switch_model(IMAGE)
    assert values[0] == app.EXAMPLES["shapes-t2i"][0] and values[1:3] == [20, 4.5]  # its trdq settings
    assert len(values) == 3 + FP_PARTS + SLOT_PARTS * app.NUM_SLOTS


def test_a_model_without_shipped_examples_says_how_to_get_a_grid(tiny_image_model):
    cols = _columns(app.show_example(tiny_image_model))
    assert "press **Compare**" in cols["header"] and cols["fp"][1] is None


def test_distributions_and_trajectory_open_on_shipped_cases():
    layer, group, *figs, table, caption = app.shipped_distributions(IMAGE)
    assert layer == "transformer_blocks.7.attn2.to_q" and group == 3
    assert all(isinstance(f, go.Figure) for f in figs) and list(table["group"]) == [0, 1, 2, 3]
    assert "Precomputed" in caption and "trdq w3a3" in caption
    curve, heat, caption = app.shipped_trajectory(IMAGE)
    assert len(curve.data[0].y) == 20 and isinstance(heat, go.Figure) and "Precomputed" in caption
    *_, caption = app.shipped_distributions("shapes-t2v (video, Latte)")  # no shipped case: says what to press
    assert "press **List layers**" in caption and "press **Measure**" in app.shipped_trajectory("video")[2]


def test_bits_notes_say_when_savings_are_simulated_only():
    assert "simulated only" in app.bits_note("w3a3") and "W4A8 containers" in app.bits_note("w3a3")
    assert "natively" in app.bits_note("w4a8") and "natively" in app.bits_note("w8a8")
    assert "2..8" in app.bits_note("w1a8")
    assert "Slots 1, 2" in app.slots_note("rtn", "w3a3", "trdq", "w3a3", "off", "w2a2", "rtn", "w8a8")
    assert app.slots_note("rtn", "w8a8", "off", "w3a3", "off", "w3a3", "off", "w3a3") == ""


# ---------------------------------------------------------------- the other tabs


def test_demo_is_a_blocks_app_with_its_tabs_each_opening_with_a_guide():
    assert isinstance(app.demo, gr.Blocks)
    labels = {b.label for b in app.demo.blocks.values() if isinstance(b, gr.Tab)}
    assert labels >= set(app.GUIDES) == {"Compare", "Quantize", "Distributions", "Trajectory", "Benchmark"}
    assert {"w8a8", "w6a6", "w4a8", "w4a4", "w3a4", "w4a3", "w3a3", "w2a4", "w2a8"} <= set(app.BITS)


@pytest.mark.slow
def test_quantize_sets_alpha_per_group_and_says_when_it_reuses_a_calibration():
    args = _quantize_config(method="viditq", groups=2, search_alpha=False,
                            alphas=(0.3, 0.7) + (0.5,) * (app.MAX_GROUPS - 2))
    first = app.quantize(IMAGE, *args)
    assert "alpha_g 0.3, 0.7" in first and "2 time groups" in first
    assert "Taken from the cache" in app.quantize(IMAGE, *args)


@pytest.mark.slow
def test_distributions_and_trajectory_draw_their_figures():
    args = _quantize_config(method="trdq", groups=2, rotation="duquant", block_size=32)
    layer, group = app.layer_choices(IMAGE, *args)
    assert layer.value == "transformer_blocks.0.attn1.to_q" and group.maximum == 1
    *figs, table, caption = app.distributions(IMAGE, layer.value, 1, 4, 4.5, *args)
    assert all(isinstance(f, go.Figure) for f in figs) and len(figs) == 4
    assert list(table["group"]) == [0, 1] and "Computed now" in caption
    curve, heat, caption = app.trajectory(IMAGE, 4, 4.5, *args)
    assert len(curve.data[0].y) == 4 and isinstance(heat, go.Figure) and "Computed now" in caption
    with pytest.raises(gr.Error, match="Pick a layer"):
        app.distributions(IMAGE, "", 0, 4, 4.5, *args)


def test_distributions_work_with_one_time_group(tiny_image_model):
    args = _quantize_config(method="rtn", groups=1)
    layer, group = app.layer_choices(tiny_image_model, *args)
    # a slider whose minimum equals its maximum is an error in the browser: 0..1, fixed at 0
    assert group.maximum == 1 and group.value == 0 and group.interactive is False
    *figs, table, caption = app.distributions(tiny_image_model, layer.value, 0, 2, 4.5, *args)
    assert len(figs) == 4 and list(table["group"]) == [0]
    with pytest.raises(gr.Error, match="Time group 1 does not exist with 1 group"):
        app.distributions(tiny_image_model, layer.value, 1, 2, 4.5, *args)


def test_clips_are_written_once_per_content_and_pruned(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "MEDIA_DIR", tmp_path / "media")
    monkeypatch.setattr(app, "MAX_MEDIA_FILES", 2)
    clips = [np.full((2, 4, 4, 3), v, np.uint8) for v in (0, 80, 160)]
    first = app.media(clips[0], scale=1)
    assert app.media(clips[0], scale=1) == first  # the same clip reuses its file
    for clip in clips[1:]:
        app.media(clip, scale=1)
    assert len(list((tmp_path / "media").iterdir())) == 2


def test_benchmark_tab_reads_the_reports():
    files = app.benchmark_files()
    assert files, "assets/results holds the benchmark reports"
    table, fig = app.benchmark(files[0])
    # the tab opens on the report of this machine's CPU class
    assert ("avx2" in files[0]) != app.cpu_info().int8_dot
    if not app.cpu_info().int8_dot:  # where bf16 and torch._int_mm are slow, with the peers that use them
        assert "torchao-w8a8" in table and "quanto-w8a8" in table and "| bf16 |" in table
    assert "| backend |" in table and len(fig.data) == 2
    assert " faster than " in table or " slower than " in table  # one line per backend under the table
    with pytest.raises(gr.Error, match="python -m trdq bench"):
        app.benchmark("bench-missing.json")
    memory = [f for f in files if f.startswith("memory-")]
    assert memory and files.index(memory[0]) > files.index(files[0])  # after the timed reports
    table, fig = app.benchmark(memory[0])
    assert "at 28 blocks (MiB)" in table and " smaller than bf16 at the published 28 blocks" in table
    assert [bar.name for bar in fig.data] == ["weights as built (MiB)", "at the published depth (MiB)"]


def test_a_clip_becomes_an_animated_gif():
    clip = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    for f in range(4):
        clip[f, :, 2 * f:2 * f + 8] = 200  # a bar moving right
    path = app.media(clip)
    assert path.endswith(".gif") and Image.open(path).n_frames == 4
    assert app.media(clip[0]).shape == (64, 64, 3)  # enlarged 4x, nearest neighbour
    assert (app.media(clip[0])[::4, ::4] == clip[0]).all()


@pytest.mark.slow
def test_gradio_client_round_trip():
    from gradio_client import Client

    _, url, _ = app.demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        files = app.benchmark_files()
        table, _ = client.predict(files[0], api_name="/benchmark")
        assert "| backend |" in table
        slots = ["rtn", "w8a8"] + ["off", "w8a8"] * (app.NUM_SLOTS - 1)
        recipe = [RECIPE[k] for k in ("groups", "rotation", "block_size", "search_alpha", "cfg_split", "uncond_bits")]
        values = client.predict(IMAGE, "a small blue star on the left", 3, 2, 4.5, *slots, *recipe,
                                "8-bit scores (QKᵀ)", RECIPE["share"], RECIPE["execution"], *ALPHAS,
                                api_name="/compare")
        cols = _columns(list(values))
        assert "full precision" in cols["fp"][0] and "simulated" in cols["slots"][0][0]
        assert "attention scores QKᵀ at 8 bits" in cols["slots"][0][3]  # the recipe arrived whole
        assert np.asarray(Image.open(cols["slots"][0][1])).shape == (256, 256, 3)
        assert np.asarray(Image.open(cols["slots"][0][2])).shape == (256, 256, 3)
    finally:
        app.demo.close()


def test_benchmark_reports_are_json_with_results():
    for name in app.benchmark_files():
        assert "results" in json.loads((app.RESULTS / name).read_text())


# ---------------------------------------------------------------- a user's own model


@pytest.fixture
def users_app(monkeypatch):
    """The app's model picker, restored after the test."""
    monkeypatch.setattr(app, "MODELS", dict(app.MODELS))
    monkeypatch.setattr(app, "AVAILABLE", list(app.AVAILABLE))
    monkeypatch.setattr(app, "CHECKPOINTS", {})
    monkeypatch.setattr(app, "PLACEMENT", {})
    monkeypatch.setattr(app, "USER_CAPTIONS", {})
    yield
    app.MODEL_CACHE.clear()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tests.conftest import build_tiny_pixart

    folder = tmp_path_factory.mktemp("user") / "tiny-pixart"
    build_tiny_pixart().pipe.save_pretrained(folder)
    return folder


def test_a_users_pipeline_folder_is_loaded_by_path_and_compared_with_device_latency_and_memory(
        users_app, tiny_folder):
    picker, status, prompt, steps, guidance, *opened = app.add_model(str(tiny_folder))
    label = picker.value
    assert label in app.AVAILABLE and "PixArtTransformer2DModel" in status and "pixart" in status
    assert "on cpu in float32" in status and "4 general captions" in status
    assert (steps, guidance) == (20, 4.5)  # PixArt-alpha's own defaults: the folder has no trdq settings
    assert prompt == app.GENERAL_CAPTIONS[0] and "press **Compare**" in opened[0]  # no shipped grid for it
    cols = _columns(app.compare(label, "a red fox resting in the snow", 0, 2, 4.5, [("trdq", "w8a8")],
                                app.Recipe(groups=1, block_size=32)))
    (_, fp_image, fp_facts), (title, q_image, error, facts) = cols["fp"], cols["slots"][0]
    assert fp_image.shape == q_image.shape == error.shape and "trdq W8A8" in title and "simulated" in title
    for text in (fp_facts, facts):
        assert "cpu, float32" in text and " s · peak RSS" in text and "detector**: not run" in text
    assert "PSNR vs FP" in facts


def test_a_users_captions_file_calibrates_their_model_and_a_bad_file_says_why(users_app, tiny_folder, tmp_path,
                                                                              monkeypatch):
    seen = []
    calibrate = app.calibrate_groups
    monkeypatch.setattr(app, "calibrate_groups", lambda m, g, prompts, **kw: seen.append(prompts) or
                        calibrate(m, g, prompts, **kw))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x89PNG\x00\xff")
    with pytest.raises(gr.Error, match="captions file cannot be used: .* is not UTF-8 text"):
        app.add_model(str(tiny_folder), str(bad))
    mine = tmp_path / "mine.txt"
    mine.write_text("a lamp on a desk\n\na bridge at night\n")
    picker, status, *_ = app.add_model(str(tiny_folder), str(mine))
    assert "2 of your captions" in status
    app.compare(picker.value, "a lamp", 0, 2, 4.5, [("rtn", "w8a8")], app.Recipe(groups=1))
    assert seen == [["a lamp on a desk", "a bridge at night"]]
    app.add_model(str(tiny_folder))  # no file now: the general captions, calibrated afresh
    app.compare(picker.value, "a lamp", 0, 2, 4.5, [("rtn", "w8a8")], app.Recipe(groups=1))
    assert seen[1] == list(app.GENERAL_CAPTIONS[:app.USER_CALIBRATION])


def test_a_model_placed_in_half_precision_loads_calibrates_and_says_so(users_app, tiny_folder, monkeypatch):
    """What a GPU gives a user's model (its family's half precision), tried here in bf16 on the CPU."""
    monkeypatch.setattr(app, "placement", lambda family: ("cpu", torch.bfloat16))
    picker, status, *_ = app.add_model(str(tiny_folder))
    assert "on cpu in bfloat16" in status
    assert app.fp_model(app.MODELS[picker.value]).pipe.transformer.dtype == torch.bfloat16
    cols = _columns(app.compare(picker.value, "a red fox", 0, 2, 4.5, [("trdq", "w8a8")],
                                app.Recipe(groups=1, block_size=32)))
    assert "cpu, bfloat16" in cols["fp"][2] and "PSNR vs FP" in cols["slots"][0][3]
    app.fp_model.cache_clear()  # the tests after load the same folder in float32


def test_on_a_zerogpu_space_the_sampling_handlers_run_under_the_spaces_decorator(monkeypatch):
    import sys
    import types

    wrapped = []
    fake = types.ModuleType("spaces")
    fake.GPU = lambda duration: lambda fn: wrapped.append((fn.__name__, duration)) or fn
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    app.build_demo()
    assert wrapped == []  # elsewhere the handlers are left as they are
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    app.build_demo()
    assert sorted(name for name, _ in wrapped) == ["add_model", "on_compare", "on_distributions", "on_quantize",
                                                   "on_trajectory"]
    assert {d for _, d in wrapped} == {app.GPU_SECONDS}


def test_models_the_app_cannot_take_get_a_message_that_says_why(users_app, tiny_folder, tmp_path, monkeypatch):
    unet = tmp_path / "sd"
    unet.mkdir()
    (unet / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["diffusers", "UNet2DConditionModel"]}))
    (tmp_path / "empty").mkdir()
    for source, message in [(str(unet), "UNet2DConditionModel; trdq quantizes diffusion transformers: "
                                        "PixArtTransformer2DModel"),
                            ("someone/not-in-the-cache", "not in the local Hugging Face cache"),
                            (str(tmp_path / "empty"), "no model_index.json"), ("", "Type the path"),
                            ("not a model", "neither a folder nor a hub id")]:
        with pytest.raises(gr.Error, match=message):
            app.add_model(source)
    monkeypatch.setattr(app, "MEMORY_LIMIT", 2**20)  # 1 MiB free: the tiny model needs more
    with pytest.raises(gr.Error, match=r"MiB in float32, .* where 1\.0 MiB of memory is free"):
        app.add_model(str(tiny_folder))
    assert len(app.AVAILABLE) == 2  # nothing was added


def test_a_quantized_folder_is_compared_with_the_model_it_was_made_from(users_app, tiny_folder, tmp_path):
    base = trdq.load_model(str(tiny_folder))
    q = trdq.quantize(base, QuantConfig(method="rtn", w_bits=4), ["a red circle"], steps=2)
    folder = trdq.save_pretrained(q, tmp_path / "my-checkpoint")
    picker, status, prompt, steps, guidance, header, *_ = app.add_model(str(folder))
    assert "trdq checkpoint: rtn W4A8, 1 time group" in picker.value and str(tiny_folder) in status
    assert "Press **Compare** to see your checkpoint" in header
    assert app.MODELS[picker.value] == str(tiny_folder)  # FP and the other tabs run on the base
    prompt, steps = "a red fox resting in the snow", 2
    with pytest.warns(UserWarning, match="checkpoint takes the first column: slot 4 is not shown"):
        cols = _columns(app.compare(picker.value, prompt, 0, steps, 4.5, [("trdq", "w8a8")] * 4,
                                    app.Recipe(groups=1)))
    titles = [slot[0] for slot in cols["slots"]]
    assert "rtn W4A8" in titles[0] and all("trdq W8A8" in t for t in titles[1:])  # slot 4 gave way
    assert "your checkpoint my-checkpoint" in cols["slots"][0][3] and "PSNR vs FP" in cols["slots"][0][3]
    # the column is the checkpoint's own output: the same pixels the in-memory model draws from that seed
    assert np.array_equal(cols["slots"][0][1], app.media(grid.sample(q, prompt, 0, steps, 4.5)[0]))
    real = app.Recipe(groups=1, execution="real integer (per-group weights)")
    cols = _columns(app.compare(picker.value, prompt, 0, steps, 4.5, [("off", "w8a8")], real))
    assert "rtn W4A8**<br>real integer" in cols["slots"][0][0] and cols["slots"][1][0] == app.EMPTY_SLOT[0]


def test_a_checkpoint_without_its_base_model_here_says_how_to_go_on(users_app, tiny_folder, tmp_path):
    from tests.conftest import build_tiny_pixart

    q = trdq.quantize(trdq.load_model(str(tiny_folder)), QuantConfig(method="rtn"), ["a red circle"], steps=2)
    folder = trdq.save_pretrained(q, tmp_path / "q")
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    other = tmp_path / "other-pixart"  # same architecture, other weights
    build_tiny_pixart(seed=1).pipe.save_pretrained(other)
    for base, message in [(str(tmp_path / "gone"), "which is not here .*`python -m trdq generate --model"),
                          (str(other), "was not made from the .* found here .*weights of .* differ")]:
        config["quantization_config"]["base_model"] = base
        config_file.write_text(json.dumps(config))
        with pytest.raises(gr.Error, match=message):
            app.add_model(str(folder))
    assert not app.CHECKPOINTS and len(app.AVAILABLE) == 2


@pytest.mark.slow
def test_a_users_latte_folder_compares_clips(users_app, tiny_latte, tmp_path):
    tiny_latte.pipe.save_pretrained(tmp_path / "latte")
    picker, status, *_ = app.add_model(str(tmp_path / "latte"))
    assert "LatteTransformer3DModel" in status and "latte" in status
    cols = _columns(app.compare(picker.value, "a boat sailing at sunset", 0, 2, 4.5, [("rtn", "w8a8")],
                                app.Recipe(groups=1)))
    (_, fp_clip, fp_facts), (title, q_clip, error, facts) = cols["fp"], cols["slots"][0]
    assert fp_clip.endswith(".gif") and Image.open(q_clip).n_frames == Image.open(error).n_frames == 4
    assert "rtn W8A8" in title and "detector**: not run" in facts
    assert "cpu, float32" in facts and "cpu, float32" in fp_facts
