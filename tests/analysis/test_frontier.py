import json

import numpy as np
import pytest

from analysis import frontier
from analysis.readme import frontier_table

FP = {"model": "shapes-t2i", "method": "fp", "bits": "fp32", "adherence": 0.99, "shapes_fd": 40.0,
      "num_prompts": 200, "steps": 20, "guidance": 4.5, "seed": 0}


def _records(adherence: dict[tuple[str, str], float]) -> list[dict]:
    out = [FP]
    for (method, bits), a in adherence.items():
        out.append({**FP, "method": method, "bits": bits, "adherence": a, "psnr_vs_fp": 30 * a,
                    "shapes_fd": 40 / a})
    # records of a sharing rule or a CFG split are not the frontier's
    out.append({**FP, "method": "rtn", "bits": "w8a8", "adherence": 0.0, "sharing": "2"})
    out.append({**FP, "method": "rtn", "bits": "w8a8", "adherence": 0.0, "cfg_split": True})
    return out


def test_frontier_orders_methods_and_rungs_and_marks_gaps():
    table = frontier.frontier(_records({("trdq", "w3a3"): 0.9, ("rtn", "w8a8"): 0.98}), "adherence")
    assert list(table.index) == ["rtn", "trdq"] and list(table.columns) == list(frontier.LADDER)
    assert table.loc["rtn", "w8a8"] == 0.98 and np.isnan(table.loc["rtn", "w3a3"])


def test_lowest_kept_stops_at_the_first_rung_that_falls_short_or_is_missing():
    recs = _records({("rtn", "w8a8"): 0.98, ("rtn", "w4a8"): 0.95, ("rtn", "w4a4"): 0.80, ("rtn", "w3a4"): 0.99,
                     ("trdq", "w8a8"): 0.99, ("trdq", "w4a8"): 0.99, ("trdq", "w3a4"): 0.99,
                     ("quarot", "w8a8"): 0.90})
    kept = frontier.lowest_kept(recs)
    # rtn recovers at W3A4 after failing W4A4: still W4A8; trdq lacks W4A4: W4A8; quarot fails at once
    assert kept == {"rtn": "w4a8", "quarot": None, "trdq": "w4a8"}
    assert frontier.lowest_kept(recs, tolerance=0.2)["rtn"] == "w3a4"
    # exactly 0.05 below FP still counts, whatever float rounding does to 0.995 - 0.05
    edge = [{**FP, "adherence": 0.995}, {**FP, "method": "rtn", "bits": "w8a8", "adherence": 0.945}]
    assert frontier.lowest_kept(edge) == {"rtn": "w8a8"}


def test_markdown_bolds_the_best_per_rung_and_needs_fp(tmp_path):
    recs = _records({("rtn", "w3a3"): 0.75, ("trdq", "w3a3"): 0.95})
    path = tmp_path / "f.json"
    path.write_text(json.dumps(recs))
    text = frontier_table(path)
    row = next(line for line in text.splitlines() if line.startswith("| trdq") and "**0.950**" in line)
    assert "| · |" in row and row.endswith("| · |")  # W8A8 was not evaluated: nothing kept yet, not "none"
    partial = frontier.markdown(_records({("trdq", "w8a8"): 0.99, ("trdq", "w4a8"): 0.98, ("rtn", "w8a8"): 0.5}))
    assert "| trdq | **0.990** | **0.980** | · | · | · | · | · | W4A8 so far |" in partial
    assert "| rtn | 0.500 | · | · | · | · | · | · | NONE |" in partial  # failed at W8A8, whatever is missing
    assert "| rtn | · |" in text and "**28.50**" in text and "**42.1**" in text  # shapes_fd: lower is best
    with pytest.raises(ValueError, match="FP"):
        frontier.markdown(recs[1:])


def test_plot_writes_a_png(tmp_path):
    out = frontier.plot(_records({("rtn", "w8a8"): 0.98, ("trdq", "w3a3"): 0.95}), tmp_path / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_with_only_its_fp_record_renders_empty_tables_and_a_plot(tmp_path):
    assert frontier.frontier([FP], "adherence").empty and frontier.lowest_kept([FP]) == {}
    text = frontier.markdown([FP])
    assert "Model: shapes-t2i" in text and text.count("| method | W8A8 |") == 3
    assert frontier.plot([FP], tmp_path / "f.png").stat().st_size > 0
