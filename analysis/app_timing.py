"""How fast the app starts and answers its first comparison, each in a fresh process.

    python -m analysis app-timing --json assets/results/app-timing.json

*load* is ``import app`` (Gradio, torch, diffusers and the page layout; the models load lazily);
*first comparison* is the Compare handler with the page's default values in a process that has
just imported the app: it loads the embedded image model, samples it, calibrates the default
TR-DQ configuration and samples the quantized model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_FIRST_COMPARISON = """
import time, json
t0 = time.perf_counter()
import app
loaded = time.perf_counter() - t0
defaults = dict(model=app.AVAILABLE[0], prompt=app.EXAMPLES["shapes-t2i"][0], seed=0, steps=20, guidance=4.5,
                method="trdq", bits="w4a8", groups=4, rotation="duquant", block_size=64, search_alpha=True,
                cfg_split=False, uncond_bits="same", share="off", execution="simulated")
t0 = time.perf_counter()
app.compare(*defaults.values(), *[0.5] * app.MAX_GROUPS, progress=lambda *a, **k: None)
print(json.dumps({"load_s": loaded, "first_comparison_s": time.perf_counter() - t0, "defaults": defaults}))
"""


def measure(threads: int | None = None) -> dict:
    """Time ``import app`` and the first default comparison in a fresh interpreter."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", _FIRST_COMPARISON], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    import torch

    from trdq.bench.report import machine

    return {**result, "machine": machine(threads or torch.get_num_threads())}


def table(path: Path) -> str:
    """The README line: load and first-comparison seconds, with the machine they ran on."""
    r = json.loads(Path(path).read_text())
    m = r["machine"]
    return (f"| load (`import app`) | first comparison (defaults: {r['defaults']['method']} "
            f"{r['defaults']['bits']}, {r['defaults']['groups']} groups, {r['defaults']['steps']} steps) |\n"
            f"|---|---|\n| {r['load_s']:.1f} s | {r['first_comparison_s']:.1f} s |\n\n"
            f"{m['cpu']}, {m['usable_cores']} cores, threads {m['threads']}, {m['date'][:10]}.")
