import json
import logging

import numpy as np
import pytest
from PIL import Image

from trdq.cli import main


def test_generate_writes_an_image_and_warns_on_unknown_words(tmp_path, caplog):
    out = tmp_path / "img.png"
    assert main(["generate", "--prompt", "a small red dragon on the left", "--steps", "2",
                 "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)
    assert "dragon" in caplog.text


def test_eval_writes_records(tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--num-prompts", "4", "--steps", "2", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    for key in ("method", "bits", "adherence", "shapes_fd", "acc_size", "acc_color", "acc_shape",
                "acc_position", "num_prompts"):
        assert key in record
    assert record["num_prompts"] == 4 and 0 <= record["adherence"] <= 1


@pytest.mark.slow
def test_eval_resumes_from_its_json_and_saves_each_model(tmp_path, caplog, monkeypatch):
    out = tmp_path / "eval.json"
    common = ["eval", "--num-prompts", "2", "--steps", "2", "--no-eps-sqnr", "--json", str(out)]
    assert main([*common, "--methods", "fp,rtn", "--bits", "w8a8"]) == 0
    first = json.loads(out.read_text())
    assert [r["method"] for r in first] == ["fp", "rtn"] and "eps_sqnr_db" not in first[1]

    import trdq.demo.eval.runner as runner

    calls, sampled = [], []
    real, real_generate = runner.convert, runner.generate
    monkeypatch.setattr(runner, "convert", lambda p, c, *a, **k: calls.append(c.bits) or real(p, c, *a, **k))
    monkeypatch.setattr(runner, "generate", lambda m, *a, **k: sampled.append(m.quant) or real_generate(m, *a, **k))
    cache = ["--reference-cache", str(tmp_path / "cache")]
    assert main([*common, *cache, "--resume", "--methods", "fp,rtn", "--bits", "w8a8,w4a4"]) == 0
    records = json.loads(out.read_text())
    assert calls == ["w4a4"]  # FP and RTN W8A8 were kept, not re-run
    assert sampled[0] is None and len(sampled) == 2  # FP sampled for PSNR once, then kept in the cache
    assert main([*common, *cache, "--resume", "--methods", "fp,rtn", "--bits", "w4a8"]) == 0
    assert calls == ["w4a4", "w4a8"] and len(sampled) == 3  # the next stage reads FP from the cache
    assert records[:2] == first and [r["bits"] for r in records] == ["fp32", "w8a8", "w4a4"]
    staged = json.loads(out.read_text())
    assert staged[:3] == records and staged[3]["bits"] == "w4a8"
    records = staged

    caplog.clear()
    assert main(["eval", "--num-prompts", "3", "--steps", "2", "--resume", "--json", str(out)]) == 2
    assert "num_prompts 2 (now 3)" in caplog.text and json.loads(out.read_text()) == records


@pytest.mark.parametrize("argv,message", [
    (["--guidance", "nan"], "--guidance: must be a finite number"),
    (["--guidance", "inf"], "--guidance: must be a finite number"),
    (["--steps", "0"], "--steps: must be at least 1"),
    (["--seed", str(2 ** 63)], "--seed: must be in 0..9223372036854775807"),
    (["--seed", "-1"], "--seed"), (["--num-prompts", "1"], "--num-prompts: must be at least 2"),
    (["--batch-size", "2.5"], "--batch-size: expected an integer"),
])
def test_eval_rejects_values_that_would_run_something_else_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "eval.json"
    with pytest.raises(SystemExit) as exit_:
        main(["eval", *argv, "--json", str(out)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err and not out.exists()


def test_eval_with_an_empty_bits_list_fails_instead_of_writing_nothing(tmp_path, caplog):
    out = tmp_path / "eval.json"
    assert main(["eval", "--methods", "fp,rtn", "--bits", ",", "--json", str(out)]) == 2
    assert "names no bit setting" in caplog.text and not out.exists()


def test_eval_with_more_groups_than_steps_fails_before_sampling(tmp_path, caplog, monkeypatch):
    import trdq.demo.eval.runner as runner

    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("sampled"))
    out = tmp_path / "eval.json"
    assert main(["eval", "--methods", "fp,trdq", "--groups", "8", "--steps", "4", "--json", str(out)]) == 2
    assert "8 time groups cannot split 4 sampling steps" in caplog.text and not out.exists()


def test_eval_rejects_a_bad_prompts_file_before_writing_anything(tmp_path, caplog):
    prompts, out = tmp_path / "p.txt", tmp_path / "eval.json"
    prompts.write_text("a large blue star at the top\na large blue moon at the top\n")
    assert main(["eval", "--prompts-file", str(prompts), "--json", str(out)]) == 2
    assert "line 2" in caplog.text and "a large blue moon at the top" in caplog.text
    assert not out.exists()


def test_eval_rejects_models_outside_the_shapes_world(tmp_path, shapes_t2i, caplog):
    shapes_t2i.pipe.save_pretrained(tmp_path / "plain")
    assert main(["eval", "--model", str(tmp_path / "plain"), "--num-prompts", "2",
                 "--json", str(tmp_path / "e.json")]) == 2
    assert "no known caption world" in caplog.text


def test_eval_rejects_unknown_methods_and_bits(tmp_path, caplog):
    out = tmp_path / "e.json"
    assert main(["eval", "--methods", "fp,gptq", "--json", str(out)]) == 2
    assert "gptq" in caplog.text
    assert main(["eval", "--methods", "rtn", "--bits", "w9a8", "--json", str(out)]) == 2
    assert "2..8" in caplog.text and not out.exists()


def test_ablation_lists_make_every_distinct_config_once():
    from trdq.cli import build_parser, quant_configs

    args = build_parser().parse_args(["eval", "--methods", "fp,rtn,viditq,trdq", "--bits", "w4a8,w4a4",
                                      "--groups", "1,2,4,step", "--rotation", "none,hadamard,duquant",
                                      "--alpha", "search,0.5", "--json", "x.json"])
    include_fp, configs = quant_configs(args, steps=20)
    by_method = {m: [c for c in configs if c.method == m] for m in ("rtn", "viditq", "trdq")}
    assert include_fp
    assert len(by_method["rtn"]) == 2  # groups, rotation and alpha do not change RTN
    assert len(by_method["viditq"]) == 2 * 4  # fixed alpha 0.5 either way; groups matter
    assert len(by_method["trdq"]) == 2 * 4 * 3 * 2
    assert {c.time_groups.num_groups for c in by_method["trdq"]} == {1, 2, 4, 20}


def test_eval_rejects_bad_ablation_values(tmp_path, caplog):
    out = tmp_path / "e.json"
    assert main(["eval", "--methods", "trdq", "--groups", "0", "--json", str(out)]) == 2
    assert "'step'" in caplog.text
    assert main(["eval", "--methods", "trdq", "--alpha", "high", "--json", str(out)]) == 2
    assert "'search'" in caplog.text
    assert main(["eval", "--methods", "trdq", "--rotation", "givens", "--json", str(out)]) == 2
    assert "givens" in caplog.text and not out.exists()


def _save_video_model(model, folder):
    import dataclasses

    from trdq.models.loader import SETTINGS_FILE

    model.pipe.save_pretrained(folder)
    (folder / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(model.settings)))
    return str(folder)


def test_generate_writes_a_clip_as_gif_or_png_strip(tmp_path, tiny_latte, caplog):
    folder = _save_video_model(tiny_latte, tmp_path / "latte")
    gif, strip = tmp_path / "clip.gif", tmp_path / "clip.png"
    assert main(["generate", "--model", folder, "--prompt", "a small red circle moving sideways",
                 "--steps", "2", "--out", str(gif)]) == 0
    assert Image.open(gif).n_frames == 4 and "sideways" in caplog.text
    assert main(["generate", "--model", folder, "--prompt", "a small red circle moving up",
                 "--steps", "2", "--out", str(strip)]) == 0
    assert np.asarray(Image.open(strip)).shape == (32, 4 * 32, 3)
    assert main(["generate", "--model", folder, "--prompt", "a small red circle moving up",
                 "--out", str(tmp_path / "clip.mp4")]) == 2
    assert ".gif or .png" in caplog.text


def test_eval_of_a_video_model_scores_clips(tmp_path, tiny_latte):
    folder = _save_video_model(tiny_latte, tmp_path / "latte")
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", folder, "--num-prompts", "2", "--steps", "2", "--methods", "fp,trdq",
                 "--groups", "2", "--block-size", "32", "--calib-prompts", "2", "--json", str(out)]) == 0
    fp, q = json.loads(out.read_text())
    for key in ("adherence", "acc_color", "acc_shape", "acc_direction", "temporal_consistency", "shapes_fd"):
        assert key in fp and key in q
    assert q["execution"] == "simulated" and 0 < q["psnr_vs_fp"] and len(q["eps_sqnr_db_per_step"]) == 2


