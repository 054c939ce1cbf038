"""The training CLI end to end on CPU with tiny data (issue 3, "Must show").

Runs call `main.main([...])` in-process (seconds each); the exit-code cases also run
`python main.py` in a fresh interpreter to check the real exit status and stderr.
"""
from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import assert_same_finished_run, read_jsonl
from largeloss import cli as main
from largeloss.data import formats
from largeloss.engine import train
from largeloss.experiment import config
from largeloss.methods import losses
from largeloss.reporting import summarize

RUN_KEYS = {"epoch", "train_loss", "val_map", "modified", "seconds", "images_per_s"}

# Tiny, fast and deterministic: 32 training digits of 32 px, two batches per epoch, CPU, no
# workers, no early stop (so every run has all its epochs).
TINY = ["--device", "cpu", "--num_workers", "0", "--batch_size", "16", "--image_size", "32",
        "--early_stop_drop", "0"]
TINY_DIGITS = ["--dataset", "digits", "--digits_train_size", "32", *TINY]
# Folders on disk: the digits network on 32-px images (no ImageNet download).
TINY_FOLDER = [*TINY, "--arch", "small_cnn", "--weights", "none", "--batch_size", "8"]

DIGITS_METHODS = [("bce", "none"), ("bce_ls", "none"), ("iun", "none"), ("an", "none"),
                  ("an_ls", "none"), ("wan", "none"), ("epr", "none"), ("role", "none"),
                  ("an", "LL-R"), ("an", "LL-Ct"), ("an", "LL-Cp")]


