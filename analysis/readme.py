"""Rewrite the result tables of the README and of docs/*.md from the JSON files the measuring
commands wrote.

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` (a table may appear on
several pages); nothing in them is typed by hand.

    python -m analysis readme
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from analysis import frontier
from analysis.app_timing import table as app_timing_table
from trdq.demo.bench.report import verdicts

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


def bars_table(path: Path) -> str:
    """Issue 4's bar for the embedded image model, checked against the quantized eval records."""
    records = json.loads(path.read_text())
    fp = next(r for r in records if r["method"] == "fp")
    at = {(r["method"], r["bits"]): r for r in records if r["method"] != "fp"}
    baselines = sorted({m for m, _ in at if m != "trdq"})

    def best(bits: str, key: str) -> tuple[str, float]:
        m = max(baselines, key=lambda b: at[(b, bits)][key])
        return m, at[(m, bits)][key]

    rows = []

    def check(criterion: str, measured: str, met: bool) -> None:
        rows.append({"bar": criterion, "measured": measured, "met": "yes" if met else "**no**"})

    t8, t48, t44 = at[("trdq", "w8a8")], at[("trdq", "w4a8")], at[("trdq", "w4a4")]
    check("W8A8 adherence within 0.01 of FP", f"{t8['adherence']:.3f} vs FP {fp['adherence']:.3f}",
          t8["adherence"] >= fp["adherence"] - 0.01)
    check("W4A8 adherence within 0.03 of FP", f"{t48['adherence']:.3f} vs FP {fp['adherence']:.3f}",
          t48["adherence"] >= fp["adherence"] - 0.03)
    m, v = best("w4a8", "adherence")
    check("W4A8 adherence not below any baseline", f"{t48['adherence']:.3f} vs best {m} {v:.3f}",
          t48["adherence"] >= v)
    for bits, key in [("w4a8", "psnr_vs_fp"), ("w4a4", "psnr_vs_fp"), ("w4a4", "eps_sqnr_db")]:
        m, v = best(bits, key)
        mine = at[("trdq", bits)][key]
        check(f"{bits.upper()} {key} above every baseline", f"{mine:.2f} vs best {m} {v:.2f}", mine > v)
    slowest = max(r["calib_seconds"] for r in (t8, t48, t44))
    fit_only = any(r.get("calib_reused") for r in (t8, t48, t44))  # statistics recorded for an earlier model
    check("calibration under 2 minutes (2 threads)",
          f"{slowest:.1f} s" + (" (some fit only: an earlier model recorded their statistics)" if fit_only else ""),
          slowest < 120)
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


def clip_quality_table(path: Path) -> str:
    """Video records: clip adherence (colour, shape, direction), per-attribute accuracy, temporal
    consistency and, for quantized models, closeness to FP."""
    rows = []
    for r in json.loads(path.read_text()):
        if "sharing" in r:
            continue
        rows.append({
            "model": r["model"], "method": r["method"], "bits": r["bits"], "execution": r["execution"],
            "prompts": r["num_prompts"], "adherence": f"{r['adherence']:.3f}",
            "color": f"{r['acc_color']:.3f}", "shape": f"{r['acc_shape']:.3f}",
            "direction": f"{r['acc_direction']:.3f}", "size": f"{r['acc_size']:.3f}",
            "temporal consistency": f"{r['temporal_consistency']:.3f}", "shapes_fd": f"{r['shapes_fd']:.2f}",
            "psnr_vs_fp (dB)": f"{r['psnr_vs_fp']:.2f}" if "psnr_vs_fp" in r else "-",
            "ssim_vs_fp": f"{r['ssim_vs_fp']:.3f}" if "ssim_vs_fp" in r else "-",
        })
    return _markdown(pd.DataFrame(rows))


