"""Runs a researcher can trust: the run folder's ownership, error.txt, checkpoint reading,
divergence, resume/extend rules, --eval_only outputs, progress lines and config files.

Most runs are in-process (`main.main([...])`, about a second each on tiny digits); the lock test
starts a real second process.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from largeloss import cli as main
from largeloss.engine import train
from largeloss.experiment import config

TINY = ["--dataset", "digits", "--digits_train_size", "32", "--device", "cpu", "--num_workers", "0",
        "--batch_size", "16", "--image_size", "32", "--early_stop_drop", "0"]

pytestmark = pytest.mark.filterwarnings("ignore:no observed positive")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch digits run (copy it before changing it)."""
    out_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main.main([*TINY, "--epochs", "2", "--out_dir", str(out_dir)]) == 0
    return out_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# --- 1. a run owns its folder ---------------------------------------------------------------

def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, start_cli,
                                                                       capsys):
    out_dir = tmp_path / "run"
    first = start_cli([*TINY, "--epochs", "200", "--out_dir", out_dir])
    try:
        deadline = time.time() + 120
        while not (out_dir / "run.lock").exists() and time.time() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        assert main.main([*TINY, "--epochs", "1", "--out_dir", str(out_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert f"run folder {out_dir} is in use by process {first.pid}" in err
        assert not (out_dir / "error.txt").exists()  # the other run's folder is left alone
    finally:
        first.kill()
        first.communicate()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(run_copy, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_copy / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                                   "started": "earlier"}))
    assert main.main([*TINY, "--epochs", "2", "--resume", str(run_copy / "last.pt")]) == 0
    assert "taking the folder over" in capsys.readouterr().err
    assert not (run_copy / "run.lock").exists()  # removed at exit


def test_a_folder_holding_a_run_is_refused_without_overwrite_and_replaced_with_it(run_copy,
                                                                                  capsys):
    before = (run_copy / "config.json").read_text()
    assert main.main([*TINY, "--epochs", "1", "--out_dir", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert f"run folder {run_copy} already holds a run" in err and "--overwrite" in err
    assert (run_copy / "config.json").read_text() == before
    assert not (run_copy / "error.txt").exists()
    assert main.main([*TINY, "--epochs", "1", "--out_dir", str(run_copy), "--overwrite"]) == 0
    rows = (run_copy / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads((run_copy / "results.json").read_text())["epochs_run"] == 1


def test_the_default_folder_is_new_for_each_identical_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main.main([*TINY, "--epochs", "1"]) == 0
    runs = sorted((tmp_path / "runs" / "digits_LL-R_d1_seed0").iterdir())
    assert len(runs) == 2 and all((run / "results.json").is_file() for run in runs)


def test_a_stray_temporary_checkpoint_does_not_disturb_a_resume(tmp_path):
    out_dir = tmp_path / "run"
    assert main.main([*TINY, "--epochs", "2", "--stop_after", "1", "--out_dir", str(out_dir)]) == 0
    (out_dir / ".last.pt.999999.deadbeef.tmp").write_bytes(b"half a checkpoint")  # a killed write
    assert main.main([*TINY, "--resume", str(out_dir / "last.pt")]) == 0
    assert json.loads((out_dir / "results.json").read_text())["epochs_run"] == 2


# --- 2. error.txt in the failed run's own folder, cleared by a good start -----------------------

def test_a_failed_resume_writes_error_txt_into_the_checkpoints_folder(run_copy, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    (run_copy / "last.pt").write_bytes(b"not a checkpoint")
    assert main.main([*TINY, "--resume", str(run_copy / "last.pt")]) == 2
    assert "last.pt" in (run_copy / "error.txt").read_text()
    assert not (tmp_path / "runs").exists()  # no folder of the invocation's default


def test_a_good_resume_removes_a_stale_error_txt(run_copy):
    (run_copy / "error.txt").write_text("an earlier attempt failed")
    assert main.main([*TINY, "--resume", str(run_copy / "last.pt")]) == 0
    assert not (run_copy / "error.txt").exists()


# --- 3. bad checkpoints: one line, the file named, nothing written --------------------------

class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def write_bad_checkpoint(path, kind: str, finished_run) -> None:
    real = (finished_run / "last.pt").read_bytes()
    if kind == "truncated":
        path.write_bytes(real[:len(real) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.RandomState(0).bytes(4096))
    elif kind == "plain_weights":
        torch.save(torch.load(finished_run / "best.pt", weights_only=True)["model"], path)
    elif kind == "malicious":
        torch.save({"config": {}, "payload": Payload()}, path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Payload()))


@pytest.mark.parametrize("flag", ["--resume", "--eval_only"])
@pytest.mark.parametrize("kind", ["truncated", "empty", "random", "plain_weights", "malicious",
                                  "pickle"])
def test_a_bad_checkpoint_is_one_line_naming_the_file(run_copy, finished_run, capsys, flag, kind):
    checkpoint = run_copy / ("last.pt" if flag == "--resume" else "best.pt")
    write_bad_checkpoint(checkpoint, kind, finished_run)
    before = {path.name: path.read_bytes() for path in run_copy.iterdir() if path.name != "error.txt"}
    assert main.main([*TINY, flag, str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {checkpoint}: ") and err.count("\n") == 1
    assert "weights_only=False" not in err and "pwned" not in err
    after = {path.name: path.read_bytes() for path in run_copy.iterdir() if path.name != "error.txt"}
    assert after == before


@pytest.mark.parametrize("flag", ["--resume", "--eval_only"])
def test_a_checkpoint_with_another_class_count_is_refused_before_writing(run_copy, capsys, flag):
    checkpoint = run_copy / ("last.pt" if flag == "--resume" else "best.pt")
    saved = torch.load(checkpoint, weights_only=True)
    saved["model"]["head.weight"] = saved["model"]["head.weight"][:5]
    saved["model"]["head.bias"] = saved["model"]["head.bias"][:5]
    saved.pop("class_names")
    torch.save(saved, checkpoint)
    config_before = (run_copy / "config.json").read_text()
    assert main.main([*TINY, flag, str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert f"{checkpoint}: its model has 5 classes, the data at data/digits has 10" in err
    assert (run_copy / "config.json").read_text() == config_before


# --- 4. divergence is a failure --------------------------------------------------------------

def test_adam_at_a_huge_lr_is_a_diverged_run(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main.main([*TINY, "--epochs", "2", "--optimizer", "adam", "--lr", "1e6",
                      "--out_dir", str(out_dir)]) == 3
    assert "the training diverged" in capsys.readouterr().err
    assert "a logit reached" in (out_dir / "error.txt").read_text()
    assert not (out_dir / "results.json").exists()


def test_nan_scores_are_a_diverged_run_not_a_scikit_learn_error(tmp_path, monkeypatch, capsys):
    def nan_predict(*args, **kwargs):
        return np.full((50, 10), np.nan, dtype=np.float32)
    monkeypatch.setattr(train, "predict", nan_predict)
    out_dir = tmp_path / "run"
    assert main.main([*TINY, "--epochs", "1", "--out_dir", str(out_dir)]) == 3
    assert "evaluation scores are not finite" in capsys.readouterr().err
    assert "not finite" in (out_dir / "error.txt").read_text()


# --- 5. --resume: --epochs extends, engineering flags apply, other differences refused ----------

def test_resume_with_more_epochs_extends_a_finished_run(run_copy, capsys):
    assert main.main([*TINY, "--resume", str(run_copy / "last.pt"), "--epochs", "3",
                      "--log_every", "1"]) == 0
    rows = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    results = json.loads((run_copy / "results.json").read_text())
    assert results["epochs_run"] == 3
    assert json.loads((run_copy / "config.json").read_text())["epochs"] == 3


def test_resume_refuses_flags_that_change_the_maths_listing_them(run_copy, capsys):
    before = (run_copy / "config.json").read_text()
    assert main.main([*TINY, "--resume", str(run_copy / "last.pt"), "--lr", "0.5",
                      "--delta_rel", "3"]) == 2
    err = capsys.readouterr().err
    assert "--delta_rel 3.0 (saved: 1.0)" in err and "--lr 0.5 (saved: 0.001)" in err
    assert (run_copy / "config.json").read_text() == before


def test_explicit_flags_are_those_on_the_command_line():
    assert config.explicit_flags(["--seed", "0", "--device", "cpu"]) == {"seed", "device"}
    assert config.explicit_flags([]) == set()


# --- 6. --eval_only: --split, --data_root, scores beside the checkpoint ------------------------

@pytest.mark.parametrize("split, size, name", [("val", 50, "eval_best_val"),
                                               ("test", 100, "eval_best")])
def test_eval_only_writes_the_splits_scores_and_results(run_copy, split, size, name):
    assert main.main(["--eval_only", str(run_copy / "best.pt"), "--split", split, "--device",
                      "cpu"]) == 0
    scores = np.load(run_copy / f"{name}.npy")
    assert scores.shape == (size, 10) and scores.dtype == np.float32
    results = json.loads((run_copy / f"{name}.json").read_text())
    # digits are generated: no data root is claimed (--data_root is refused, test_hostile_inputs)
    assert results["split"] == split and results["data_root"] is None
    assert len(results[f"{split}_ap"]) == 10 and results["scores"] == f"{name}.npy"
    assert results[f"{split}_num_classes"] == 10 and len(results["class_names"]) == 10
    assert results[f"{split}_num_measured"] <= 10 and f"{split}_map_measured" in results
    # --help names exactly the files written (eval_<stem>.json for test, eval_<stem>_val.json)
    help_text = " ".join(config.build_parser().format_help().split())
    written = name.replace("best", "<stem>")
    assert f"{written}.json" in help_text and f"{written}.npy" in help_text


# --- 8. progress lines without a terminal; the optional TensorBoard logger --------------------

def test_a_progress_line_goes_to_stderr_every_log_every_steps(tmp_path, capsys):
    assert main.main([*TINY, "--epochs", "1", "--log_every", "1",
                      "--out_dir", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if " step " in line]
    assert [line.split("  ")[0] for line in lines] == ["epoch 1 step 1/2", "epoch 1 step 2/2"]
    assert all("loss " in line and "img/s" in line and "eta " in line for line in lines)


def test_tensorboard_logger_writes_each_epochs_scalars(tmp_path):
    """--logger tensorboard (the optional extra: pip install -e .[tensorboard], which make venv
    runs): the event file in the run folder holds, per epoch, the row's train loss, val mAP and
    modified fraction and the optimiser's lr, read back with TensorBoard's own reader."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard extra is not installed (pip install -e .[tensorboard])")
    out_dir = tmp_path / "run"
    assert main.main([*TINY, "--epochs", "2", "--lr", "0.01", "--logger", "tensorboard",
                      "--out_dir", str(out_dir)]) == 0
    (event_file,) = out_dir.glob("events.out.tfevents.*")
    events = event_accumulator.EventAccumulator(str(event_file))
    events.Reload()
    scalars = {tag: [(event.step, event.value) for event in events.Scalars(tag)]
               for tag in events.Tags()["scalars"]}
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for name in ("train_loss", "val_map", "modified_fraction"):
        steps, values = zip(*scalars[f"end_to_end/{name}"])
        assert steps == (1, 2)
        assert values == pytest.approx([row[name] for row in rows], rel=1e-6, abs=1e-7)
    assert [value for _, value in scalars["end_to_end/lr"]] == pytest.approx([0.01, 0.01])
    assert set(scalars) == {f"end_to_end/{name}" for name in
                            ("train_loss", "val_map", "modified_fraction", "lr")}


def test_tensorboard_logger_without_tensorboard_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    out_dir = tmp_path / "run"
    assert main.main([*TINY, "--epochs", "1", "--logger", "tensorboard",
                      "--out_dir", str(out_dir)]) == 2
    assert "--logger tensorboard needs the tensorboard package: pip install tensorboard" in \
        capsys.readouterr().err
    assert sorted(path.name for path in out_dir.iterdir()) == ["error.txt"]  # checked before training


# --- 9. a run's config.json (or YAML) as --config; provenance recorded ----------------------

def test_a_runs_config_json_is_accepted_as_config(finished_run):
    recorded = json.loads((finished_run / "config.json").read_text())
    assert recorded["command"] and "git_dirty" in recorded
    again = config.parse_args(["--config", str(finished_run / "config.json")])
    for key in ("dataset", "digits_train_size", "epochs", "lr", "method", "delta_rel", "image_size"):
        assert getattr(again, key) == recorded[key]
    assert again.out_dir != recorded["out_dir"]  # a new run, a new folder


def test_a_yaml_config_file_sets_defaults(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("dataset: digits\nepochs: 3\nlr: 0.01\n")
    parsed = config.parse_args(["--config", str(path), "--epochs", "4"])
    assert (parsed.epochs, parsed.lr) == (4, 0.01)


def test_an_unknown_key_is_still_an_error(tmp_path, capsys):
    path = tmp_path / "settings.yml"
    path.write_text("epoch: 3\n")
    with pytest.raises(SystemExit):
        config.parse_args(["--config", str(path)])
    assert "unknown keys ['epoch']" in capsys.readouterr().err
