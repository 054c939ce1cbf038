"""Hostile and unusual inputs (issue 21): no silent wrong number, and a one-line error (exit 2)
where a flag, a file or a disk says no."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from largeloss import cli as main
from largeloss.data import loading
from conftest import build_custom_folder

pytestmark = pytest.mark.filterwarnings("ignore:no observed positive")

TINY = ["--device", "cpu", "--num_workers", "0", "--batch_size", "16", "--image_size", "32",
        "--early_stop_drop", "0"]
TINY_DIGITS = ["--dataset", "digits", "--digits_train_size", "32", *TINY]
EM_APL = ["--loss", "em", "--mod_scheme", "APL", "--apl_warmup_epochs", "1"]


def error_line(capsys) -> str:
    """The one line a refused command printed on stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 or any("usage:" in line for line in lines), lines
    return lines[-1]


# --- 1. --resume --epochs -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def em_apl_run(tmp_path_factory):
    """A finished 3-epoch EM+APL run (its pseudo-labelling passes are laid out over 3 epochs)."""
    out_dir = tmp_path_factory.mktemp("em_apl") / "run"
    assert main.main([*TINY_DIGITS, *EM_APL, "--epochs", "3", "--out_dir", str(out_dir)]) == 0
    return out_dir


def test_extending_a_run_whose_schedule_spans_the_epochs_is_refused(em_apl_run, capsys):
    config_before = (em_apl_run / "config.json").read_text()
    results_before = (em_apl_run / "results.json").read_text()
    capsys.readouterr()
    code = main.main(["--resume", str(em_apl_run / "last.pt"), "--epochs", "5"])
    assert code == 2
    message = error_line(capsys)
    assert "APL's schedule is laid out over the planned 3 epochs" in message
    assert "--epochs 5" in message
    # the folder still claims exactly what ran
    assert (em_apl_run / "config.json").read_text() == config_before
    assert (em_apl_run / "results.json").read_text() == results_before
    assert json.loads(config_before)["epochs"] == 3


def test_resume_with_the_same_epochs_is_not_an_extension(em_apl_run):
    assert main.main(["--resume", str(em_apl_run / "last.pt"), "--epochs", "3"]) == 0


