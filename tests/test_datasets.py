"""datasets.py: image decoding, loader errors, evaluation checks of custom data, warnings."""
from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_cole_folder
from largeloss.data import datasets, loading, splits
from largeloss.data.loading import ImageFileDataset
from largeloss.utils.errors import InputError

# ------------------------------------------------------------------------------- image decoding

def write_png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte: H×W grey (colour type 0) or H×W×3 RGB (type 2).
    Pillow writes 16-bit grey itself but no 16-bit RGB, so both go through this writer."""
    height, width = values.shape[:2]
    colour_type = 0 if values.ndim == 2 else 2
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_is_scaled_to_8_bit_not_clipped_to_white(tmp_path, channels):
    """convert("RGB") clipped 16-bit grey to 255 (82 % white pixels on a real scan)."""
    shape = (6, 6) if channels == 1 else (6, 6, 3)
    values = np.random.RandomState(0).randint(0, 65536, shape).astype(np.uint16)
    write_png16(tmp_path / "scan.png", values)
    image, index = ImageFileDataset(tmp_path, ["scan.png"], image_size=6)[0]
    expected = values >> 8
    expected = np.repeat(expected[None], 3, axis=0) if channels == 1 else expected.transpose(2, 0, 1)
    assert index == 0 and image.dtype == torch.uint8
    np.testing.assert_array_equal(image.numpy(), expected)


@pytest.mark.parametrize("dtype", [np.uint16, ">u2", np.int32])  # modes I;16, I;16B, I
def test_16_bit_grey_modes_scale_by_256(dtype):
    values = (np.arange(12).reshape(3, 4) * 5000 + 255).astype(dtype)
    rgb = np.asarray(loading.to_rgb(Image.fromarray(values)))
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(rgb[..., 1], values.astype(np.int64) >> 8)


@pytest.mark.parametrize("values,message", [
    (np.full((2, 2), 70000, dtype=np.int32), "outside the 16-bit range"),
    (np.full((2, 2), 0.5, dtype=np.float32), "floating-point"),
])
def test_images_without_a_known_range_are_refused_naming_the_file(tmp_path, values, message):
    Image.fromarray(values).save(tmp_path / "odd.tif")
    with pytest.raises(InputError, match=message) as error:
        ImageFileDataset(tmp_path, ["odd.tif"], image_size=2)[0]
    assert str(tmp_path / "odd.tif") in str(error.value)


# ------------------------------------------------------------------------------- loader errors

def truncated_jpeg_folder(folder: Path) -> Path:
    """good.jpg and bad.jpg, the second cut in half (PIL: 'image file is truncated')."""
    pixels = np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "good.jpg")
    data = (folder / "good.jpg").read_bytes()
    (folder / "bad.jpg").write_bytes(data[:len(data) // 2])
    return folder


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_image_in_a_worker_is_a_one_line_input_error_naming_it(tmp_path, num_workers):
    """A worker's InputError used to reach the main process as 'Caught InputError in DataLoader
    worker process 0' plus a traceback, which main.py printed whole."""
    images = ImageFileDataset(truncated_jpeg_folder(tmp_path), ["good.jpg", "bad.jpg"], 8)
    loader = loading.make_loader(images, batch_size=2, shuffle=False, num_workers=num_workers,
                                  seed=0, pin_memory=False)
    with pytest.raises(InputError) as error:
        for _ in loader:
            pass
    message = str(error.value)
    assert message.startswith(f"cannot read image {tmp_path / 'bad.jpg'} (row 1): ")
    assert "\n" not in message and "worker" not in message


def test_cache_images_reports_an_unreadable_image_in_one_line(tmp_path):
    images = ImageFileDataset(truncated_jpeg_folder(tmp_path), ["good.jpg", "bad.jpg"], 8)
    with pytest.raises(InputError, match=r"^cannot read image .*bad\.jpg \(row 1\): [^\n]*$"):
        loading.cache_images(images, num_workers=1)


