"""Rewrite the README's result tables from the JSON files the measuring commands wrote.

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; nothing in them is
typed by hand.

    python -m analysis readme
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "assets" / "results"


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def quality_table(path: Path) -> str:
    records = json.loads(path.read_text())
    rows = [{
        "model": r["model"], "method": r["method"], "bits": r["bits"], "execution": r["execution"],
        "prompts": r["num_prompts"], "steps": r["steps"], "guidance": r["guidance"],
        "adherence": f"{r['adherence']:.3f}", "size": f"{r['acc_size']:.3f}",
        "color": f"{r['acc_color']:.3f}", "shape": f"{r['acc_shape']:.3f}",
        "position": f"{r['acc_position']:.3f}", "shapes_fd": f"{r['shapes_fd']:.2f}",
    } for r in records]
    return _markdown(pd.DataFrame(rows))


def quantized_table(path: Path) -> str:
    """Quantized models against FP: quality, closeness to FP, trajectory error, calibration time."""
    rows = []
    for r in json.loads(path.read_text()):
        rows.append({
            "method": r["method"], "bits": r["bits"], "execution": r["execution"],
            "groups": r.get("num_groups", "-"), "adherence": f"{r['adherence']:.3f}",
            "shapes_fd": f"{r['shapes_fd']:.1f}",
            "psnr_vs_fp (dB)": f"{r['psnr_vs_fp']:.2f}" if "psnr_vs_fp" in r else "-",
            "ssim_vs_fp": f"{r['ssim_vs_fp']:.3f}" if "ssim_vs_fp" in r else "-",
            "eps_sqnr_db": f"{r['eps_sqnr_db']:.2f}" if "eps_sqnr_db" in r else "-",
            "calib (s)": f"{r['calib_seconds']:.1f}" if "calib_seconds" in r else "-",
        })
    return _markdown(pd.DataFrame(rows))


def ablation_table(path: Path) -> str:
    """TR-DQ's ingredients switched on and off: time groups x smoothing x rotation, per bit setting."""
    rows = []
    for r in json.loads(path.read_text()):
        if r["method"] != "trdq":
            continue
        smoothing = "searched" if r["smoothing"] == "search" else f"fixed {r['alpha']}"
        rows.append({
            "bits": r["bits"], "groups": r["num_groups"], "alpha_g": smoothing, "rotation": r["rotation"],
            "adherence": f"{r['adherence']:.3f}", "psnr_vs_fp (dB)": f"{r['psnr_vs_fp']:.2f}",
            "eps_sqnr_db": f"{r['eps_sqnr_db']:.2f}", "calib (s)": f"{r['calib_seconds']:.1f}",
        })
    return _markdown(pd.DataFrame(rows))


def outlier_table(path: Path, shown_steps: tuple[int, ...] = (0, 5, 10, 15, 19)) -> str:
    """Per layer kind: the largest max/median channel ratio over blocks at a few steps."""
    df = pd.DataFrame(json.loads(path.read_text()))
    steps = [s for s in shown_steps if s in set(df["step"])]
    rows = []
    for layer, group in df.groupby("layer", sort=True):
        row = {"layer (input of)": f"`{layer}`"}
        for s in steps:
            at = group[group["step"] == s]
            top = at.loc[at["ratio"].idxmax()]
            row[f"step {s} (t={int(top['timestep'])})"] = f"{top['ratio']:.1f} (b{int(top['block'])})"
        row["max kurtosis"] = f"{group['kurtosis'].max():.1f}"
        rows.append(row)
    return _markdown(pd.DataFrame(rows))


TABLES = {
    "quality": (RESULTS / "shapes-t2i-fp.json", quality_table),
    "outliers": (RESULTS / "shapes-t2i-outliers.json", outlier_table),
    "quantized": (RESULTS / "shapes-t2i-quant-200.json", quantized_table),
    "ablation": (RESULTS / "shapes-t2i-ablation.json", ablation_table),
}


def update(readme: Path = ROOT / "README.md") -> list[str]:
    """Replace every table whose JSON exists; returns the names of the tables written."""
    text, written = readme.read_text(), []
    for name, (path, render) in TABLES.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.S)
        if path.exists() and pattern.search(text):
            body = render(path)
            text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
            written.append(name)
    readme.write_text(text)
    return written
