"""``python -m analysis checkpoints``: how large a stand-alone quantized folder is against the bf16
transformer's safetensors, and how much memory loading it takes (``trdq.save_pretrained`` /
``trdq.from_pretrained``).

For each bit width the model is quantized (TR-DQ at the bench's fixed alpha, DuQuant rotation, no
transform selection, calibrated on the bench's small random inputs for a random model or on the
embedded grammar for an embedded one) and written; a fresh process then loads the folder, simulated
or real integer, and reports how far its resident memory rose above its level after the imports.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import trdq
from trdq.demo.bench import models
from trdq.demo.bench.measure import proc_bytes, reset_peak
from trdq.demo.bench.spec import BenchSpec


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def load_peak(folder: Path, execution: str) -> dict:
    """Resident memory of a fresh process loading ``folder`` (:func:`_load_and_report`)."""
    out = subprocess.run([sys.executable, "-m", "analysis.checkpoints", str(folder), execution],
                         check=True, capture_output=True, text=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load_and_report(folder: str, execution: str) -> None:
    """In a fresh process: RSS after imports, then the high-water mark while loading (printed as JSON)."""
    import gc

    gc.collect()
    before = proc_bytes("/proc/self/status", "VmRSS")
    reset = reset_peak()
    model = trdq.from_pretrained(folder, execution=execution)
    peak = proc_bytes("/proc/self/status", "VmHWM") if reset else None
    print(json.dumps({"rss_after_imports": before, "peak_rss": peak,
                      "load_peak_above_imports": None if peak is None else peak - before,
                      "loaded": type(model).__name__}))


def measure(model: str = "pixart-xl-random", layers: int | None = None, bits: tuple[str, ...] = ("w8a8", "w4a8"),
            groups: int = 1) -> dict:
    """Folder sizes and load memory of ``model`` quantized at each of ``bits`` with ``groups`` time groups."""
    spec = BenchSpec(model=model, groups=groups, overrides={} if layers is None else {"num_layers": layers})
    built = models.full_precision(spec)
    data, kwargs = models.calibration_data(spec, built)
    rows = []
    with tempfile.TemporaryDirectory(prefix="trdq-checkpoints-") as tmp:
        bf16 = Path(tmp) / "bf16"
        transformer = built.transformer
        copy.deepcopy(transformer).to(torch.bfloat16).save_pretrained(bf16)  # diffusers' own layout
        bf16_bytes = sum(f.stat().st_size for f in bf16.glob("*.safetensors"))
        for b in bits:
            q = trdq.quantize(built.model, spec.quant_config(b), data, **kwargs)
            folder = trdq.save_pretrained(q, Path(tmp) / b, dtype=torch.bfloat16)  # float parts as bf16 has them
            size = folder_bytes(folder / "transformer" if (folder / "model_index.json").exists() else folder)
            loads = {execution: load_peak(folder, execution) for execution in ("simulated", "real integer")}
            rows.append({"bits": b, "folder_bytes": size, "vs_bf16_safetensors": size / bf16_bytes,
                         **{f"load_{k.split()[0]}": {**v, "vs_folder": v["load_peak_above_imports"] / size
                                                     if v["load_peak_above_imports"] else None}
                            for k, v in loads.items()}})
            del q
    from trdq.demo.bench.report import machine

    return {"command": "python -m analysis checkpoints", "model": model,
            "blocks": layers or getattr(transformer.config, "num_layers", None), "groups": groups,
            "quantization": spec.calibration_note(), "bf16_safetensors_bytes": bf16_bytes,
            "rule": "folder_bytes: every file of the trdq.save_pretrained(dtype=torch.bfloat16) folder: the layers "
                    "left in floating point in bf16, as in the bf16 checkpoint it is compared with (for a pipeline, "
                    "the transformer folder only: the other components are unchanged); load_*: a fresh process "
                    "runs trdq.from_pretrained on the folder (real integer: per-group layers, compact rotations, "
                    "from_pretrained's defaults); load_peak_above_imports is its peak resident memory "
                    "(VmHWM, reset after the imports) minus its resident memory after the imports",
            "machine": machine(torch.get_num_threads()), "rows": rows}


if __name__ == "__main__":
    _load_and_report(sys.argv[1], sys.argv[2])
