"""The peers in the benchmark: torch.compile'd full precision, torchao's and optimum-quanto's W8A8.
No test here asserts a speed (machines are noisy): the benchmark reports speed."""

import pytest
import torch

from trdq.cli import build_parser
from trdq.demo import bench
from trdq.demo.bench.models import mid_timestep

# PixArt-XL-2's layout at width 64 (2 heads x 32): the real architecture, tiny.
TINY = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 32, "caption_channels": 64,
        "cross_attention_dim": 64}
PEERS = ["torchao-w8a8", "quanto-w8a8"]
LIBRARIES = {"torchao-w8a8": "torchao 0.", "quanto-w8a8": "optimum-quanto 0."}


def _spec(**kw):
    return bench.BenchSpec(**{"model": "pixart-xl-random", "resolution": 64, "warmup": 1, "repeats": 1,
                              "threads": 1, "overrides": TINY, "compile": False, **kw})


def _relative_error(spec, backend) -> float:
    """||y - y_fp32|| / ||y_fp32|| of one step at the timed shape, the same inputs for both."""
    ref, built = bench.build(spec, bench.Backend("fp32")), bench.build(spec, backend)
    outputs = []
    for b in (ref, built):
        inputs = bench.step_inputs(b.transformer, b.latent, b.text_tokens, spec.batch, mid_timestep(b), spec.seed)
        with torch.inference_mode():
            outputs.append(b.transformer(**inputs).sample.float())
    y_ref, y = outputs
    return ((y - y_ref).norm() / y_ref.norm()).item()


@pytest.fixture(scope="module")
def report():
    return bench.run(_spec(), bench.parse_backends(["bf16", *PEERS]), isolate=False)


def test_peer_names_parse_and_wrong_ones_say_what_is_accepted(capsys, monkeypatch):
    torchao, quanto, compiled = bench.parse_backends([*PEERS, "bf16-compiled"])
    assert (torchao.library, quanto.library) == ("torchao", "optimum-quanto")
    assert torchao.execution == quanto.execution == "real integer" and torchao.bits == "w8a8"
    assert not torchao.needs_fit and not quanto.needs_fit  # they quantize by themselves
    assert compiled == bench.Backend("bf16-compiled", "bfloat16", compiled=True)
    assert bench.parse_backends(["fp32-compiled"])[0].dtype == "float32"
    whole = bench.parse_backends(["trdq-w8a8-real-qk8-compiled"], ["per-group", "jit"])
    assert [b.name for b in whole] == ["trdq-w8a8-real-per-group-qk8-compiled", "trdq-w8a8-real-jit-qk8-compiled"]
    assert all(b.compiled and b.attention_bits == 8 and b.execution == "real integer" for b in whole)
    with pytest.raises(ValueError, match="unknown backend 'trdq-w8a8-sim-compiled'"):
        bench.parse_backends(["trdq-w8a8-sim-compiled"])
    for name in ("torchao-w4a8", "quanto-w8a8-shared", "quanto"):
        with pytest.raises(ValueError, match=f"unknown backend '{name}': the peers are torchao-w8a8 and quanto-w8a8"):
            bench.parse_backends([name])
    with pytest.raises(ValueError, match="unknown backend 'bf16-compiledx'; use .*bf16-compiled.*torchao-w8a8"):
        bench.parse_backends(["bf16-compiledx"])
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside names
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    usage = capsys.readouterr().out
    assert all(name in usage for name in ("bf16-compiled", *PEERS))


@pytest.mark.slow
def test_peers_run_in_the_bench_and_name_their_library(report):
    assert report["fitting"]["fits"] == []  # nothing for trdq to fit
    fp = bench.build(_spec(), bench.Backend("fp32"))
    layers = [fp.transformer.get_submodule(n) for n in bench.target_names(_spec(), fp)]
    bf16, *peers = report["results"]
    for r in peers:
        assert r["status"] == "ok" and r["execution"] == "real integer"
        assert r["dtype"] == report["spec"]["real_dtype"]  # like trdq's real backends
        assert r["library"].startswith(LIBRARIES[r["backend"]]) and r["quantized_layers"] == len(layers)
        assert not r["compiled"] and r["compile_s"] is None and r["note"] is None
        assert r["profile"]["int8_gemm_ms"] > 0  # they do multiply in int8
        assert r["online_transforms"] is None  # trdq's transforms only
        # one int8 copy of each quantized weight (torchao adds an int8 zero point per row)
        assert r["weight_bytes"]["int8"] >= sum(m.weight.numel() for m in layers)
        assert r["weight_bytes"]["total"] < bf16["weight_bytes"]["total"]
        assert r["vs_bf16"]["step"] == r["step_ms"]["median"] / bf16["step_ms"]["median"]
    assert "(real integer, torchao 0." in bench.summary(peers[0])
    assert "torchao-w8a8" in report["rules"]["peers"]