def check_run_folder(out_dir, epochs: int, num_classes: int, loss: str,
                     mod_scheme: str) -> list[dict]:
    """The run folder of a finished run (issue 3, 'The run folder'); returns the metrics rows."""
    saved_config = json.loads((out_dir / "config.json").read_text())
    assert (saved_config["loss"], saved_config["mod_scheme"]) == (loss, mod_scheme)
    assert saved_config["epochs"] == epochs
    assert {"git_sha", "versions"} <= saved_config.keys()

    rows = read_jsonl(out_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == list(range(1, epochs + 1))
    for row in rows:
        assert RUN_KEYS <= row.keys()
        assert math.isfinite(row["train_loss"]) and 0 <= row["val_map"] <= 100
        assert row["seconds"] > 0 and row["images_per_s"] > 0
    with open(out_dir / "metrics.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in csv_rows] == list(range(1, epochs + 1))
    assert RUN_KEYS <= csv_rows[0].keys()
    assert [float(row["val_map"]) for row in csv_rows] == pytest.approx(
        [row["val_map"] for row in rows])

    last = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == epochs and last["config"]["loss"] == loss
    assert best["model"].keys() == last["model"].keys()

    results = json.loads((out_dir / "results.json").read_text())
    best_row = max(rows, key=lambda row: row["val_map"])
    assert results["best_epoch"] == best["epoch"] == best_row["epoch"]
    assert results["val_map"] == pytest.approx(best_row["val_map"])
    assert len(results["test_ap"]) == num_classes
    assert results["test_map"] == pytest.approx(float(np.mean(results["test_ap"])))
    return rows


# --- every method trains and writes the run folder ---------------------------------------------

@pytest.mark.filterwarnings("ignore:no observed positive")
@pytest.mark.parametrize("loss,mod_scheme", DIGITS_METHODS,
                         ids=[f"{loss}-{scheme}" for loss, scheme in DIGITS_METHODS])
def test_every_method_trains_two_epochs_and_writes_the_run_folder(tmp_path, loss, mod_scheme):
    out_dir = tmp_path / "run"
    code = main.main([*TINY_DIGITS, "--epochs", "2", "--loss", loss, "--mod_scheme", mod_scheme,
                      "--out_dir", str(out_dir)])
    assert code == 0
    rows = check_run_folder(out_dir, 2, num_classes=10, loss=loss, mod_scheme=mod_scheme)
    modified = [row["modified"] for row in rows]
    if mod_scheme == "none":
        assert modified == [0, 0]
    else:  # epoch 1 is the warm-up (docs/methods.md §LL schedule); from epoch 2 on the scheme modifies entries
        assert modified[0] == 0 and modified[1] > 0


def test_iu_on_digits_is_refused_for_lack_of_observed_negatives(tmp_path, capsys):
    code = main.main([*TINY_DIGITS, "--epochs", "2", "--loss", "iu",
                      "--out_dir", str(tmp_path / "run")])
    assert code == 2
    assert "--loss iu needs observed negatives" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_iu_trains_on_a_cole_folder_with_observed_negatives(tmp_path, cole_folder):
    data_root = cole_folder("pascal", num_neg=1)
    assert (np.load(formats.cole_file(data_root, "train", "labels_obs")) == -1).any()
    out_dir = tmp_path / "run"
    code = main.main(["--dataset", "pascal", "--data_root", str(data_root), *TINY_FOLDER,
                      "--epochs", "2", "--loss", "iu", "--out_dir", str(out_dir)])
    assert code == 0
    check_run_folder(out_dir, 2, num_classes=20, loss="iu", mod_scheme="none")


# --- resume and eval_only -----------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:no observed positive")
@pytest.mark.parametrize("loss,mod_scheme", [("an", "LL-Cp"), ("role", "none")],
                         ids=["LL-Cp-relabels", "role-estimator"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, loss, mod_scheme):
    args = [*TINY_DIGITS, "--epochs", "3", "--loss", loss, "--mod_scheme", mod_scheme,
            "--seed", "3"]
    assert main.main([*args, "--out_dir", str(tmp_path / "whole")]) == 0

    interrupted = tmp_path / "interrupted"
    assert main.main([*args, "--out_dir", str(interrupted), "--stop_after", "2"]) == 0
    assert not (interrupted / "results.json").exists()
    checkpoint = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2
    if mod_scheme == "LL-Cp":  # the relabels that epoch 3 must see are in the checkpoint
        assert checkpoint["history"][-1]["relabeled"] > 0
        store = checkpoint["method"]["store"]
        assert (store["observed"] == 1).sum() > store["initial_positives"]
    else:
        assert checkpoint["method"]["estimator"] is not None
    assert main.main(["--resume", str(interrupted / "last.pt"), "--device", "cpu",
                      "--num_workers", "0"]) == 0

    assert_same_finished_run(interrupted, tmp_path / "whole")


@pytest.fixture(scope="module")
def finished_digits_run(tmp_path_factory):
    """A finished 2-epoch LL-Ct run on digits, shared by the --eval_only tests."""
    out_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main.main([*TINY_DIGITS, "--epochs", "2", "--mod_scheme", "LL-Ct",
                      "--out_dir", str(out_dir)]) == 0
    return out_dir


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_eval_only_reproduces_the_recorded_test_map(finished_digits_run, capsys):
    results = json.loads((finished_digits_run / "results.json").read_text())
    capsys.readouterr()
    best = finished_digits_run / "best.pt"
    assert main.main(["--eval_only", str(best), "--device", "cpu", "--num_workers", "0"]) == 0
    printed = re.search(r"test mAP (\d+\.\d+)", capsys.readouterr().out)
    assert printed and float(printed.group(1)) == pytest.approx(results["test_map"], abs=0.005)

    evaluated = train.evaluate_checkpoint(str(best), "cpu", 0)
    assert evaluated["epoch"] == results["best_epoch"]
    assert evaluated["test_map"] == pytest.approx(results["test_map"], abs=1e-9)
    assert evaluated["test_ap"] == pytest.approx(results["test_ap"], abs=1e-9)


def test_eval_only_of_a_missing_checkpoint_is_an_error(tmp_path, capsys):
    missing = tmp_path / "nothing" / "best.pt"
    assert main.main(["--eval_only", str(missing), "--device", "cpu"]) == 2
    assert str(missing) in capsys.readouterr().err


# --- bad input: a clear message and a non-zero exit ---------------------------------------------

def corrupt_one_train_image(data_root) -> str:
    """Overwrite a training image with garbage bytes; returns its path."""
    image_dir = data_root / formats.IMAGE_DIRS["pascal"]
    path = image_dir / str(np.load(formats.cole_file(data_root, "train", "images"))[0])
    path.write_bytes(b"this is not a JPEG file" * 10)
    return str(path)


BAD_INPUT_CASES = {
    "unknown_folder": (["--dataset", "pascal", "--data_root", "/nonexistent/pascal", *TINY_FOLDER],
                       ["error: dataset folder /nonexistent/pascal does not exist",
                        "prepare_data.py"]),
    "invalid_combination": ([*TINY_DIGITS, "--loss", "wan", "--mod_scheme", "LL-R"],
                            ["--mod_scheme LL-R applies to --loss an only, not --loss wan"]),
    "nan_loss": ([*TINY_DIGITS, "--optimizer", "sgd", "--lr", "1e30", "--loss", "an",
                  "--mod_scheme", "none"],
                 ["the training loss became nan"]),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, start_cli):
    """The BAD_INPUT_CASES run as `python main.py`, all started at once (each spends most of
    its time importing torch): {case: (returncode, stderr, out_dir)}."""
    root = tmp_path_factory.mktemp("bad_input")
    started = {case: (start_cli([*args, "--epochs", "1", "--out_dir", root / case]), root / case)
               for case, (args, _) in BAD_INPUT_CASES.items()}
    finished = {}
    for case, (process, out_dir) in started.items():
        _, stderr = process.communicate(timeout=300)
        finished[case] = (process.returncode, stderr, out_dir)
    return finished


@pytest.mark.parametrize("case", sorted(BAD_INPUT_CASES))
def test_bad_input_exits_non_zero_with_a_clear_message(bad_input_runs, case):
    """In a fresh interpreter: the exit status and stderr a user sees, for the three ways out
    (InputError → `error: ...`, argparse error, an exception from training)."""
    returncode, stderr, out_dir = bad_input_runs[case]
    assert returncode != 0
    for text in BAD_INPUT_CASES[case][1]:
        assert text in stderr, stderr
    if case == "nan_loss":
        assert "became nan" in (out_dir / "error.txt").read_text()
        assert not (out_dir / "results.json").exists()
    else:
        assert "Traceback" not in stderr


def test_a_missing_cole_file_is_named_with_the_command_that_makes_it(tmp_path, cole_folder, capsys):
    data_root = cole_folder("pascal")
    missing = formats.cole_file(data_root, "val", "labels")
    missing.unlink()
    code = main.main(["--dataset", "pascal", "--data_root", str(data_root), *TINY_FOLDER,
                      "--epochs", "1", "--out_dir", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2
    assert str(missing) in error and "prepare_data.py" in error


def wrong_labels(data_root, problem: str):
    """Damage a Cole folder; returns the file the message must name and a phrase it must hold."""
    observed_file = formats.cole_file(data_root, "train", "labels_obs")
    labels_file = formats.cole_file(data_root, "val", "labels")
    observed, labels = np.load(observed_file), np.load(labels_file)
    if problem == "observed_value_2":
        observed[3, 5] = 2
        np.save(observed_file, observed)
        return observed_file, "value 2.0 at row 3"
    if problem == "clean_value_half":
        labels[1, 0] = 0.5
        np.save(labels_file, labels)
        return labels_file, "value 0.5 at row 1"
    if problem == "observed_nan":
        observed[0, 0] = np.nan
        np.save(observed_file, observed)
        return observed_file, "NaN at row 0"
    if problem == "observed_columns":
        np.save(observed_file, observed[:, :-1])
        return observed_file, "shape mismatch"
    if problem == "labels_rows":
        np.save(labels_file, labels[:-1])
        return labels_file, "shape mismatch"
    assert problem == "observed_1d"
    np.save(observed_file, observed[:, 0])
    return observed_file, "shape mismatch"


@pytest.mark.parametrize("problem", ["observed_value_2", "clean_value_half", "observed_nan",
                                     "observed_columns", "labels_rows", "observed_1d"])
def test_wrong_label_values_or_shapes_are_refused_naming_the_file(tmp_path, cole_folder, capsys,
                                                                   problem):
    data_root = cole_folder("pascal")
    bad_file, phrase = wrong_labels(data_root, problem)
    out_dir = tmp_path / "run"
    code = main.main(["--dataset", "pascal", "--data_root", str(data_root), *TINY_FOLDER,
                      "--epochs", "1", "--out_dir", str(out_dir)])
    error = capsys.readouterr().err
    assert code == 2
    assert str(bad_file) in error and phrase in error, error
    assert "Traceback" not in error
    assert not (out_dir / "last.pt").exists()


@pytest.mark.filterwarnings("ignore:no observed positive")
@pytest.mark.parametrize("num_workers", ["0", "1"])
def test_corrupt_image_is_refused_naming_the_file(tmp_path, cole_folder, capsys, num_workers):
    """A .jpg of garbage bytes, read in the main process or in a worker process."""
    data_root = cole_folder("pascal")
    bad_image = corrupt_one_train_image(data_root)
    code = main.main(["--dataset", "pascal", "--data_root", str(data_root), *TINY_FOLDER,
                      "--num_workers", num_workers, "--epochs", "1",
                      "--out_dir", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2
    assert "cannot read image" in error and bad_image in error
    assert bad_image in (tmp_path / "run" / "error.txt").read_text()


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_nan_loss_stops_the_run_and_writes_error_txt(tmp_path, monkeypatch, capsys):
    real_large_loss = losses.large_loss  # the default method is AN + LL-R

    def nan_loss(*args, **kwargs):
        output = real_large_loss(*args, **kwargs)
        return type(output)(loss=output.loss * float("nan"), modified=output.modified,
                            relabel=output.relabel)

    monkeypatch.setattr(losses, "large_loss", nan_loss)
    out_dir = tmp_path / "run"
    assert main.main([*TINY_DIGITS, "--epochs", "2", "--out_dir", str(out_dir)]) == 3
    assert "the training loss became nan in epoch 1" in capsys.readouterr().err
    assert "the training loss became nan" in (out_dir / "error.txt").read_text()
    assert not (out_dir / "metrics.jsonl").exists() and not (out_dir / "results.json").exists()


# --- configuration: --config files and the paper defaults ---------------------------------------

def test_config_file_sets_defaults_under_explicit_flags(tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"lr": 0.02, "epochs": 7, "optimizer": "sgd",
                                       "mod_scheme": "LL-Ct"}))
    resolved = config.parse_args(["--config", str(config_file), "--epochs", "2"])
    assert resolved.lr == 0.02 and resolved.optimizer == "sgd" and resolved.method == "LL-Ct"
    assert resolved.epochs == 2  # the explicit flag wins
    assert resolved.weight_decay == 1e-3  # derived from the file's optimizer
    assert config.parse_args(["--config", str(config_file)]).epochs == 7


def test_config_file_with_an_unknown_key_is_an_error_naming_it(tmp_path, capsys):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"lr": 0.02, "learning_rate": 0.1}))
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args(["--config", str(config_file)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "learning_rate" in error and str(config_file) in error


@pytest.mark.parametrize("key,value", [("optimizer", "rmsprop"), ("dataset", "imagenet")])
def test_config_file_value_outside_the_choices_is_an_error_naming_it(tmp_path, capsys, key, value):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({key: value}))
    with pytest.raises(SystemExit):
        config.parse_args(["--config", str(config_file)])
    assert value in capsys.readouterr().err


def test_paper_defaults_coco_ll_ct():
    resolved = config.parse_args(["--dataset", "coco", "--mod_scheme", "LL-Ct"])
    assert (resolved.optimizer, resolved.lr, resolved.delta_rel) == ("adam", 1e-5, 0.2)
    assert (resolved.batch_size, resolved.epochs, resolved.image_size) == (16, 10, 448)
    assert (resolved.arch, resolved.weights) == ("resnet50", "imagenet_v1")
    assert resolved.expected_num_pos == 2.9 and resolved.weight_decay == 0.0
    assert (resolved.head_lr_mult, resolved.early_stop_drop) == (10.0, 3.0)
    assert (resolved.loss, resolved.method) == ("an", "LL-Ct")


def test_paper_defaults_pascal_ll_cp():
    resolved = config.parse_args(["--dataset", "pascal", "--mod_scheme", "LL-Cp"])
    assert (resolved.optimizer, resolved.lr, resolved.delta_rel) == ("sgd", 5e-3, 0.1)
    assert (resolved.weight_decay, resolved.momentum) == (1e-3, 0.9)
    assert resolved.expected_num_pos == 1.5


# docs/protocol.md §Training protocol, the authors' best end-to-end hyper-parameters.
PAPER_TABLE = {"pascal": ("sgd", 5e-3, (0.2, 0.2, 0.1)), "coco": ("adam", 1e-5, (0.4, 0.2, 0.2)),
               "nuswide": ("adam", 1e-5, (0.4, 0.2, 0.2)), "cub": ("adam", 7.5e-5, (0.4, 0.4, 0.2))}


@pytest.mark.parametrize("dataset", sorted(PAPER_TABLE))
def test_paper_defaults_match_the_spec_table(dataset):
    optimizer, lr, delta_rels = PAPER_TABLE[dataset]
    for scheme, delta_rel in zip(("LL-R", "LL-Ct", "LL-Cp"), delta_rels):
        resolved = config.parse_args(["--dataset", dataset, "--mod_scheme", scheme])
        assert (resolved.optimizer, resolved.lr, resolved.delta_rel) == (optimizer, lr, delta_rel)
        assert (resolved.batch_size, resolved.epochs, resolved.image_size) == (16, 10, 448)
    # An explicit flag beats the paper default.
    assert config.parse_args(["--dataset", dataset, "--lr", "0.1"]).lr == 0.1


def test_loss_alone_runs_the_plain_baseline_and_an_defaults_to_ll_r():
    role = config.parse_args(["--loss", "role"])
    assert (role.mod_scheme, role.method, role.delta_rel) == ("none", "role", 0.0)
    default = config.parse_args([])
    assert (default.dataset, default.loss, default.mod_scheme) == ("digits", "an", "LL-R")


def test_invalid_flag_combination_in_process(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--loss", "wan", "--mod_scheme", "LL-R"])
    assert exit_info.value.code == 2
    assert "applies to --loss an only" in capsys.readouterr().err


# --- custom folders -----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*no observed positive")
def test_custom_folder_trains_one_epoch(tmp_path, custom_folder):
    data_root = custom_folder(train_clean=True)
    lines = (data_root / "train.csv").read_text().splitlines()[1:]
    assert {"1", "-1", "0", ""} <= {cell for line in lines for cell in line.split(",")[1:]}
    out_dir = tmp_path / "run"
    code = main.main(["--dataset", "custom", "--data_root", str(data_root), *TINY_FOLDER,
                      "--batch_size", "4", "--epochs", "1", "--out_dir", str(out_dir)])
    assert code == 0
    check_run_folder(out_dir, 1, num_classes=3, loss="an", mod_scheme="LL-R")
    results = json.loads((out_dir / "results.json").read_text())
    assert results["class_names"] == ["cat", "dog", "sea"]


@pytest.mark.filterwarnings("ignore:.*no observed positive")
def test_custom_folder_without_clean_training_labels_trains_one_epoch(tmp_path, custom_folder):
    data_root = custom_folder(train_clean=False, num_val=12)  # val.csv: val mAP needs negatives
    out_dir = tmp_path / "run"
    code = main.main(["--dataset", "custom", "--data_root", str(data_root), *TINY_FOLDER,
                      "--batch_size", "4", "--epochs", "1", "--out_dir", str(out_dir)])
    assert code == 0
    check_run_folder(out_dir, 1, num_classes=3, loss="an", mod_scheme="LL-R")


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_test_classes_without_a_positive_are_counted_and_said(tmp_path, cole_folder, capsys):
    """The papers count a class absent from the test set as AP 0: results.json says how many
    classes the mean holds and the mAP over the measurable ones; summarize flags the row."""
    data_root = cole_folder("pascal", num_train=20, num_test=3)  # 3 test images, 20 classes
    out_dir = tmp_path / "runs" / "run"
    assert main.main(["--dataset", "pascal", "--data_root", str(data_root), *TINY_FOLDER,
                      "--epochs", "1", "--out_dir", str(out_dir)]) == 0
    results = json.loads((out_dir / "results.json").read_text())
    test_labels = np.load(formats.cole_file(data_root, "val", "labels"))
    measurable = int(((test_labels == 1).any(axis=0) & (test_labels == 0).any(axis=0)).sum())
    assert (results["test_num_classes"], results["test_num_measured"]) == (20, measurable)
    assert measurable < 20
    aps = np.array(results["test_ap"])
    assert results["test_map"] == pytest.approx(aps.mean())
    measured = (test_labels == 1).any(axis=0) & (test_labels == 0).any(axis=0)
    assert results["test_map_measured"] == pytest.approx(aps[measured].mean())
    assert f"{20 - measurable} of 20 test classes have no positive or no negative" in \
        capsys.readouterr().out
    assert summarize.main([str(tmp_path / "runs")]) == 0
    assert f"test classes without a positive or a negative: {20 - measurable} of 20" in \
        capsys.readouterr().out
