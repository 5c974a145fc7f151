"""The quality frontier: every method's quality as the bits go down, from eval records.

The records are those of ``python -m trdq eval`` over the bits :data:`LADDER` (one model, one set
of prompts). Nothing here runs a model.

    python -m trdq eval --methods fp,rtn,smoothquant,quarot,duquant,viditq,trdq \\
        --bits w8a8,w4a8,w4a4,w3a4,w4a3,w3a3,w2a4 --no-eps-sqnr --resume --json FILE
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

#: The bit settings of the frontier, from most to fewest bits (weights + activations).
LADDER = ("w8a8", "w4a8", "w4a4", "w3a4", "w4a3", "w3a3", "w2a4")
#: Methods in the order the tables and the plot show them.
METHOD_ORDER = ("rtn", "smoothquant", "quarot", "duquant", "viditq", "trdq")
METRICS = {  # column -> (title, higher is better)
    "adherence": ("prompt adherence", True),
    "psnr_vs_fp": ("PSNR against FP (dB)", True),
    "shapes_fd": ("shapes_fd (lower is better)", False),
}
#: How far below FP's adherence a method may fall and still count as keeping it.
ADHERENCE_TOLERANCE = 0.05


def _plain(records: Sequence[dict]) -> list[dict]:
    """Records without Attention-Sharing or a CFG split: one per (method, bits)."""
    return [r for r in records if "sharing" not in r and not r.get("cfg_split")]


def frontier(records: Sequence[dict], metric: str) -> pd.DataFrame:
    """``metric`` per method (rows, :data:`METHOD_ORDER` first) and bits (columns, :data:`LADDER`
    order); NaN where a pair was not evaluated."""
    rows = [r for r in _plain(records) if r["method"] != "fp" and r["bits"] in LADDER]
    if not rows:  # a run that has sampled FP and nothing else yet
        return pd.DataFrame(index=pd.Index([], name="method"), columns=list(LADDER), dtype=float)
    table = pd.DataFrame(rows).pivot_table(index="method", columns="bits", values=metric, aggfunc="first")
    methods = [m for m in METHOD_ORDER if m in table.index] + sorted(set(table.index) - set(METHOD_ORDER))
    return table.reindex(index=methods, columns=list(LADDER))


def fp_record(records: Sequence[dict]) -> dict:
    fp = [r for r in _plain(records) if r["method"] == "fp"]
    if not fp:
        raise ValueError("the frontier needs the FP model's record (evaluate with --methods fp,...)")
    return fp[0]


def lowest_kept(records: Sequence[dict], tolerance: float = ADHERENCE_TOLERANCE) -> dict[str, str | None]:
    """Per method, the last rung of :data:`LADDER` down to which every evaluated rung keeps
    adherence within ``tolerance`` of FP's (None if W8A8 already falls short). Walking down stops
    at the first rung that falls short or was not evaluated, so the answer never skips a failure."""
    fp = fp_record(records)["adherence"]
    adherence = frontier(records, "adherence")
    kept = {}
    for method, row in adherence.iterrows():
        last = None
        for bits in LADDER:
            if pd.isna(row[bits]) or row[bits] < fp - tolerance - 1e-9:  # 0.995 - 0.05 is 0.94500...01
                break
            last = bits
        kept[method] = last
    return kept


def _kept_label(row: pd.Series, last: str | None) -> str:
    """:func:`lowest_kept`'s answer for one method, saying where the walk stopped at a rung not
    evaluated yet (``·``: not even W8A8; "W4A4 so far": the rung below W4A4 is still to come)."""
    following = LADDER.index(last) + 1 if last else 0
    if following < len(LADDER) and pd.isna(row[LADDER[following]]):
        return "·" if last is None else f"{last.upper()} so far"
    return (last or "none").upper()


def _cells(table: pd.DataFrame, fmt: str, higher_better: bool) -> pd.DataFrame:
    """Formatted values, the best of each column in bold, ``·`` where nothing was measured."""
    best = table.max() if higher_better else table.min()
    out = table.copy().astype(object)
    for bits in table.columns:
        for method in table.index:
            v = table.loc[method, bits]
            if pd.isna(v):
                out.loc[method, bits] = "·"
            else:
                text = format(v, fmt)
                out.loc[method, bits] = f"**{text}**" if v == best[bits] else text
    return out


def markdown(records: Sequence[dict], tolerance: float = ADHERENCE_TOLERANCE,
             metrics: Sequence[str] = ("adherence", "psnr_vs_fp", "shapes_fd")) -> str:
    """A table per metric (by default adherence, PSNR against FP and shapes_fd), a row per method
    and a column per rung, the best per rung in bold; the adherence table ends with
    :func:`lowest_kept`."""
    fp = fp_record(records)
    kept = lowest_kept(records, tolerance)
    parts = [f"{fp['num_prompts']} prompts, {fp['steps']} steps, guidance {fp['guidance']}, seed {fp['seed']}; "
             f"FP: adherence {fp['adherence']:.3f}, shapes_fd {fp['shapes_fd']:.1f}. "
             f"`·`: not evaluated yet. Model: {fp['model']}, simulated quantization."]
    formats = {"adherence": ".3f", "psnr_vs_fp": ".2f", "shapes_fd": ".1f"}
    for metric, fmt in ((m, formats[m]) for m in metrics):
        title, higher = METRICS[metric]
        table = _cells(frontier(records, metric), fmt, higher)
        table.columns = [b.upper() for b in table.columns]
        if metric == "adherence":
            rungs = frontier(records, "adherence")
            table[f"kept within {tolerance} of FP down to"] = [_kept_label(rungs.loc[m], kept[m]) for m in table.index]
        table.insert(0, "method", table.index)
        header = f"**{title}**"
        lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
        parts.append(header + "\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def plot(records: Sequence[dict], path: str | Path) -> Path:
    """A PNG with one panel per metric of :data:`METRICS` against the rungs, one line per method
    and FP as a dashed line where it has a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp = fp_record(records)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), constrained_layout=True)
    x = range(len(LADDER))
    for ax, (metric, (title, _)) in zip(axes, METRICS.items()):
        table = frontier(records, metric)
        for method, row in table.iterrows():
            ax.plot(x, row.values.astype(float), marker="o", label=method, lw=2 if method == "trdq" else 1.2)
        if metric in fp:
            ax.axhline(fp[metric], color="k", ls="--", lw=1, label="fp")
        ax.set_xticks(list(x), [b.upper() for b in LADDER], rotation=45)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{fp['model']}: quality as bits go down ({fp['num_prompts']} prompts, simulated)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
