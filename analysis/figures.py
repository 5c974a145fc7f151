"""Figures of what TR-DQ's transforms do: interactive plotly for the app and the HTML report,
and :func:`to_png` for static files (matplotlib; plotly's own static export needs kaleido).

Figures take the outputs of :mod:`analysis.collect` and :mod:`analysis.stats`, a per-step SQNR
list (:func:`trdq.demo.eval.trajectory.eps_sqnr_per_step`) or a :class:`trdq.attention.Similarity`,
and return ``plotly.graph_objects.Figure``; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis import stats
from analysis.collect import GroupActivations, LayerActivations
from trdq.attention import Similarity
from trdq.config import TimeGroups

STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")  # input, smoothed, rotated
STAGE_DASHES = ("solid", "solid", "dash")  # a group without rotation draws rotated over smoothed
GROUP_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def stages(group: GroupActivations) -> dict[str, torch.Tensor]:
    """The sampled inputs of one group at each stage: ``X``, ``X Delta^-1``, ``X Delta^-1 R``."""
    return {"input X": group.x, "smoothed X Δ^-1": group.smoothed, "rotated X Δ^-1 R": group.rotated}


def histogram_figure(tensors: Mapping[str, torch.Tensor], bins: int = stats.DEFAULT_BINS,
                     title: str = "Activation histogram") -> go.Figure:
    """Overlaid histograms (step lines, log counts) of several tensors on one shared axis.

    Args:
        tensors: label -> tensor, e.g. :func:`stages` of one group.
    """
    edges = stats.symmetric_edges(*tensors.values(), bins=bins)
    fig = go.Figure()
    for (label, x), color, dash in zip(tensors.items(), _cycle(STAGE_COLORS, len(tensors)),
                                       _cycle(STAGE_DASHES, len(tensors))):
        h = stats.histogram(x, edges)
        fig.add_trace(go.Scatter(x=h.centres.numpy(), y=h.counts.numpy(), name=label, mode="lines",
                                 line={"shape": "hvh", "color": color, "dash": dash}))
    fig.update_layout(title=title, xaxis_title="value", yaxis_title="count", yaxis_type="log",
                      legend={"orientation": "h", "y": -0.2})
    return fig


def magnitude_surface_figure(tensors: Mapping[str, torch.Tensor], max_tokens: int = 64,
                             title: str = "|x| per token and channel") -> go.Figure:
    """3-D surfaces of ``|x|`` (tokens x channels), one per tensor, on a shared z range: the
    outlier plots of the DuQuant and TR-DQ papers (outlier channels stand as ridges).

    Args:
        tensors: label -> (n, C) activations; the first ``max_tokens`` rows are drawn.
    """
    z = {label: x[:max_tokens].abs().double().numpy() for label, x in tensors.items()}
    top = max(float(v.max()) for v in z.values()) if z else 1.0
    fig = make_subplots(rows=1, cols=len(z), specs=[[{"type": "surface"}] * len(z)],
                        subplot_titles=list(z), horizontal_spacing=0.02)
    for i, v in enumerate(z.values(), start=1):
        fig.add_trace(go.Surface(z=v, cmin=0, cmax=top, colorscale="Viridis", showscale=i == len(z)), 1, i)
    scene = {"xaxis_title": "channel", "yaxis_title": "token", "zaxis_title": "|x|", "zaxis_range": [0, top]}
    fig.update_scenes(**scene)
    fig.update_layout(title=title, height=450)
    return fig


def channel_absmax_figure(layer: LayerActivations) -> go.Figure:
    """Per-channel abs-max of the sampled inputs before and after the transforms, one row per
    time group (after a rotation, channel i is a mix of the original ones)."""
    return _per_group_lines(layer, lambda g: {label: stats.channel_absmax(x) for label, x in stages(g).items()},
                            f"Input abs-max per channel: {layer.name}", "abs-max")


def weight_absmax_figure(layer: LayerActivations) -> go.Figure:
    """Per-input-channel abs-max of the weight: ``W`` and the group's ``W Delta_g R_g``."""
    def lines(g: GroupActivations) -> dict[str, torch.Tensor]:
        return {"W": stats.channel_absmax(layer.weight), "W Δ R": stats.channel_absmax(g.weight)}

    return _per_group_lines(layer, lines, f"Weight abs-max per input channel: {layer.name}", "abs-max")


def _per_group_lines(layer: LayerActivations, lines, title: str, y_title: str) -> go.Figure:
    fig = make_subplots(rows=layer.num_groups, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[f"group {g.group} ({g.kind}, alpha={g.alpha})" for g in layer.groups])
    for row, g in enumerate(layer.groups, start=1):
        series = lines(g)
        for (label, y), color, dash in zip(series.items(), _cycle(STAGE_COLORS, len(series)),
                                           _cycle(STAGE_DASHES, len(series))):
            fig.add_trace(go.Scatter(y=y.numpy(), name=label, mode="lines", legendgroup=label,
                                     showlegend=row == 1, line={"color": color, "dash": dash}), row, 1)
        fig.update_yaxes(title_text=y_title, row=row, col=1)
    fig.update_xaxes(title_text="input channel", row=layer.num_groups, col=1)
    fig.update_layout(title=title, height=220 * layer.num_groups + 120)
    return fig