@pytest.mark.filterwarnings("ignore:.*no observed positive")
def test_cli_reports_a_corrupt_image_read_by_a_worker_in_one_line(tmp_path, custom_folder, capsys):
    from largeloss import cli as main  # the entry point, in process: what a user sees on stderr
    data_root = custom_folder(train_clean=True)
    bad = data_root / "images" / "train_02.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    code = main.main(["--dataset", "custom", "--data_root", str(data_root), "--device", "cpu",
                      "--num_workers", "1", "--image_size", "16", "--arch", "small_cnn",
                      "--weights", "none", "--epochs", "1", "--out_dir", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read image {bad} (row ")
    assert (tmp_path / "run/error.txt").read_text().count("\n") == 0


@pytest.mark.parametrize("size", [12, 16])  # PIL: > limit warns, > 2 × limit raises
def test_decompression_bomb_sized_image_is_a_one_line_input_error(tmp_path, monkeypatch, size):
    Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError) as error:
        ImageFileDataset(tmp_path, ["huge.png"], image_size=8)[0]
    message = str(error.value)
    assert message.startswith(f"cannot read image {tmp_path / 'huge.png'} (row 0): ")
    assert f"{size * size} pixels" in message and "\n" not in message


# ------------------------------------------------------------------- evaluation splits (custom)

def split_of(observed, true_labels=None) -> splits.Split:
    observed = np.array(observed, dtype=np.int8)
    images = loading.TensorImageDataset(torch.zeros((len(observed), 3, 2, 2), dtype=torch.uint8))
    return splits.Split(images, observed, None if true_labels is None
                          else np.array(true_labels, dtype=np.uint8))


CLASSES = ["cat", "dog", "sea"]


def test_evaluation_problems_of_a_positives_only_split():
    """Observed 0/1 only (0 = unknown): every scored entry is a positive, every AP is 1."""
    problems = splits.evaluation_problems(split_of([[1, 0, 0], [0, 1, 1]]), CLASSES)
    assert problems == ["no known negative at all: every labelled entry is a positive, so every "
                        "class's AP is 1 whatever the scores"]


def test_evaluation_problems_name_unmeasurable_and_thin_classes():
    observed = [[1, -1, -1, 1]] * 6 + [[-1, -1, -1, 0]] * 6 + [[1, 1, 0, 1]]
    problems = splits.evaluation_problems(split_of(observed), ["cat", "dog", "sea", "owl"])
    assert problems == [  # cat: 7 positives, 6 negatives, measured
        "1 of 4 classes have no positive (AP 0 whatever the scores): 'sea'",
        "1 of 4 classes have no known negative (AP 1 whatever the scores): 'owl'",
        "1 of 4 classes have fewer than 5 known positives or negatives (a noisy AP): 'dog'"]


def test_evaluation_problems_use_clean_labels_and_truncate_long_class_lists():
    true_labels = np.zeros((10, 13), dtype=np.uint8)
    true_labels[:5, 0] = 1  # class c0: 5 positives, 5 negatives; c1 … c12: no positive
    names = [f"c{index}" for index in range(13)]
    problems = splits.evaluation_problems(split_of(np.zeros((10, 13)), true_labels), names)
    assert problems == ["12 of 13 classes have no positive (AP 0 whatever the scores): 'c1', 'c2', "
                        "'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9', 'c10' and 2 more",
                        "only 1 of 13 classes can be measured, so the mAP (the others count AP 0 "
                        "or 1 whatever the scores) barely moves with the model: choosing the best "
                        "epoch by it is meaningless here"]
    assert splits.evaluation_problems(split_of(np.zeros((10, 1)), true_labels[:, :1]),
                                        ["c0"]) == []


def test_custom_val_carved_from_positive_only_train_labels_is_refused(custom_folder):
    """No val.csv, no train_clean.csv: val's scored entries were train.csv's few observed ones, and
    its mAP a constant (best epoch always 1)."""
    data_root = custom_folder(train_clean=False)
    with pytest.raises(InputError) as error:
        datasets.load_data("custom", str(data_root), None, 8)
    message = str(error.value)
    assert message.startswith(f"{data_root / 'train.csv'}: the val mAP would be meaningless")
    assert "add train_clean.csv, or a val.csv with known negatives as -1" in message
    assert "\n" not in message


