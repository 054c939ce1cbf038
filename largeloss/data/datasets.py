"""Datasets: each `--dataset` (digits, the Cole-format paper folders, custom CSV folders, OpenImages)
loaded into an `ExperimentData` of three splits (`load_data`), and the checks of what its evaluation
splits can measure. Images are read by loading.py; the digits generator is digits.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from largeloss.data import formats, openimages
from largeloss.data.digits import load_digits_data
from largeloss.data.formats import LabelledSplit
from largeloss.data.loading import ImageFileDataset
from largeloss.data.sparse_labels import is_long_csv, load_sparse_labels, read_class_names, read_long_csv
from largeloss.data.splits import ExperimentData, Split, evaluation_problems, known_label_counts
from largeloss.utils.errors import InputError

# --- image datasets (run in the workers) ---------------------------------------------------------


# --- the embedded digits dataset ----------------------------------------------------------------


# --- folders on disk ----------------------------------------------------------------------------

def load_cole_data(dataset: str, data_root: Path, image_dir: Path | None,
                   image_size: int) -> ExperimentData:
    """A paper dataset in Cole format (docs/protocol.md): official train split 80/20 into train/val with
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
        paths = [labelled.image_paths[r] for r in rows]
        return Split(ImageFileDataset(image_dir, paths, image_size), observed, true,
                     normalised_boxes(boxes, rows), image_ids=paths)

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
        paths = [labelled.image_paths[r] for r in rows]
        return Split(ImageFileDataset(image_dir, paths, image_size), labelled.observed[rows], true,
                     image_ids=paths)

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
        paths = labels[split].image_ids.tolist()
        return Split(ImageFileDataset(image_dir, paths, image_size), None, None,
                     sparse=labels[split], train_label_counts=positives + negatives,
                     image_ids=paths)

    return ExperimentData(train=split_of("train"), val=split_of("val"), test=split_of("test"),
                          class_names=class_names)


def load_openimages_data(data_root: Path, image_dir: Path | None,
                         image_size: int) -> ExperimentData:
    """OpenImages (V3, V6 or V7) as `scripts/prepare_data.py --dataset openimages` writes it
    (openimages.py; the same files for every release, which metadata.json names):
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
        paths = [f"{image_id}.jpg" for image_id in labels[split].image_ids.tolist()]
        return Split(ImageFileDataset(image_dir / split, paths, image_size), None, None,
                     sparse=labels[split], train_label_counts=positives + negatives,
                     image_ids=paths)

    names_file = data_root / openimages.CLASS_NAMES_FILE
    class_names = (names_file.read_text(encoding="utf-8").splitlines() if names_file.is_file()
                   else class_mids.tolist())
    if len(class_names) != len(class_mids):
        raise InputError(f"{names_file} has {len(class_names)} lines for {len(class_mids)} classes")
    return ExperimentData(train=split_of("train"), val=split_of("validation"),
                          test=split_of("test"), class_names=class_names,
                          class_ids=class_mids.tolist(),
                          release=openimages.read_release(data_root))


def openimages_image_dir(data_root: Path) -> Path:
    """The image folder recorded in metadata.json when it still exists, else DATA_ROOT/images."""
    metadata_file = data_root / openimages.METADATA_FILE
    if metadata_file.is_file():
        recorded = json.loads(metadata_file.read_text()).get("report", {}).get("image_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return data_root / "images"


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


# --- loaders and the on-device pipeline ---------------------------------------------------------


