"""LinearInit and linear training on cached features (issue 5): the feature cache, both phases of
linear_init, the features dataset and its validation, the vectorised AP. Tiny data, CPU, seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import read_jsonl
from largeloss import cli as main
from largeloss.data import digits, formats, loading
from largeloss.engine import features, train
from largeloss.engine.metrics import average_precisions, ranked_average_precisions
from largeloss.experiment.config import parse_args
from largeloss.nn import models
from largeloss.utils.errors import InputError

# 64 training digits (50 val, 100 test) at 24 px, the small CNN (seeded random init), CPU.
TINY = ["--dataset", "digits", "--digits_train_size", "64", "--image_size", "24", "--device", "cpu",
        "--num_workers", "0", "--batch_size", "16", "--linear_batch_size", "16",
        "--early_stop_drop", "0"]
CACHE_NAMES = [f"{split}_features_random_small_cnn_24px" for split in ("train", "val", "test")]


@pytest.fixture
def extractions(monkeypatch):
    """Spy on features.extract_features: the number of images each call extracted."""
    calls = []
    real = features.extract_features

    def spy(model, images, *args, **kwargs):
        calls.append(len(images))
        return real(model, images, *args, **kwargs)
    monkeypatch.setattr(features, "extract_features", spy)
    return calls


def run_linear_mode(tmp_path, name: str, *extra: str) -> int:
    return main.main([*TINY, "--train_mode", "linear", "--linear_epochs", "2",
                      "--feature_cache", str(tmp_path / "cache"), "--out_dir", str(tmp_path / name),
                      *extra])


# --- the feature cache --------------------------------------------------------------------------

def test_feature_cache_is_written_once_then_reused(tmp_path, extractions, capsys):
    assert run_linear_mode(tmp_path, "first") == 0
    assert extractions == [64, 50, 100]
    for name in CACHE_NAMES:
        record = json.loads((tmp_path / "cache" / f"{name}.json").read_text())
        assert record["arch"] == "small_cnn" and record["image_size"] == 24
        assert record["weights"] == {"name": "random_init", "seed": 0}
        assert np.load(tmp_path / "cache" / f"{name}.npy").shape == (record["rows"], 128)
    capsys.readouterr()
    assert run_linear_mode(tmp_path, "second") == 0
    assert extractions == [64, 50, 100]  # nothing extracted again
    assert "extracting" not in capsys.readouterr().out
    first, second = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("first", "second"))
    assert [row["val_map"] for row in first] == [row["val_map"] for row in second]


def test_cached_features_are_the_pooled_features_of_the_unflipped_images(tmp_path):
    config = parse_args([*TINY, "--train_mode", "linear", "--feature_cache", str(tmp_path)])
    data = train.load_linear_data(config, torch.device("cpu"))
    torch.manual_seed(0)
    model = models.build_model("small_cnn", "none", 10).eval()
    images = digits.load_digits_data(64, 24).train.images.images
    preprocess = loading.DevicePreprocess(model.mean, model.std, torch.device("cpu"))
    with torch.inference_mode():
        expected = model.pooled_features(preprocess(images, train=False))
    torch.testing.assert_close(features.features_of(data.train), expected)


def test_other_image_size_is_extracted_into_its_own_files(tmp_path, extractions):
    assert run_linear_mode(tmp_path, "size24") == 0
    before = {name: np.load(tmp_path / "cache" / f"{name}.npy") for name in CACHE_NAMES}
    assert run_linear_mode(tmp_path, "size32", "--image_size", "32") == 0
    assert extractions == [64, 50, 100] * 2
    assert (tmp_path / "cache" / "train_features_random_small_cnn_32px.json").is_file()
    for name, array in before.items():  # the 24-px cache is left as it was
        np.testing.assert_array_equal(np.load(tmp_path / "cache" / f"{name}.npy"), array)


@pytest.mark.parametrize("field,stale_value", [("arch", "resnet50"), ("image_size", 32),
                                                ("images_sha256", "0" * 64),
                                                ("weights", {"name": "random_init", "seed": 7})])
def test_a_stale_cache_is_rebuilt_never_used(tmp_path, extractions, capsys, field, stale_value):
    assert run_linear_mode(tmp_path, "fresh") == 0
    train_file = tmp_path / "cache" / f"{CACHE_NAMES[0]}.npy"
    fresh = np.load(train_file)
    # the same file name, but made by something else: other values, and a record that says so
    np.save(train_file, fresh + 1.0)
    record = json.loads(train_file.with_suffix(".json").read_text())
    train_file.with_suffix(".json").write_text(json.dumps({**record, field: stale_value}))
    capsys.readouterr()
    assert run_linear_mode(tmp_path, "after") == 0
    assert extractions == [64, 50, 100, 64]  # only the stale file is extracted again
    out = capsys.readouterr().out
    assert f"feature cache {train_file} is stale, rebuilding" in out and field in out
    np.testing.assert_array_equal(np.load(train_file), fresh)
    assert json.loads(train_file.with_suffix(".json").read_text())[field] == record[field]
    first, after = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("fresh", "after"))
    assert [row["val_map"] for row in first] == [row["val_map"] for row in after]


def test_a_cache_file_without_sidecar_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "cache").mkdir()
    unknown = np.ones((64, 128), dtype=np.float32)
    np.save(tmp_path / "cache" / f"{CACHE_NAMES[0]}.npy", unknown)
    assert run_linear_mode(tmp_path, "run") == 2
    assert "has no sidecar" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(tmp_path / "cache" / f"{CACHE_NAMES[0]}.npy"), unknown)


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_cole_published_features_are_used_for_the_official_phases(tmp_path, cole_folder,
                                                                  extractions, capsys):
    """Sidecar-less {train,val}_features_imagenet_resnet50.npy in the data folder (where Cole et
    al.'s code keeps them): used for resnet50 / imagenet_v1 / 448 px, rows mapped as docs/protocol.md."""
    data_root = cole_folder("pascal", num_train=20, num_test=8)
    official = {phase: np.random.RandomState(index).rand(rows, 2048).astype(np.float32)
                for index, (phase, rows) in enumerate((("train", 20), ("val", 8)))}
    for phase, array in official.items():
        np.save(data_root / f"{phase}_features_imagenet_resnet50.npy", array)
    config = parse_args(["--dataset", "pascal", "--data_root", str(data_root), "--train_mode",
                         "linear", "--device", "cpu", "--num_workers", "0"])
    data = train.load_linear_data(config, torch.device("cpu"))
    assert extractions == []  # nothing extracted, no backbone built
    assert capsys.readouterr().out.count("taken as Cole et al.'s published features") == 2
    train_rows, val_rows = formats.train_val_split(20)
    np.testing.assert_array_equal(features.features_of(data.train).numpy(), official["train"][train_rows])
    np.testing.assert_array_equal(features.features_of(data.val).numpy(), official["train"][val_rows])
    np.testing.assert_array_equal(features.features_of(data.test).numpy(), official["val"])
    # another arch or size is not Cole's setting, nor are other row counts
    for flags in (["--image_size", "224"], ["--arch", "resnet101"]):
        other = parse_args(["--dataset", "pascal", "--data_root", str(data_root), *flags])
        assert features.cole_published_features(data_root / "train_features_imagenet_resnet50.npy",
                                                train.feature_source(other),
                                       20) is None
    assert features.cole_published_features(data_root / "train_features_imagenet_resnet50.npy",
                                            train.feature_source(config),
                                   21) is None


# --- LinearInit ---------------------------------------------------------------------------------

@pytest.fixture
def phase_two_start(monkeypatch):
    """Spy on train.train_phase: the head, observed labels and estimator phase 2 starts from."""
    seen = {}
    real = train.train_phase

    def spy(run, phase, state):
        if phase.name == "end_to_end" and not seen:
            seen["head"] = {key: value.clone() for key, value in run.model.head.state_dict().items()}
            seen["observed"] = run.method.labels.observed.clone()
            estimator = getattr(run.method, "estimator", None)
            seen["estimator"] = None if estimator is None else estimator.logits.detach().clone()
        return real(run, phase, state)
    monkeypatch.setattr(train, "train_phase", spy)
    return seen


@pytest.mark.parametrize("method_flags", [["--mod_scheme", "LL-Cp", "--delta_rel", "5"],
                                          ["--loss", "role"]], ids=["LL-Cp", "role"])
def test_linear_init_trains_both_phases_from_the_best_linear_head(tmp_path, phase_two_start,
                                                                  method_flags):
    out_dir = tmp_path / "run"
    assert main.main([*TINY, *method_flags, "--train_mode", "linear_init", "--linear_epochs", "3",
                      "--epochs", "2", "--feature_cache", str(tmp_path / "cache"),
                      "--out_dir", str(out_dir)]) == 0
    rows = read_jsonl(out_dir / "metrics.jsonl")
    assert [(row["phase"], row["epoch"]) for row in rows] == [
        ("linear", 1), ("linear", 2), ("linear", 3), ("end_to_end", 1), ("end_to_end", 2)]
    linear_rows = rows[:3]
    best_row = max(linear_rows, key=lambda row: row["val_map"])
    linear_best = torch.load(out_dir / "linear_best.pt", map_location="cpu", weights_only=True)
    assert linear_best["epoch"] == best_row["epoch"]
    for key, value in linear_best["model"].items():  # phase 2 starts from the best linear head
        torch.testing.assert_close(phase_two_start["head"][key], value, rtol=0, atol=0)
    torch.testing.assert_close(phase_two_start["observed"], linear_best["method"]["store"]["observed"])
    if "role" in method_flags:  # and from the ROLE estimates of that epoch
        torch.testing.assert_close(phase_two_start["estimator"], linear_best["method"]["estimator"]["logits"])
    else:  # the LL epoch count restarts: epoch 1 of each phase is the warm-up
        assert rows[0]["modified"] == rows[3]["modified"] == 0
        assert all(row["modified"] > 0 for row in (rows[1], rows[2], rows[4]))
    results = json.loads((out_dir / "results.json").read_text())
    assert results["train_mode"] == "linear_init"
    assert (results["linear_best_epoch"], results["linear_val_map"]) == (best_row["epoch"],
                                                                        best_row["val_map"])
    best = torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == results["best_epoch"] == max(rows[3:], key=lambda r: r["val_map"])["epoch"]


def test_linear_mode_is_phase_one_of_linear_init(tmp_path):
    common = [*TINY, "--mod_scheme", "LL-Ct", "--delta_rel", "5", "--linear_epochs", "2",
              "--feature_cache", str(tmp_path / "cache")]
    assert main.main([*common, "--train_mode", "linear_init", "--epochs", "1",
                      "--out_dir", str(tmp_path / "init")]) == 0
    assert main.main([*common, "--train_mode", "linear", "--out_dir", str(tmp_path / "lin")]) == 0
    phase_one = [row for row in read_jsonl(tmp_path / "init" / "metrics.jsonl")
                 if row["phase"] == "linear"]
    alone = read_jsonl(tmp_path / "lin" / "metrics.jsonl")
    for key in ("train_loss", "val_map", "modified"):
        assert [row[key] for row in phase_one] == [row[key] for row in alone]
    results = json.loads((tmp_path / "lin" / "results.json").read_text())
    assert results["linear_val_map"] == results["val_map"] == max(row["val_map"] for row in alone)
    # --eval_only on the linear head gives the same test mAP
    assert main.main(["--eval_only", str(tmp_path / "lin" / "best.pt"), "--device", "cpu",
                      "--num_workers", "0"]) == 0
    evaluated = train.evaluate_checkpoint(str(tmp_path / "lin" / "best.pt"), "cpu", 0)
    assert evaluated["test_map"] == pytest.approx(results["test_map"])


def test_linear_init_resumes_in_phase_two(tmp_path, extractions):
    common = [*TINY, "--train_mode", "linear_init", "--linear_epochs", "2", "--epochs", "2",
              "--feature_cache", str(tmp_path / "cache")]
    assert main.main([*common, "--out_dir", str(tmp_path / "whole")]) == 0
    assert main.main([*common, "--out_dir", str(tmp_path / "cut"), "--stop_after", "1"]) == 0
    assert not (tmp_path / "cut" / "results.json").exists()
    assert main.main(["--resume", str(tmp_path / "cut" / "last.pt"), "--device", "cpu",
                      "--num_workers", "0"]) == 0
    assert extractions == [64, 50, 100]  # the second and third runs used the cache
    whole, cut = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("whole", "cut"))
    assert [(row["phase"], row["epoch"], row["val_map"]) for row in cut] == [
        (row["phase"], row["epoch"], row["val_map"]) for row in whole]


