"""A sweep in one pass (issue 20): the heads of a stacked sweep equal their separate runs.

Tiny digits features (128 training images, the small CNN's 128-wide features, 10 classes), one
thread, CPU. Each head of `main.py --sweep_delta_rel` is compared with the `--train_mode linear`
run of its own flags, and with the linear phase of the `--train_mode linear_init` run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import read_jsonl
from largeloss import cli as main
from largeloss.engine import sweep
from largeloss.experiment import paper_numbers
from largeloss.experiment.config import parse_args, sweep_configs
from largeloss.methods import registry
from largeloss.methods.stacked import MethodStack
from largeloss.utils.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--dataset", "digits", "--digits_train_size", "128", "--image_size", "24", "--device", "cpu",
        "--num_workers", "0", "--linear_batch_size", "32", "--linear_lr", "0.02",
        "--linear_epochs", "4", "--early_stop_drop", "0"]
SCHEMES = ("LL-R", "LL-Ct", "LL-Cp")
DELTA_RELS = ("10", "30")
# What a head's config.json may differ in from its separate run's: where and how it was run.
PROVENANCE = {"out_dir", "command", "sweep", "git_sha", "git_dirty", "versions"}


def read_json(path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The sweep (3 schemes × 2 Δrel), each head's separate linear run, and linear_init runs."""
    root = tmp_path_factory.mktemp("sweep")
    cache = ["--feature_cache", str(root / "cache")]
    assert main.main([*TINY, *cache, "--train_mode", "linear", "--mod_scheme", ",".join(SCHEMES),
                      "--sweep_delta_rel", ",".join(DELTA_RELS), "--out_dir",
                      str(root / "sweep")]) == 0
    for scheme in SCHEMES:
        for delta_rel in DELTA_RELS:
            flags = [*TINY, *cache, "--mod_scheme", scheme, "--delta_rel", delta_rel]
            assert main.main([*flags, "--train_mode", "linear", "--out_dir",
                              str(root / "alone" / f"{scheme}_d{delta_rel}")]) == 0
            if delta_rel == DELTA_RELS[-1]:  # LinearInit's phase 1 (phase 2: one short epoch)
                assert main.main([*flags, "--train_mode", "linear_init", "--epochs", "1",
                                  "--batch_size", "32", "--out_dir",
                                  str(root / "init" / f"{scheme}_d{delta_rel}")]) == 0
    return root


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("delta_rel", DELTA_RELS)
def test_each_head_equals_its_separate_run(runs, scheme, delta_rel):
    name = f"{scheme}_d{delta_rel}"
    head, alone = runs / "sweep" / name, runs / "alone" / name
    head_rows, alone_rows = read_jsonl(head / "metrics.jsonl"), read_jsonl(alone / "metrics.jsonl")
    assert len(head_rows) == len(alone_rows) == 4
    for head_row, alone_row in zip(head_rows, alone_rows):
        assert (head_row["modified"], head_row["relabeled"]) == (alone_row["modified"],
                                                                alone_row["relabeled"])
        assert head_row["train_loss"] == pytest.approx(alone_row["train_loss"], abs=1e-5)
        assert head_row["val_map"] == pytest.approx(alone_row["val_map"], abs=1e-5)
    head_results, alone_results = read_json(head / "results.json"), read_json(alone / "results.json")
    assert head_results["best_epoch"] == alone_results["best_epoch"]
    assert head_results["test_map"] == pytest.approx(alone_results["test_map"], abs=1e-5)
    assert head_results["test_ap"] == pytest.approx(alone_results["test_ap"], abs=1e-5)
    same_keys = set(alone_results) - {"test_ap"}
    assert {key: head_results[key] for key in same_keys if not isinstance(head_results[key], float)} \
        == {key: alone_results[key] for key in same_keys if not isinstance(alone_results[key], float)}
    head_best = torch.load(head / "best.pt", map_location="cpu", weights_only=True)
    alone_best = torch.load(alone / "best.pt", map_location="cpu", weights_only=True)
    assert head_best["epoch"] == alone_best["epoch"]
    for key in ("weight", "bias"):
        torch.testing.assert_close(head_best["model"][key], alone_best["model"][key],
                                   atol=1e-5, rtol=1e-4)
    assert torch.equal(head_best["method"]["store"]["observed"],
                       alone_best["method"]["store"]["observed"])  # LL-Cp's relabels, exactly


