"""The report of a run: the machine, ratios against the baselines, and what the numbers mean."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from trdq.cpu import cpu_info
from trdq.demo.bench.measure import DEPTH_RULE, MEMORY_RULE, WEIGHT_RULE, proc_bytes
from trdq.demo.bench.spec import BENCH_ALPHA, MIB, BenchSpec

BASELINES = ("fp32", "bf16", "fp16", "bf16-compiled")
RATIO_RULE = ("vs_fp32 / vs_bf16 / vs_fp16 / vs_bf16_compiled: this backend's value divided by that "
              "baseline's from the same run (below 1: smaller or faster); null when the run has no such "
              "baseline")
FITTING_NOTE = ("each quantized configuration (bits; groups, alpha and rotation as in `quantization`) is "
                "calibrated and quantized (simulated) once per run, in one preparation worker, and saved "
                "with trdq.save; the timing worker of every backend with those bits builds the same "
                "full-precision model (same seed or checkpoint, checked by a weight fingerprint), "
                "trdq.load()s the fit onto it (no calibration) and, for a real backend, trdq.realize()s "
                "it. fit_seconds: building the FP model, calibrating, quantizing and saving, in the "
                "preparation worker (the first run's when reused from the cache); a trdq backend's timing "
                "worker's build_s has no calibration in it (a peer's has its library's quantization, "
                "and quanto's calibration)")


PEER_RULE = ("peers: fp32/bf16/fp16-compiled run the whole full-precision transformer under torch.compile; "
             "torchao-w8a8 (torchao's Int8DynamicActivationInt8WeightConfig via quantize_: per-channel int8 "
             "weights, dynamic per-token int8 activations) and quanto-w8a8 (optimum-quanto's quantize with "
             "qint8 weights and activations, calibrated with its Calibration on the inputs the trdq fits "
             "calibrate on, then frozen: static per-tensor activation scales) quantize exactly the layers "
             "trdq quantizes, in their own timing worker (in build_s), their other parts in the real "
             "backends' dtype, and run int8 x int8 GEMMs; they compile when the run compiles (--compile), "
             "eagerly with a note where compiling fails. A whole-model compiled backend's first step "
             "compiles, in build_s, timed alone as compile_s; library names the peer's library and version")


def machine(threads: int, device: str = "cpu") -> dict:
    """CPU model, cores, memory, library versions, threads and date of this run; on cuda also
    the GPU (name, memory, compute capability) and the CUDA version torch was built with."""
    import diffusers

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    total = proc_bytes("/proc/meminfo", "MemTotal")
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "threads": threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_class": cpu_info().cpu_class, "int8_dot": cpu_info().int8_dot, "native_bf16": cpu_info().native_bf16,
            "memory_gib": None if total is None else round(total / 2**30, 1), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device, **(_gpu() if device == "cuda" else {})}


def _gpu() -> dict:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "gpu_count": torch.cuda.device_count(),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}  # "highest": no TF32


def _ratios(result: dict, base: dict | None) -> dict | None:
    if base is None or base["status"] != "ok" or result["status"] != "ok":
        return None

    def ratio(get):
        a, b = get(result), get(base)
        return None if a is None or not b else a / b

    return {"step": ratio(lambda r: r["step_ms"] and r["step_ms"]["median"]),
            "e2e": ratio(lambda r: r["e2e_s_per_image"] and r["e2e_s_per_image"]["median"]),
            "weight_bytes": ratio(lambda r: r["weight_bytes"]["total"]),
            "weight_bytes_at_depth": ratio(lambda r: (r.get("weight_bytes_at_depth") or {}).get("total")),
            "peak_rss": ratio(lambda r: r["peak_rss_mib"]),
            "peak_cuda": ratio(lambda r: r.get("peak_cuda_mib"))}


def make_report(spec: BenchSpec, results: list[dict], isolate: bool, fitting: dict) -> dict:
    """The report of a run: setup, rules, machine, calibration, ``fitting`` (:data:`FITTING_NOTE`
    with the fits), and the results with their ratios (their ``setup`` moved to the top)."""
    setups = [r.pop("setup") for r in results if "setup" in r]
    by_name = {r["backend"]: r for r in results}
    for r in results:
        r.update({f"vs_{base.replace('-', '_')}": _ratios(r, by_name.get(base)) for base in BASELINES})
    setup = setups[0] if setups else None
    return {
        "benchmark": "python -m trdq bench", "model": spec.model,
        "kind": "bare transformer (random weights)" if spec.bare else "pipeline",
        "resolution_px": setup and setup["resolution_px"], "batch": spec.batch,
        "batch_note": "per-step batch; 2 is the CFG pair (conditional + unconditional)",
        "setup": setup, "warmup": spec.warmup, "repeats": spec.num_repeats,
        "e2e": ("null: a bare transformer has no text encoder or VAE" if spec.bare else
                f"one image per call, {spec.e2e_repeats} timed after 1 untimed, the model's default steps "
                "and guidance"),
        "threads": spec.num_threads, "device": spec.device, "isolated": isolate, "spec": asdict(spec),
        "quantization": {"method": "trdq", "groups": spec.groups, "alpha": BENCH_ALPHA,
                         "rotation": spec.rotation, "select_transforms": False,
                         "shared_inputs": spec.shared_inputs},
        "calibration": spec.calibration_note(),
        "fitting": {"note": FITTING_NOTE, **fitting},
        "timing": spec.timing or "not timed: weights and memory only (--memory-only)",
        "rules": {"weight_bytes": WEIGHT_RULE, "weight_bytes_at_depth": DEPTH_RULE, "memory": MEMORY_RULE,
                  "ratios": RATIO_RULE, "peers": PEER_RULE},
        "machine": machine(spec.num_threads, spec.device), "results": results,
    }


def summary(result: dict) -> str:
    """One log line for a backend's result."""
    if result["status"] != "ok":
        return f"{result['backend']}: {result['status']}: {result['error']}"
    step, e2e, depth = result["step_ms"], result["e2e_s_per_image"], result.get("weight_bytes_at_depth")
    how = ", ".join(filter(None, [result["execution"], result.get("library"),
                                  "compiled" if result.get("compiled") else None]))
    return (f"{result['backend']} ({how}): "
            + ("not timed" if step is None else f"step {step['median']:.1f} ms (min {step['min']:.1f})")
            + (f", {e2e['median']:.2f} s/image" if e2e else "")
            + f", weights {result['weight_bytes']['total'] / MIB:.1f} MiB"
            + (f" ({depth['total'] / MIB:.1f} MiB at {depth['depth']} blocks)" if depth else "")
            + f", peak RSS {result['peak_rss_mib']} MiB"
            + ("" if result.get("peak_cuda_mib") is None else f", peak CUDA {result['peak_cuda_mib']} MiB"))