def test_eval_with_attention_sharing_adds_one_record_per_rule(tmp_path, caplog):
    out = tmp_path / "eval.json"
    assert main(["eval", "--num-prompts", "2", "--steps", "2", "--share-attention", "2,0.0",
                 "--calib-prompts", "2", "--json", str(out)]) == 0
    fp, top2, everything = json.loads(out.read_text())
    assert "sharing" not in fp and top2["sharing"] == "top2" and everything["sharing"] == "cos>=0"
    assert len(top2["shared_layers"]) == 2 and everything["attn_score_skipped"] == 1.0
    assert 0 < top2["attn_score_skipped"] < 1 and "psnr_vs_fp" in top2
    assert main(["eval", "--share-attention", "most", "--json", str(tmp_path / "x.json")]) == 2
    assert "cosine threshold" in caplog.text and not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_eval_with_a_cfg_split_labels_the_uncond_bits(tmp_path, caplog):
    out = tmp_path / "eval.json"
    assert main(["eval", "--num-prompts", "2", "--steps", "2", "--methods", "trdq", "--bits", "w4a8",
                 "--cfg-split", "--uncond-bits", "w4a4", "--groups", "1", "--calib-prompts", "2",
                 "--json", str(out)]) == 0
    (q,) = json.loads(out.read_text())
    assert q["bits"] == "w4a8/uncond-w4a4" and q["cfg_split"] is True
    assert main(["eval", "--methods", "trdq", "--uncond-bits", "w4a4", "--json", str(out)]) == 2
    assert "needs --cfg-split" in caplog.text


