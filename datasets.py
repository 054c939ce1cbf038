"""Datasets: the embedded digits set, Cole-format folders, custom CSV folders; loaders and the
on-device image pipeline.

Workers only decode and resize to uint8 (3×S×S); flip and normalisation run on the training
device (`DevicePreprocess`). Labels never travel through the workers: every dataset yields
`(image_uint8, sample_index)` and the main process looks the labels up by index, so LL-Cp relabels
and ROLE estimates survive persistent workers. An unreadable image stops the run with a one-line
InputError naming the file, also when a worker read it (`ImageLoader`).
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms.v2 import functional as TF

import formats
import openimages
from distributed import SINGLE_PROCESS, EvalBatches, TrainBatches, World
from errors import InputError
from formats import LabelledSplit
from sparse_labels import (SparseLabels, SparseLabelStore, is_long_csv, load_sparse_labels,
                           read_class_names, read_long_csv)

@dataclass(frozen=True)
class Split:
    """One split, labels held by the main process.

    images: a Dataset yielding (uint8 3×S×S tensor, sample index).
    observed: N×L int8 in {-1, 0, +1}; training supervision, or the known entries of an
        evaluation split that has no clean labels. None when the labels are `sparse`.
    true_labels: N×L uint8 in {0, 1}, or None when unknown.
    boxes: per row a list of (class_index, x0, y0, x1, y1) in [0, 1] image coordinates, or None.
    sparse: the observed labels in CSR form instead of `observed`, for label sets too large for an
        N×L matrix (OpenImages V3); evaluated over each class's labelled entries only.
    train_label_counts: with `sparse`, the L labelled training entries per class (positives +
        negatives), by which the sparse evaluation groups the classes into G1–G5.
    """
    images: Dataset
    observed: np.ndarray | None
    true_labels: np.ndarray | None
    boxes: list | None = None
    sparse: SparseLabels | None = None
    train_label_counts: np.ndarray | None = None

    def __len__(self) -> int:
        return self.sparse.num_images if self.observed is None else len(self.observed)

    def eval_targets(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(targets N×L in {0,1}, known-mask N×L bool or None) for the metric (dense splits)."""
        if self.true_labels is not None:
            return self.true_labels, None
        return (self.observed == 1).astype(np.uint8), self.observed != 0


@dataclass(frozen=True)
class ExperimentData:
    """The three splits; notes: what an evaluation split cannot measure well (evaluation_problems),
    printed at the start of a run and kept in results.json."""
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --- image datasets (run in the workers) ---------------------------------------------------------

class ImageFileDataset(Dataset):
    """Decodes image files to RGB, resizes to (S, S) (aspect not kept, no crop, SPEC §2), uint8."""

    def __init__(self, image_dir: Path, image_paths: list[str], image_size: int):
        self.image_dir = Path(image_dir)
        self.image_paths = list(image_paths)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.image_dir / self.image_paths[index]
        try:
            with warnings.catch_warnings():  # PIL warns above MAX_IMAGE_PIXELS, raises above 2×
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image = to_rgb(image).resize((self.image_size, self.image_size),
                                                 Image.BILINEAR)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise InputError(f"cannot read image {path} (row {index}): {error} Shrink the file: "
                             f"the model sees it at {self.image_size}×{self.image_size} "
                             f"pixels") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise InputError(f"cannot read image {path} (row {index}): {error}") from None
        return TF.pil_to_tensor(image), index


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image.

    16-bit greyscale (modes I;16, I;16B, I;16L, and I, as Pillow opens 16-bit PNGs and TIFFs) keeps
    its high byte (value >> 8), as Pillow itself reduces 16-bit RGB: convert("RGB") would clip
    every value above 255 to white. Raises ValueError for values outside 0..65535 and for float
    pixels (mode F), whose range is unknown.
    """
    if image.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no known range; save the image "
                         "with 8 or 16 bits per channel")
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"pixel values {values.min()}..{values.max()} (mode {image.mode}) are "
                             f"outside the 16-bit range 0..65535")
        image = Image.fromarray((values >> 8).astype(np.uint8))
    return image.convert("RGB")


class TensorImageDataset(Dataset):
    """Images already in memory: N×3×S×S uint8."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], index


