"""README tables are rendered from result JSON, and the bar check says "no" where a bar is missed."""

import json

from analysis.readme import ablation_table, bars_table, update

METHODS = ["rtn", "smoothquant", "quarot", "duquant", "viditq", "trdq"]


def _records(trdq_w4a8_psnr):
    records = [{"method": "fp", "bits": "fp32", "adherence": 0.99}]
    for m in METHODS:
        for bits in ("w8a8", "w4a8", "w4a4"):
            psnr = trdq_w4a8_psnr if (m, bits) == ("trdq", "w4a8") else 30.0 + (m == "trdq")
            records.append({"method": m, "bits": bits, "adherence": 0.99, "psnr_vs_fp": psnr,
                            "eps_sqnr_db": 25.0 + (m == "trdq"), "calib_seconds": 20.0,
                            "num_groups": 4, "smoothing": "search", "alpha": None, "rotation": "duquant"})
    return records


def test_bars_table_marks_a_missed_bar(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps(_records(trdq_w4a8_psnr=31.0)))
    assert "**no**" not in bars_table(path)
    path.write_text(json.dumps(_records(trdq_w4a8_psnr=29.0)))
    missed = [line for line in bars_table(path).splitlines() if "**no**" in line]
    assert len(missed) == 1 and "W4A8 psnr_vs_fp" in missed[0] and "29.00" in missed[0]


def test_update_rewrites_only_marked_tables(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_records(31.0)))
    import analysis.readme as readme

    monkeypatch.setattr(readme, "TABLES", {"ablation": (path, ablation_table)})
    monkeypatch.setattr(readme, "FIGURES", {})
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- table:ablation -->\nold\n<!-- /table:ablation -->\nend\n")
    assert update(doc) == ["ablation"]
    text = doc.read_text()
    assert "old" not in text and "| w4a8 | 4 | searched | duquant |" in text and text.endswith("end\n")


def test_sharing_table_checks_skip_and_drop_against_the_unshared_model(tmp_path):
    from analysis.readme import sharing_table

    records = [{"method": "trdq", "bits": "w8a8", "adherence": 0.99, "psnr_vs_fp": 50.0},
               {"method": "trdq", "bits": "w8a8", "adherence": 0.98, "psnr_vs_fp": 40.0, "sharing": "top2",
                "shared_layers": ["a", "b"], "attn_score_skipped": 0.25},
               {"method": "trdq", "bits": "w8a8", "adherence": 0.95, "psnr_vs_fp": 30.0, "sharing": "top4",
                "shared_layers": ["a", "b", "c", "d"], "attn_score_skipped": 0.5}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(records))
    lines = sharing_table(path).splitlines()
    assert "| top2 | 2 | 25% | 0.980 | +0.010 | 40.00 | yes |" in lines[3]
    assert lines[4].endswith("| no |") and "+0.040" in lines[4]

