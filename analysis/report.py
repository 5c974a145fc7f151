"""One self-contained HTML report of a quantized model: its config, a per-layer table of outlier
and quantization statistics per time group, the figures of :mod:`analysis.figures` for one layer,
the per-step noise-prediction error and the cond/uncond attention similarity.

plotly.js is inlined once, so the file opens offline and can be mailed as it is.

    python -m analysis report --model shapes-t2i --method trdq --bits w4a8 --groups 4 --out runs/report.html
"""

from __future__ import annotations

import fnmatch
import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from analysis import figures, stats
from analysis.collect import LayerActivations, collect_layers, quantized_layers
from trdq.api import quant_info
from trdq.attention import Similarity, measure_similarity
from trdq.demo.eval.trajectory import eps_sqnr_per_step
from trdq.models.loader import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_LAYERS = ("*transformer_blocks.0.*",)  # one block (spatial and temporal for video): cheap
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}.note{color:#555}"""


def select_layers(names: Sequence[str], patterns: Sequence[str] = DEFAULT_LAYERS) -> list[str]:
    """The names matching any fnmatch pattern, in model order.

    Raises:
        ValueError: if no name matches; the message lists a few names to choose from.
    """
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"layer patterns {list(patterns)} match no quantized layer; names look like "
                         f"{list(names[:3])} (use e.g. --layers '*blocks.1.*')")
    return chosen


def layer_table(layers: Mapping[str, LayerActivations], k: float = stats.DEFAULT_K) -> pd.DataFrame:
    """One row per layer and time group: outlier fraction and max/median ratio, kurtosis and per-token
    SQNR at the layer's activation bits, for the input ``X``, ``X Delta^-1`` and ``X Delta^-1 R``,
    and the quantized layer's output SQNR, all on the sampled rows."""
    rows = []
    for name, layer in layers.items():
        for g in layer.groups:
            row = {"layer": name, "group": g.group, "transform": g.kind,
                   "alpha": "-" if g.alpha is None else g.alpha, "tokens": g.tokens}
            for stage, x in (("X", g.x), ("smoothed", g.smoothed), ("rotated", g.rotated)):
                s = stats.describe(x, layer.a_bits, layer.a_symmetric, k)
                row |= {f"outliers {stage}": s.outlier_fraction, f"max/median {stage}": s.outlier_ratio,
                        f"kurtosis {stage}": s.kurtosis, f"SQNR {stage} (dB)": s.sqnr_db}
            rows.append(row | {"output SQNR (dB)": g.output_sqnr_db})
    return pd.DataFrame(rows)


def layer_figures(layer: LayerActivations, group: int = 0) -> dict[str, go.Figure]:
    """The figures of one layer: histograms and |x| surfaces of ``group``, per-channel input and
    weight abs-max of every group.

    Raises:
        ValueError: for a group the layer does not have.
    """
    if not 0 <= group < layer.num_groups:
        raise ValueError(f"{layer.name} has time groups 0..{layer.num_groups - 1}, not {group}")
    tensors = figures.stages(layer.groups[group])
    return {
        "histogram": figures.histogram_figure(tensors, title=f"Activations of {layer.name}, group {group}"),
        "surface": figures.magnitude_surface_figure(tensors, title=f"|x| of {layer.name}, group {group}"),
        "channel-absmax": figures.channel_absmax_figure(layer),
        "weight-absmax": figures.weight_absmax_figure(layer),
    }