def test_library_peers_quantize_exactly_the_layers_trdq_quantizes():
    from optimum.quanto import QLinear
    from torchao.quantization import Int8Tensor

    spec = _spec()
    names = bench.target_names(spec, bench.build(spec, bench.Backend("fp32")))
    torchao, quanto = (bench.build(spec, b).transformer for b in bench.parse_backends(PEERS))
    assert {n for n, m in torchao.named_modules() if isinstance(getattr(m, "weight", None), Int8Tensor)} == names
    assert {n for n, m in quanto.named_modules() if isinstance(m, QLinear)} == names
    assert all(m.input_scale.item() != 1 for m in quanto.modules() if isinstance(m, QLinear))  # calibrated
    assert "proj_out" not in names and any(isinstance(m, torch.nn.Linear) and not isinstance(m, QLinear)
                                           for m in quanto.modules())  # the rest stays in floating point


@pytest.mark.parametrize("name", PEERS)
def test_library_peers_are_close_to_full_precision(name):
    assert _relative_error(_spec(), bench.parse_backends([name])[0]) < 0.03


@pytest.mark.slow
def test_a_peer_whose_compilation_fails_runs_eagerly_and_says_so(monkeypatch):
    def fail(self, *args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch.nn.Module, "compile", fail)
    spec = _spec(compile=True)
    quanto, compiled = bench.parse_backends(["quanto-w8a8", "bf16-compiled"])
    (r,) = bench.run(spec, [quanto], isolate=False)["results"]
    assert r["status"] == "ok" and not r["compiled"] and r["profile"]["int8_gemm_ms"] > 0
    assert r["note"] == "torch.compile failed (RuntimeError: no compiler here); ran eager"
    with pytest.raises(RuntimeError, match="no compiler here"):  # compiling is what it measures
        bench.build(spec, compiled)


@pytest.mark.slow
def test_compiled_backends_compile_the_whole_model():
    """One block: compiling (about a minute on two busy cores, less once inductor has cached it) is the cost."""
    spec = _spec(compile=True, overrides={**TINY, "num_layers": 1})
    compiled, torchao = bench.parse_backends(["bf16-compiled", "torchao-w8a8"])
    out = bench.run(spec, [compiled, torchao], isolate=False)
    for r in out["results"]:
        assert r["status"] == "ok" and r["compiled"] and r["compile_s"] > 0 and r["note"] is None
        assert r["profile"]["float_gemm_ms"] > 0 and r["profile"]["attention_ms"] > 0  # compiled ops counted
    compiled_r, torchao_r = out["results"]
    assert torchao_r["profile"]["int8_gemm_ms"] > 0
    assert torchao_r["vs_bf16_compiled"]["step"] == torchao_r["step_ms"]["median"] / compiled_r["step_ms"]["median"]
    assert _relative_error(spec, compiled) < 0.03


@pytest.mark.slow
def test_quanto_calibrates_a_pipeline_on_prompts(monkeypatch):
    """Through the whole pipeline, as trdq's fit calibrates; one prompt, as quanto's calibration
    mode slows every op of the pipeline down (8 prompts: 100 s here)."""
    from optimum.quanto import QLinear

    from trdq.demo.bench import models

    monkeypatch.setattr(models, "CALIB_PROMPTS", 1)
    # float32: bf16 matmuls are two orders of magnitude slower on a CPU without native bf16
    spec = bench.BenchSpec(model="shapes-t2i", threads=1, compile=False, real_dtype="float32")
    built = bench.build(spec, bench.parse_backends(["quanto-w8a8"])[0])
    layers = [m for m in built.transformer.modules() if isinstance(m, QLinear)]
    assert len(layers) == built.quantized_layers > 0 and built.model.pipe.transformer is built.transformer
    assert all(m.input_scale.item() != 1 for m in layers)


@pytest.mark.slow
def test_trdqs_real_model_compiles_whole_and_computes_what_it_computes_eagerly(tmp_path):
    spec = _spec(compile=True, real_dtype="float32", overrides={**TINY, "num_layers": 1})
    eager, whole = bench.parse_backends(["trdq-w8a8-real-per-group", "trdq-w8a8-real-per-group-compiled"])
    out = bench.run(spec, [eager, whole], isolate=False)
    eager_r, whole_r = out["results"]
    assert whole_r["status"] == "ok" and whole_r["compiled"] and whole_r["compile_s"] > 0
    assert whole_r["profile"]["attention_ms"] > 0
    fitted = bench.fit(spec, "w8a8", tmp_path / "fit")
    y = []
    for backend in (eager, whole):
        b = bench.build(spec, backend, fitted)
        inputs = bench.step_inputs(b.transformer, b.latent, b.text_tokens, spec.batch, mid_timestep(b), spec.seed)
        with torch.inference_mode():
            y.append(b.transformer(**inputs).sample.float())
    assert ((y[1] - y[0]).norm() / y[0].norm()).item() < 1e-4  # the same integer model, fused float parts