def test_resume_with_fewer_epochs_than_already_run_is_refused(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main.main([*TINY_DIGITS, "--epochs", "2", "--out_dir", str(out_dir)]) == 0
    capsys.readouterr()
    assert main.main(["--resume", str(out_dir / "last.pt"), "--epochs", "1"]) == 2
    assert "has already trained 2 epochs" in error_line(capsys)


def test_ll_r_extends_exactly(tmp_path):
    """LL-R's schedule does not depend on the planned epochs: 2 → 3 equals a 3-epoch run."""
    args = [*TINY_DIGITS, "--mod_scheme", "LL-R", "--delta_rel", "5"]
    assert main.main([*args, "--epochs", "3", "--out_dir", str(tmp_path / "whole")]) == 0
    assert main.main([*args, "--epochs", "2", "--out_dir", str(tmp_path / "short")]) == 0
    assert main.main(["--resume", str(tmp_path / "short" / "last.pt"), "--epochs", "3"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [row["val_map"] for row in rows] == [row["val_map"] for row in whole]
    assert json.loads((tmp_path / "short" / "config.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("flags,expected", [
    (["--overwrite"], "--overwrite would delete it"),
    (["--out_dir", "elsewhere"], "not --out_dir elsewhere"),
])
def test_resume_refuses_overwrite_and_another_out_dir(tmp_path, capsys, flags, expected):
    with pytest.raises(SystemExit) as exit_:
        main.main(["--resume", str(tmp_path / "run" / "last.pt"), *flags])
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err


# --- 4. --num_workers changes no number -----------------------------------------------------------

def rows_without_timing(out_dir) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key not in ("seconds", "images_per_s")}
            for row in rows]


def test_zero_one_and_two_workers_give_identical_runs_and_resume_exactly(tmp_path):
    args = ["--dataset", "digits", "--digits_train_size", "48", *TINY, "--epochs", "3",
            "--mod_scheme", "LL-Ct", "--delta_rel", "5"]
    runs = {}
    for workers in (0, 1, 2):
        out_dir = tmp_path / f"workers{workers}"
        assert main.main([*args, "--num_workers", str(workers), "--out_dir", str(out_dir)]) == 0
        runs[workers] = (rows_without_timing(out_dir),
                         json.loads((out_dir / "results.json").read_text())["test_map"])
    assert runs[1] == runs[0]
    assert runs[2] == runs[0]
    resumed = tmp_path / "resumed"  # 2 epochs with no worker, the third with two
    assert main.main([*args, "--num_workers", "0", "--stop_after", "2",
                      "--out_dir", str(resumed)]) == 0
    assert main.main(["--resume", str(resumed / "last.pt"), "--num_workers", "2"]) == 0
    assert rows_without_timing(resumed) == runs[0][0]
    assert json.loads((resumed / "results.json").read_text())["test_map"] == runs[0][1]


def test_flip_draws_are_a_function_of_seed_epoch_and_sample():
    first = loading.flip_draws(3, 2, 100)
    assert torch.equal(first, loading.flip_draws(3, 2, 100))
    assert torch.equal(first[:40], loading.flip_draws(3, 2, 40))  # sample i's draw is its own
    assert not torch.equal(first, loading.flip_draws(3, 3, 100))
    assert not torch.equal(first, loading.flip_draws(4, 2, 100))
    assert 0.3 < float((first < 0.5).float().mean()) < 0.7


# --- 3. --resume on other data ---------------------------------------------------------------------

FOLDER_RUN = [*TINY, "--dataset", "custom", "--arch", "small_cnn", "--weights", "none",
              "--batch_size", "4", "--epochs", "3"]


def test_resume_on_other_data_of_the_same_shape_is_refused(tmp_path, capsys):
    first = build_custom_folder(tmp_path / "A", seed=0)
    other = build_custom_folder(tmp_path / "B", seed=1)  # same classes and rows, other labels
    moved = tmp_path / "A_moved"
    shutil.copytree(first, moved)
    out_dir = tmp_path / "run"
    assert main.main([*FOLDER_RUN, "--data_root", str(first), "--stop_after", "1",
                      "--out_dir", str(out_dir)]) == 0
    assert json.loads((out_dir / "config.json").read_text())["data_fingerprint"]["train_size"] > 0
    metrics_before = (out_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main.main(["--resume", str(out_dir / "last.pt"), "--data_root", str(other)]) == 2
    assert "is not the data the run started on" in error_line(capsys)
    assert (out_dir / "metrics.jsonl").read_text() == metrics_before
    assert not (out_dir / "error.txt").read_text().startswith("Traceback")
    # the same data moved is the same data
    assert main.main(["--resume", str(out_dir / "last.pt"), "--data_root", str(moved)]) == 0


def test_resume_on_data_with_another_row_count_is_one_line(tmp_path, capsys):
    first = build_custom_folder(tmp_path / "A", num_train=10)
    longer = build_custom_folder(tmp_path / "B", num_train=12)
    out_dir = tmp_path / "run"
    assert main.main([*FOLDER_RUN, "--data_root", str(first), "--stop_after", "1",
                      "--out_dir", str(out_dir)]) == 0
    config_before = (out_dir / "config.json").read_text()
    capsys.readouterr()
    assert main.main(["--resume", str(out_dir / "last.pt"), "--data_root", str(longer)]) == 2
    assert "training images, the data at" in error_line(capsys)
    assert (out_dir / "config.json").read_text() == config_before


# --- --config values and flag ranges ---------------------------------------------------------------

@pytest.mark.parametrize("key,value,expected", [
    ("track_train", "no", "track_train='no' is not true or false"),
    ("epochs", 1.5, "epochs=1.5 is not a whole number"),
    ("batch_size", True, "batch_size=True is not a whole number"),
    ("gr_beta", 5, "gr_beta=5 is not a list of 4 numbers"),
    ("gr_beta", [0, 2, "x", -2], "gr_beta=[0, 2, 'x', -2] is not a number"),
    ("digits_train_size", 64.7, "digits_train_size=64.7 is not a whole number"),
    ("lr", "fast", "lr='fast' is not a number"),
    ("data_root", 3, "data_root=3 is not text"),
])
def test_config_file_values_are_type_checked(tmp_path, capsys, key, value, expected):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(SystemExit) as exit_:
        main.main(["--config", str(path), *TINY_DIGITS])
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("flags,expected", [
    (["--loss", "hill", "--hill_lambda", "-100"], "--hill_lambda must be a finite number >= 0"),
    (["--loss", "hill", "--focal_gamma", "-1"], "--focal_gamma must be a finite number >= 0"),
    (["--loss", "splc", "--focal_gamma", "-1"], "--focal_gamma must be a finite number >= 0"),
    (["--loss", "hill", "--hill_lambda", "nan"], "--hill_lambda must be a finite number"),
    (["--loss", "gr", "--gr_q3", "inf"], "--gr_q3 must be a finite number"),
    (["--boostlu_alpha", "nan"], "--boostlu_alpha must be a finite number"),
    (["--lr", "nan"], "--lr must be a number > 0, got nan"),
    (["--loss", "role", "--delta_rel", "0.5"], "--delta_rel is a hyper-parameter of LL-R"),
])
def test_flag_values_out_of_range_are_refused(capsys, flags, expected):
    with pytest.raises(SystemExit) as exit_:
        main.main([*TINY_DIGITS, *flags])
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err


def test_a_gr_config_reused_with_another_loss_blames_the_file(tmp_path, capsys):
    path = tmp_path / "gr.json"
    path.write_text(json.dumps({"loss": "gr", "gr_q3": 0.5}))
    with pytest.raises(SystemExit):
        main.main(["--config", str(path), "--loss", "an", *TINY_DIGITS])
    message = capsys.readouterr().err
    assert f"--config {path}'s gr_q3 is a hyper-parameter of gr" in message