def sharing_table(path: Path, max_drop: float = 0.02, min_skipped: float = 0.25) -> str:
    """Attention-Sharing: per model and rule, the unconditional attention-score compute skipped and
    the quality against the same model without sharing; "bar" says whether the rule skips at least
    ``min_skipped`` while adherence drops by at most ``max_drop`` (issue 7's bar)."""
    records = json.loads(path.read_text())
    plain = {(r["method"], r["bits"]): r for r in records if "sharing" not in r}
    rows = []
    for r in records:
        base = plain[(r["method"], r["bits"])]
        shared = "sharing" in r
        drop = base["adherence"] - r["adherence"]
        skipped = r.get("attn_score_skipped", 0.0)
        rows.append({
            "method": r["method"], "bits": r["bits"], "sharing": r.get("sharing", "none"),
            "layers shared": len(r.get("shared_layers", [])), "uncond scores skipped": f"{skipped:.0%}",
            "adherence": f"{r['adherence']:.3f}", "drop": f"{drop:+.3f}" if shared else "-",
            "psnr_vs_fp (dB)": f"{r['psnr_vs_fp']:.2f}" if "psnr_vs_fp" in r else "-",
            "bar": "-" if not shared else ("yes" if skipped >= min_skipped and drop <= max_drop else "no"),
        })
    return _markdown(pd.DataFrame(rows))


def attention_table(path: Path, max_psnr_cost: float = 1.0) -> str:
    """Quantized attention scores beside the same model with float attention: quality, closeness to
    FP, noise-prediction error, and the cost of quantizing the scores. "bar" (W8A8 rows): at most
    ``max_psnr_cost`` dB of psnr_vs_fp lost and no adherence drop (issue 15's bar)."""
    records = [r for r in json.loads(path.read_text()) if "sharing" not in r]
    linear = {(r["method"], r["bits"]): r for r in records if r["method"] != "fp" and not r.get("attention_bits")}
    rows = []
    for r in records:
        qk = r.get("attention_bits")
        base = linear.get((r["method"], r["bits"])) if qk else None
        cost = None if base is None else (base["psnr_vs_fp"] - r["psnr_vs_fp"], base["adherence"] - r["adherence"])
        rows.append({
            "method": r["method"], "bits": r["bits"], "attention": "fp" if r["method"] == "fp" else (
                f"scores at {qk} bits" if qk else "float"),
            "prompts": r["num_prompts"], "adherence": f"{r['adherence']:.3f}", "shapes_fd": f"{r['shapes_fd']:.2f}",
            "psnr_vs_fp (dB)": f"{r['psnr_vs_fp']:.2f}" if "psnr_vs_fp" in r else "-",
            "eps_sqnr_db": f"{r['eps_sqnr_db']:.2f}" if r.get("eps_sqnr_db") is not None else "-",
            "psnr cost (dB)": "-" if cost is None else f"{cost[0]:+.2f}",
            "adherence drop": "-" if cost is None else f"{cost[1]:+.3f}",
            "bar": "-" if cost is None or r["bits"] != "w8a8" else (
                "yes" if cost[0] <= max_psnr_cost and cost[1] <= 0 else "no"),
        })
    return _markdown(pd.DataFrame(rows))


def shared_inputs_table(path: Path) -> str:
    """TR-DQ fitted per layer beside one transform per input (``QuantConfig.shared_inputs``): quality,
    closeness to FP, and what the joint fit costs at each bit width."""
    records = [r for r in json.loads(path.read_text()) if "sharing" not in r]
    apart = {r["bits"]: r for r in records if r["method"] != "fp" and not r.get("shared_inputs")}
    rows = []
    for r in sorted(records, key=lambda r: (r["method"] != "fp", r["bits"], bool(r.get("shared_inputs")))):
        base = apart.get(r["bits"]) if r.get("shared_inputs") else None
        rows.append({
            "method": r["method"], "bits": r["bits"],
            "transforms": "-" if r["method"] == "fp" else "per input" if r.get("shared_inputs") else "per layer",
            "prompts": r["num_prompts"], "adherence": f"{r['adherence']:.3f}", "shapes_fd": f"{r['shapes_fd']:.2f}",
            "psnr_vs_fp (dB)": f"{r['psnr_vs_fp']:.2f}" if "psnr_vs_fp" in r else "-",
            "psnr cost (dB)": "-" if base is None else f"{base['psnr_vs_fp'] - r['psnr_vs_fp']:+.2f}",
            "adherence drop": "-" if base is None else f"{base['adherence'] - r['adherence']:+.3f}",
        })
    return _markdown(pd.DataFrame(rows))


def _step_split(profile: dict | None, result: dict | None = None) -> str:
    """A profiled step's shares, e.g. ``39% / 55% / - / -`` (see trdq.demo.bench.measure.profile_step)."""
    if not profile:  # reports made before steps were profiled: the transforms' share alone
        online = (result or {}).get("online_transforms")
        return "-" if not online else f"- / - / - / {online['share']:.0%}"
    shares = profile["shares"]
    return " / ".join(f"{shares[k]:.0%}" if shares[k] else "-"
                      for k in ("attention", "float_gemm", "int8_gemm", "online_transform"))


