"""Several processes (torchrun, gloo on CPU) train the model one process trains: the same global
batches, the same large-loss selections, relabels and ROLE estimates, the same metrics; a
checkpoint of 2 processes resumes in 1; a failure on one rank ends every rank."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from largeloss import cli as main
from largeloss.utils import distributed
from largeloss.utils.distributed import EvalBatches, TrainBatches, World

REPO_ROOT = Path(__file__).resolve().parents[1]
# 37 training images, global batch 16: the last batch has 5 rows, split 3 + 2 (one padding row)
TINY_DDP = ["--dataset", "digits", "--digits_train_size", "37", "--epochs", "3", "--device", "cpu",
            "--arch", "small_cnn_gn",
            "--num_workers", "0", "--batch_size", "16", "--seed", "4"]
METHOD_FLAGS = {"LL-R": ["--mod_scheme", "LL-R", "--delta_rel", "3"],
                "LL-Ct": ["--mod_scheme", "LL-Ct", "--delta_rel", "3", "--track_train"],
                "LL-Cp": ["--mod_scheme", "LL-Cp", "--delta_rel", "3"],
                "role": ["--loss", "role"]}


def torchrun(args: list, processes: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", str(REPO_ROOT / "main.py"), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)


# --- the batch plan ---------------------------------------------------------------------------------

@pytest.mark.parametrize("num_rows,batch_size,world_size", [(37, 16, 2), (37, 16, 4), (40, 8, 2),
                                                            (5, 4, 3)])
def test_the_shards_of_every_rank_make_up_the_one_process_batches(num_rows, batch_size, world_size):
    one = TrainBatches(num_rows, batch_size, seed=3)
    shards = [TrainBatches(num_rows, batch_size, seed=3, world=World(rank, world_size))
              for rank in range(world_size)]
    for sampler in (one, *shards):
        sampler.set_epoch(5)
    per_rank = [list(sampler) for sampler in shards]
    for step, batch in enumerate(one):
        joined = [row for rank in range(world_size) for row in per_rank[rank][step] if row >= 0]
        assert joined == batch  # the global batch, in its order
        assert len({len(per_rank[rank][step]) for rank in range(world_size)}) == 1  # one shape
        assert one.global_batch_size(step) == len(batch)
    assert all(len(batches) == len(one) for batches in per_rank)


def test_one_process_batches_are_the_distributed_samplers():
    sampler = torch.utils.data.DistributedSampler(range(37), num_replicas=1, rank=0, shuffle=True,
                                                  seed=3)
    sampler.set_epoch(2)
    order = list(sampler)
    batches = TrainBatches(37, 16, seed=3)
    batches.set_epoch(2)
    assert list(batches) == [order[0:16], order[16:32], order[32:37]]


def test_evaluation_blocks_cover_the_split_once_in_order():
    blocks = [list(EvalBatches(11, 2, World(rank, 3))) for rank in range(3)]
    assert [row for block in blocks for batch in block for row in batch] == list(range(11))
    assert distributed.shard_counts(11, 3) == [4, 4, 3]
    assert distributed.shard_counts(2, 3) == [1, 1, 0]


# --- 2 processes = 1 process ----------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:no observed positive")
@pytest.mark.parametrize("method", sorted(METHOD_FLAGS))
def test_two_processes_train_what_one_process_trains(tmp_path, method):
    args = [*TINY_DDP, *METHOD_FLAGS[method]]
    assert main.main([*args, "--out_dir", str(tmp_path / "one")]) == 0
    done = torchrun([*args, "--out_dir", tmp_path / "two"])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [(r["modified"], r["relabeled"]) for r in two] == \
        [(r["modified"], r["relabeled"]) for r in one]
    for row_one, row_two in zip(one, two):
        assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], abs=1e-5)
    # The weights agree to float rounding (the gradient is summed over two shards instead of one
    # batch), but this barely trained model scores many val images within 1e-7 of each other, so
    # such rounding can swap two of them: val mAP is equal in epoch 1 and within 0.05 after it.
    assert two[0]["val_map"] == pytest.approx(one[0]["val_map"], abs=1e-5)
    for row_one, row_two in zip(one[1:], two[1:]):
        assert row_two["val_map"] == pytest.approx(row_one["val_map"], abs=0.05)
    if method != "LL-R":
        assert any(row["modified"] for row in one) or method == "role"
    if method == "LL-Ct":  # --track_train's sharded pass over the training set, gathered
        for row_one, row_two in zip(one, two):
            assert row_two["modification_precision"] == row_one["modification_precision"]
            for key in ("loss_false_neg", "train_map_clean", "batch_loss_true_neg"):
                assert row_two[key] == pytest.approx(row_one[key], abs=1e-5), key
    method_one = last_checkpoint(tmp_path / "one")["method"]
    method_two = last_checkpoint(tmp_path / "two")["method"]
    assert torch.equal(method_two["store"]["observed"], method_one["store"]["observed"])
    if method == "LL-Cp":
        assert one[-1]["relabeled"] > 0  # the relabelled entries above are not trivially equal
    if method == "role":
        torch.testing.assert_close(method_two["estimator"]["logits"],
                                   method_one["estimator"]["logits"], rtol=0, atol=1e-6)
    assert "run folder" in done.stdout and done.stdout.count("best epoch") == 1  # rank 0 prints


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_two_processes_evaluate_a_model_as_one_process(tmp_path, capsys):
    """Sharded evaluation gathers exactly the N test rows, in order: the same test mAP."""
    assert main.main([*TINY_DDP, "--epochs", "1", "--out_dir", str(tmp_path / "run")]) == 0
    expected = json.loads((tmp_path / "run" / "results.json").read_text())["test_map"]
    done = torchrun(["--eval_only", tmp_path / "run" / "best.pt", "--device", "cpu",
                     "--num_workers", "0"], processes=3)  # 100 test rows: blocks of 34, 34, 32
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test mAP") == 1
    evaluated = json.loads((tmp_path / "run" / "eval_best.json").read_text())
    assert evaluated["test_map"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_a_two_process_run_resumes_in_two_or_one_process(tmp_path):
    args = [*TINY_DDP, *METHOD_FLAGS["LL-Cp"]]
    whole = torchrun([*args, "--out_dir", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    for name in ("cut", "cut_then_one"):
        done = torchrun([*args, "--out_dir", tmp_path / name, "--stop_after", "2"])
        assert done.returncode == 0, done.stderr[-3000:]
        assert not (tmp_path / name / "results.json").exists()
    resumed = torchrun(["--resume", tmp_path / "cut" / "last.pt", "--device", "cpu",
                        "--num_workers", "0"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert main.main(["--resume", str(tmp_path / "cut_then_one" / "last.pt"), "--device", "cpu",
                      "--num_workers", "0"]) == 0
    expected = json.loads((tmp_path / "whole" / "results.json").read_text())
    for name in ("cut", "cut_then_one"):
        results = json.loads((tmp_path / name / "results.json").read_text())
        # AP jumps at near-ties of scores: with the per-sample flips of issue 21 this seed's test
        # scores of 1 and 2 processes (train losses equal to 4e-8) give mAPs 0.006 apart
        assert results["test_map"] == pytest.approx(expected["test_map"], abs=0.02)
        assert results["best_epoch"] == expected["best_epoch"]
        assert [(r["modified"], r["relabeled"]) for r in rows(tmp_path / name)] == \
            [(r["modified"], r["relabeled"]) for r in rows(tmp_path / "whole")]
        assert torch.equal(last_checkpoint(tmp_path / name)["method"]["store"]["observed"],
                           last_checkpoint(tmp_path / "whole")["method"]["store"]["observed"])


def test_a_global_batch_that_does_not_split_is_refused(tmp_path):
    done = torchrun([*TINY_DDP, "--batch_size", "15", "--out_dir", tmp_path / "run"])
    assert done.returncode != 0
    assert "error: --batch_size 15 is the global batch; it must split evenly over the 2 " \
           "processes" in done.stderr


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_a_corrupt_image_on_one_rank_ends_every_rank(tmp_path, cole_folder):
    data_root = cole_folder("pascal", num_train=20, num_test=8)
    image_dir = data_root / "VOCdevkit/VOC2012/JPEGImages"
    bad_image = sorted(image_dir.glob("train_*.jpg"))[3]
    bad_image.write_bytes(b"not a jpeg at all")
    # a rank left waiting would hang until the collective timeout (600 s): the 300 s limit of the
    # launch (TimeoutExpired) catches that without timing a machine that may be busy
    done = torchrun(["--dataset", "pascal", "--data_root", data_root, "--device", "cpu",
                     "--num_workers", "0", "--batch_size", "4", "--image_size", "32", "--arch",
                     "small_cnn", "--weights", "none", "--epochs", "2",
                     "--out_dir", tmp_path / "run"], timeout=300)
    assert done.returncode != 0
    assert f"error: cannot read image {bad_image}" in done.stderr
    # the failing rank's message, not the other rank's lost connection (issue 21)
    assert (tmp_path / "run" / "error.txt").read_text().startswith(
        f"cannot read image {bad_image}")
