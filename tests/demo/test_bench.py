"""The benchmark reports; no test here asserts a speed-up (machines are noisy)."""

import dataclasses
import json

import pytest
import torch

from trdq import cpu
from trdq.api import target_layers
from trdq.cli import build_parser, main
from trdq.cpu import cpu_info, float_dtype
from trdq.demo import bench
from trdq.demo.bench import __main__ as worker
from trdq.models.adapters import adapter_for

# PixArt-XL-2's layout at width 64 (2 heads x 32), two blocks: the real architecture, tiny.
TINY = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 32, "caption_channels": 64,
        "cross_attention_dim": 64}


def _spec(**kw):
    return bench.BenchSpec(**{"model": "pixart-xl-random", "resolution": 64, "warmup": 1, "repeats": 2,
                              "threads": 1, "overrides": TINY, "compile": False, **kw})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def report(cache):
    backends = bench.parse_backends(["fp32", "bf16", "trdq-w8a8-sim", "trdq-w8a8-real"])
    return bench.run(_spec(), backends, isolate=False, cache=cache)


@pytest.mark.slow
def test_report_says_what_ran_and_where(report):
    json.dumps(report)  # the CLI writes it as is
    for key in ("cpu", "logical_cores", "threads", "torch", "date"):
        assert report["machine"][key] is not None
    assert report["setup"]["latent"] == [2, 4, 8, 8] and report["setup"]["image_tokens"] == 16
    assert report["batch"] == 2 and report["repeats"] == 2 and "alpha fixed" in report["calibration"]
    assert [r["backend"] for r in report["results"]] == ["fp32", "bf16", "trdq-w8a8-sim", "trdq-w8a8-real"]
    assert [r["execution"] for r in report["results"]] == ["full precision", "full precision", "simulated",
                                                          "real integer"]
    for r in report["results"]:
        step = r["step_ms"]
        assert r["status"] == "ok" and len(step["all"]) == 2 and step["min"] <= step["median"]
        assert r["e2e_s_per_image"] is None  # a bare transformer has no text encoder or VAE
    assert "no text encoder or VAE" in report["e2e"]


def test_weight_bytes_and_ratios_come_from_the_same_run(report):
    fp32, bf16, sim, _ = report["results"]
    assert bf16["weight_bytes"]["total"] * 2 == fp32["weight_bytes"]["total"]
    assert set(bf16["weight_bytes"]) == {"bfloat16", "total"}
    # the simulated layer keeps float weight copies (and codes, transforms): it saves no memory
    assert sim["weight_bytes"]["total"] > fp32["weight_bytes"]["total"]
    assert fp32["vs_bf16"]["weight_bytes"] == 2.0 and bf16["vs_fp32"]["weight_bytes"] == 0.5
    for r in report["results"]:
        assert r["vs_fp32"]["step"] == r["step_ms"]["median"] / fp32["step_ms"]["median"]
        assert r["vs_bf16"]["step"] == r["step_ms"]["median"] / bf16["step_ms"]["median"]


def test_each_quantized_configuration_is_fitted_once_and_loaded_by_its_backends(report, cache):
    (fit,) = report["fitting"]["fits"]
    assert fit["status"] == "ok" and fit["bits"] == "w8a8" and not fit["reused"]
    assert fit["backends"] == ["trdq-w8a8-sim", "trdq-w8a8-real"] and report["fitting"]["cache"] == str(cache)
    (entry,) = cache.iterdir()  # one trdq.save folder, complete
    assert entry.name == fit["key"] == bench.fit_key(_spec(), "w8a8")
    assert {p.name for p in entry.iterdir()} == {"manifest.json", "quantized.safetensors", "bench-fit.json"}
    fp32, bf16, sim, real = report["results"]
    assert fp32["fit_seconds"] is bf16["fit_seconds"] is None
    assert sim["fit_seconds"] == real["fit_seconds"] == fit["fit_seconds"] > 0


