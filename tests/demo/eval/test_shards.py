"""Evaluation over several processes: whole batches dealt out, every output gathered, and records
equal to one process's."""

import json
import os
import socket
import subprocess
import sys

import pytest

from trdq.demo.eval.shards import Shards


def test_whole_batches_are_dealt_round_robin_and_cover_every_item_once():
    parts = [Shards(rank, 3).batches(23, 4) for rank in range(3)]
    assert parts[0] == [(0, 4), (12, 16)] and parts[2] == [(8, 12), (20, 23)]
    covered = sorted(i for part in parts for lo, hi in part for i in range(lo, hi))
    assert covered == list(range(23))
    assert Shards().batches(5, 16) == [(0, 5)] and Shards(1, 2).batches(5, 16) == []  # one batch: one process


def test_one_process_gathers_its_own_values_in_batch_order():
    shards = Shards.from_environment() if "WORLD_SIZE" not in os.environ else Shards()
    assert shards == Shards() and shards.main
    assert shards.gather("x") == ["x"]
    assert shards.gather_batches({8: "b", 0: "a", 16: "c"}) == ["a", "b", "c"]


def test_each_process_takes_the_gpu_of_its_local_rank_or_the_cpu(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert Shards.device(cuda=False) == "cpu" and Shards.device(cuda=True) == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert Shards.device(cuda=True) == "cuda:3" and Shards.device(cuda=False) == "cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_write_the_records_of_one(tmp_path):
    args = ["eval", "--model", "shapes-t2i", "--num-prompts", "6", "--steps", "3", "--batch-size", "2",
            "--methods", "fp,trdq", "--bits", "w8a8", "--groups", "1", "--calib-prompts", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "trdq", *args, "--json", str(one)], env=env, check=True,
                   capture_output=True)
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                               "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", str(_free_port()), "-m", "trdq", *args, "--json", str(two)],
                              env=env, capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "(2 processes, this one's share)" in launched.stderr  # rank 0 sampled a share, not all
    single, sharded = json.loads(one.read_text()), json.loads(two.read_text())
    assert [r["method"] for r in sharded] == ["fp", "trdq"]
    for a, b in zip(single, sharded):
        for key in ("adherence", "acc_color", "shapes_fd", "psnr_vs_fp", "ssim_vs_fp", "eps_sqnr_db"):
            assert a.get(key) == pytest.approx(b.get(key), abs=1e-6), key
        assert a["num_prompts"] == b["num_prompts"] == 6