def _cpu_class(machine: dict) -> str:
    """`` (AVX2 (no VNNI, no BF16))`` for reports that record the CPU class, else nothing."""
    return f" ({machine['cpu_class']})" if machine.get("cpu_class") else ""


def _execution(r: dict) -> str:
    """The execution label, with the int8 GEMM a real backend ran or the peer library."""
    if r.get("library"):
        return f"{r['execution']} ({r['library']})"
    return f"{r['execution']} ({r['gemm']})" if r.get("gemm") else r["execution"]


def frontier_table(path: Path) -> str:
    """Quality per method down the bits ladder (see :mod:`analysis.frontier`)."""
    return frontier.markdown(json.loads(path.read_text()))


def frontier_adherence_table(path: Path) -> str:
    """The frontier's adherence table alone, with the lowest bits each method keeps (the README's
    headline; :func:`frontier_table` has all three)."""
    return frontier.markdown(json.loads(path.read_text()), metrics=("adherence",))


def bench_table(path: Path) -> str:
    """Per backend: transformer step latency, image latency, weight bytes and memory, with the
    setup and machine of the run above the table (``python -m trdq bench``)."""

    def ratio(r: dict, base: str, key: str) -> str:
        value = (r.get(f"vs_{base}") or {}).get(key)
        return "-" if value is None else f"{value:.2f}x"

    report = json.loads(path.read_text())
    setup, m = report["setup"], report["machine"]
    changed = ", ".join(f"{k}={v}" for k, v in report["spec"]["overrides"].items())
    head = (f"{report['model']}{f' ({changed})' if changed else ''}, {setup['resolution_px']} px "
            f"({setup['image_tokens']} image tokens, {setup['text_tokens']} text tokens), per-step batch "
            f"{report['batch']} at t={setup['timestep']:g}; median of {report['repeats']} steps after "
            f"{report['warmup']} warm-up. "
            + (f"{m['gpu']} (CUDA {m['cuda']}), " if report.get("device") == "cuda"
               else f"{m['cpu']}{_cpu_class(m)}, {m['usable_cores']} cores, threads {m['threads']}, ")
            + f"torch {m['torch']}, {m['date'][:10]}.")
    spec = report["spec"]
    if any(r.get("execution") == "real integer" for r in report["results"]) and "real_dtype" in spec:
        head += (f" Real integer backends: {spec['real_dtype']} outside the integer layers, "
                 f"{'compiled' if spec['compile'] else 'eager'} quantization and GEMM.")
    cuda = report.get("device") == "cuda"
    has_fp16 = any(r["backend"] == "fp16" and r["status"] == "ok" for r in report["results"])
    rows = []
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append({"backend": r["backend"], "execution": r.get("execution", "-"),
                         "step (ms)": f"{r['status']}: see JSON"})
            continue
        e2e = r["e2e_s_per_image"]
        rows.append({
            "backend": r["backend"], "execution": _execution(r),
            "step (ms)": f"{r['step_ms']['median']:.1f}", "step vs fp32": ratio(r, "fp32", "step"),
            "step vs bf16": ratio(r, "bf16", "step"),
            **({"step vs fp16": ratio(r, "fp16", "step")} if has_fp16 else {}),
            "image (s)": "-" if e2e is None else f"{e2e['median']:.2f}",
            "weights (MiB)": f"{r['weight_bytes']['total'] / 2**20:.1f}",
            "weights vs bf16": ratio(r, "bf16", "weight_bytes"),
            **({"peak CUDA (MiB)": f"{r['peak_cuda_mib']:.0f}"} if cuda else
               {"RSS base / peak (MiB)": f"{r['rss_baseline_mib']:.0f} / "
                                         + ("-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}")}),
            "step: attention / float GEMM / int8 GEMM / transforms": _step_split(r.get("profile"), r),
        })
        if sharing := r.get("sharing"):
            rule = f"{sharing['rule']}: " if "rule" in sharing else ""
            rows[-1]["step with sharing (ms)"] = (
                f"{sharing['step_ms']['median']:.1f} ({rule}{len(sharing['layers'])}/{sharing['of']} layers, "
                f"{sharing['attn_score_skipped']:.0%} of uncond scores skipped)")
    lines = "\n".join(f"- {line}" for line in verdicts(report))
    return head + "\n\n" + _markdown(pd.DataFrame(rows).fillna("-")) + (f"\n\n{lines}" if lines else "")