def test_a_cached_fit_is_reused_only_for_the_same_model_and_config(report, cache):
    # timing settings do not change the fit; seed, bits, groups, rotation and the model do
    key = bench.fit_key(_spec(), "w8a8")
    assert bench.fit_key(_spec(repeats=7, warmup=3, threads=2), "w8a8") == key
    fewer_layers = _spec(overrides={**TINY, "num_layers": 1})
    for other in (_spec(seed=1), _spec(groups=2), _spec(rotation="none"), fewer_layers):
        assert bench.fit_key(other, "w8a8") != key
    assert bench.fit_key(_spec(), "w4a8") != key
    again = bench.run(_spec(repeats=1), bench.parse_backends(["trdq-w8a8-sim"]), isolate=False, cache=cache)
    assert again["fitting"]["fits"][0]["reused"] and len(list(cache.iterdir())) == 1
    assert again["results"][0]["fit_seconds"] == report["results"][2]["fit_seconds"]
    fitted = bench.prepare(_spec(), "w8a8", cache, isolate=False)
    sim = bench.parse_backends(["trdq-w8a8-sim"])[0]
    with pytest.raises(ValueError, match="other full-precision weights"):
        bench.build(_spec(seed=1), sim, fitted)
    with pytest.raises(ValueError, match="loads a w8a8 fit"):
        bench.build(_spec(), sim)


def test_worker_jobs_fit_then_measure_through_json(tmp_path):
    """What the preparation and timing workers write and read (run here in-process, uncapped)."""
    spec = {**dataclasses.asdict(_spec(repeats=1)), "mem_limit_gib": 0}
    job = {"job": "fit", "spec": spec, "bits": "w4a8", "folder": str(tmp_path / "fit")}
    assert worker.main(json.dumps(job), str(tmp_path / "fit.json")) == 0
    fitted = json.loads((tmp_path / "fit.json").read_text())["fitted"]
    backend = dataclasses.asdict(bench.parse_backends(["trdq-w4a8-real-shared"])[0])
    job = {"job": "measure", "spec": spec, "backend": backend, "fitted": fitted}
    assert worker.main(json.dumps(job), str(tmp_path / "out.json")) == 0
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["execution"] == "real integer" and record["fit_seconds"] == fitted["fit_seconds"]
    assert record["mem_limit_mib"] is None


@pytest.mark.slow
def test_fp16_is_a_full_precision_backend_and_a_real_dtype_on_cpu_too(cache):
    assert bench.parse_backends(["fp16"]) == [bench.Backend("fp16", "float16")]
    spec = _spec(real_dtype="float16")
    backends = bench.parse_backends(["fp32", "fp16", "trdq-w8a8-real"])
    out = bench.run(spec, backends, isolate=False, cache=cache)
    fp32, fp16, real = out["results"]
    assert [r["status"] for r in out["results"]] == ["ok"] * 3 and fp16["execution"] == "full precision"
    assert fp16["dtype"] == "float16" and set(fp16["weight_bytes"]) == {"float16", "total"}
    assert fp16["vs_fp32"]["weight_bytes"] == 0.5 and fp32["vs_fp16"]["weight_bytes"] == 2.0
    assert real["dtype"] == "float16"
    assert real["vs_fp16"]["step"] == real["step_ms"]["median"] / fp16["step_ms"]["median"]
    assert fp32["vs_bf16"] is None  # no bf16 baseline in this run


def test_the_device_is_part_of_the_spec_and_the_report(report, monkeypatch):
    spec = _spec()
    # bf16 outside the integer layers only where the CPU has it natively (trdq.cpu)
    assert dataclasses.asdict(spec)["device"] == "cpu" and spec.real_dtype == str(float_dtype()).split(".")[1]
    assert report["machine"]["cpu_class"] == cpu_info().cpu_class
    assert bench.BenchSpec(**dataclasses.asdict(spec)) == spec  # what the workers receive
    assert report["device"] == report["spec"]["device"] == report["machine"]["device"] == "cpu"
    assert "gpu" not in report["machine"]
    for r in report["results"]:
        assert r["device"] == "cpu" and r["cuda_model_mib"] is r["peak_cuda_mib"] is None
        assert r["vs_fp16"] is None and r["vs_fp32"]["peak_cuda"] is None
    assert report["results"][3]["online_transforms"]["basis"].startswith("cpu time")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only the spec is built, nothing runs
    cuda = _spec(device="cuda")
    assert dataclasses.asdict(cuda)["device"] == "cuda" and cuda.real_dtype == "float16"
    assert bench.BenchSpec(**dataclasses.asdict(cuda)) == cuda
    assert bench.fit_key(cuda, "w8a8") == bench.fit_key(spec, "w8a8")  # fits are made on the CPU
    with pytest.raises(ValueError, match="leave it out with --device cuda"):
        _spec(device="cuda", mem_limit_gib=4)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        _spec(device="tpu")
    with pytest.raises(ValueError, match="real_dtype is one of bfloat16, float16, float32"):
        _spec(real_dtype="float64")


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False.*or use --device cpu"):
        _spec(device="cuda")


