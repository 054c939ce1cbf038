"""Tests of analysis.py (docs/analyses.md) and its wiring into the CLI: hand-computed loss groups, precision
of modification and pointing game; no extra work when the analyses are off; a tiny end-to-end run
with --track_train --pointing_game, its resume, and the two figure scripts."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

from largeloss import cli  # noqa: E402
from largeloss.data import loading
from largeloss.data.splits import ExperimentData, Split
from largeloss.engine import analysis  # noqa: E402
from largeloss.engine import train  # noqa: E402
from largeloss.utils.errors import InputError  # noqa: E402

TINY_RUN = ["--dataset", "digits", "--digits_train_size", "32", "--arch", "small_cnn",
            "--image_size", "48", "--batch_size", "16", "--optimizer", "adam", "--lr", "1e-3",
            "--early_stop_drop", "0", "--num_workers", "0", "--device", "cpu", "--seed", "0"]
ANALYSIS_KEYS = {"loss_observed_pos", "loss_true_neg", "loss_false_neg", "train_map_clean",
                 "batch_loss_observed_pos", "batch_loss_true_neg", "batch_loss_false_neg",
                 "modification_precision", "false_negative_rate"}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def softplus(x: float) -> float:
    """log(1 + e^x) = BCE(x, 0); BCE(x, 1) = softplus(−x)."""
    return math.log(1 + math.exp(x))


# --- loss groups ----------------------------------------------------------------------------------

def test_loss_groups_match_hand_values():
    logits = np.array([[0.0, 2.0, -1.0], [1.0, 3.0, 5.0]], dtype=np.float32)
    observed = np.array([[1, 0, 0], [0, 1, -1]], dtype=np.int8)
    true_labels = np.array([[1, 1, 0], [0, 1, 0]], dtype=np.uint8)
    groups = analysis.loss_groups(logits, observed, true_labels)
    # observed positives (0,0), (1,1): BCE(x, 1); true negatives (0,2), (1,0): BCE(x, 0);
    # the false negative (0,1): BCE(x, 0) (AN target 0); the observed negative (1,2) in no group
    assert groups["loss_observed_pos"] == pytest.approx((math.log(2) + softplus(-3.0)) / 2, rel=1e-6)
    assert groups["loss_true_neg"] == pytest.approx((softplus(-1.0) + softplus(1.0)) / 2, rel=1e-6)
    assert groups["loss_false_neg"] == pytest.approx(math.log(1 + math.exp(2.0)), rel=1e-6)


def test_loss_groups_follow_the_current_store_and_empty_groups_are_none():
    logits = np.array([[2.0, -2.0]], dtype=np.float32)
    true_labels = np.array([[1, 1]], dtype=np.uint8)
    before = analysis.loss_groups(logits, np.array([[1, 0]]), true_labels)
    assert before["loss_true_neg"] is None
    assert before["loss_false_neg"] == pytest.approx(softplus(-2.0), rel=1e-6)
    after = analysis.loss_groups(logits, np.array([[1, 1]]), true_labels)  # LL-Cp relabelled it
    assert after["loss_false_neg"] is None
    assert after["loss_observed_pos"] == pytest.approx((softplus(-2.0) + softplus(2.0)) / 2, rel=1e-6)


def test_training_set_metrics_adds_clean_map():
    logits = np.array([[3.0, -1.0], [-2.0, 2.0], [-3.0, 1.0]], dtype=np.float32)
    true_labels = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.uint8)
    observed = np.array([[1, 0], [0, 0], [0, 0]], dtype=np.int8)
    metrics = analysis.training_set_metrics(logits, observed, true_labels)
    # class 0: the only positive ranks first (AP 1); class 1: the positive ranks first (AP 1)
    assert metrics["train_map_clean"] == pytest.approx(100.0)
    assert set(metrics) == {"loss_observed_pos", "loss_true_neg", "loss_false_neg", "train_map_clean"}


def test_highest_loss_epochs_last_phase_earliest_tie_and_missing_group():
    history = [{"phase": "linear", "epoch": 1, "loss_false_neg": 9.0},
               {"phase": "end_to_end", "epoch": 1, "loss_true_neg": 0.5, "loss_false_neg": 0.2},
               {"phase": "end_to_end", "epoch": 2, "loss_true_neg": 0.3, "loss_false_neg": 0.7},
               {"phase": "end_to_end", "epoch": 3, "loss_true_neg": 0.5, "loss_false_neg": 0.1}]
    assert analysis.highest_loss_epochs(history) == {"observed_pos": None, "true_neg": 1,
                                                     "false_neg": 2}
    history[2]["batch_loss_false_neg"] = 0.4
    assert analysis.highest_loss_phase(history)["highest_batch_loss_epoch"] == {
        "observed_pos": None, "true_neg": None, "false_neg": 2}
    assert analysis.highest_loss_epochs([]) == {"observed_pos": None, "true_neg": None,
                                                "false_neg": None}


# --- precision of modification and corrections -----------------------------------------------------

def test_tracker_precision_batch_losses_and_corrections():
    true_labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1]], dtype=np.uint8)
    observed = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.int8)
    # false negatives: (0,1), (2,2), (3,2): 3 of 8 unobserved entries; rows 0, 2, 3 have one
    tracker = analysis.TrainingTracker(true_labels, observed, num_images=2, device=torch.device("cpu"))
    assert tracker.samples.tolist() == [0, 2]

    def step(ids, modified, logits):
        ids = torch.tensor(ids)
        tracker.record_step(ids, torch.tensor(modified), torch.tensor(logits),
                            torch.as_tensor(observed)[ids])

    tracker.begin_epoch(torch.as_tensor(observed))
    step([2, 0], [[False, False, True],     # sample 2: its false negative
                  [False, True, True]],     # sample 0: its false negative and a true negative
         [[1.0, 2.0, -1.0], [0.5, -0.5, 3.0]])
    step([1, 3], [[False, True, False],     # sample 1: a true negative
                  [False, False, False]],
         [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # every entry: BCE = log 2
    log2 = math.log(2)
    assert tracker.end_epoch(2) == {
        "modification_precision": pytest.approx(2 / 4),
        "false_negative_rate": pytest.approx(3 / 8),
        # observed positives (2,1), (0,0), (1,0), (3,0); BCE(x, 1) = softplus(−x)
        "batch_loss_observed_pos": pytest.approx((softplus(-2.0) + softplus(-0.5) + 2 * log2) / 4),
        # true negatives (2,0), (0,2), (1,1), (1,2), (3,1); BCE(x, 0) = softplus(x)
        "batch_loss_true_neg": pytest.approx((softplus(1.0) + softplus(3.0) + 3 * log2) / 5),
        # false negatives (2,2), (0,1), (3,2), against the AN target 0
        "batch_loss_false_neg": pytest.approx((softplus(-1.0) + softplus(-0.5) + log2) / 3)}
    tracker.begin_epoch(torch.as_tensor(observed))  # no step recorded: nothing to report
    assert tracker.end_epoch(3) == {"modification_precision": None,
                                    "false_negative_rate": pytest.approx(3 / 8),
                                    "batch_loss_observed_pos": None, "batch_loss_true_neg": None,
                                    "batch_loss_false_neg": None}
    train_split = Split(None, observed, true_labels)
    corrections = tracker.corrections(["a", "b", "c"], train_split)
    assert corrections == [
        {"sample": 0, "image": None, "true": ["a", "b"], "observed": ["a"],
         "per_epoch": {"2": ["b", "c"], "3": []}},
        {"sample": 2, "image": None, "true": ["b", "c"], "observed": ["b"],
         "per_epoch": {"2": ["c"], "3": []}}]
    restored = analysis.TrainingTracker(true_labels, observed, 2, torch.device("cpu"))
    restored.load_state_dict(tracker.state_dict())
    assert restored.corrections(["a", "b", "c"], train_split) == corrections


# --- pointing game --------------------------------------------------------------------------------

def peaked(h: int, w: int, row: int, col: int) -> torch.Tensor:
    cam = torch.zeros(h, w)
    cam[row, col] = 1.0
    return cam


def test_pointing_game_hand_made_cell_centres():
    cams = torch.zeros(3, 3, 4, 4)
    cams[0, 0] = peaked(4, 4, 0, 0)   # centre (0.125, 0.125), in its box: hit
    cams[0, 1] = peaked(4, 4, 0, 3)   # centre (0.875, 0.125), box is the lower right: miss
    cams[1, 0] = peaked(4, 4, 1, 2)   # centre (0.625, 0.375), in its box: hit
    cams[1, 1] = peaked(4, 4, 3, 3)   # class 1 is not a ground-truth class of image 1: no trial
    cams[2, 2] = peaked(4, 4, 3, 3)   # centre (0.875, 0.875), on the box's corner: hit
    boxes = [[(0, 0.0, 0.0, 0.5, 0.5), (1, 0.5, 0.5, 1.0, 1.0)],
             [(0, 0.5, 0.0, 1.0, 0.5), (1, 0.0, 0.0, 1.0, 1.0)],
             [(2, 0.75, 0.75, 0.875, 0.875), (2, 0.0, 0.0, 0.1, 0.1)]]
    true_labels = np.array([[1, 1, 0], [1, 0, 1], [0, 0, 1]])  # image 1's class 2 has no box
    per_class, mean = analysis.pointing_game(cams, boxes, true_labels)
    assert per_class == [1.0, 0.0, 1.0]   # class 0: 2/2, class 1: 0/1, class 2: 1/1
    assert mean == pytest.approx(2 / 3)
    hits, trials = analysis.pointing_hits(cams, boxes, true_labels)
    assert hits.tolist() == [2, 0, 1] and trials.tolist() == [2, 1, 1]


def test_pointing_game_upsampled_differs_from_cell_centre_and_skips_classes_without_trials():
    cams = peaked(2, 2, 0, 0).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    boxes = [[(0, 0.0, 0.0, 0.2, 0.2)]]
    # cell centre of cell (0,0) of a 2×2 map: (0.25, 0.25), outside the box
    assert analysis.pointing_game(cams, boxes, None) == ([0.0, None], 0.0)
    # bilinear to 4×4 (align_corners=False): pixel (0,0) keeps the peak, centre (0.125, 0.125)
    assert analysis.pointing_game(cams, boxes, None, image_size=(4, 4)) == ([1.0, None], 1.0)


def test_analysis_inputs_are_checked_before_training():
    no_clean = Split(None, np.zeros((2, 3), np.int8), None)
    boxed = Split(None, np.zeros((2, 3), np.int8), np.zeros((2, 3), np.uint8),
                  [[(0, 0.0, 0.0, 1.0, 1.0)], []])
    unboxed = Split(None, np.zeros((2, 3), np.int8), np.zeros((2, 3), np.uint8))
    with pytest.raises(InputError, match="--track_train needs clean training labels"):
        analysis.check_analysis_inputs(ExperimentData(no_clean, boxed, boxed, list("abc")), True, False)
    with pytest.raises(InputError, match="--pointing_game needs bounding boxes"):
        analysis.check_analysis_inputs(ExperimentData(boxed, boxed, unboxed, list("abc")), False, True)
    analysis.check_analysis_inputs(ExperimentData(no_clean, boxed, unboxed, list("abc")), False, False)


# --- the CLI -------------------------------------------------------------------------------------

def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_analyses_add_no_work_when_off(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("an analysis ran although its flag is off")

    monkeypatch.setattr(analysis, "TrainingTracker", forbidden)
    monkeypatch.setattr(analysis, "training_set_metrics", forbidden)
    monkeypatch.setattr(analysis, "pointing_game_on_split", forbidden)
    calls = {"predict": 0, "make_loader": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(train, "predict", counting("predict", train.predict))
    monkeypatch.setattr(loading, "make_loader", counting("make_loader", loading.make_loader))
    run_dir = tmp_path / "run"
    assert cli.main(TINY_RUN + ["--mod_scheme", "LL-R", "--delta_rel", "5", "--epochs", "2",
                                "--out_dir", str(run_dir)]) == 0
    assert calls == {"predict": 2 + 1, "make_loader": 3}  # val per epoch + test; train/val/test
    for row in read_rows(run_dir):
        assert not ANALYSIS_KEYS & set(row)
    results = json.loads((run_dir / "results.json").read_text())
    assert not {"highest_loss_epoch", "highest_batch_loss_epoch", "pointing_game"} & set(results)
    assert not (run_dir / "corrections.json").exists()


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """LL-Ct with both analyses: 1 epoch, interrupted (--stop_after), then resumed to 3 epochs."""
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    flags = TINY_RUN + ["--mod_scheme", "LL-Ct", "--delta_rel", "5", "--epochs", "3",
                        "--track_train", "--pointing_game", "--track_images", "3",
                        "--out_dir", str(run_dir)]
    assert cli.main(flags + ["--stop_after", "1"]) == 0
    assert cli.main(["--resume", str(run_dir / "last.pt"), "--device", "cpu",
                     "--num_workers", "0"]) == 0
    return run_dir


def test_tracked_run_writes_every_analysis(tracked_run):
    rows = read_rows(tracked_run)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert ANALYSIS_KEYS <= set(row)
        assert 0 <= row["false_negative_rate"] <= 1 and 0 <= row["train_map_clean"] <= 100
    assert rows[0]["modification_precision"] is None          # warm-up: nothing modified
    assert rows[0]["modified"] == 0 and rows[1]["modified"] > 0
    assert 0 <= rows[1]["modification_precision"] <= 1
    results = json.loads((tracked_run / "results.json").read_text())
    for key in ("highest_loss_epoch", "highest_batch_loss_epoch"):
        assert set(results[key]) == {"observed_pos", "true_neg", "false_neg"}
        assert all(epoch in (1, 2, 3) for epoch in results[key].values())
    assert 0 <= results["pointing_game"] <= 100
    assert list(results["pointing_game_per_class"]) == [str(digit) for digit in range(10)]
    assert results["pointing_game_trials"] > 0
    corrections = json.loads((tracked_run / "corrections.json").read_text())
    assert len(corrections) == 3
    for entry in corrections:
        assert set(entry["observed"]) < set(entry["true"])    # each has a false negative
        assert list(entry["per_epoch"]) == ["1", "2", "3"]    # epoch 1 survived the resume
        assert entry["per_epoch"]["1"] == []


def test_figure_scripts_write_pngs(tracked_run, tmp_path):
    plot_memorization = load_script("plot_memorization")
    show_cam = load_script("show_cam")
    figure = tmp_path / "memorization.png"
    for losses, extra in (("eval", []), ("training", ["--log_y"])):
        assert plot_memorization.main([str(tracked_run), "--labels", "LL-Ct", "--losses", losses,
                                       "--out", str(figure)] + extra) == 0
        assert figure.stat().st_size > 0
        figure.unlink()
    cams = tmp_path / "cams.png"
    assert show_cam.main([str(tracked_run / "best.pt"), "--images", "0", "3", "--out", str(cams)]) == 0
    assert cams.stat().st_size > 0
    assert show_cam.main([str(tracked_run / "best.pt"), "--images", "100000", "--out",
                          str(cams)]) == 2


def test_plot_memorization_refuses_runs_without_groups(tmp_path, capsys):
    run_dir = tmp_path / "plain"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.3}) + "\n")
    assert load_script("plot_memorization").main([str(run_dir), "--out", str(tmp_path / "x.png")]) == 2
    assert "--track_train" in capsys.readouterr().err


def test_tracking_leaves_training_unchanged(tmp_path):
    """The extra pass over the training set must not shift the random flips of later epochs."""
    flags = TINY_RUN + ["--mod_scheme", "LL-R", "--delta_rel", "5", "--epochs", "3"]
    assert cli.main(flags + ["--out_dir", str(tmp_path / "off")]) == 0
    assert cli.main(flags + ["--track_train", "--out_dir", str(tmp_path / "on")]) == 0
    kept = ("epoch", "train_loss", "modified", "val_map")
    assert ([{key: row[key] for key in kept} for row in read_rows(tmp_path / "on")]
            == [{key: row[key] for key in kept} for row in read_rows(tmp_path / "off")])
