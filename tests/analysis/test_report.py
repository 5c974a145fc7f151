"""The figures, the static export and the single-file HTML report."""

import re

import numpy as np
import pytest

import trdq
from analysis import figures, report_cli
from analysis.collect import collect_layers, quantized_layers
from analysis.report import layer_table, select_layers, write_report
from trdq.attention import Similarity
from trdq.config import QuantConfig, TimeGroups

PROMPTS = ["a large red circle in the center", "a small blue star on the left"]
CONFIG = QuantConfig(method="trdq", w_bits=8, a_bits=8, time_groups=TimeGroups(2), block_size=32)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quantized(tiny_pixart):
    return trdq.quantize(tiny_pixart, CONFIG, PROMPTS, steps=2)


@pytest.fixture(scope="module")
def layers(tiny_pixart, quantized):
    names = select_layers(quantized_layers(quantized), ["transformer_blocks.0.attn1.*"])
    return collect_layers(tiny_pixart, quantized, names, PROMPTS, steps=2)


def _similarity(layers=3, steps=4, heads=2):
    cosine = np.linspace(0.5, 1.0, layers * steps * heads).reshape(layers, steps, heads)
    return Similarity([f"transformer_blocks.{i}.attn1" for i in range(layers)],
                      [float(t) for t in np.linspace(900, 0, steps)], cosine, np.ones(layers))


def test_select_layers_by_pattern():
    names = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn1.to_q", "transformer_blocks.0.ff.net.2"]
    assert select_layers(names) == [names[0], names[2]]
    assert select_layers(names, ["*ff*", "*blocks.1.*"]) == names[1:]
    with pytest.raises(ValueError, match="match no quantized layer"):
        select_layers(names, ["*attn2*"])


@pytest.mark.slow
def test_layer_table_has_a_row_per_layer_and_group(layers):
    table = layer_table(layers)
    assert len(table) == 2 * len(layers) == 8
    assert set(table["layer"]) == set(layers)
    for stage in ("X", "smoothed", "rotated"):
        assert {f"outliers {stage}", f"kurtosis {stage}", f"SQNR {stage} (dB)"} <= set(table.columns)
    assert (table["output SQNR (dB)"] > 30).all()


def test_error_curve_shades_each_time_group():
    fig = figures.error_curve_figure([20.0, 21, 22, 25, 26, 30], 3)
    spans = [(s.x0, s.x1) for s in fig.layout.shapes]
    assert spans == [(-0.5, 1.5), (1.5, 3.5), (3.5, 5.5)]
    fig = figures.error_curve_figure([20.0] * 6, TimeGroups(boundaries=(0, 1)))
    assert [(s.x0, s.x1) for s in fig.layout.shapes] == [(-0.5, 0.5), (0.5, 5.5)]


def test_attention_heatmap_is_layers_by_steps():
    sim = _similarity()
    fig = figures.attention_similarity_figure(sim)
    assert np.asarray(fig.data[0].z).shape == (3, 4)
    np.testing.assert_allclose(np.asarray(fig.data[0].z).mean(1), sim.per_layer())


def test_static_png_export(layers, tmp_path):
    group = next(iter(layers.values())).groups[0]
    hist = figures.histogram_figure(figures.stages(group))
    assert [t.name for t in hist.data] == list(figures.stages(group))
    for name, fig in {"hist": hist, "err": figures.error_curve_figure([30.0, 31, 29, 35], 2),
                      "att": figures.attention_similarity_figure(_similarity())}.items():
        path = figures.to_png(fig, tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == PNG
    surface = figures.magnitude_surface_figure(figures.stages(group))
    with pytest.raises(ValueError, match="write_html"):
        figures.to_png(surface, tmp_path / "surface.png")


def test_report_is_one_self_contained_html_file(layers, tmp_path):
    chosen = "transformer_blocks.0.attn1.to_out.0"
    path = write_report(tmp_path / "sub" / "report.html", "tiny-pixart", CONFIG, layers, chosen=chosen,
                        group=1, eps_sqnr_db=[40.0, 42.0], similarity=_similarity(), notes={"steps": 2})
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["report.html"]
    text = path.read_text()
    assert text.count("plotly.js v") == 1  # the library inlined once
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing fetched from outside
    assert text.count('class="plotly-graph-div"') == 6
    for key in ("histogram", "surface", "channel-absmax", "weight-absmax", "eps-sqnr", "attention-similarity"):
        assert f'id="fig-{key}"' in text
    assert all(name in text for name in layers) and "block_size" in text and "tiny-pixart" in text
    with pytest.raises(ValueError, match="not collected"):
        write_report(tmp_path / "x.html", "m", CONFIG, layers, chosen="transformer_blocks.1.ff.net.2")
    with pytest.raises(ValueError, match="time groups 0..1"):
        write_report(tmp_path / "x.html", "m", CONFIG, layers, group=2)


@pytest.mark.slow
def test_report_command_end_to_end(tiny_pixart, tmp_path, monkeypatch):
    monkeypatch.setattr("trdq.models.loader.load_model", lambda name: tiny_pixart)
    out = tmp_path / "report.html"
    assert report_cli.main(["--model", "tiny", "--bits", "w4a8", "--groups", "2", "--prompts", "2", "--steps", "2",
                            "--block-size", "32", "--layers", "*blocks.1.ff.*", "--out", str(out)]) == 0
    text = out.read_text()
    assert "transformer_blocks.1.ff.net.2" in text and "transformer_blocks.0.attn1" not in text.split("<h2>")[2]
    assert text.count('class="plotly-graph-div"') == 6 and "w4a8" in text
