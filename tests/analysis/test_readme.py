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



def test_attention_table_measures_each_row_against_the_same_model_with_float_attention(tmp_path):
    from analysis.readme import attention_table

    def record(bits, qk, adherence, psnr):
        return {"method": "trdq", "bits": bits, "attention_bits": qk, "num_prompts": 200, "adherence": adherence,
                "shapes_fd": 40.0, "psnr_vs_fp": psnr, "eps_sqnr_db": 30.0}

    records = [{"method": "fp", "bits": "fp32", "num_prompts": 200, "adherence": 0.99, "shapes_fd": 40.0},
               record("w8a8", None, 0.99, 40.0), record("w8a8", 8, 0.99, 39.5),
               record("w4a8", None, 0.98, 35.0), record("w4a8", 8, 0.985, 33.0)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records))
    lines = attention_table(path).splitlines()
    assert lines[2].startswith("| fp | fp32 | fp |") and lines[3].endswith("| - | - | - |")
    assert "| scores at 8 bits |" in lines[4] and lines[4].endswith("| +0.50 | +0.000 | yes |")
    assert lines[6].endswith("| +2.00 | -0.005 | - |")  # the bar is for W8A8
    records[2]["adherence"] = 0.98  # one prompt fewer right: the bar is missed
    path.write_text(json.dumps(records))
    assert attention_table(path).splitlines()[4].endswith("| +0.50 | +0.010 | no |")


def test_update_rewrites_a_table_on_every_page_it_appears_and_the_pages_are_the_readme_and_docs(
        tmp_path, monkeypatch):
    import analysis.readme as readme

    path = tmp_path / "a.json"
    path.write_text(json.dumps(_records(31.0)))
    monkeypatch.setattr(readme, "TABLES", {"ablation": (path, ablation_table)})
    monkeypatch.setattr(readme, "FIGURES", {})
    pages = [tmp_path / "README.md", tmp_path / "results.md"]
    for page in pages:
        page.write_text(f"{page.stem}\n<!-- table:ablation -->\n<!-- /table:ablation -->\n")
    assert update(*pages) == ["ablation"]
    assert all("| w4a8 | 4 | searched | duquant |" in page.read_text() for page in pages)
    names = [p.relative_to(readme.ROOT).as_posix() for p in readme.documents()]
    assert names[0] == "README.md" and {"docs/method.md", "docs/results.md", "docs/usage.md"} <= set(names)


def test_the_readme_headline_is_the_frontier_adherence_table_alone(tmp_path):
    from analysis.readme import frontier_adherence_table, frontier_table

    records = [{"method": "fp", "bits": "fp32", "adherence": 0.99, "shapes_fd": 40.0, "num_prompts": 8,
                "steps": 20, "guidance": 4.5, "seed": 0, "model": "m"}]
    records += [{"method": m, "bits": b, "adherence": 0.98, "psnr_vs_fp": 30.0, "shapes_fd": 41.0, "model": "m",
                 "num_prompts": 8} for m in ("rtn", "trdq") for b in ("w8a8", "w3a3")]
    path = tmp_path / "f.json"
    path.write_text(json.dumps(records))
    headline, full = frontier_adherence_table(path), frontier_table(path)
    assert "**prompt adherence**" in headline and "kept within" in headline and "PSNR" not in headline
    assert full.startswith(headline)  # the same first table