def test_custom_test_csv_written_with_0_and_1_is_refused(custom_folder):
    """test.csv with 0/1 cells and no test_clean.csv: 0 is 'unknown', so test mAP was 100.00."""
    data_root = custom_folder(train_clean=True)
    (data_root / "test_clean.csv").unlink()
    with pytest.raises(InputError) as error:
        datasets.load_data("custom", str(data_root), None, 8)
    message = str(error.value)
    assert message.startswith(f"{data_root / 'test.csv'}: the test mAP would be meaningless, no "
                              f"class has both a positive and a known negative (no known negative")
    assert "write known negatives as -1 in test.csv (0 and blank mean unknown) or add " \
           "test_clean.csv" in message


@pytest.mark.parametrize("options,val_source", [
    ({"train_clean": True}, "train_clean.csv"),              # val carved from train, clean labels
    ({"train_clean": False, "num_val": 12}, "val.csv"),      # a val.csv with every entry known
])
def test_custom_evaluation_problems_become_notes(custom_folder, options, val_source):
    data_root = custom_folder(**options)
    data = datasets.load_data("custom", str(data_root), None, 8)
    assert any(note.startswith(f"{data_root / val_source}: val mAP: ") for note in data.notes)
    assert f"{data_root / 'test_clean.csv'}: test mAP: 3 of 3 classes have fewer than 5 known " \
           f"positives or negatives (a noisy AP): 'cat', 'dog', 'sea'" in data.notes


# ------------------------------------------------------------------------------------- warnings

def test_classes_without_observed_positive_are_one_warning_listing_them():
    observed = np.zeros((4, 13), dtype=np.int8)
    observed[:, 0] = 1  # c0 has positives; c1 … c12 none
    split = split_of(observed, np.clip(observed, 0, 1))
    data = splits.ExperimentData(split, split, split, [f"c{index}" for index in range(13)])
    with pytest.warns(UserWarning) as caught:
        splits.warn_classes_without_positives(data)
    assert [str(warning.message) for warning in caught] == [
        "no observed positive in the training labels for 12 of 13 classes: 'c1', 'c2', 'c3', "
        "'c4', 'c5', 'c6', 'c7', 'c8', 'c9', 'c10' and 2 more (training gets no positive signal "
        "for them)"]


def test_custom_class_without_observed_positive_is_warned_once(custom_folder):
    """load_custom_folder warned (listing the classes) and check_supervision (now warn_classes_without_positives) again per class."""
    data_root = custom_folder(train_clean=True)
    train_csv = data_root / "train.csv"
    header, *rows = train_csv.read_text().splitlines()
    rows = [",".join(cells[:-1] + ["" if cells[-1] == "1" else cells[-1]])
            for cells in (row.split(",") for row in rows)]  # 'sea' loses its observed positives
    train_csv.write_text("\n".join([header, *rows]) + "\n")
    with pytest.warns(UserWarning) as caught:
        data = datasets.load_data("custom", str(data_root), None, 8)
        splits.warn_classes_without_positives(data)
    assert [str(warning.message) for warning in caught] == [
        "no observed positive in the training labels for 1 of 3 classes: 'sea' (training gets no "
        "positive signal for them)"]


def test_too_many_workers_is_said_once_not_per_loader():
    workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) + 1
    images = loading.TensorImageDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loading.warn_if_too_many_workers(workers)
        for shuffle in (True, False):
            assert sum(len(ids) for _, ids in loading.make_loader(images, 2, shuffle, workers, 0,
                                                                   False)) == 4
    messages = [str(warning.message) for warning in caught]
    assert sum(f"--num_workers {workers} exceeds" in message for message in messages) == 1
    assert not any("This DataLoader will create" in message for message in messages)


@pytest.mark.parametrize("dataset", ["pascal", "coco", "nuswide", "cub"])
def test_prepared_paper_folders_have_no_evaluation_image_among_the_training_images(tmp_path,
                                                                                   dataset):
    """By path and by content hash (splits.split_overlap), as a training run checks."""
    root = build_cole_folder(tmp_path / dataset, dataset)
    data = datasets.load_data(dataset, str(root), None, 16, 0)
    assert splits.split_overlap(data) == []