def test_the_sweep_modifies_and_relabels(runs):
    """The comparison above means something: the schemes act, LL-Cp relabels, the heads differ."""
    rows = {name: read_jsonl(runs / "sweep" / name / "metrics.jsonl")
            for name in (f"{scheme}_d{delta_rel}" for scheme in SCHEMES for delta_rel in DELTA_RELS)}
    assert all(rows[name][-1]["modified"] > 0 for name in rows)
    assert rows["LL-Cp_d30"][-1]["relabeled"] > 0
    assert rows["LL-R_d10"][-1]["relabeled"] == 0
    assert len({rows[name][-1]["train_loss"] for name in rows}) == len(rows)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_head_equals_linear_init_phase_one(runs, scheme):
    name = f"{scheme}_d{DELTA_RELS[-1]}"
    head_rows = read_jsonl(runs / "sweep" / name / "metrics.jsonl")
    phase_one = [row for row in read_jsonl(runs / "init" / name / "metrics.jsonl")
                 if row["phase"] == "linear"]
    assert [(row["modified"], row["relabeled"]) for row in head_rows] == [
        (row["modified"], row["relabeled"]) for row in phase_one]
    for head_row, init_row in zip(head_rows, phase_one, strict=True):
        assert head_row["train_loss"] == pytest.approx(init_row["train_loss"], abs=1e-5)
        assert head_row["val_map"] == pytest.approx(init_row["val_map"], abs=1e-5)
    init_results = read_json(runs / "init" / name / "results.json")
    assert read_json(runs / "sweep" / name / "results.json")["best_epoch"] == \
        init_results["linear_best_epoch"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_heads_config_is_its_separate_runs(runs, scheme):
    name = f"{scheme}_d{DELTA_RELS[0]}"
    head = read_json(runs / "sweep" / name / "config.json")
    alone = read_json(runs / "alone" / name / "config.json")
    assert {key: value for key, value in head.items() if key not in PROVENANCE} == \
        {key: value for key, value in alone.items() if key not in PROVENANCE}
    assert head["out_dir"] == str(runs / "sweep" / name)
    assert (head["method"], head["delta_rel"]) == (scheme, float(DELTA_RELS[0]))
    assert head["sweep"]["folders"][head["sweep"]["index"]] == head["out_dir"]
    # passed back as --config, a head's config.json is that head's run
    again = parse_args(["--config", str(runs / "sweep" / name / "config.json"), "--out_dir", "x"])
    assert (again.method, again.delta_rel, again.train_mode) == (scheme, float(DELTA_RELS[0]),
                                                                 "linear")


def test_adam_state_stays_per_head():
    """Stacked Adam equals one Adam per head, its moments included (no leak between heads)."""
    torch.manual_seed(0)
    observed = torch.zeros(24, 5, dtype=torch.int8)
    observed[torch.arange(24), torch.arange(24) % 5] = 1
    features = torch.randn(24, 7)
    names = [("LL-R", 20.0), ("LL-Ct", 40.0), ("LL-Cp", 40.0)]
    stack = MethodStack([registry.build(name, observed, delta_rel=delta) for name, delta in names], 5)
    stacked = sweep.stacked_linear_head(7, 5, len(names), seed=3)
    stacked_adam = torch.optim.Adam(stacked.parameters(), lr=0.05)
    alone = [(registry.build(name, observed, delta_rel=delta), sweep.stacked_linear_head(7, 5, 1, 3))
             for name, delta in names]
    alone_adams = [torch.optim.Adam(head.parameters(), lr=0.05) for _, head in alone]
    for epoch, ids in ((1, torch.arange(12)), (2, torch.arange(12, 24)), (3, torch.arange(0, 24, 2))):
        step(stack, stacked, stacked_adam, features[ids], ids, epoch)
        for (method, head), adam in zip(alone, alone_adams):
            step(method, head, adam, features[ids], ids, epoch)
    for index, ((method, head), adam) in enumerate(zip(alone, alone_adams)):
        rows = sweep.head_rows(index, 5)
        torch.testing.assert_close(stacked.weight[rows], head.weight, atol=1e-6, rtol=1e-5)
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(stacked_adam.state[stacked.weight][moment][rows],
                                       adam.state[head.weight][moment], atol=1e-7, rtol=1e-5)
        assert torch.equal(stack.methods[index].labels.observed, method.labels.observed)
    assert (stack.methods[2].labels.observed != observed).any()  # LL-Cp relabeled


def step(method, head: nn.Linear, optimizer, inputs, sample_ids, epoch) -> None:
    output = method.loss_of_batch(head(inputs), sample_ids, epoch)
    optimizer.zero_grad()
    output.loss.backward()
    optimizer.step()
    method.after_step(sample_ids, output)


def test_sweep_configs_are_the_separate_runs_configs(tmp_path):
    configs = sweep_configs(["--dataset", "digits", "--train_mode", "linear", "--mod_scheme",
                             "LL-R,LL-Cp", "--sweep_delta_rel", "0.1,0.2", "--out_dir", str(tmp_path)])
    assert [(config.method, config.delta_rel) for config in configs] == [
        ("LL-R", 0.1), ("LL-R", 0.2), ("LL-Cp", 0.1), ("LL-Cp", 0.2)]
    alone = parse_args(["--dataset", "digits", "--train_mode", "linear", "--mod_scheme", "LL-Cp",
                        "--delta_rel", "0.2", "--out_dir", str(tmp_path / "LL-Cp_d0.2")])
    assert configs[3] == alone
    assert sweep_configs(["--dataset", "digits"]) is None


@pytest.mark.parametrize("flags, message", [
    (["--train_mode", "end_to_end"], "--train_mode linear only"),
    (["--train_mode", "linear_init"], "--train_mode linear only"),
])
def test_the_sweep_refuses_other_train_modes(tmp_path, capsys, flags, message):
    assert main.main(["--dataset", "digits", "--device", "cpu", "--sweep_delta_rel", "1,2",
                      "--out_dir", str(tmp_path / "s"), *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--train_mode", "linear"], "give --out_dir"),
    (["--train_mode", "linear", "--out_dir", "x", "--delta_rel", "1"], "not with --delta_rel"),
    (["--train_mode", "linear", "--out_dir", "x", "--sweep_delta_rel", "a,b"], "comma-separated"),
])
def test_the_sweep_flags_are_checked(capsys, flags, message):
    argv = ["--dataset", "digits", "--sweep_delta_rel", "1,2", *flags]
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_heads_must_share_everything_but_the_method():
    base = ["--dataset", "digits", "--train_mode", "linear", "--mod_scheme", "LL-R"]
    first = parse_args([*base, "--out_dir", "a"])
    other_lr = parse_args([*base, "--out_dir", "b", "--linear_lr", "0.5"])
    with pytest.raises(InputError, match="linear_lr"):
        sweep.check_sweep_configs([first, other_lr])
    with pytest.raises(InputError, match="one folder each"):
        sweep.check_sweep_configs([first, parse_args([*base, "--out_dir", "a", "--delta_rel", "2"])])
    sweep.check_sweep_configs([first, parse_args([*base, "--out_dir", "b", "--delta_rel", "2"])])


def test_reproduce_runs_the_linear_sweep_in_one_pass(tmp_path):
    """scripts/reproduce.py --sweep_delta_rel --setting linear: one main.py --sweep_delta_rel per
    seed (the command the tests above run in-process); a seed whose every head finished is
    skipped, one with an unfinished head is run again with --overwrite."""
    command = [sys.executable, "scripts/reproduce.py", "--dataset", "coco", "--sweep_delta_rel",
               "--setting", "linear", "--seeds", "2", "--runs_dir", str(tmp_path), "--dry_run"]
    for seed, files in ((0, ("config.json", "results.json")), (1, ("config.json",))):
        for name in ("LL-R_d0.1", "LL-Cp_d0.5"):
            head = tmp_path / "coco" / "sweep_linear" / f"seed{seed}" / name
            head.mkdir(parents=True)
            for file in files:
                (head / file).write_text("{}")
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **ONE_THREAD_ENV},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    skipped, ran = done.stdout.splitlines()
    assert skipped.startswith("# [1/2] done, skipped") and "seed0" in skipped
    assert ran.split("  #")[0].split()[2:] == [
        "--dataset", "coco", "--loss", "an", "--mod_scheme", ",".join(paper_numbers.LL_SCHEMES),
        "--sweep_delta_rel", ",".join(map(str, paper_numbers.DELTA_REL_GRID)),
        "--train_mode", "linear", "--seed", "1", "--out_dir",
        str(tmp_path / "coco" / "sweep_linear" / "seed1"), "--overwrite"]
    refused = subprocess.run(command[:4] + ["--method", "LL-R", "--setting", "linear", "--dry_run"],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "--sweep_delta_rel" in refused.stderr