def error_curve_figure(sqnr_db: Sequence[float], groups: int | TimeGroups,
                       title: str = "Noise-prediction SQNR of the quantized model vs FP") -> go.Figure:
    """Per-step SQNR (dB) of the quantized noise prediction, the background shaded by time group.

    Args:
        sqnr_db: one value per sampling step, first step first
            (:func:`trdq.demo.eval.trajectory.eps_sqnr_per_step`).
        groups: the quantized model's time groups, or their number (uniform groups).
    """
    groups = TimeGroups(groups) if isinstance(groups, int) else groups
    steps = np.arange(len(sqnr_db))
    fig = go.Figure(go.Scatter(x=steps, y=list(sqnr_db), mode="lines+markers", name="SQNR",
                               line={"color": "#222222"}))
    for g, (lo, hi) in enumerate(_group_spans(groups.step_to_group(len(sqnr_db)))):
        fig.add_vrect(x0=lo - 0.5, x1=hi + 0.5, fillcolor=GROUP_COLORS[g % len(GROUP_COLORS)], opacity=0.15,
                      line_width=0, annotation_text=f"g{g}", annotation_position="top left")
    fig.update_layout(title=title, xaxis_title="sampling step", yaxis_title="SQNR (dB)", showlegend=False)
    return fig


def _group_spans(step_to_group: list[int]) -> list[tuple[int, int]]:
    """(first step, last step) of each group, in group order."""
    return [(step_to_group.index(g), len(step_to_group) - 1 - step_to_group[::-1].index(g))
            for g in sorted(set(step_to_group))]


def attention_similarity_figure(similarity: Similarity,
                                title: str = "Cond/uncond attention similarity") -> go.Figure:
    """Heatmap of the cosine between the branches' attention maps, layers x steps (mean over heads)."""
    z = similarity.cosine.mean(2)  # (layers, steps)
    x = [f"{s} (t={t:g})" for s, t in enumerate(similarity.timesteps)]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=similarity.layers, colorscale="Viridis",
                               colorbar={"title": {"text": "cosine"}}))
    fig.update_layout(title=title, xaxis_title="sampling step", yaxis_title="self-attention layer",
                      yaxis_autorange="reversed", height=max(300, 22 * len(similarity.layers) + 150))
    return fig


def _cycle(colors: Sequence[str], n: int) -> list[str]:
    return [colors[i % len(colors)] for i in range(n)]


def to_png(fig: go.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Redraw a single-axes plotly figure (lines, bars, a heatmap, shaded x-ranges, log axes) with
    matplotlib and save it as a PNG, e.g. :func:`error_curve_figure` and :func:`histogram_figure`.

    Raises:
        ValueError: for subplots or trace types it does not redraw (e.g. surfaces); save those as
            HTML with ``fig.write_html``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    unsupported = [t.type for t in fig.data if t.type not in ("scatter", "bar", "heatmap")]
    if unsupported or any(getattr(t, "xaxis", None) not in (None, "x") for t in fig.data):
        raise ValueError(f"to_png redraws single-axes line, bar and heatmap figures only (got "
                         f"{unsupported or 'subplots'}); save this one with fig.write_html(path)")
    out = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(out)
    ax = out.add_subplot()
    for trace in fig.data:
        _draw(ax, out, trace)
    for shape in fig.layout.shapes:
        if shape.type == "rect" and shape.xref == "x":
            ax.axvspan(shape.x0, shape.x1, color=shape.fillcolor, alpha=shape.opacity or 0.2, lw=0)
    ax.set_title(fig.layout.title.text or "")
    ax.set_xlabel(fig.layout.xaxis.title.text or "")
    ax.set_ylabel(fig.layout.yaxis.title.text or "")
    if fig.layout.yaxis.type == "log":
        ax.set_yscale("log")
    if fig.layout.yaxis.autorange == "reversed":
        ax.invert_yaxis()
    if sum(bool(t.name) for t in fig.data if t.type != "heatmap") > 1:
        ax.legend()
    out.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.savefig(path, dpi=dpi)
    return path


def _draw(ax, fig, trace) -> None:
    """One plotly trace on a matplotlib axes."""
    if trace.type == "heatmap":
        image = ax.imshow(np.asarray(trace.z), aspect="auto", cmap="viridis", interpolation="nearest",
                          origin="lower")  # plotly draws row 0 at the bottom too
        if trace.x is not None:
            ax.set_xticks(range(len(trace.x)), list(trace.x), rotation=60, fontsize=7)
        if trace.y is not None:
            ax.set_yticks(range(len(trace.y)), list(trace.y), fontsize=7)
        fig.colorbar(image, ax=ax)
        return
    y = np.asarray(trace.y, dtype=float)
    x = np.arange(len(y)) if trace.x is None else np.asarray(trace.x)
    color = trace.marker.color if trace.type == "bar" else trace.line.color
    if trace.type == "bar":
        ax.bar(x, y, label=trace.name, color=color, alpha=0.6)
    elif trace.line.shape == "hvh":
        ax.step(x, y, where="mid", label=trace.name, color=color, linestyle=_LINESTYLES[trace.line.dash])
    else:
        ax.plot(x, y, label=trace.name, color=color, linestyle=_LINESTYLES[trace.line.dash],
                marker="." if "markers" in (trace.mode or "") else None)


_LINESTYLES = {None: "-", "solid": "-", "dash": "--", "dot": ":", "dashdot": "-."}