_PARTS = {"attention": "attention (float)", "float_gemm": "float GEMMs", "int8_gemm": "int8 GEMMs",
          "online_transform": "online transforms", "other": "the rest (norms, quantization, epilogues)"}
_WEIGHTS = {"per-group": "a weight copy per distinct time-group transform",
            "shared": "one int8 master plus the active group's codes",
            "jit": "one int8 master, each call building its group's codes"}


def verdicts(report: dict, base: str | None = None) -> list[str]:
    """One line per backend of a report: faster or slower than ``base`` per step, smaller or larger
    in weights, and why, from its profiled step (the parts of at least 10%) and its weight layout.
    ``base`` None: bf16, or fp32 for a report without bf16 (none where neither ran)."""
    results = {r["backend"]: r for r in report["results"]}
    ran = [b for b in ("bf16", "fp32") if results.get(b, {}).get("status") == "ok"]
    base = base or (ran[0] if ran else None)
    if base is None or results.get(base, {}).get("status") != "ok":
        return []
    native = report["machine"].get("native_bf16")
    lines = []
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"{r['backend']}: did not run ({r['status']}; see the JSON).")
            continue
        shares = (r.get("profile") or {}).get("shares") or {}
        names = {**_PARTS, **({"float_gemm": "fp32 GEMMs (its int8 GEMMs, as exact fp32 chunks)"}
                              if r.get("gemm") == "fp32" else {})}
        parts = ", ".join(f"{names[k]} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])
                          if k in names and v >= 0.10)
        step = f"its step: {parts}" if parts else ""
        if r["backend"] == base:
            cpu = "" if native is None or native or base != "bf16" or r["step_ms"] is None else (
                ", without native bf16 kernels on this CPU: the other backends run no bf16 GEMMs, which "
                "is most of why they are faster here")
            lines.append(f"{base}: the reference{cpu}" + (f"; {step}" if step else "") + ".")
            continue
        ratio = r[f"vs_{base}"]
        speed = (None if ratio["step"] is None else f"{1 / ratio['step']:.2f}x faster than" if ratio["step"] < 0.98
                 else f"{ratio['step']:.2f}x slower than" if ratio["step"] > 1.02 else "as fast as")
        at_depth = ratio.get("weight_bytes_at_depth")
        weights = at_depth or ratio["weight_bytes"]
        size = (f"weights {1 / weights:.2f}x smaller" if weights < 0.98 else
                f"weights {weights:.2f}x larger" if weights > 1.02 else "weights the same size")
        if not speed:  # the comparison is carried by the weights alone
            size += f" {'as' if size.endswith('size') else 'than'} {base}"
        if at_depth:
            size += f" at the published {r['weight_bytes_at_depth']['depth']} blocks"
        why = [step] if step else []
        groups = report.get("quantization", {}).get("groups", 1)
        if r.get("deployment") in _WEIGHTS and r.get("execution") == "real integer":
            why.append(f"{_WEIGHTS[r['deployment']]}"
                       + (f" ({groups} group{'s' if groups != 1 else ''})" if r["deployment"] == "per-group" else "")
                       + {True: ", block rotations kept as reflections", False: ", dense block rotations"}.get(
                           r.get("compact_rotations") if report["quantization"].get("rotation") == "duquant" else None, ""))
        if report.get("quantization", {}).get("shared_inputs") and r.get("bits") and not r.get("library"):
            why.append("one transform per attention input (q/k/v, cross-attention k/v), applied once")
        if r["weight_bytes"].get("fbgemm_packed"):
            why.append("fbgemm keeps its own packed copy of the weights")
        if r.get("execution") == "simulated":
            why.append("simulated: fake-quantized float weights, for accuracy studies, not speed")
        lines.append(f"{r['backend']}: " + (f"{speed} {base} per step, " if speed else "") + size
                     + (f"; {'; '.join(why)}" if why else "") + ".")
    return lines


def save_report(report: dict, path: str | Path) -> Path:
    """Write ``report`` as strict JSON to ``path`` (folders created; a non-finite number becomes null)."""
    from trdq.demo.eval.runner import finite

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(report), indent=1, allow_nan=False) + "\n")
    return path
