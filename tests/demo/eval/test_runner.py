import pytest

from trdq.demo import shapes
from trdq.demo.eval.runner import evaluate, read_prompts_file, write_json


def test_prompts_file_errors_name_the_line_and_the_grammar(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\na small red circle on the left\n\na small red dragon on the left\n")
    with pytest.raises(ValueError, match=r"line 4: 'a small red dragon on the left'.*Expected: a \{size\}"):
        read_prompts_file(path)
    path.write_text("a small red circle on the left\n\n# done\n")
    assert read_prompts_file(path, minimum=1) == [shapes.Scene("small", "red", "circle", "on the left")]
    with pytest.raises(ValueError, match="holds 1 caption.*at least 2"):
        read_prompts_file(path)


def test_prompts_file_encoding_line_ends_and_size(tmp_path, monkeypatch):
    import trdq.captions as captions

    path = tmp_path / "prompts.txt"
    path.write_bytes(b"\xef\xbb\xbfa small red circle on the left\r\na large blue star at the top\r\n")
    assert [s.shape for s in read_prompts_file(path)] == ["circle", "star"]  # BOM and CRLF are fine
    path.write_bytes(b"a small red circle on the left\n\x89PNG\x00\xff")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_prompts_file(path)
    monkeypatch.setattr(captions, "MAX_PROMPTS_FILE_BYTES", 10)
    with pytest.raises(ValueError, match="a prompts file may hold at most 10"):
        read_prompts_file(path)


@pytest.mark.slow
def test_shipped_model_follows_prompts(shapes_t2i):
    """A regression bar on the shipped weights: most of 48 prompts fully right at 20 steps."""
    (record,) = evaluate(shapes_t2i, shapes.sample_scenes(48, seed=11), seed=100)
    assert record["adherence"] >= 0.75, record
    assert record["method"] == "fp" and record["num_prompts"] == 48


def test_write_json_replaces_whole_files(tmp_path):
    path = tmp_path / "out.json"
    write_json([{"a": 1}], path)
    write_json([{"b": 2}], path)
    assert path.read_text().strip().startswith("[") and '"b": 2' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.slow
def test_quantized_records_compare_with_fp_along_the_trajectory(tiny_pixart):
    from trdq.config import QuantConfig, TimeGroups

    scenes = shapes.sample_scenes(4, seed=2)
    configs = [QuantConfig(method="trdq", w_bits=b, a_bits=b, time_groups=TimeGroups(2), block_size=32)
               for b in (8, 4)]
    fp, w8, w4 = evaluate(tiny_pixart, scenes, configs, steps=4,
                          calibration_prompts=["a large red circle in the center"])
    assert fp["method"] == "fp" and "psnr_vs_fp" not in fp
    for r in (w8, w4):
        assert r["execution"] == "simulated" and len(r["eps_sqnr_db_per_step"]) == 4
        assert r["num_groups"] == 2 and r["calib_seconds"] > 0
    assert w8["eps_sqnr_db"] > w4["eps_sqnr_db"] + 10
    assert w8["psnr_vs_fp"] > w4["psnr_vs_fp"]


def test_models_with_the_same_time_groups_share_one_calibration(tiny_pixart, monkeypatch):
    from trdq import api
    from trdq.config import QuantConfig, TimeGroups
    from trdq.demo.eval import runner

    scenes = shapes.sample_scenes(2, seed=3)
    calls = []
    monkeypatch.setattr(runner, "calibrate_groups", lambda *a, **k: calls.append(1) or api.calibrate_groups(*a, **k))
    configs = [QuantConfig(method=m, w_bits=4, a_bits=6, time_groups=TimeGroups(2), block_size=16)
               for m in ("viditq", "rtn", "duquant")]
    run = dict(include_fp=False, steps=4, calibration_prompts=["a large red circle in the center"], eps_sqnr=False)
    shared = evaluate(tiny_pixart, scenes, configs, **run)
    assert len(calls) == 1 and [r["calib_reused"] for r in shared] == [False, True, True]
    alone = evaluate(tiny_pixart, scenes, configs[1:2], **run)[0]  # rtn with a calibration of its own
    assert alone["calib_reused"] is False
    assert alone["psnr_vs_fp"] == shared[1]["psnr_vs_fp"] and alone["adherence"] == shared[1]["adherence"]


def test_fp_outputs_are_kept_between_runs_for_the_same_model_prompts_and_seeds(tiny_pixart, tmp_path, monkeypatch):
    import torch

    from trdq.demo.eval import runner

    def same(a: dict, b: dict) -> bool:
        a, b = dict(a), dict(b)
        return a.pop("shapes_fd") == pytest.approx(b.pop("shapes_fd"), rel=1e-6) and a == b

    scenes = shapes.sample_scenes(2, seed=4)
    sampled = []
    real = runner.generate
    monkeypatch.setattr(runner, "generate", lambda m, p, s, **k: sampled.append(list(s)) or real(m, p, s, **k))
    run = dict(steps=2, reference_cache=tmp_path)
    first = evaluate(tiny_pixart, scenes, **run)
    (kept,) = tmp_path.glob("reference-*.npz")
    again = evaluate(tiny_pixart, scenes, **run)
    # read back with its seconds, not sampled again (shapes_fd, from 2 samples, varies in its 8th digit)
    assert sampled == [[0, 1]] and same(again[0], first[0])
    evaluate(tiny_pixart, scenes, seed=5, **run)  # other seeds: other outputs, another file
    assert sampled[-1] == [5, 6] and len(list(tmp_path.glob("reference-*.npz"))) == 2
    kept.write_bytes(b"not an npz")  # damaged: sampled afresh and replaced
    (fresh,) = evaluate(tiny_pixart, scenes, **run)
    assert sampled[-1] == [0, 1] and len(sampled) == 3
    assert same({**fresh, "seconds": 0}, {**first[0], "seconds": 0})
    assert evaluate(tiny_pixart, scenes, **run)[0]["seconds"] == fresh["seconds"] and len(sampled) == 3
    transformer = tiny_pixart.pipe.transformer
    with torch.no_grad():  # other weights: sampled afresh
        transformer.proj_out.bias.add_(1.0)
        try:
            evaluate(tiny_pixart, scenes, **run)
        finally:
            transformer.proj_out.bias.sub_(1.0)
    assert len(sampled) == 4 and len(list(tmp_path.glob("reference-*.npz"))) == 3