def test_cli_device_cuda_without_a_gpu_says_so_and_writes_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cuda", "--backends", "fp16", "--json", str(out)]) == 2
    assert "torch.cuda.is_available() is False" in caplog.text and "Traceback" not in caplog.text
    assert not out.exists()


def test_a_cuda_worker_sets_no_address_space_cap(tmp_path, monkeypatch):
    """The fit job runs on the CPU whatever the device, so it runs here; the cap must stay off."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    spec = {**dataclasses.asdict(_spec(repeats=1, device="cuda")), "mem_limit_gib": None}
    job = {"job": "fit", "spec": spec, "bits": "w8a8", "folder": str(tmp_path / "fit")}
    assert worker.main(json.dumps(job), str(tmp_path / "fit.json")) == 0
    assert json.loads((tmp_path / "fit.json").read_text())["mem_limit_mib"] is None


def test_timed_synchronizes_around_every_timed_call():
    calls = []
    out = bench.timed(lambda: calls.append("fn"), 1, 2, sync=lambda: calls.append("sync"))
    assert calls == ["fn", "sync", "fn", "sync", "sync", "fn", "sync"] and len(out["all"]) == 2
    bench.synchronizer("cpu")()  # a no-op without a device


def test_weight_bytes_count_each_storage_once():
    lin = torch.nn.Linear(4, 3)
    shared = torch.nn.Sequential(lin, lin)
    assert bench.weight_bytes(shared) == {"float32": (12 + 3) * 4, "total": 60}


@pytest.mark.slow
def test_pipelines_report_end_to_end_latency():
    spec = bench.BenchSpec(model="shapes-t2i", warmup=1, repeats=1, e2e_repeats=1, threads=1)
    out = bench.run(spec, bench.parse_backends(["fp32"]), isolate=False)
    (r,) = out["results"]
    assert r["e2e_s_per_image"]["median"] > 0 and r["vs_bf16"] is None
    assert out["setup"]["resolution_px"] == 64 and out["setup"]["text_tokens"] == 16


def test_backend_names_and_options_are_checked():
    with pytest.raises(ValueError, match="unknown backend 'int8'.*trdq-wXaY-sim"):
        bench.parse_backends(["fp32", "int8"])
    with pytest.raises(ValueError, match="2..8"):
        bench.parse_backends(["trdq-w9a8-real"])
    with pytest.raises(ValueError, match="unknown deployment"):
        bench.parse_backends(["trdq-w8a8-real"], deployments=["sharded"])
    with pytest.raises(ValueError, match="unknown backend"):
        bench.parse_backends(["trdq-w8a8-sim-shared"])
    both = bench.parse_backends(["trdq-w8a8-real", "trdq-w4a8-real-shared", "fp32", "fp32"],
                                deployments=["per-group", "shared"])
    assert [(b.name, b.deployment) for b in both] == [
        ("trdq-w8a8-real-per-group", "per-group"), ("trdq-w8a8-real-shared", "shared"),
        ("trdq-w4a8-real-shared", "shared"), ("fp32", None)]
    with pytest.raises(ValueError, match="multiple of 16"):
        bench.BenchSpec(resolution=100)
    with pytest.raises(ValueError, match="random models"):
        bench.BenchSpec(model="shapes-t2i", overrides={"num_layers": 2})


@pytest.mark.slow
def test_cli_runs_each_backend_in_its_own_worker_and_records_failures(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # where the temporary fit cache goes (runs/bench-cache/)
    out = tmp_path / "bench.json"
    # 99 time groups cannot split 20 steps: the preparation worker fails, the FP one still reports
    assert main(["bench", "--layers", "1", "--resolution", "32", "--backends", "fp32,trdq-w8a8-sim",
                 "--groups", "99", "--warmup", "1", "--repeats", "1", "--threads", "1",
                 "--json", str(out)]) == 2
    report = json.loads(out.read_text())
    fp32, sim = report["results"]
    assert fp32["status"] == "ok" and fp32["mem_limit_mib"] > 0
    assert fp32["rss_baseline_mib"] > 0 and fp32["peak_rss_mib"] >= fp32["rss_baseline_mib"]
    assert sim["status"] == "error" and "fitting w8a8 failed" in sim["error"]
    assert "99 time groups" in sim["error"]
    assert sim["vs_fp32"] is None and report["fitting"]["fits"][0]["status"] == "error"
    assert "1 of 2 backends failed" in caplog.text
    assert report["fitting"]["cache"] is None and not (tmp_path / "runs").exists()  # removed at the end
    assert main(["bench", "--backends", "fp32,bf17", "--json", str(tmp_path / "x.json")]) == 2
    assert "bf17" in caplog.text and not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_real_integer_weights_are_one_int8_or_packed_int4_copy():
    """With one time group and no rotation, a real layer holds one int8 (w8) or packed int4 (w4)
    copy of its weight, 0.5 or 0.25 of bf16's bytes, plus O(C_in + C_out) vectors (scales, bias,
    zero-point row sums, smoothing factors): under 5% more at width 512. Layers that are not
    quantized stay as they were (fp32), so the bound is on the quantized layers."""
    spec = _spec(groups=1, rotation="none", repeats=1,
                 overrides={"num_layers": 1, "num_attention_heads": 8, "attention_head_dim": 64,
                            "caption_channels": 64, "cross_attention_dim": 512})
    fp = bench.build(spec, bench.Backend("fp32")).transformer
    adapter = adapter_for(fp)
    layers = target_layers(fp, adapter.include, adapter.exclude).values()
    targets = sum(bench.weight_bytes(m)["total"] for m in layers)
    others = bench.weight_bytes(fp)["total"] - targets
    out = bench.run(spec, bench.parse_backends(["trdq-w8a8-real", "trdq-w4a8-real"]), isolate=False)
    w8, w4 = out["results"]
    assert w8["execution"] == w4["execution"] == "real integer"
    assert w8["weight_bytes"]["total"] <= 0.55 * targets / 2 + others
    # on a CPU without VNNI, fbgemm multiplies 4-bit weights from its own int8 copy, counted too
    fbgemm = w4["gemm"] == "fbgemm"
    assert ("fbgemm_packed" in w4["weight_bytes"]) == fbgemm
    assert w4["weight_bytes"]["total"] <= (0.80 if fbgemm else 0.30) * targets / 2 + others


def test_real_backends_report_the_share_of_their_online_transforms(report):
    fp32, _, sim, real = report["results"]
    assert fp32["online_transforms"] is None and sim["online_transforms"] is None
    online = real["online_transforms"]
    assert 0 < online["transform_ms"] < online["profiled_step_ms"]
    assert online["share"] == pytest.approx(online["transform_ms"] / online["profiled_step_ms"], abs=1e-3)


def test_every_backend_splits_a_profiled_step_into_attention_gemms_and_transforms(report):
    fp32, bf16, sim, real = report["results"]
    for r in (fp32, bf16, sim, real):
        p = r["profile"]
        assert p["attention_ms"] > 0 and p["other_ms"] >= 0
        parts = sum(p[f"{k}_ms"] for k in ("attention", "float_gemm", "int8_gemm", "online_transform", "other"))
        assert parts >= p["profiled_step_ms"] - 0.02  # "other" is the rest of the step, never negative
        if p["other_ms"] > 0:
            assert parts == pytest.approx(p["profiled_step_ms"], abs=0.02)
            assert sum(p["shares"].values()) == pytest.approx(1, abs=0.01)
    # full precision and simulated layers multiply in float; the real ones in int8 with transforms
    assert fp32["profile"]["int8_gemm_ms"] == 0 < fp32["profile"]["float_gemm_ms"]
    assert sim["profile"]["int8_gemm_ms"] == 0 < sim["profile"]["float_gemm_ms"]
    assert real["profile"]["int8_gemm_ms"] > 0 and real["profile"]["online_transform_ms"] > 0
    # whichever int8 GEMM this CPU runs (torch._int_mm, fbgemm or exact fp32 chunks) counts as one
    assert real["gemm"] == cpu.int8_gemm(int(real["bits"][1])) and fp32["gemm"] is None
    assert real["online_transforms"]["transform_ms"] == real["profile"]["online_transform_ms"]


@pytest.mark.slow
def test_compiled_real_backends_run_and_say_so(cache):
    out = bench.run(_spec(compile=True), bench.parse_backends(["trdq-w8a8-real"]), isolate=False, cache=cache)
    (real,) = out["results"]
    assert real["status"] == "ok" and real["compiled"] and real["dtype"] == out["spec"]["real_dtype"]
    online = real["online_transforms"]
    assert 0 < online["transform_ms"] < online["profiled_step_ms"]


@pytest.mark.slow
def test_attention_sharing_is_timed_beside_the_plain_step():
    spec = _spec(share_attention=1)
    out = bench.run(spec, bench.parse_backends(["fp32", "trdq-w8a8-real"]), isolate=False)
    for r in out["results"]:
        sharing = r["sharing"]
        assert len(sharing["layers"]) == 1 and sharing["of"] == 2 and sharing["step_ms"]["median"] > 0
        assert sharing["attn_score_skipped"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="even --batch"):
        _spec(share_attention=1, batch=3)
    with pytest.raises(ValueError, match="25%"):
        _spec(share_attention="most")
    assert _spec(share_attention=0).share_attention is None


@pytest.mark.slow
def test_a_pipeline_chooses_shared_layers_from_its_prompts():
    spec = bench.BenchSpec(model="shapes-t2i", warmup=1, repeats=1, e2e_repeats=1, threads=1, share_attention=2)
    (r,) = bench.run(spec, bench.parse_backends(["fp32"]), isolate=False)["results"]
    assert r["sharing"]["chosen_by"] == "similarity on prompts" and r["sharing"]["of"] == 8
    assert r["sharing"]["rule"] == "top2"
    assert "transformer_blocks.0.attn1" in r["sharing"]["layers"]  # text-free first block: maps identical


@pytest.mark.slow  # compiles each case's layer: about 17 s alone
def test_layer_timing_times_every_case_of_every_shape(monkeypatch, tmp_path):
    from trdq.demo.bench import layer_timing

    monkeypatch.setattr(layer_timing, "CALLS", 1)
    monkeypatch.setattr(layer_timing, "WARMUP", 1)
    monkeypatch.setattr(layer_timing, "SHAPES", ((256, 128),))
    out = tmp_path / "layers.json"
    layer_timing.main(["--json", str(out), "--rows", "32"])
    report = json.loads(out.read_text())
    assert report["meta"]["rows"] == 32 and report["meta"]["device"] == "cpu"
    assert [r["case"] for r in report["rows"]] == ["fp16 linear", "w8a8 real (duquant)", "w8a8 real (no transform)",
                                                   "transform only", "int_mm only", "fp16 mm only"]
    assert all(r["eager_us"] > 0 and r["graph_us"] > 0 for r in report["rows"])


def test_mem_limit_takes_zero_for_none_but_no_negative_or_nan():
    assert build_parser().parse_args(["bench", "--mem-limit-gib", "0", "--json", "x"]).mem_limit_gib == 0
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "--mem-limit-gib", bad, "--json", "x"])


def test_reports_are_strict_json(tmp_path):
    path = bench.save_report({"results": [{"step_ms": float("nan"), "vs_fp32": float("inf")}]}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"results": [{"step_ms": None, "vs_fp32": None}]}
    assert "NaN" not in path.read_text()


def _processes_mentioning(text: str) -> list[int]:
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_sigterm_stops_the_bench_its_worker_and_its_partial_files(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "trdq", "bench", "--layers", "1", "--resolution", "32", "--threads", "1",
           "--backends", "trdq-w8a8-sim", "--cache", str(cache), "--json", str(tmp_path / "b.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ,
                                                                                        "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while len(_processes_mentioning(str(cache))) < 2 and time.monotonic() < deadline:  # the fit worker is up
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.1)
    time.sleep(3)  # well into fitting
    assert proc.poll() is None and len(_processes_mentioning(str(cache))) == 2, "no fit worker running"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert proc.returncode == 130 and "interrupted by SIGTERM" in proc.stderr.read().decode()
    assert _processes_mentioning(str(cache)) == []
    assert list(cache.iterdir()) == [] and not (tmp_path / "b.json").exists()


def _result(backend, step, weights, execution="real integer", **extra):
    return {"backend": backend, "status": "ok", "execution": execution, "step_ms": {"median": step},
            "weight_bytes": {"total": weights}, "e2e_s_per_image": None, "peak_rss_mib": 1.0, **extra}


def test_verdicts_say_faster_or_smaller_than_bf16_and_why():
    from trdq.demo.bench.report import _ratios, verdicts

    results = [_result("bf16", 100.0, 1000, "full precision", dtype="bfloat16"),
               _result("trdq-w8a8-real-per-group", 50.0, 2000, deployment="per-group",
                       profile={"shares": {"attention": 0.4, "int8_gemm": 0.3, "online_transform": 0.05, "other": 0.25}}),
               _result("quanto-w8a8", 200.0, 500),
               {"backend": "torchao-w8a8", "status": "error", "error": "boom"}]
    for r in results:
        r["vs_bf16"] = _ratios(r, results[0])
    report = {"results": results, "machine": {"native_bf16": False}, "quantization": {"groups": 4}}
    lines = dict(line.split(": ", 1) for line in verdicts(report))
    assert lines["trdq-w8a8-real-per-group"].startswith("2.00x faster than bf16 per step, weights 2.00x larger")
    assert "attention (float) 40%" in lines["trdq-w8a8-real-per-group"]
    assert "online transforms" not in lines["trdq-w8a8-real-per-group"]  # under 10%: not a reason
    assert "(4 groups)" in lines["trdq-w8a8-real-per-group"]
    assert lines["quanto-w8a8"].startswith("2.00x slower than bf16 per step, weights 2.00x smaller")
    assert "did not run" in lines["torchao-w8a8"]
    assert "without native bf16 kernels" in lines["bf16"]
    # without bf16 in the run, fp32 is the reference
    report["results"] = [dict(r, backend="fp32") if r["backend"] == "bf16" else r for r in results]
    for r in report["results"]:
        r["vs_fp32"] = r["vs_bf16"]
    assert verdicts(report)[1].startswith("trdq-w8a8-real-per-group: 2.00x faster than fp32")


def test_verdicts_of_an_untimed_run_speak_of_weights_at_the_published_depth():
    from trdq.demo.bench.report import _ratios, verdicts

    def untimed(backend, weights, at_depth, execution="real integer", **extra):
        r = _result(backend, None, weights, execution, weight_bytes_at_depth={"depth": 28, "total": at_depth}, **extra)
        return dict(r, step_ms=None)

    results = [untimed("bf16", 200, 1200, "full precision"),
               untimed("trdq-w8a8-real-jit", 100, 600, deployment="jit", compact_rotations=True),
               _result("trdq-w4a8-real-per-group", 100.0, 200, deployment="per-group", compact_rotations=False)]
    for r in results:
        r["vs_bf16"] = _ratios(r, results[0])
    report = {"results": results, "machine": {"native_bf16": False}, "quantization": {"groups": 1, "rotation": "duquant"}}
    lines = dict(line.split(": ", 1) for line in verdicts(report))
    assert lines["trdq-w8a8-real-jit"].startswith("weights 2.00x smaller than bf16 at the published 28 blocks")
    assert lines["trdq-w8a8-real-jit"].endswith("block rotations kept as reflections.")
    assert "(1 group), dense block rotations" in lines["trdq-w4a8-real-per-group"]
    assert "faster" not in lines["bf16"]  # nothing was timed: no word on speed
    results[2]["step_ms"] = {"median": 100.0}
    results[0]["step_ms"] = {"median": 100.0}
    results[2]["vs_bf16"] = _ratios(results[2], results[0])
    lines = dict(line.split(": ", 1) for line in verdicts(report))
    assert lines["trdq-w4a8-real-per-group"].startswith("as fast as bf16 per step, weights the same size")


def test_weights_extrapolated_to_more_blocks_equal_the_deeper_model_and_count_shared_factors_once():
    """A jit model of 2 blocks extrapolated to 3 holds what the 3-block model holds: its rotation
    signs are one copy per width, shared by every block."""
    import trdq
    from tests.conftest import build_tiny_pixart
    from trdq.config import QuantConfig, TimeGroups
    from trdq.demo.bench.measure import compact_rotations, weight_bytes, weight_bytes_at_depth

    config = QuantConfig(method="trdq", time_groups=TimeGroups(2), block_size=16, select_transforms=False)
    real = {}
    for layers in (2, 3):
        fp = build_tiny_pixart(num_layers=layers)
        q = trdq.quantize(fp, config, ["a red circle", "a blue square"], steps=2)
        real[layers] = trdq.realize(q, deployment="jit", base=fp).pipe.transformer
    assert weight_bytes_at_depth(real[3], 3)["total"] == weight_bytes(real[3])["total"]
    extrapolated = weight_bytes_at_depth(real[2], 3)
    assert extrapolated["blocks"] == 2 and extrapolated["total"] == weight_bytes(real[3])["total"]
    # the signs are shared: counting every block's factors as its own would overstate the total
    assert extrapolated["per_block"] < weight_bytes(real[2].transformer_blocks[1])["total"]
    # per-group keeps dense blocks unless asked; the memory deployments keep reflections
    assert compact_rotations(real[3]) is True
    per_group = {c: trdq.realize(q, compact_rotations=c).pipe.transformer for c in (None, True)}
    assert compact_rotations(per_group[None]) is False and compact_rotations(per_group[True]) is True
    assert weight_bytes(per_group[True])["total"] < weight_bytes(per_group[None])["total"]


def test_a_memory_only_run_records_weights_at_the_published_depth_without_timing(cache):
    backends = bench.parse_backends(["bf16", "trdq-w8a8-real"], ["jit"])
    report = bench.run(_spec(timing=False), backends, isolate=False, cache=cache)
    assert report["timing"].startswith("not timed")
    bf16, jit = report["results"]
    assert bf16["step_ms"] is None and bf16["profile"] is None and jit["compact_rotations"] is True
    for r in (bf16, jit):
        depth = r["weight_bytes_at_depth"]
        assert depth["blocks"] == 2 and depth["depth"] == 28
        assert depth["total"] == r["weight_bytes"]["total"] + 26 * depth["per_block"]
    assert jit["vs_bf16"]["step"] is None and jit["vs_bf16"]["weight_bytes_at_depth"] < 1
    from analysis.readme import memory_table

    path = bench.save_report(report, cache.parent / "memory.json")
    rows = [line for line in memory_table(path).splitlines() if line.startswith("|")]
    assert any("trdq-w8a8-real" in row and "x |" in row for row in rows)


def test_a_qk_suffix_quantizes_the_attention_of_a_trdq_backend_with_the_same_fit(cache):
    from diffusers.models.attention_processor import Attention

    from trdq.attention import AttentionQuant, QuantAttnProcessor

    names = bench.parse_backends(["trdq-w8a8-real-qk8", "trdq-w8a8-real"], deployments=["per-group", "jit"])
    assert [(b.name, b.deployment, b.attention_bits) for b in names] == [
        ("trdq-w8a8-real-per-group-qk8", "per-group", 8), ("trdq-w8a8-real-jit-qk8", "jit", 8),
        ("trdq-w8a8-real-per-group", "per-group", None), ("trdq-w8a8-real-jit", "jit", None)]
    with pytest.raises(ValueError, match="attention bits"):
        bench.parse_backends(["trdq-w8a8-sim-qk9"])
    spec = _spec(timing=False)
    fitted = bench.fit(spec, "w8a8", cache / "qk-fit")
    for backend, real in ((bench.parse_backends(["trdq-w8a8-sim-qk6"])[0], False), (names[0], True)):
        built = bench.build(spec, backend, fitted)
        processors = [m.processor for m in built.transformer.modules() if isinstance(m, Attention)]
        assert processors and all(isinstance(p, QuantAttnProcessor) and p.quant == AttentionQuant(backend.attention_bits, real)
                                  for p in processors)