def cache_images(images: Dataset, num_workers: int, batch_size: int = 64) -> TensorImageDataset:
    """Decode and resize every image once (in `num_workers` processes) into one N×3×S×S uint8
    tensor, so that later epochs read memory instead of JPEGs. The pixels are the same, so the
    maths is too. Costs N·3·S² bytes of RAM: Pascal's 5,717 training images at 448 px take 3.4 GB,
    COCO's 82,081 take 49 GB (too many)."""
    if isinstance(images, TensorImageDataset) or len(images) == 0:
        return images
    first_image, _ = images[0]
    cached = torch.empty((len(images), *first_image.shape), dtype=first_image.dtype)
    for batch, sample_ids in ImageLoader(images, batch_size=batch_size, num_workers=num_workers):
        cached[sample_ids] = batch
    return TensorImageDataset(cached)


# --- the embedded digits dataset ----------------------------------------------------------------

DIGIT_CELL = 16          # a digit is drawn in a 16×16 cell of a 3×3 grid on a 48×48 canvas
DIGIT_GRID = 3
DIGIT_COUNTS = (1, 2, 3, 4)
DIGIT_COUNT_PROBS = (0.15, 0.35, 0.3, 0.2)
DIGITS_SEED = 2022       # the dataset is fixed; --seed changes the run, not the data