def test_uncond_bits_list_makes_one_split_config_each():
    from trdq.cli import build_parser, quant_configs

    args = build_parser().parse_args(["eval", "--json", "x", "--methods", "trdq", "--bits", "w8a8,w4a8",
                                      "--cfg-split", "--uncond-bits", "same,w4a4"])
    configs = quant_configs(args)[1]
    assert [c.bits for c in configs] == ["w8a8", "w8a8/uncond-w4a4", "w4a8", "w4a8/uncond-w4a4"]
    assert all(c.cfg_split for c in configs)


@pytest.mark.slow
def test_quantize_writes_a_folder_that_generate_samples_like_the_library(tmp_path, caplog):
    import trdq

    caplog.set_level("INFO")
    out = tmp_path / "q"
    assert main(["quantize", "--method", "trdq", "--bits", "w4a8", "--groups", "2", "--calib-prompts", "2",
                 "--steps", "2", "--out", str(out)]) == 0
    assert (out / "transformer" / "config.json").is_file() and "generate from it with" in caplog.text
    loaded = trdq.from_pretrained(out)  # stand-alone: no full-precision model named or loaded
    assert loaded.quant.config.bits == "w4a8" and loaded.quant.config.time_groups.num_groups == 2
    for real in (False, True):
        image = tmp_path / f"q{real}.png"
        assert main(["generate", "--model", str(out), "--prompt", "a small red circle on the left", "--steps", "2",
                     "--out", str(image), *(["--real"] if real else [])]) == 0
        model = trdq.realize(loaded, compact_rotations=True) if real else loaded  # as from_pretrained builds it
        expected = trdq.generate(model, ["a small red circle on the left"], [0], steps=2)[0]
        assert np.array_equal(np.asarray(Image.open(image)), expected)
    # eval takes the folder too, and evaluates it as it is
    records = tmp_path / "q.json"
    assert main(["eval", "--model", str(out), "--num-prompts", "2", "--steps", "2", "--json", str(records)]) == 0
    (record,) = json.loads(records.read_text())
    assert (record["method"], record["bits"], record["execution"], record["num_groups"]) == ("trdq", "w4a8", "simulated", 2)
    assert 0 <= record["adherence"] <= 1 and record["model"] == str(out)
    assert main(["eval", "--model", str(out), "--num-prompts", "2", "--steps", "2", "--json", str(records),
                 "--resume"]) == 0 and len(json.loads(records.read_text())) == 1  # already done
    assert main(["eval", "--model", str(out), "--methods", "rtn", "--num-prompts", "2", "--json",
                 str(tmp_path / "x.json")]) == 2
    assert "quantized already" in caplog.text
    assert main(["quantize", "--model", str(out), "--out", str(tmp_path / "again")]) == 2
    assert "quantize from the full-precision model" in caplog.text


@pytest.mark.parametrize("argv, message", [
    (["--method", "trdq,rtn"], "quantize writes one model"),
    (["--method", "fp"], "quantize writes one model"),
    (["--bits", "w4a8,w8a8"], "quantize writes one model")])
def test_quantize_refuses_anything_but_one_model(tmp_path, caplog, argv, message):
    assert main(["quantize", *argv, "--out", str(tmp_path / "q")]) == 2
    assert message in caplog.text and not (tmp_path / "q").exists()


