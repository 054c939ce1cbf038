"""formats.py: the observed-label protocol, Cole folders and custom CSV folders."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from largeloss.data import formats
from largeloss.data.formats import (LabelledSplit, class_names_for, load_boxes, load_cole_folder,
                                    load_custom_folder, make_observed_labels, train_val_split)
from largeloss.utils import atomic

# ---------------------------------------------------------------- make_observed_labels (docs/protocol.md)

def observed_step_by_step(true_labels: np.ndarray, num_pos: int, num_neg: int,
                          seed: int) -> np.ndarray:
    """docs/protocol.md §Observed labels spelled out with explicit rng.shuffle calls, as an independent reference."""
    rng = np.random.RandomState(seed)
    expected = np.zeros(true_labels.shape, dtype=np.float32)
    for row in range(true_labels.shape[0]):
        positives = [column for column in range(true_labels.shape[1])
                     if true_labels[row, column] == 1]
        positives = np.array(positives, dtype=np.int64)
        rng.shuffle(positives)
        for column in positives[:num_pos]:
            expected[row, column] = 1
        negatives = np.array([column for column in range(true_labels.shape[1])
                              if true_labels[row, column] == 0], dtype=np.int64)
        rng.shuffle(negatives)  # consumes the generator even when num_neg == 0
        for column in negatives[:num_neg]:
            expected[row, column] = -1
    return expected


@pytest.mark.parametrize("num_pos,num_neg", [(1, 0), (2, 1), (1, 3)])
def test_observed_labels_match_step_by_step_reference(num_pos, num_neg):
    true_labels = (np.random.RandomState(0).rand(30, 7) < 0.4).astype(np.uint8)
    true_labels[3] = 0  # a row with no positive stays all 0 (and still shuffles its negatives)
    observed = make_observed_labels(true_labels, num_pos, num_neg)
    assert observed.dtype == np.float32
    np.testing.assert_array_equal(observed, observed_step_by_step(true_labels, num_pos, num_neg,
                                                                  formats.SPLIT_SEED))


def test_observed_labels_fixed_tiny_case_depends_on_the_negative_shuffle():
    true_labels = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    observed = make_observed_labels(true_labels, num_pos=1, num_neg=0, seed=1200)
    np.testing.assert_array_equal(observed, [[1, 0, 0, 0], [0, 1, 0, 0]])
    # A version that skipped the (num_neg = 0) negative shuffle would pick class 0 in row 2.
    rng = np.random.RandomState(1200)
    for row in true_labels:
        positives = np.nonzero(row == 1)[0]
        rng.shuffle(positives)
    assert positives[0] == 0


def test_observed_labels_deterministic_and_counts():
    true_labels = (np.random.RandomState(1).rand(50, 9) < 0.5).astype(np.uint8)
    first = make_observed_labels(true_labels, num_pos=2, num_neg=1)
    np.testing.assert_array_equal(first, make_observed_labels(true_labels, num_pos=2, num_neg=1))
    positives, negatives = true_labels.sum(1), (1 - true_labels).sum(1)
    np.testing.assert_array_equal((first == 1).sum(1), np.minimum(positives, 2))
    np.testing.assert_array_equal((first == -1).sum(1), np.minimum(negatives, 1))
    assert ((first == 1) <= (true_labels == 1)).all()
    assert ((first == -1) <= (true_labels == 0)).all()


@pytest.mark.parametrize("num_rows,num_train,num_val", [
    (5717, 4574, 1143), (82081, 65665, 16416), (150000, 120000, 30000), (5994, 4795, 1199)])
def test_train_val_split_sizes_match_spec(num_rows, num_train, num_val):
    train_rows, val_rows = train_val_split(num_rows)
    assert (len(train_rows), len(val_rows)) == (num_train, num_val)
    assert np.array_equal(np.sort(np.concatenate([train_rows, val_rows])), np.arange(num_rows))


# ---------------------------------------------------------------- Cole folders

def write_cole_fixture(folder: Path, num_rows=(4, 3), num_classes=3) -> dict:
    """A tiny valid Cole folder; returns {phase: (images, labels, observed)}."""
    folder.mkdir(parents=True, exist_ok=True)
    content = {}
    for phase, rows in zip(formats.PHASES, num_rows):
        images = np.array([f"{phase}_{row}.jpg" for row in range(rows)])
        labels = (np.arange(rows * num_classes).reshape(rows, num_classes) % 2).astype(np.float64)
        observed = make_observed_labels(labels)
        np.save(folder / f"formatted_{phase}_images.npy", images)
        np.save(folder / f"formatted_{phase}_labels.npy", labels)
        np.save(folder / f"formatted_{phase}_labels_obs.npy", observed)
        content[phase] = (images, labels, observed)
    return content


def test_load_cole_folder_round_trip(tmp_path):
    content = write_cole_fixture(tmp_path / "pascal")
    splits = load_cole_folder(tmp_path / "pascal")
    assert set(splits) == {"train", "val"}
    for phase, (images, labels, observed) in content.items():
        split = splits[phase]
        assert isinstance(split, LabelledSplit)
        assert split.image_paths == list(images)
        assert split.observed.dtype == np.int8 and split.true_labels.dtype == np.uint8
        np.testing.assert_array_equal(split.observed, observed)
        np.testing.assert_array_equal(split.true_labels, labels)


def test_missing_cole_file_names_it_and_the_command(tmp_path):
    write_cole_fixture(tmp_path / "coco")
    (tmp_path / "coco" / "formatted_val_images.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"formatted_val_images\.npy.*prepare_data\.py "
                                                r"--dataset coco"):
        load_cole_folder(tmp_path / "coco")


def test_missing_observed_file_suggests_obs_only(tmp_path):
    write_cole_fixture(tmp_path / "cub")
    (tmp_path / "cub" / "formatted_train_labels_obs.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"formatted_train_labels_obs\.npy.*--obs_only"):
        load_cole_folder(tmp_path / "cub")


@pytest.mark.parametrize("kind,replacement,message", [
    ("images", np.array(["a.jpg", "b.jpg"]),
     r"shape mismatch: .*formatted_train_images\.npy has shape \(2,\) but "
     r".*formatted_train_labels\.npy has shape \(4, 3\)"),
    ("labels_obs", np.zeros((4, 2)),
     r"shape mismatch: .*formatted_train_labels\.npy has shape \(4, 3\) but "
     r".*formatted_train_labels_obs\.npy has shape \(4, 2\)"),
    ("labels", np.full((4, 3), 2.0),
     r"formatted_train_labels\.npy: value 2\.0 at row 0 \(0-based\), column 0 .*outside"),
    ("labels", np.where(np.eye(4, 3) > 0, np.nan, 0.0),
     r"formatted_train_labels\.npy: NaN at row 0 \(0-based\), column 0"),
    ("labels_obs", np.array([[0, 0, 0], [0, 0, 0], [0, 0, 2], [0, 0, 0]], dtype=np.float32),
     r"formatted_train_labels_obs\.npy: value 2\.0 at row 2 \(0-based\), column 2 \(c2\)"),
    ("labels_obs", np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0], [0, 0, 0]]),
     r"formatted_train_labels_obs\.npy: NaN at row 1 \(0-based\), column 1 \(c1\)"),
])
def test_malformed_cole_folder_refused(tmp_path, kind, replacement, message):
    folder = tmp_path / "data"
    write_cole_fixture(folder)
    (folder / "class_names.txt").write_text("c0\nc1\nc2\n")
    np.save(folder / f"formatted_train_{kind}.npy", replacement)
    with pytest.raises(ValueError, match=message):
        load_cole_folder(folder)


def test_class_names_for_prefers_file_then_constant_then_generic(tmp_path):
    assert class_names_for(tmp_path, "pascal", 20)[0] == "aeroplane"
    assert class_names_for(tmp_path, "coco", 80)[-1] == "toothbrush"
    assert class_names_for(tmp_path, "nuswide", 3) == ["class_0", "class_1", "class_2"]
    (tmp_path / "class_names.txt").write_text("x\ny\n")
    assert class_names_for(tmp_path, "pascal", 2) == ["x", "y"]
    with pytest.raises(ValueError, match="class_names.txt has 2 names but the labels have 3"):
        class_names_for(tmp_path, "cub", 3)


def test_load_boxes_absent_present_and_misaligned(tmp_path):
    write_cole_fixture(tmp_path)
    assert load_boxes(tmp_path, "val") is None
    entries = [{"width": 10, "height": 8, "boxes": [[1, 0, 0, 5, 5]]}] * 3
    atomic.save_text(tmp_path / "formatted_val_boxes.json", json.dumps(entries))
    assert load_boxes(tmp_path, "val") == entries
    atomic.save_text(tmp_path / "formatted_train_boxes.json", '[{"width": 1}]')
    with pytest.raises(ValueError, match="row 0 must be an object with width, height and boxes"):
        load_boxes(tmp_path, "train")


# ---------------------------------------------------------------- custom CSV folders

HEADER = "image,cat,dog,car\n"


def write_custom_fixture(folder: Path, files: dict[str, str],
                         images=("a.jpg", "b.png", "sub/c.jpg")) -> Path:
    """A custom folder with empty image files and the given CSV texts."""
    (folder / "images" / "sub").mkdir(parents=True, exist_ok=True)
    for name in images:
        (folder / "images" / name).write_bytes(b"")
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def valid_custom_files() -> dict[str, str]:
    """train with mixed partial labels (1 / -1 / 0 / blank), clean train, val, and test."""
    return {
        "train.csv": HEADER + "a.jpg,1,-1,\nb.png,0,1,-1\nsub/c.jpg,,,1\n",
        "train_clean.csv": HEADER + "a.jpg,1,0,0\nb.png,0,1,0\nsub/c.jpg,1,0,1\n",
        "val.csv": HEADER + "b.png,1,,\n",
        "test.csv": HEADER + "a.jpg,1,0,0\nsub/c.jpg,0,1,1\n",
        "test_clean.csv": HEADER + "a.jpg,1,0,0\nsub/c.jpg,0,1,1\n",
    }


def test_custom_round_trip(tmp_path):
    folder = write_custom_fixture(tmp_path, valid_custom_files())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_names, splits = load_custom_folder(folder)
    assert class_names == ["cat", "dog", "car"]
    assert set(splits) == {"train", "val", "test"}
    train = splits["train"]
    assert train.image_paths == ["a.jpg", "b.png", "sub/c.jpg"]
    assert train.observed.dtype == np.int8
    np.testing.assert_array_equal(train.observed, [[1, -1, 0], [0, 1, -1], [0, 0, 1]])
    np.testing.assert_array_equal(train.true_labels, [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    assert train.true_labels.dtype == np.uint8
    assert splits["val"].true_labels is None
    np.testing.assert_array_equal(splits["val"].observed, [[1, 0, 0]])
    np.testing.assert_array_equal(splits["test"].true_labels, [[1, 0, 0], [0, 1, 1]])


def test_custom_without_val_has_no_val_key(tmp_path):
    files = {name: text for name, text in valid_custom_files().items() if "val" not in name}
    _, splits = load_custom_folder(write_custom_fixture(tmp_path, files))
    assert set(splits) == {"train", "test"}


@pytest.mark.parametrize("changes,error,message", [
    ({"train.csv": None}, FileNotFoundError, r"missing required file .*train\.csv"),
    ({"test.csv": None}, FileNotFoundError, r"missing required file .*test\.csv"),
    ({"val.csv": None, "val_clean.csv": HEADER + "b.png,1,0,0\n"}, ValueError,
     r"val_clean\.csv exists but .*val\.csv does not"),
    ({"test.csv": "image,cat,car,dog\na.jpg,1,0,0\n"}, ValueError,
     r"header mismatch: .*test\.csv has class 'car' in column 3 where .*train\.csv has 'dog'"),
    ({"val.csv": "image,cat,dog\nb.png,1,0\n"}, ValueError,
     r"header mismatch: .*val\.csv has 2 classes but .*train\.csv has 3"),
    ({"train.csv": "name,cat,dog,car\na.jpg,1,0,0\n"}, ValueError,
     r"train\.csv, line 1: the image column is missing"),
    ({"train.csv": HEADER + "a.jpg,1,0,0\nb.png,0,1,0\na.jpg,0,0,1\n"}, ValueError,
     r"train\.csv, line 4: duplicate image 'a\.jpg' \(first on line 2\)"),
    ({"test.csv": HEADER + "a.jpg,1,0,0\nmissing1.jpg,1,0,0\nmissing2.jpg,0,1,0\n"},
     FileNotFoundError, r"test\.csv: 2 image file\(s\) not found under .*images: "
                        r"'missing1\.jpg' \(line 3\), 'missing2\.jpg' \(line 4\)"),
    ({"train.csv": HEADER + "a.jpg,1,0,0\nb.png,0,2,0\n"}, ValueError,
     r"train\.csv, line 3, class 'dog': value '2' is outside the encoding \[-1, 0, 1\]"),
    ({"val.csv": HEADER + "b.png,1,yes,0\n"}, ValueError,
     r"val\.csv, line 2, class 'dog': non-numeric value 'yes'"),
    ({"train.csv": HEADER + "a.jpg,1,0\n"}, ValueError,
     r"train\.csv, line 2: 3 cells but the header has 4 columns"),
    ({"train_clean.csv": HEADER + "a.jpg,1,0,0\nb.png,0,1,-1\nsub/c.jpg,1,0,1\n"},
     ValueError, r"train_clean\.csv, line 3, class 'car': value '-1' is outside the encoding "
                 r"\[0, 1\]"),
    ({"train_clean.csv": HEADER + "a.jpg,1,0,0\nb.png,0,1,\nsub/c.jpg,1,0,1\n"},
     ValueError, r"train_clean\.csv, line 3, class 'car': empty cell"),
    ({"train_clean.csv": HEADER + "a.jpg,1,0,0\nsub/c.jpg,1,0,1\nb.png,0,1,0\n"},
     ValueError, r"train_clean\.csv, line 3: image 'sub/c\.jpg' but .*train\.csv, line 3 has "
                 r"'b\.png'"),
    ({"test_clean.csv": HEADER + "a.jpg,1,0,0\n"}, ValueError,
     r"test_clean\.csv has 1 rows but .*test\.csv has 2"),
    ({"test_clean.csv": "image,cat,dog,bus\na.jpg,1,0,0\nsub/c.jpg,0,1,1\n"},
     ValueError, r"header mismatch: .*test_clean\.csv has class 'bus' in column 4"),
    ({"train.csv": HEADER}, ValueError, r"train\.csv has a header but no rows"),
])
def test_malformed_custom_folder_refused(tmp_path, changes, error, message):
    files = {**valid_custom_files(), **changes}
    files = {name: text for name, text in files.items() if text is not None}  # None: delete
    folder = write_custom_fixture(tmp_path, files)
    with pytest.raises(error, match=message):
        load_custom_folder(folder)


def test_custom_missing_image_folder_refused(tmp_path):
    for name, text in valid_custom_files().items():
        (tmp_path / name).write_text(text)
    with pytest.raises(FileNotFoundError, match=r"missing required image folder .*images"):
        load_custom_folder(tmp_path)