def make_digit_canvases(source_images: np.ndarray, source_labels: np.ndarray, num_images: int,
                        rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, list]:
    """Place 1–4 digits of distinct classes in random cells of a 3×3 grid.

    Args:
        source_images: M×8×8 in [0, 16] (scikit-learn digits); source_labels: M.
    Returns:
        images N×3×48×48 uint8 (coloured digits on a noisy dark background), labels N×10 uint8,
        boxes: per image a list of (class, x0, y0, x1, y1) in [0, 1] coordinates.
    """
    size = DIGIT_CELL * DIGIT_GRID
    images = np.zeros((num_images, 3, size, size), dtype=np.float32)
    labels = np.zeros((num_images, 10), dtype=np.uint8)
    boxes = []
    by_class = [np.nonzero(source_labels == digit)[0] for digit in range(10)]
    for image_index in range(num_images):
        count = rng.choice(DIGIT_COUNTS, p=DIGIT_COUNT_PROBS)
        classes = rng.choice(10, size=count, replace=False)
        cells = rng.choice(DIGIT_GRID * DIGIT_GRID, size=count, replace=False)
        image_boxes = []
        for digit, cell in zip(classes, cells):
            glyph = source_images[rng.choice(by_class[digit])] / 16.0
            glyph = np.kron(glyph, np.ones((2, 2)))                      # 16×16
            colour = rng.uniform(0.5, 1.0, size=3)
            top, left = (cell // DIGIT_GRID) * DIGIT_CELL, (cell % DIGIT_GRID) * DIGIT_CELL
            images[image_index, :, top:top + DIGIT_CELL, left:left + DIGIT_CELL] = \
                np.maximum(images[image_index, :, top:top + DIGIT_CELL, left:left + DIGIT_CELL],
                           colour[:, None, None] * glyph[None])
            labels[image_index, digit] = 1
            image_boxes.append((int(digit), left / size, top / size,
                                (left + DIGIT_CELL) / size, (top + DIGIT_CELL) / size))
        boxes.append(image_boxes)
    images += rng.uniform(0, 0.15, size=images.shape)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels, boxes


def load_digits_data(train_size: int, image_size: int) -> ExperimentData:
    """The embedded dataset: scikit-learn's bundled digits (no download), deterministic.

    Train, val and test canvases draw from disjoint pools (60/20/20 %) of the 1,797 source digits.
    Training observed labels keep one positive per image (SPEC §2 procedure).
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.RandomState(DIGITS_SEED)
    pools = np.split(rng.permutation(len(digits.target)), [1078, 1437])
    sizes = (train_size, max(train_size // 4, 50), max(train_size // 2, 100))
    splits = []
    for pool, num_images in zip(pools, sizes):
        images, labels, boxes = make_digit_canvases(digits.images[pool], digits.target[pool],
                                                    num_images, rng)
        images = torch.from_numpy(images)
        if image_size != images.shape[-1]:
            images = TF.resize(images, [image_size, image_size], antialias=True)
        splits.append((TensorImageDataset(images), labels, boxes))
    (train_images, train_labels, train_boxes), val, test = splits
    observed = formats.make_observed_labels(train_labels).astype(np.int8)
    return ExperimentData(
        train=Split(train_images, observed, train_labels, train_boxes),
        val=Split(val[0], val[1].astype(np.int8), val[1], val[2]),
        test=Split(test[0], test[1].astype(np.int8), test[1], test[2]),
        class_names=[str(digit) for digit in range(10)])


# --- folders on disk ----------------------------------------------------------------------------

def load_cole_data(dataset: str, data_root: Path, image_dir: Path | None,
                   image_size: int) -> ExperimentData:
    """A paper dataset in Cole format (SPEC §2): official train split 80/20 into train/val with
    RandomState(1200), official val = test; model selection on clean val labels."""
    if not data_root.is_dir():
        raise InputError(f"dataset folder {data_root} does not exist; prepare it with "
                         f"`python scripts/prepare_data.py --dataset {dataset} --raw_dir RAW "
                         f"--out_dir {data_root}` (see data/README.md)")
    try:
        phases = formats.load_cole_folder(data_root)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(str(error)) from None
    image_dir = image_dir or data_root / formats.IMAGE_DIRS[dataset]
    official_train, official_val = phases["train"], phases["val"]
    class_names = formats.class_names_for(data_root, dataset, official_train.observed.shape[1])
    train_rows, val_rows = formats.train_val_split(len(official_train.observed))
    train_boxes, test_boxes = (formats.load_boxes(data_root, phase) for phase in ("train", "val"))

    def split_of(labelled: LabelledSplit, rows: np.ndarray | None, boxes, clean_supervision: bool):
        rows = np.arange(len(labelled.observed)) if rows is None else rows
        true = labelled.true_labels[rows] if labelled.true_labels is not None else None
        observed = true.astype(np.int8) if clean_supervision else labelled.observed[rows]
        return Split(ImageFileDataset(image_dir, [labelled.image_paths[r] for r in rows], image_size),
                     observed, true, normalised_boxes(boxes, rows))

    return ExperimentData(
        train=split_of(official_train, train_rows, train_boxes, clean_supervision=False),
        val=split_of(official_train, val_rows, train_boxes, clean_supervision=True),
        test=split_of(official_val, None, test_boxes, clean_supervision=True),
        class_names=class_names)


def load_custom_data(data_root: Path, image_dir: Path | None, image_size: int) -> ExperimentData:
    """The user's own data (data/README.md): CSV files with observed labels, optional clean ones;
    or long CSVs (image,class,label) with class_names.txt, held sparse."""
    if not data_root.is_dir():
        raise InputError(f"dataset folder {data_root} does not exist (see data/README.md, "
                         f"'Your own data')")
    if (data_root / "train.csv").is_file() and is_long_csv(data_root / "train.csv"):
        return load_long_custom_data(data_root, image_dir or data_root / "images", image_size)
    try:
        class_names, splits = formats.load_custom_folder(data_root)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(str(error)) from None
    image_dir = image_dir or data_root / "images"

    def split_of(labelled: LabelledSplit, rows: np.ndarray):
        true = labelled.true_labels[rows] if labelled.true_labels is not None else None
        return Split(ImageFileDataset(image_dir, [labelled.image_paths[r] for r in rows], image_size),
                     labelled.observed[rows], true)

    train = splits["train"]
    if "val" in splits:
        train_rows, val_rows = np.arange(len(train.observed)), None
        val = split_of(splits["val"], np.arange(len(splits["val"].observed)))
    else:
        train_rows, val_rows = formats.train_val_split(len(train.observed))
        val = split_of(train, val_rows)
    test = split_of(splits["test"], np.arange(len(splits["test"].observed)))
    notes = []
    for name, split in (("val", val), ("test", test)):
        notes += check_custom_evaluation(data_root, name, split, class_names, "val" in splits)
    return ExperimentData(train=split_of(train, train_rows), val=val, test=test,
                          class_names=class_names, notes=notes)


def load_long_custom_data(data_root: Path, image_dir: Path, image_size: int) -> ExperimentData:
    """A custom folder of long CSVs (data/README.md, "Many classes"): class_names.txt and
    train.csv, val.csv, test.csv of `image,class,label` rows, held sparse like OpenImages (every
    split partially labelled: evaluation over the labelled entries of each class)."""
    try:
        class_names = read_class_names(data_root / "class_names.txt")
        labels = {}
        for split in ("train", "val", "test"):
            path = data_root / f"{split}.csv"
            if not path.is_file():
                raise ValueError(f"{path} is missing: a folder of long CSVs needs train.csv, "
                                 f"val.csv and test.csv (and class_names.txt)")
            labels[split] = read_long_csv(path, class_names)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(str(error)) from None
    positives, negatives = labels["train"].labelled_per_class()

    def split_of(split: str) -> Split:
        images = ImageFileDataset(image_dir, labels[split].image_ids.tolist(), image_size)
        return Split(images, None, None, sparse=labels[split],
                     train_label_counts=positives + negatives)

    return ExperimentData(train=split_of("train"), val=split_of("val"), test=split_of("test"),
                          class_names=class_names)


def load_openimages_data(data_root: Path, image_dir: Path | None,
                         image_size: int) -> ExperimentData:
    """OpenImages V3 as `scripts/prepare_data.py --dataset openimages` writes it (openimages.py):
    train = supervision, validation = model selection, test = test, every split with real partial
    labels (±1 verified, everything else unknown) held sparse in `Split.sparse` (no N×L matrix).
    Images are IMAGE_DIR/<split>/<ImageID>.jpg; IMAGE_DIR is --image_dir, else the one recorded in
    metadata.json at preparation, else DATA_ROOT/images."""
    if not data_root.is_dir():
        raise InputError(f"dataset folder {data_root} does not exist; prepare it with `python "
                         f"scripts/prepare_data.py --dataset openimages --raw_dir RAW --out_dir "
                         f"{data_root}` (see data/README.md)")
    try:
        labels = {split: load_sparse_labels(openimages.labels_file(data_root, split))
                  for split in openimages.SPLITS}
    except (FileNotFoundError, ValueError) as error:
        raise InputError(str(error)) from None
    class_mids = labels["train"].class_names
    for split, split_labels in labels.items():
        if not np.array_equal(split_labels.class_names, class_mids):
            raise InputError(f"{openimages.labels_file(data_root, split)} lists other classes than "
                             f"train_labels.npz; prepare the folder again in one run")
    image_dir = image_dir or openimages_image_dir(data_root)
    positives, negatives = labels["train"].labelled_per_class()

    def split_of(split: str) -> Split:
        images = ImageFileDataset(image_dir / split, [f"{image_id}.jpg" for image_id in
                                                      labels[split].image_ids.tolist()], image_size)
        return Split(images, None, None, sparse=labels[split],
                     train_label_counts=positives + negatives)

    names_file = data_root / openimages.CLASS_NAMES_FILE
    class_names = (names_file.read_text(encoding="utf-8").splitlines() if names_file.is_file()
                   else class_mids.tolist())
    if len(class_names) != len(class_mids):
        raise InputError(f"{names_file} has {len(class_names)} lines for {len(class_mids)} classes")
    return ExperimentData(train=split_of("train"), val=split_of("validation"),
                          test=split_of("test"), class_names=class_names)


def openimages_image_dir(data_root: Path) -> Path:
    """The image folder recorded in metadata.json when it still exists, else DATA_ROOT/images."""
    metadata_file = data_root / openimages.METADATA_FILE
    if metadata_file.is_file():
        recorded = json.loads(metadata_file.read_text()).get("report", {}).get("image_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return data_root / "images"


def observed_label_store(split: Split, device: torch.device):
    """What a method is built from: the N×L observed matrix, or for sparse labels a ready
    SparseLabelStore on `device` (LL-Cp's relabels are kept as sparse additions)."""
    if split.sparse is None:
        return split.observed
    return SparseLabelStore.from_labels(split.sparse, device)


MIN_LABELLED_PER_CLASS = 5  # known positives and known negatives each; fewer make a class's AP noise


def known_label_counts(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives), each L counts of the entries the metric scores (`eval_targets`)."""
    targets, known = split.eval_targets()
    known = np.ones(targets.shape, dtype=bool) if known is None else known
    return (known & (targets == 1)).sum(axis=0), (known & (targets == 0)).sum(axis=0)


def listed(names: list[str], shown: int = 10) -> str:
    """"'a', 'b' and 3 more": the first `shown` names and a count of the rest."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(name) for name in names[:shown]) + more


def evaluation_problems(split: Split, class_names: list[str]) -> list[str]:
    """What the mAP of an evaluation split cannot measure, one sentence per problem ([] if none).

    Only known entries are scored (clean labels: all; otherwise observed ±1), so a class whose
    known entries hold no positive has AP 0 and one with no known negative AP 1, whatever the
    scores; fewer than MIN_LABELLED_PER_CLASS of either make its AP noise.
    """
    if len(split) == 0:
        return ["the split has no rows"]
    positives, negatives = known_label_counts(split)
    if negatives.sum() == 0:
        return ["no known negative at all: every labelled entry is a positive, so every class's "
                "AP is 1 whatever the scores"]
    problems = []
    names = np.array(class_names, dtype=object)
    for mask, what in (
            (positives == 0, "no positive (AP 0 whatever the scores)"),
            ((positives > 0) & (negatives == 0), "no known negative (AP 1 whatever the scores)"),
            ((positives > 0) & (negatives > 0)
             & (np.minimum(positives, negatives) < MIN_LABELLED_PER_CLASS),
             f"fewer than {MIN_LABELLED_PER_CLASS} known positives or negatives (a noisy AP)")):
        if mask.any():
            problems.append(f"{int(mask.sum())} of {len(names)} classes have {what}: "
                            f"{listed(list(names[mask]))}")
    return problems


def check_custom_evaluation(data_root: Path, name: str, split: Split, class_names: list[str],
                            has_val_csv: bool) -> list[str]:
    """Refuse a custom val/test split whose mAP would measure nothing (no class has both a
    positive and a known negative); return its other evaluation problems as notes."""
    carved = name == "val" and not has_val_csv  # then val rows come from train.csv
    if split.true_labels is not None:
        source = data_root / ("train_clean.csv" if carved else f"{name}_clean.csv")
        fix = f"the {name} images need positives and negatives of the classes"
    elif carved:
        source = data_root / "train.csv"
        fix = ("val is carved out of train.csv (there is no val.csv) and uses train_clean.csv "
               "when present: add train_clean.csv, or a val.csv with known negatives as -1 (or "
               "val_clean.csv)")
    else:
        source = data_root / f"{name}.csv"
        fix = (f"write known negatives as -1 in {name}.csv (0 and blank mean unknown) or add "
               f"{name}_clean.csv")
    problems = evaluation_problems(split, class_names)
    positives, negatives = known_label_counts(split)
    if not ((positives > 0) & (negatives > 0)).any():
        raise InputError(f"{source}: the {name} mAP would be meaningless, no class has both a "
                         f"positive and a known negative ({'; '.join(problems)}); {fix} (see "
                         f"data/README.md)")
    return [f"{source}: {name} mAP: {problem}" for problem in problems]


def normalised_boxes(boxes: list[dict] | None, rows: np.ndarray) -> list | None:
    """Boxes of the chosen rows in [0, 1] coordinates (the image is resized without keeping aspect)."""
    if boxes is None:
        return None
    selected = []
    for row in rows:
        width, height = boxes[row]["width"], boxes[row]["height"]
        selected.append([(int(c), x0 / width, y0 / height, x1 / width, y1 / height)
                         for c, x0, y0, x1, y1 in boxes[row]["boxes"]])
    return selected


def load_data(dataset: str, data_root: str, image_dir: str | None, image_size: int,
              digits_train_size: int = 1000) -> ExperimentData:
    """Every split of `dataset`, validated; see the loaders above."""
    root = Path(data_root)
    image_dir = Path(image_dir) if image_dir else None
    if dataset == "digits":
        return load_digits_data(digits_train_size, image_size)
    if dataset == "custom":
        return load_custom_data(root, image_dir, image_size)
    if dataset == "features":
        raise InputError("--dataset features needs --train_mode linear")
    if dataset == "openimages":
        return load_openimages_data(root, image_dir, image_size)
    return load_cole_data(dataset, root, image_dir, image_size)


def mean_label_count(data: ExperimentData) -> float:
    """Expected positives per image from the clean training labels, else from clean val labels;
    with sparse (real partial) labels, the observed positives per training image (a lower bound)."""
    if data.train.sparse is not None:
        return float((data.train.sparse.values == 1).sum() / max(len(data.train), 1))
    for split in (data.train, data.val):
        if split.true_labels is not None:
            return float(split.true_labels.sum(axis=1).mean())
    raise InputError("--expected_num_pos is needed: no clean labels to estimate it from")


def warn_classes_without_positives(data: ExperimentData) -> None:
    """A class that no training image shows as positive cannot be learnt: say so, once."""
    positives = (data.train.sparse.labelled_per_class()[0] if data.train.sparse is not None
                 else (data.train.observed == 1).sum(axis=0))
    without_positive = [name for name, count in zip(data.class_names, positives) if count == 0]
    if without_positive:  # one warning, whatever the number of classes
        warnings.warn(f"no observed positive in the training labels for {len(without_positive)} "
                      f"of {data.num_classes} classes: {listed(without_positive)} (training gets "
                      f"no positive signal for them)", stacklevel=2)


# --- loaders and the on-device pipeline ---------------------------------------------------------

@dataclass(frozen=True)
class ReadFailure:
    """An InputError raised in a loader worker, passed on as data: raised there, DataLoader would
    re-raise it in the main process inside a worker traceback ("Caught InputError in DataLoader
    worker process 0. Original Traceback ...") instead of its one-line message."""
    message: str


class _FailuresAsData(Dataset):
    """`images`, yielding (ReadFailure, index) where reading the item raises InputError."""

    def __init__(self, images: Dataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            return self.images[index]
        except InputError as error:
            return ReadFailure(str(error)), index


def collate_or_fail(batch: list):
    """default_collate, or the batch's first ReadFailure."""
    failures = [image for image, _ in batch if isinstance(image, ReadFailure)]
    return failures[0] if failures else default_collate(batch)


def iterate(batches):
    """The batches of an ImageLoader (or any loader built with _FailuresAsData and
    collate_or_fail), raising a worker's ReadFailure here as InputError with its message."""
    for batch in batches:
        if isinstance(batch, ReadFailure):
            raise InputError(batch.message)
        yield batch


class ImageLoader(DataLoader):
    """A DataLoader of (uint8 images, sample indices) whose unreadable image stops iteration with
    the dataset's one-line InputError (file and reason) in the main process, with or without
    workers. Options as DataLoader's; `loader.dataset.images` is the dataset passed in."""

    def __init__(self, images: Dataset, **options):
        with torch_worker_count_warning_off():
            super().__init__(_FailuresAsData(images), collate_fn=collate_or_fail, **options)

    def __iter__(self):
        with torch_worker_count_warning_off():
            batches = super().__iter__()
        return iterate(batches)


@contextmanager
def torch_worker_count_warning_off():
    """DataLoader warns about too many workers at construction and again at the first iteration,
    for every loader; `warn_if_too_many_workers` says it once per run instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        yield


def warn_if_too_many_workers(num_workers: int) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus and num_workers > cpus:
        warnings.warn(f"--num_workers {num_workers} exceeds the {cpus} CPUs this process may use; "
                      f"loading may slow down (each loader starts that many workers)")


def make_loader(images: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                pin_memory: bool, world: World = SINGLE_PROCESS) -> ImageLoader:
    """A loader of (uint8 images, sample indices), this process's share of them.

    shuffle: training batches (distributed.TrainBatches): call `loader.batch_sampler.set_epoch(t)`
        so the order is a pure function of (seed, epoch) whatever the number of processes, which
        makes --resume exact; `batch_size` is the global batch. Otherwise evaluation batches of
        this process's block of the split (distributed.EvalBatches).
    """
    batches = (TrainBatches(len(images), batch_size, seed, world) if shuffle
               else EvalBatches(len(images), batch_size, world))
    return ImageLoader(images, batch_sampler=batches, num_workers=num_workers,
                       pin_memory=pin_memory, persistent_workers=num_workers > 0,
                       prefetch_factor=4 if num_workers > 0 else None)


class DevicePreprocess:
    """uint8 B×3×S×S on the device → normalised float, with a random horizontal flip (p = 0.5)
    per image when training. The flip draws from the device's torch generator (seeded, saved in
    checkpoints): `random_draws(m)` for a whole global batch, of which each process passes its
    shard as `draws`, so the flips do not depend on the number of processes."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool = False):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def random_draws(self, num_images: int) -> Tensor:
        """m uniform draws, one per image of a global batch (flip when < 0.5)."""
        return torch.rand(num_images, device=self.mean.device)

    def __call__(self, images: Tensor, train: bool, draws: Tensor | None = None) -> Tensor:
        images = images.float()
        if train:
            draws = self.random_draws(images.shape[0]) if draws is None else draws
            flip = (draws < 0.5).view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(3), images)
        images = (images - self.mean) / self.std
        return images.contiguous(memory_format=self.memory_format)
