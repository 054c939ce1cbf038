"""Hostile and unusual inputs (issue 21): no silent wrong number, and a one-line error (exit 2)
where a flag, a file or a disk says no."""
from __future__ import annotations

import json

import pytest

from largeloss import cli as main

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
