"""python -m analysis: the subcommands that write data."""

import json

import pytest


def test_similarity_command_exports_every_layer_step_and_head(tmp_path, monkeypatch, tiny_pixart):
    import trdq.models.loader as loader
    from analysis.__main__ import main

    monkeypatch.setattr(loader, "load_model", lambda name: tiny_pixart)
    out = tmp_path / "sim.json"
    assert main(["similarity", "--model", "tiny", "--num-prompts", "2", "--steps", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["layers"]) == 2 and len(data["timesteps"]) == 2
    assert len(data["records"]) == 2 * 2 * 2  # layers x steps x heads


@pytest.mark.slow
def test_no_analysis_module_imports_the_app():
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys, analysis\n"
            "for m in pkgutil.iter_modules(analysis.__path__): importlib.import_module('analysis.' + m.name)\n"
            "print('app' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_checkpoints_command_measures_folder_size_and_load_memory_and_the_readme_renders_it(tmp_path):
    from analysis.__main__ import main
    from analysis.readme import checkpoint_table

    out = tmp_path / "ckpt.json"
    assert main(["checkpoints", "--model", "pixart-xl-random", "--layers", "1", "--bits", "w4a8",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert report["blocks"] == 1 and row["bits"] == "w4a8"
    # 4-bit codes packed: far below the bf16 checkpoint even with one block's float parts beside them
    assert 0 < row["folder_bytes"] < 0.6 * report["bf16_safetensors_bytes"]
    for load in ("load_simulated", "load_real"):
        assert row[load]["load_peak_above_imports"] > 0 and row[load]["loaded"] == "PixArtTransformer2DModel"
    assert any(line.startswith("|") and "w4a8" in line for line in checkpoint_table(out).splitlines())