def _config_rows(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _figure_html(figs: Mapping[str, go.Figure]) -> str:
    """Each figure in its own div; plotly.js inlined with the first one only."""
    parts = []
    for i, (key, fig) in enumerate(figs.items()):
        body = fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{key}")
        parts.append(f'<section class="figure" id="section-{key}">{body}</section>')
    return "\n".join(parts)


def write_report(path: str | Path, model_name: str, config, layers: Mapping[str, LayerActivations],
                 chosen: str | None = None, group: int = 0, eps_sqnr_db: Sequence[float] | None = None,
                 similarity: Similarity | None = None, notes: Mapping[str, object] | None = None) -> Path:
    """Write the report as one HTML file (plotly.js inlined, no external resources).

    Args:
        path: the .html file to write (parent folders are made).
        model_name: the full-precision model's name.
        config: a :class:`trdq.QuantConfig` (or a dict of its fields).
        layers: collected layers (:func:`analysis.collect.collect_layers`), all in the table.
        chosen: the layer to draw (default: the first of ``layers``).
        group: the time group of the histogram and surface figures.
        eps_sqnr_db: per-step noise-prediction SQNR (:func:`trdq.demo.eval.trajectory.eps_sqnr_per_step`).
        similarity: measured cond/uncond attention similarity.
        notes: extra key/value lines for the header (prompts, steps, ...).

    Raises:
        ValueError: for no layers, or a chosen layer that was not collected.
    """
    if not layers:
        raise ValueError("the report needs at least one collected layer (analysis.collect.collect_layers)")
    chosen = next(iter(layers)) if chosen is None else chosen
    if chosen not in layers:
        raise ValueError(f"layer {chosen!r} was not collected; choose one of {list(layers)[:5]}")
    layer = layers[chosen]
    figs = {**layer_figures(layer, group)}
    if eps_sqnr_db is not None:
        groups = getattr(config, "time_groups", None)  # explicit boundaries shade as they cut
        groups = groups if groups is not None and groups.num_groups == layer.num_groups else layer.num_groups
        figs["eps-sqnr"] = figures.error_curve_figure(eps_sqnr_db, groups)
    if similarity is not None:
        figs["attention-similarity"] = figures.attention_similarity_figure(similarity)
    header = {"model": model_name, **(notes or {})}
    table = layer_table(layers).to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0)
    config_table = pd.DataFrame([{"field": k, "value": str(v)} for k, v in _config_rows(config).items()])
    body = "\n".join([
        f"<h1>TR-DQ report: {html.escape(model_name)}</h1>",
        "<ul>" + "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>"
                         for k, v in header.items()) + "</ul>",
        "<h2>Quantization config</h2>", config_table.to_html(index=False, border=0),
        "<h2>Layers per time group</h2>",
        '<p class="note">On sampled input rows of each group: share of outlier channels (abs-max above '
        f"{stats.DEFAULT_K:g} x the median channel), largest/median channel abs-max, kurtosis (3 for a "
        "Gaussian) and per-token SQNR at the activation bits, for the input X, after smoothing (X Δ^-1) "
        "and after smoothing and rotation (X Δ^-1 R); output SQNR of the quantized layer vs FP.</p>",
        table,
        f"<h2>Layer {html.escape(chosen)}</h2>",
        _figure_html(figs),
    ])
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>TR-DQ report: "
            f"{html.escape(model_name)}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def build_report(fp: LoadedModel, qmodel: LoadedModel, prompts: Sequence[str], path: str | Path,
                 patterns: Sequence[str] = DEFAULT_LAYERS, chosen: str | None = None, group: int = 0,
                 steps: int | None = None, guidance: float | None = None, seed: int = 0,
                 notes: Mapping[str, object] | None = None) -> Path:
    """Measure everything the report shows on ``prompts`` and write it.

    Samples the FP model three times: once recording the selected layers' inputs, once comparing
    the quantized noise prediction at every step, once measuring attention similarity (skipped
    without classifier-free guidance).

    Args:
        fp: the full-precision model; ``qmodel`` its quantized version (:func:`trdq.quantize`).
        prompts: analysis prompts (best not the calibration prompts).
        patterns: fnmatch patterns of the layers in the table (:func:`select_layers`).
        chosen: the layer to draw (default: the first selected).
    """
    info = quant_info(qmodel)
    if info is None:
        raise ValueError("build_report needs a quantized model: qmodel = trdq.quantize(fp, config, prompts)")
    names = select_layers(quantized_layers(qmodel), patterns)
    if chosen is not None and chosen not in names:
        names.append(chosen)
    log.info("collecting %d layers on %d prompts", len(names), len(prompts))
    layers = collect_layers(fp, qmodel, names, prompts, steps, guidance, seed)
    seeds = [seed + i for i in range(len(prompts))]
    log.info("per-step noise-prediction SQNR")
    eps = eps_sqnr_per_step(fp, qmodel, list(prompts), seeds, steps, guidance)
    similarity = None
    if (fp.settings.guidance if guidance is None else guidance) > 1:
        log.info("attention similarity")
        similarity = measure_similarity(fp, prompts, steps, guidance, seed)
    return write_report(path, fp.name, info.config, layers, chosen, group, eps, similarity, notes)