def memory_table(path: Path) -> str:
    """Per backend of a ``python -m trdq bench --memory-only`` run: weight bytes as built, at the
    published depth, against bf16, and by dtype."""
    report = json.loads(path.read_text())
    m, spec = report["machine"], report["spec"]
    changed = ", ".join(f"{k}={v}" for k, v in spec["overrides"].items())
    groups = report["quantization"]["groups"]
    head = (f"{report['model']}{f' ({changed})' if changed else ''}, trdq at {groups} time group"
            f"{'s' if groups > 1 else ''}, rotation {report['quantization']['rotation']}, real integer backends in "
            f"{spec['real_dtype']} outside the integer layers; weights after building, before any step (copies "
            f"made lazily at the first call, such as fbgemm's packed weights, are not in them). {m['cpu']}"
            f"{_cpu_class(m)}, torch {m['torch']}, {m['date'][:10]}.")
    rows = []
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append({"backend": r["backend"], "weights (MiB)": f"{r['status']}: see JSON"})
            continue
        depth, ratio = r.get("weight_bytes_at_depth"), r.get("vs_bf16") or {}
        parts = {k: v for k, v in r["weight_bytes"].items() if k != "total"}
        rows.append({
            "backend": r["backend"], "execution": _execution(r),
            f"weights, {depth['blocks'] if depth else '-'} blocks (MiB)": f"{r['weight_bytes']['total'] / 2**20:.1f}",
            f"at {depth['depth'] if depth else '-'} blocks (MiB)": "-" if depth is None else f"{depth['total'] / 2**20:.1f}",
            "bf16 / this": "-" if not ratio.get("weight_bytes_at_depth") else f"{1 / ratio['weight_bytes_at_depth']:.2f}x",
            "by dtype, as built (MiB)": ", ".join(f"{k} {v / 2**20:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])),
        })
    lines = "\n".join(f"- {line}" for line in verdicts(report))
    return head + "\n\n" + _markdown(pd.DataFrame(rows).fillna("-")) + (f"\n\n{lines}" if lines else "")


def checkpoint_table(path: Path) -> str:
    """Per bit width of ``python -m analysis checkpoints``: folder size against the bf16
    transformer's safetensors, and the memory a fresh process takes to load it."""
    report = json.loads(path.read_text())
    m = report["machine"]
    head = (f"{report['model']}, {report['blocks']} blocks, {report['groups']} time group"
            f"{'s' if report['groups'] != 1 else ''}; bf16 transformer safetensors "
            f"{report['bf16_safetensors_bytes'] / 2**20:.1f} MiB. {m['cpu']}{_cpu_class(m)}, torch {m['torch']}, "
            f"{m['date'][:10]}.")

    def load(r: dict, key: str) -> str:
        v = r[key]
        return "-" if v["load_peak_above_imports"] is None else (
            f"{v['load_peak_above_imports'] / 2**20:.1f} MiB ({v['vs_folder']:.2f}x)")

    rows = [{"bits": r["bits"], "folder (MiB)": f"{r['folder_bytes'] / 2**20:.1f}",
             "folder / bf16": f"{r['vs_bf16_safetensors']:.2f}x",
             "load, simulated (x folder)": load(r, "load_simulated"),
             "load, real integer (x folder)": load(r, "load_real")} for r in report["rows"]]
    return head + "\n\n" + _markdown(pd.DataFrame(rows))


def layer_timing_table(path: Path) -> str:
    """One row per layer shape and case of ``python -m trdq.demo.bench.layer_timing``: microseconds per
    call replayed from a CUDA graph (kernels only) and eager (with the per-call CPU cost)."""
    report = json.loads(path.read_text())
    m = report["meta"]
    rows = [{"layer": f"{r['in']} -> {r['out']}", "case": r["case"],
             "graph (us)": "-" if r["graph_us"] is None else f"{r['graph_us']:.1f}",
             "eager (us)": "-" if r["eager_us"] is None else f"{r['eager_us']:.1f}"} for r in report["rows"]]
    return f"{m['device']}, torch {m['torch']}, {m['rows']} tokens per call.\n\n" + _markdown(pd.DataFrame(rows))


TABLES = {
    "quality": (RESULTS / "shapes-t2i-fp.json", quality_table),
    "outliers": (RESULTS / "shapes-t2i-outliers.json", outlier_table),
    "quantized": (RESULTS / "shapes-t2i-quant-200.json", quantized_table),
    "bars": (RESULTS / "shapes-t2i-quant-200.json", bars_table),
    "ablation": (RESULTS / "shapes-t2i-ablation.json", ablation_table),
    "bench": (RESULTS / "bench-pixart-xl-random-512.json", bench_table),
    "bench-hadamard": (RESULTS / "bench-pixart-xl-random-512-hadamard.json", bench_table),
    "bench-shapes": (RESULTS / "bench-shapes-t2i.json", bench_table),
    "bench-video": (RESULTS / "bench-shapes-t2v.json", bench_table),
    "bench-cuda": (RESULTS / "bench-pixart-xl-random-512-cuda.json", bench_table),
    "bench-avx2-peers": (RESULTS / "bench-pixart-xl-random-512-avx2-peers.json", bench_table),
    "bench-avx2": (RESULTS / "bench-pixart-xl-random-512-avx2.json", bench_table),
    "bench-avx2-hadamard": (RESULTS / "bench-pixart-xl-random-512-avx2-hadamard.json", bench_table),
    "bench-avx2-jit": (RESULTS / "bench-pixart-xl-random-512-avx2-jit.json", bench_table),
    "bench-avx2-compiled": (RESULTS / "bench-pixart-xl-random-512-avx2-compiled.json", bench_table),
    "layer-timing-cuda": (RESULTS / "layer-timing-cuda.json", layer_timing_table),
    "memory": (RESULTS / "memory-pixart-xl-random-512.json", memory_table),
    "memory-1group": (RESULTS / "memory-pixart-xl-random-512-1group.json", memory_table),
    "checkpoints": (RESULTS / "checkpoints-pixart-xl-random.json", checkpoint_table),
    "checkpoints-shapes": (RESULTS / "checkpoints-shapes-t2i.json", checkpoint_table),
    "video-quality": (RESULTS / "shapes-t2v-fp.json", clip_quality_table),
    "video-quantized": (RESULTS / "shapes-t2v-sharing.json", clip_quality_table),
    "cfg-split": (RESULTS / "shapes-t2i-cfg-split.json", quantized_table),
    "app-timing": (RESULTS / "app-timing.json", app_timing_table),
    "sharing-image": (RESULTS / "shapes-t2i-sharing.json", sharing_table),
    "sharing-video": (RESULTS / "shapes-t2v-sharing.json", sharing_table),
    "frontier-image": (RESULTS / "shapes-t2i-frontier.json", frontier_table),
    "frontier-adherence": (RESULTS / "shapes-t2i-frontier.json", frontier_adherence_table),
    "frontier-video": (RESULTS / "shapes-t2v-frontier.json", frontier_table),
    "attention-image": (RESULTS / "shapes-t2i-attention.json", attention_table),
    "attention-video": (RESULTS / "shapes-t2v-attention.json", attention_table),
    "shared-inputs": (RESULTS / "shapes-t2i-shared-inputs.json", shared_inputs_table),
    "bench-avx2-per-layer": (RESULTS / "bench-pixart-xl-random-512-avx2-per-layer.json", bench_table),
    "bench-avx2-shared-inputs": (RESULTS / "bench-pixart-xl-random-512-avx2-shared-inputs.json", bench_table),
}
#: Figure file -> (the JSON it is drawn from, the function that draws it from the records).
FIGURES = {
    RESULTS / "shapes-t2i-frontier.png": (RESULTS / "shapes-t2i-frontier.json", frontier.plot),
    RESULTS / "shapes-t2v-frontier.png": (RESULTS / "shapes-t2v-frontier.json", frontier.plot),
}


def documents() -> list[Path]:
    """The pages whose tables :func:`update` rewrites: the README and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def update(*pages: Path) -> list[str]:
    """Redraw every figure and replace every table whose JSON exists, in ``pages`` (default:
    :func:`documents`); returns the names of the figures and tables written, each once."""
    written = []
    for figure, (path, draw) in FIGURES.items():
        if path.exists():
            draw(json.loads(path.read_text()), figure)
            written.append(figure.name)
    for page in pages or documents():
        text = page.read_text()
        for name, (path, render) in TABLES.items():
            pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.S)
            if path.exists() and pattern.search(text):
                body = render(path)
                text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
                written.append(name)
        page.write_text(text)
    return list(dict.fromkeys(written))
