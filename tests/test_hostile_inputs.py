"""Hostile and unusual inputs (issue 21): no silent wrong number, and a one-line error (exit 2)
where a flag, a file or a disk says no."""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_custom_folder
from largeloss import cli as main
from largeloss.data import datasets, loading, sparse_labels, splits
from largeloss.engine.run_folder import RunFolder
from largeloss.utils.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:no observed positive")

TINY = ["--device", "cpu", "--num_workers", "0", "--batch_size", "16", "--image_size", "32",
        "--early_stop_drop", "0"]
TINY_DIGITS = ["--dataset", "digits", "--digits_train_size", "32", *TINY]
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"hostile_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# --- one-line errors (exit 2), nothing lost ---------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", b"not a torch file at all"],
                         ids=["empty", "truncated", "foreign"])
def test_a_bad_weights_file_is_one_line(tmp_path, capsys, content):
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(content)
    assert main.main([*TINY_DIGITS, "--arch", "resnet18", "--weights", str(weights),
                      "--epochs", "1", "--out_dir", str(tmp_path / "run")]) == 2
    message = error_line(capsys)
    assert message.startswith(f"error: --weights {weights}: ") and "not a torch" in message


def test_a_label_csv_that_is_not_utf8_names_file_and_line(tmp_path, capsys):
    root = build_custom_folder(tmp_path / "data")
    lines = (root / "train.csv").read_bytes().split(b"\n")
    lines[3] = b"caf\xe9" + lines[3]  # Latin-1 é
    (root / "train.csv").write_bytes(b"\n".join(lines))
    assert main.main([*FOLDER_RUN, "--data_root", str(root), "--out_dir", str(tmp_path / "run")]) == 2
    assert f"{root / 'train.csv'}, line 4: not UTF-8 text (byte 0xe9" in error_line(capsys)


def test_a_long_csv_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"image,class,label\na.jpg,cat,1\nb\xff.jpg,dog,-1\n")
    with pytest.raises(InputError, match=r"train.csv, line 3: not UTF-8 text \(byte 0xff"):
        sparse_labels.read_long_csv(path, ["cat", "dog"])


def refuse_writes_under(monkeypatch, folder, code):
    """os.replace (every atomic write) and os.open (the run lock) fail with `code` under folder:
    a full disk or a read-only file system, as root cannot make with chmod."""
    real_replace, real_open = os.replace, os.open

    def refused(path) -> bool:
        return str(path).startswith(str(folder))

    def replace(source, target, *args, **kwargs):
        if refused(target):
            raise OSError(code, os.strerror(code), str(target))
        return real_replace(source, target, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if refused(path) and flags & (os.O_WRONLY | os.O_CREAT):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "open", open_)


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "run"
    args = [*TINY_DIGITS, "--epochs", "3"]
    assert main.main([*args, "--stop_after", "1", "--out_dir", str(out_dir)]) == 0
    with monkeypatch.context() as patch:
        refuse_writes_under(patch, out_dir, errno.ENOSPC)
        capsys.readouterr()
        assert main.main(["--resume", str(out_dir / "last.pt")]) == 2
        message = error_line(capsys)
    assert f"in {out_dir}: no space left" in message and "MiB free there" in message
    assert main.main(["--resume", str(out_dir / "last.pt")]) == 0  # nothing was lost
    assert main.main([*args, "--out_dir", str(tmp_path / "whole")]) == 0
    assert rows_without_timing(out_dir) == rows_without_timing(tmp_path / "whole")