# --- the features dataset -----------------------------------------------------------------------

def write_npz(path, *, drop=(), **replace) -> None:
    """A tiny valid features .npz (4 classes, 8-dim vectors that carry the labels), edited."""
    rng = np.random.RandomState(0)
    labels = {name: (rng.rand(rows, 4) < 0.4).astype(np.uint8) for name, rows in
              (("train", 40), ("val", 12), ("test", 20))}
    for value in labels.values():
        value[np.arange(len(value)), rng.randint(4, size=len(value))] = 1
    prototypes = rng.randn(4, 8).astype(np.float32)
    arrays = {f"{name}_features": value @ prototypes + 0.5 * rng.randn(len(value), 8).astype(np.float32)
              for name, value in labels.items()}
    arrays.update({f"{name}_labels": value for name, value in labels.items()})
    arrays["train_observed"] = formats.make_observed_labels(labels["train"])
    arrays["class_names"] = np.array(["cat", "dog", "sea", "sky"])
    arrays.update(replace)
    np.savez(path, **{key: value for key, value in arrays.items() if key not in drop})


@pytest.mark.parametrize("drop", [(), ("val_features", "val_labels", "train_observed", "class_names")],
                         ids=["full", "minimal"])
def test_features_dataset_trains_one_epoch(tmp_path, drop):
    write_npz(tmp_path / "features.npz", drop=drop)
    out_dir = tmp_path / "run"
    assert main.main(["--dataset", "features", "--data_root", str(tmp_path), "--train_mode",
                      "linear", "--linear_epochs", "1", "--device", "cpu", "--out_dir",
                      str(out_dir)]) == 0
    [row] = read_jsonl(out_dir / "metrics.jsonl")
    assert row["phase"] == "linear" and row["epoch"] == 1
    saved = json.loads((out_dir / "config.json").read_text())
    assert saved["train_size"] == (40 if not drop else 32)  # no val_*: 20 % of train is val
    results = json.loads((out_dir / "results.json").read_text())
    assert len(results["test_ap"]) == 4 and 0 <= results["test_map"] <= 100
    assert results["class_names"] == (["cat", "dog", "sea", "sky"] if not drop
                                      else ["class_0", "class_1", "class_2", "class_3"])