def test_quantize_refuses_a_folder_it_did_not_write_before_calibrating(tmp_path, caplog, monkeypatch):
    from trdq import api

    monkeypatch.setattr(api, "calibrate", lambda *a, **k: pytest.fail("calibrated before checking --out"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert main(["quantize", "--out", str(tmp_path / "notes")]) == 2
    assert "is not a trdq quantized folder" in caplog.text and (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_a_model_outside_the_embedded_grammars_calibrates_on_general_captions_or_the_users(
        tmp_path, tiny_pixart, monkeypatch):
    from trdq import api
    from trdq.captions import GENERAL_CAPTIONS

    seen = []
    calibrate = api.calibrate
    monkeypatch.setattr(api, "calibrate", lambda prepared, prompts, **kw: seen.append(list(prompts)) or
                        calibrate(prepared, prompts, **kw))
    tiny_pixart.pipe.save_pretrained(tmp_path / "plain")  # no trdq_model.json: no caption world
    mine = tmp_path / "mine.txt"
    mine.write_text("a lamp on a desk\n# a comment\n\na bridge at night\n")
    argv = ["quantize", "--model", str(tmp_path / "plain"), "--method", "rtn", "--steps", "2"]
    assert main([*argv, "--calib-prompts", "3", "--out", str(tmp_path / "q")]) == 0
    assert main([*argv, "--prompts-file", str(mine), "--out", str(tmp_path / "q2")]) == 0
    assert seen == [list(GENERAL_CAPTIONS[:3]), ["a lamp on a desk", "a bridge at night"]]


@pytest.mark.slow
def test_generate_names_the_base_a_folder_of_the_earlier_format_needs(tmp_path, caplog, shapes_t2i):
    import trdq

    out = tmp_path / "q"
    trdq.save(trdq.quantize(shapes_t2i, trdq.QuantConfig(method="rtn"), ["a small red circle"], steps=2), out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["base_model"] = "someone/pixart"
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["generate", "--model", str(out), "--prompt", "a small red circle on the left",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "pass --base" in caplog.text and "someone/pixart" in caplog.text
    assert main(["generate", "--model", "shapes-t2i", "--base", "shapes-t2i", "--prompt", "a small red circle on the left",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "--base is for a quantized folder" in caplog.text
    assert main(["generate", "--model", "shapes-t2i", "--real", "--prompt", "a small red circle on the left",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "--real is for a quantized folder" in caplog.text


@pytest.mark.slow
def test_eval_with_attention_bits_records_each_setting_apart(tmp_path, caplog):
    caplog.set_level("INFO", logger="trdq")
    out = tmp_path / "eval.json"
    assert main(["eval", "--num-prompts", "2", "--steps", "2", "--methods", "trdq", "--groups", "1",
                 "--attention-bits", "off,8", "--calib-prompts", "2", "--no-eps-sqnr", "--json", str(out)]) == 0
    linear_only, with_attention = json.loads(out.read_text())
    assert linear_only["attention_bits"] is None and with_attention["attention_bits"] == 8
    assert with_attention["psnr_vs_fp"] != linear_only["psnr_vs_fp"]  # the scores were quantized
    assert "attention scores at 8 bits" in caplog.text
    for bad, message in (("int8", "'off' or a width"), ("9", "2..8")):
        assert main(["eval", "--methods", "trdq", "--attention-bits", bad, "--json", str(tmp_path / "x.json")]) == 2
        assert message in caplog.text and not (tmp_path / "x.json").exists()


def test_eval_fuses_its_fake_quantization_only_where_the_compilation_pays_off(tmp_path, monkeypatch):
    import contextlib

    from trdq import layers

    seen = []
    monkeypatch.setattr(layers, "fused_fake_quant", lambda enabled: seen.append(enabled) or contextlib.nullcontext())
    argv = ["eval", "--methods", "fp", "--steps", "1", "--json", str(tmp_path / "r.json")]
    assert main([*argv, "--num-prompts", "2"]) == 0  # auto: 2 prompts, eager
    assert main([*argv, "--num-prompts", "2", "--fake-quant", "fused"]) == 0
    assert seen == [False, True]


@pytest.mark.slow
def test_eval_and_quantize_take_shared_inputs(tmp_path, caplog):
    out = tmp_path / "eval.json"
    with caplog.at_level(logging.INFO, logger="trdq"):
        assert main(["eval", "--num-prompts", "2", "--steps", "2", "--groups", "2", "--no-eps-sqnr", "--methods",
                     "trdq", "--bits", "w8a8", "--shared-inputs", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["shared_inputs"] is True and "one transform per attention input" in caplog.text
    assert main(["quantize", "--steps", "2", "--groups", "2", "--calib-prompts", "2", "--bits", "w8a8",
                 "--shared-inputs", "--out", str(tmp_path / "q")]) == 0
    config = json.loads((tmp_path / "q" / "transformer" / "config.json").read_text())["quantization_config"]
    assert config["config"]["shared_inputs"] is True
