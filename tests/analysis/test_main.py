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
