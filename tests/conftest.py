"""Shared fixtures: tiny on-disk datasets (Cole-format and custom CSV folders) and a CLI runner.

Every builder writes into pytest's tmp_path, with images of a few pixels, so a test can train on
"pascal" or "custom" data in about a second on a CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from largeloss.data import formats

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"seconds", "images_per_s"}  # the metrics rows' wall-clock fields

# One intra-op thread: the tiny tensors here gain nothing from more, and on a shared 2-core
# machine a second thread makes each run several times slower (measured: 0.7 s vs 2-6 s for a
# 2-epoch digits run). Subprocesses get the same through OMP_NUM_THREADS.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in TIMING_KEYS} for row in rows]


def assert_same_finished_run(resumed: Path, whole: Path) -> None:
    """Two run folders of one configuration hold the same run: results.json, the metrics rows
    (wall-clock fields aside) and last.pt's weights and method state, exactly. results.json alone
    cannot tell when the best epoch came before an interruption: the final weights, labels and
    estimators must agree too."""
    assert json.loads((resumed / "results.json").read_text()) == \
        json.loads((whole / "results.json").read_text())
    assert without_timing(read_jsonl(resumed / "metrics.jsonl")) == \
        without_timing(read_jsonl(whole / "metrics.jsonl"))
    resumed_last, whole_last = (torch.load(folder / "last.pt", map_location="cpu", weights_only=True)
                                for folder in (resumed, whole))
    for part in ("model", "method"):
        torch.testing.assert_close(resumed_last[part], whole_last[part], rtol=0, atol=0)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_image(path: Path, rng: np.random.RandomState, size: int = 12) -> None:
    """A random RGB image; the suffix (.jpg, .png) picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def random_multi_hot(rng: np.random.RandomState, num_rows: int, num_classes: int,
                     positive_rate: float = 0.15) -> np.ndarray:
    """N×L float32 in {0, 1} with at least one positive per row (as the formatters keep)."""
    labels = (rng.rand(num_rows, num_classes) < positive_rate).astype(np.float32)
    labels[np.arange(num_rows), rng.randint(num_classes, size=num_rows)] = 1.0
    return labels


def build_cole_folder(root: Path, dataset: str = "pascal", num_train: int = 20,
                      num_test: int = 8, num_classes: int | None = None, num_neg: int = 0,
                      seed: int = 0) -> Path:
    """A Cole-format folder (docs/protocol.md) as scripts/prepare_data.py writes it, with tiny JPEGs.

    num_train / num_test: rows of the official train / val phases (the trainer splits the first
    80/20 into train/val and tests on the second). num_neg > 0 keeps that many observed negatives
    per row (for --loss iu). Images go to root/IMAGE_DIRS[dataset], where the trainer looks.
    Returns root (pass it as --data_root).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    num_classes = num_classes or formats.NUM_CLASSES[dataset]
    image_dir = root / formats.IMAGE_DIRS[dataset]
    rng = np.random.RandomState(seed)
    for phase, num_rows in (("train", num_train), ("val", num_test)):
        paths = [f"{phase}_{row:03d}.jpg" for row in range(num_rows)]
        for path in paths:
            write_image(image_dir / path, rng)
        labels = random_multi_hot(rng, num_rows, num_classes)
        np.save(formats.cole_file(root, phase, "images"), np.array(paths, dtype=str))
        np.save(formats.cole_file(root, phase, "labels"), labels)
        np.save(formats.cole_file(root, phase, "labels_obs"),
                formats.make_observed_labels(labels, num_pos=1, num_neg=num_neg))
    return root


def build_custom_folder(root: Path, num_train: int = 10, num_test: int = 4,
                        class_names: tuple[str, ...] = ("cat", "dog", "sea"),
                        train_clean: bool = True, seed: int = 0, num_val: int = 0) -> Path:
    """A custom folder (data/README.md): images/ (PNG and JPEG, one in a subfolder), train.csv
    with mixed 1 / -1 / blank / 0 cells, optional train_clean.csv, test.csv and test_clean.csv,
    and with num_val > 0 a val.csv of that many rows with every entry known (1 / -1).
    Returns root (pass it as --data_root)."""
    root = Path(root)
    rng = np.random.RandomState(seed)
    num_classes = len(class_names)
    header = "image," + ",".join(class_names) + "\n"

    def names(prefix: str, count: int) -> list[str]:
        return [f"{'sub/' if row == 0 else ''}{prefix}_{row:02d}.{'png' if row % 2 else 'jpg'}"
                for row in range(count)]

    def write_csv(name: str, images: list[str], rows: list[list[str]]) -> None:
        (root / name).write_text(header + "".join(
            f"{image},{','.join(cells)}\n" for image, cells in zip(images, rows)))

    for prefix, count in (("train", num_train), ("test", num_test), ("val", num_val)):
        if count == 0:
            continue
        images = names(prefix, count)
        for image in images:
            write_image(root / "images" / image, rng)
        clean = random_multi_hot(rng, count, num_classes, positive_rate=0.4).astype(int)
        clean_rows = [[str(value) for value in row] for row in clean]
        if prefix == "train":
            observed_rows = []
            # One positive, one known negative, the rest blank or 0 (both unknown).
            for row_index, row in enumerate(clean):
                cells = ["" if (row_index + column) % 2 else "0" for column in range(num_classes)]
                cells[int(np.flatnonzero(row)[0])] = "1"
                negatives = np.flatnonzero(row == 0)
                if len(negatives):
                    cells[int(negatives[0])] = "-1"
                observed_rows.append(cells)
            write_csv("train.csv", images, observed_rows)
            if train_clean:
                write_csv("train_clean.csv", images, clean_rows)
        elif prefix == "val":
            write_csv("val.csv", images, [["1" if value else "-1" for value in row] for row in clean])
        else:
            write_csv("test.csv", images, clean_rows)
            write_csv("test_clean.csv", images, clean_rows)
    return root


@pytest.fixture
def cole_folder(tmp_path):
    """Factory: cole_folder(dataset="pascal", **build_cole_folder options) -> folder path."""
    def make(dataset: str = "pascal", **options) -> Path:
        return build_cole_folder(tmp_path / f"data_{dataset}", dataset, **options)
    return make


@pytest.fixture
def custom_folder(tmp_path):
    """Factory: custom_folder(**build_custom_folder options) -> folder path."""
    def make(**options) -> Path:
        return build_custom_folder(tmp_path / "data_custom", **options)
    return make


def cli_command(args: list) -> list[str]:
    """The argv of `python main.py ARGS` with this interpreter."""
    return [sys.executable, str(REPO_ROOT / "main.py"), *map(str, args)]


def _start_cli(args: list) -> subprocess.Popen:
    """Start `python main.py ARGS` (text pipes, one thread); finish it with .communicate().

    Starting several before waiting on any overlaps their interpreter start-up (importing torch
    takes most of a CLI test's time)."""
    return subprocess.Popen(cli_command(args), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ONE_THREAD_ENV})


@pytest.fixture(scope="session")
def start_cli():
    """Factory: start_cli(args) -> Popen of `python main.py ARGS`, not yet waited on."""
    return _start_cli


@pytest.fixture
def run_cli():
    """Run `python main.py ARGS` in a fresh interpreter; returns the CompletedProcess (text)."""
    def run(args: list, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(cli_command(args), cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **ONE_THREAD_ENV})
    return run