BAD_NPZ = {
    "missing test features": (dict(drop=("test_features",)), "missing key 'test_features'"),
    "clean label 2": (dict(train_labels=np.full((40, 4), 2, dtype=np.uint8)), "key 'train_labels'"),
    "observed label 0.5": (dict(train_observed=np.full((40, 4), 0.5)), "key 'train_observed'"),
    "observed rows": (dict(train_observed=np.zeros((39, 4))), "key 'train_observed' has 39 rows"),
    "NaN feature": (dict(val_features=np.full((12, 8), np.nan)), "key 'val_features' holds NaN"),
    "feature width": (dict(test_features=np.zeros((20, 9))), "differ in width"),
    "label columns": (dict(test_labels=np.zeros((20, 5), dtype=np.uint8)), "number of classes"),
    "val without labels": (dict(drop=("val_labels",)), "key 'val_features' needs 'val_labels'"),
    "no train labels at all": (dict(drop=("train_observed", "train_labels")),
                               "needs 'train_observed' or 'train_labels'"),
    "unknown key": (dict(train_label=np.zeros((40, 4))), "unknown keys ['train_label']"),
    "class names": (dict(class_names=np.array(["a", "b"])), "key 'class_names'"),
    "1-D features": (dict(train_features=np.zeros(40)), "key 'train_features' must be"),
    "object array": (dict(class_names=np.array([{"a": 1}] * 4, dtype=object)),
                     "key 'class_names' is not a plain array"),
}


