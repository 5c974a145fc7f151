"""How fast the app starts, shows its precomputed grid, and answers its first comparison, in a
fresh process.

    python -m analysis app-timing --json assets/results/app-timing.json

*load* is ``import app`` (Gradio, torch, diffusers and the page layout; the models load lazily);
*precomputed grid* is reading the shipped default grid from ``assets/examples`` into the page's
values (:func:`app.show_example`; ``import app`` does it once); *first comparison* is the Compare
handler with the page's default values in that process: it loads the embedded image model,
samples it, calibrates the four default slots and samples each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_FIRST_COMPARISON = """
import dataclasses, json, time
t0 = time.perf_counter()
import app
from analysis.compare import DEFAULT_SLOTS
loaded = time.perf_counter() - t0
t0 = time.perf_counter()
app.show_example(app.AVAILABLE[0])
shipped = time.perf_counter() - t0
recipe = app.Recipe()  # the page's defaults
t0 = time.perf_counter()
app.compare(app.AVAILABLE[0], app.EXAMPLES["shapes-t2i"][0], 0, 20, 4.5, DEFAULT_SLOTS, recipe,
            progress=lambda *a, **k: None)
defaults = dict(model=app.AVAILABLE[0], prompt=app.EXAMPLES["shapes-t2i"][0], seed=0, steps=20, guidance=4.5,
                slots=[v for slot in DEFAULT_SLOTS for v in slot], **dataclasses.asdict(recipe))
print(json.dumps({"load_s": loaded, "shipped_grid_s": shipped, "first_comparison_s": time.perf_counter() - t0,
                  "defaults": defaults}))
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

    from trdq.demo.bench.report import machine

    return {**result, "machine": machine(threads or torch.get_num_threads())}


def table(path: Path) -> str:
    """The README lines: load, precomputed-grid and first-comparison seconds, with the machine."""
    r = json.loads(Path(path).read_text())
    m, d = r["machine"], r["defaults"]
    slots = ", ".join(f"{method} {bits}" for method, bits in zip(d["slots"][::2], d["slots"][1::2]))
    return (f"| load (`import app`) | precomputed grid (read from assets/examples) | first comparison "
            f"(defaults: {slots}; {d['groups']} groups, {d['steps']} steps) |\n|---|---|---|\n"
            f"| {r['load_s']:.1f} s | {r['shipped_grid_s']:.2f} s | {r['first_comparison_s']:.1f} s |\n\n"
            f"{m['cpu']}{' (' + m['cpu_class'] + ')' if m.get('cpu_class') else ''}, {m['usable_cores']} cores, threads {m['threads']}, {m['date'][:10]}.")
