import pytest

from trdq import shapes
from trdq.eval.runner import evaluate_fp, read_prompts_file, write_json


def test_prompts_file_errors_name_the_line_and_the_grammar(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\na small red circle on the left\n\na small red dragon on the left\n")
    with pytest.raises(ValueError, match=r"line 4: 'a small red dragon on the left'.*Expected: a \{size\}"):
        read_prompts_file(path)
    path.write_text("a small red circle on the left\n\n# done\n")
    assert read_prompts_file(path) == [shapes.Scene("small", "red", "circle", "on the left")]


def test_shipped_model_follows_prompts(shapes_t2i):
    """A regression bar on the shipped weights: most of 48 prompts fully right at 20 steps."""
    record = evaluate_fp(shapes_t2i, shapes.sample_scenes(48, seed=11), seed=100)
    assert record["adherence"] >= 0.75, record
    assert record["method"] == "fp" and record["num_prompts"] == 48


def test_write_json_replaces_whole_files(tmp_path):
    path = tmp_path / "out.json"
    write_json([{"a": 1}], path)
    write_json([{"b": 2}], path)
    assert path.read_text().strip().startswith("[") and '"b": 2' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