def test_a_read_only_folder_is_one_line_for_training_eval_and_export(tmp_path, capsys,
                                                                     monkeypatch):
    finished = tmp_path / "finished"
    assert main.main([*TINY_DIGITS, "--epochs", "1", "--out_dir", str(finished)]) == 0
    refuse_writes_under(monkeypatch, tmp_path, errno.EROFS)
    capsys.readouterr()
    assert main.main([*TINY_DIGITS, "--epochs", "1", "--out_dir", str(tmp_path / "new")]) == 2
    assert "the file system is read-only" in error_line(capsys)
    assert main.main(["--eval_only", str(finished / "best.pt")]) == 2
    assert f"in {finished}: the file system is read-only" in error_line(capsys)
    export = load_script("export")
    assert export.main([str(finished / "best.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "the file system is read-only" in error_line(capsys)


def test_linear_mode_on_a_read_only_data_folder_says_where_to_point_the_cache(tmp_path, capsys,
                                                                              monkeypatch):
    root = build_custom_folder(tmp_path / "data")
    refuse_writes_under(monkeypatch, root, errno.EROFS)
    code = main.main([*FOLDER_RUN, "--data_root", str(root), "--train_mode", "linear",
                      "--linear_epochs", "1", "--out_dir", str(tmp_path / "run")])
    assert code == 2
    message = error_line(capsys)
    assert f"in {root / 'features'}" in message and "--feature_cache" in message


# --- also misleading -------------------------------------------------------------------------------

def test_overwrite_clears_what_the_old_run_wrote(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main.main([*TINY_DIGITS, "--epochs", "1", "--out_dir", str(out_dir)]) == 0
    assert main.main(["--eval_only", str(out_dir / "best.pt")]) == 0
    assert main.main(["--eval_only", str(out_dir / "best.pt"), "--split", "val"]) == 0
    (out_dir / "events.out.tfevents.123.host.1.0").write_bytes(b"old curves")
    stale = sorted(path.name for path in out_dir.glob("eval_*")) + ["events.out.tfevents.123.host.1.0"]
    assert len(stale) == 5
    assert main.main([*TINY_DIGITS, "--epochs", "1", "--seed", "5", "--overwrite",
                      "--out_dir", str(out_dir)]) == 0
    assert not [name for name in stale if (out_dir / name).exists()]
    assert json.loads((out_dir / "config.json").read_text())["seed"] == 5


def test_eval_only_of_a_digits_checkpoint_refuses_a_data_root(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main.main([*TINY_DIGITS, "--epochs", "1", "--out_dir", str(out_dir)]) == 0
    capsys.readouterr()
    assert main.main(["--eval_only", str(out_dir / "best.pt"), "--data_root", "elsewhere"]) == 2
    assert "generated in memory, no folder is read; drop --data_root" in error_line(capsys)
    assert not list(out_dir.glob("eval_*"))


# --- evaluation images that are training images ----------------------------------------------------

def custom_rows(path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize("how", ["same_file", "same_bytes"])
def test_test_images_that_are_training_images_are_refused_or_warned(tmp_path, capsys, how):
    root = build_custom_folder(tmp_path / "data")
    train_rows, test_rows = custom_rows(root / "train.csv"), custom_rows(root / "test.csv")
    train_image = train_rows[1].split(",")[0]
    if how == "same_file":
        repeated = train_image
    else:  # the same picture under another name
        repeated = "copy_of_" + Path(train_image).name
        shutil.copy(root / "images" / train_image, root / "images" / repeated)
    cells = test_rows[1].split(",")
    test_rows[1] = ",".join([repeated, *cells[1:]])
    (root / "test.csv").write_text("\n".join(test_rows) + "\n")
    if (root / "test_clean.csv").exists():
        clean = custom_rows(root / "test_clean.csv")
        clean[1] = ",".join([repeated, *clean[1].split(",")[1:]])
        (root / "test_clean.csv").write_text("\n".join(clean) + "\n")
    out_dir = tmp_path / "run"
    assert main.main([*FOLDER_RUN, "--data_root", str(root), "--out_dir", str(out_dir)]) == 2
    message = error_line(capsys)
    assert "1 test image(s) are also training images" in message and repeated in message
    assert not (out_dir / "config.json").exists()
    with pytest.warns(UserWarning, match="val and test mAP are inflated"):
        assert main.main([*FOLDER_RUN, "--data_root", str(root), "--allow_split_overlap",
                          "--epochs", "1", "--out_dir", str(out_dir)]) == 0


def test_disjoint_splits_pass_the_overlap_check(tmp_path):
    root = build_custom_folder(tmp_path / "data")
    data = datasets.load_data("custom", str(root), None, 32, 0)
    assert splits.split_overlap(data) == []


def test_a_split_where_most_classes_cannot_be_measured_says_model_selection_is_meaningless():
    num_rows, num_classes = 20, 1000  # the 100,000-class case in small: few classes appear
    true_labels = np.zeros((num_rows, num_classes), dtype=np.uint8)
    true_labels[np.arange(num_rows), np.arange(num_rows) % 4] = 1
    split = splits.Split(images=None, observed=np.zeros_like(true_labels, dtype=np.int8),
                         true_labels=true_labels)
    problems = splits.evaluation_problems(split, [str(index) for index in range(num_classes)])
    assert any("only 4 of 1000 classes can be measured" in problem
               and "meaningless" in problem for problem in problems)
    two_classes = np.zeros((num_rows, 2), dtype=np.uint8)
    two_classes[np.arange(num_rows), np.arange(num_rows) % 2] = 1  # both measurable
    two_split = splits.Split(images=None, observed=np.zeros_like(two_classes),
                             true_labels=two_classes)
    few = splits.evaluation_problems(two_split, ["0", "1"])
    assert not any("can be measured" in problem for problem in few)


def test_a_rank_lost_by_another_keeps_the_failing_ranks_error_txt(tmp_path):
    """Under torchrun rank 1's image error is written first; rank 0's lost connection after it
    must not replace it."""
    folder = RunFolder(tmp_path / "run")
    folder.create()
    folder.record_failure("cannot read image x.jpg (row 3): broken data stream")
    folder.record_failure("Traceback ... Connection closed by peer", keep_existing=True)
    assert (tmp_path / "run" / "error.txt").read_text().startswith("cannot read image x.jpg")
    folder.clear_failure()
    folder.record_failure("Traceback ... Connection closed by peer", keep_existing=True)
    assert "Connection closed by peer" in (tmp_path / "run" / "error.txt").read_text()