@pytest.mark.parametrize("edit,message", BAD_NPZ.values(), ids=BAD_NPZ.keys())
def test_a_malformed_features_npz_is_refused_naming_the_key(tmp_path, capsys, edit, message):
    write_npz(tmp_path / "features.npz", **edit)
    assert main.main(["--dataset", "features", "--data_root", str(tmp_path), "--train_mode",
                      "linear", "--linear_epochs", "1", "--device", "cpu", "--out_dir",
                      str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(InputError, match="features.npz"):
        features.load_features_npz(tmp_path)


def test_features_dataset_needs_linear_mode_and_a_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "features", "--data_root", str(tmp_path)])
    assert "--train_mode linear" in capsys.readouterr().err
    assert main.main(["--dataset", "features", "--data_root", str(tmp_path), "--train_mode",
                      "linear", "--device", "cpu", "--out_dir", str(tmp_path / "run")]) == 2
    assert "features.npz does not exist" in capsys.readouterr().err


# --- the vectorised AP --------------------------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
def test_ranked_average_precisions_equal_scikit_learn(ties):
    rng = np.random.RandomState(1)
    for num_rows, num_classes in ((1, 1), (7, 3), (300, 11)):
        scores = rng.randn(num_rows, num_classes).astype(np.float32)
        if ties:
            scores = np.round(scores * 2) / 2
        targets = (rng.rand(num_rows, num_classes) < 0.3).astype(np.uint8)
        targets[:, 0] = 0  # a class without positives: AP 0
        np.testing.assert_allclose(ranked_average_precisions(scores, targets),
                                   average_precisions(scores, targets), rtol=0, atol=1e-12)
