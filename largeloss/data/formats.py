"""Label files the project reads and writes, and the observed-label protocol.

Encodings (docs/protocol.md §Label encodings):
    true labels   N×L in {0, 1}
    observed      N×L in {-1, 0, +1}: +1 observed positive, -1 observed negative, 0 unobserved

Three kinds of folders enter the program here, each validated once:
    Cole folder    formatted_{train,val}_{images,labels,labels_obs}.npy (+ class_names.txt,
                   formatted_{phase}_boxes.json), written by `scripts/prepare_data.py` from the
                   official archives with the formatters of prepare.py (docs/protocol.md).
    custom folder  images/ + train.csv / val.csv / test.csv (+ *_clean.csv), see data/README.md.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_SEED = 1200  # Cole et al.'s seed for the train/val split and the observed labels
PHASES = ("train", "val")  # the official phases of a Cole folder; "val" is the project's test set
CLASS_NAMES_FILE = "class_names.txt"
CUSTOM_IMAGE_DIR = "images"

# Cole-file image paths are relative to <dataset folder>/IMAGE_DIRS[dataset].
IMAGE_DIRS = {"pascal": "VOCdevkit/VOC2012/JPEGImages", "coco": ".", "nuswide": "Flickr",
              "cub": "CUB_200_2011/images"}

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
# COCO 2014 category names in category-id order (= column order of the formatted labels).
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
KNOWN_CLASS_NAMES = {"pascal": PASCAL_CLASSES, "coco": COCO_CLASSES}
NUM_CLASSES = {"pascal": 20, "coco": 80, "nuswide": 81, "cub": 312}


@dataclass(frozen=True)
class LabelledSplit:
    """One phase of a dataset as the trainer sees it.

    image_paths: N paths relative to the dataset's image directory.
    observed:    N×L int8 in {-1, 0, +1}.
    true_labels: N×L uint8 in {0, 1}; None when the clean labels are unknown.
    """
    image_paths: list[str]
    observed: np.ndarray
    true_labels: np.ndarray | None


def make_observed_labels(true_labels: np.ndarray, num_pos: int = 1, num_neg: int = 0,
                         seed: int = SPLIT_SEED) -> np.ndarray:
    """Keep `num_pos` random positives and `num_neg` random negatives per row (docs/protocol.md).

    Bit-identical to Cole et al.'s procedure: one fresh `RandomState(seed)` per call (= per phase);
    for each row in order the positives are shuffled, then the negatives are shuffled even when
    `num_neg == 0` (the shuffle still consumes the generator).

    Args:
        true_labels: N×L array in {0, 1}.
    Returns:
        N×L float32 array in {-1, 0, +1}.
    """
    true_labels = np.asarray(true_labels)
    if true_labels.ndim != 2:
        raise ValueError(f"true_labels must be N×L, got shape {true_labels.shape}")
    if not np.isin(true_labels, (0, 1)).all():
        raise ValueError("true_labels must contain only 0 and 1")
    rng = np.random.RandomState(seed)
    signed = np.where(true_labels == 1, 1.0, -1.0)
    observed = np.zeros(true_labels.shape, dtype=np.float32)
    for row_index, row in enumerate(signed):
        positives = np.nonzero(row == 1)[0]
        rng.shuffle(positives)
        observed[row_index, positives[:num_pos]] = 1.0
        negatives = np.nonzero(row == -1)[0]
        rng.shuffle(negatives)
        observed[row_index, negatives[:num_neg]] = -1.0
    return observed


def train_val_split(num_rows: int, val_fraction: float = 0.2,
                    seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split the official train rows into train and val (docs/protocol.md): sorted index arrays."""
    perm = np.random.RandomState(seed).permutation(num_rows)
    num_val = int(round(val_fraction * num_rows))
    return np.sort(perm[:num_rows - num_val]), np.sort(perm[num_rows - num_val:])


# ---------------------------------------------------------------------------------------------
# Cole folders: reading and validation
# ---------------------------------------------------------------------------------------------

def cole_file(folder: Path, phase: str, kind: str) -> Path:
    """Path of `formatted_{phase}_{kind}.npy`; kind is "images", "labels" or "labels_obs"."""
    return Path(folder) / f"formatted_{phase}_{kind}.npy"


def _prepare_command(folder: Path, obs_only: bool) -> str:
    """The prepare_data command that (re)creates `folder`, for error messages."""
    folder = Path(folder)
    dataset = folder.name if folder.name in NUM_CLASSES else "<dataset>"
    if obs_only:
        return (f"python scripts/prepare_data.py --dataset {dataset} --obs_only --out_dir {folder}"
                f" --num_pos 1 --num_neg 0 --seed {SPLIT_SEED}")
    return f"python scripts/prepare_data.py --dataset {dataset} --raw_dir RAW --out_dir {folder}"


def load_npy(path: Path, folder: Path) -> np.ndarray:
    """np.load with errors that name the file and say how to create it."""
    if not path.is_file():
        obs_only = path.name.endswith("_labels_obs.npy") and path.with_name(
            path.name.replace("_labels_obs", "_labels")).is_file()
        raise FileNotFoundError(
            f"missing {path}; run `{_prepare_command(folder, obs_only)}` (see data/README.md)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path} could not be read as a plain numpy array: {error}") from error


def _class_label(folder: Path | None, column: int) -> str:
    """'column 3' or 'column 3 (cat)' when the folder names its classes."""
    names_file = Path(folder) / CLASS_NAMES_FILE if folder is not None else None
    if names_file is not None and names_file.is_file():
        names = names_file.read_text(encoding="utf-8").splitlines()
        if column < len(names):
            return f"column {column} ({names[column]})"
    return f"column {column}"


def check_label_matrix(values: np.ndarray, allowed: tuple[int, ...], source: str,
                       folder: Path | None = None) -> None:
    """Refuse a label matrix that is not 2-D, holds NaN, or holds values outside `allowed`.

    Args:
        values: N×L numeric array.
        allowed: the encoding, e.g. (0, 1) for clean labels or (-1, 0, 1) for observed labels.
        source: what to call the matrix in messages (usually its file).
    """
    if values.ndim != 2:
        raise ValueError(f"{source}: expected an N×L matrix, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_:
        raise ValueError(f"{source}: expected numbers, got dtype {values.dtype}")
    if np.issubdtype(values.dtype, np.floating) and np.isnan(values).any():
        row, column = np.argwhere(np.isnan(values))[0]
        raise ValueError(f"{source}: NaN at row {row} (0-based), {_class_label(folder, column)}")
    bad = ~np.isin(values, allowed)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"{source}: value {values[row, column].item()!r} at row {row} (0-based), "
            f"{_class_label(folder, column)} is outside the encoding {list(allowed)} "
            f"({int(bad.sum())} bad entries in all)")


def load_image_paths(path: Path, folder: Path) -> list[str]:
    """A formatted_*_images.npy file as a list of N strings."""
    images = load_npy(path, folder)
    if images.ndim != 1 or images.dtype.kind not in "US":
        raise ValueError(f"{path}: expected a 1-D array of strings, got shape {images.shape} "
                         f"dtype {images.dtype}")
    return [str(name) for name in images.astype(str)]


def load_true_labels(folder: Path, phase: str) -> np.ndarray:
    """formatted_{phase}_labels.npy, validated: N×L uint8 in {0, 1}."""
    path = cole_file(folder, phase, "labels")
    labels = load_npy(path, Path(folder))
    check_label_matrix(labels, (0, 1), str(path), folder)
    return labels.astype(np.uint8)


def load_cole_folder(folder: Path) -> dict[str, LabelledSplit]:
    """Read and validate a Cole folder (docs/protocol.md §The Cole split).

    Returns:
        {"train": ..., "val": ...} for the OFFICIAL phases. The trainer splits "train" with
        `train_val_split` and uses the official "val" as its test set.
    Raises:
        FileNotFoundError: a file is missing (the message gives the prepare_data command).
        ValueError: shapes disagree, values fall outside {0, 1} / {-1, 0, 1}, or NaN.
    """
    folder = Path(folder)
    splits = {}
    for phase in PHASES:
        images_file = cole_file(folder, phase, "images")
        labels_file = cole_file(folder, phase, "labels")
        observed_file = cole_file(folder, phase, "labels_obs")
        image_paths = load_image_paths(images_file, folder)
        true_labels = load_true_labels(folder, phase)
        observed = load_npy(observed_file, folder)
        if len(image_paths) != true_labels.shape[0]:
            raise ValueError(f"shape mismatch: {images_file} has shape ({len(image_paths)},) but "
                             f"{labels_file} has shape {true_labels.shape}")
        if observed.shape != true_labels.shape:
            raise ValueError(f"shape mismatch: {labels_file} has shape {true_labels.shape} but "
                             f"{observed_file} has shape {observed.shape}")
        check_label_matrix(observed, (-1, 0, 1), str(observed_file), folder)
        splits[phase] = LabelledSplit(image_paths, observed.astype(np.int8), true_labels)
    train_shape, val_shape = splits["train"].observed.shape, splits["val"].observed.shape
    if train_shape[1] != val_shape[1]:
        raise ValueError(f"shape mismatch: {cole_file(folder, 'train', 'labels')} has "
                         f"{train_shape[1]} classes but {cole_file(folder, 'val', 'labels')} has "
                         f"{val_shape[1]}")
    return splits


def class_names_for(folder: Path, dataset: str, num_classes: int) -> list[str]:
    """Class names of a Cole folder: class_names.txt if present, else the known constant,
    else "class_0", "class_1", ...; always `num_classes` of them."""
    names_file = Path(folder) / CLASS_NAMES_FILE
    if names_file.is_file():
        names = names_file.read_text(encoding="utf-8").splitlines()
        source = str(names_file)
    elif dataset in KNOWN_CLASS_NAMES:
        names, source = list(KNOWN_CLASS_NAMES[dataset]), f"the {dataset} class list"
    else:
        return [f"class_{index}" for index in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{source} has {len(names)} names but the labels have {num_classes} "
                         f"classes")
    return names


def _check_box_entry(entry: object, path: Path, row: int) -> None:
    """Refuse a boxes.json entry that is not {"width", "height", "boxes": [[c, x0, y0, x1, y1]]}."""
    if not isinstance(entry, dict) or not {"width", "height", "boxes"} <= entry.keys():
        raise ValueError(f"{path}: row {row} must be an object with width, height and boxes")
    for box in entry["boxes"]:
        if not isinstance(box, list) or len(box) != 5:
            raise ValueError(f"{path}: row {row} has box {box!r}; expected "
                             f"[class_index, x0, y0, x1, y1]")


def load_boxes(folder: Path, phase: str) -> list[dict] | None:
    """formatted_{phase}_boxes.json: one entry per image row, None when the file is absent.

    Each entry is {"width": W, "height": H, "boxes": [[class_index, x0, y0, x1, y1], ...]} in
    the original image's pixel coordinates.
    """
    path = Path(folder) / f"formatted_{phase}_boxes.json"
    if not path.is_file():
        return None
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list with one entry per image")
    for row, entry in enumerate(entries):
        _check_box_entry(entry, path, row)
    images_file = cole_file(folder, phase, "images")
    if images_file.is_file():
        num_images = len(load_image_paths(images_file, Path(folder)))
        if num_images != len(entries):
            raise ValueError(f"shape mismatch: {path} has {len(entries)} entries but "
                             f"{images_file} has {num_images} images")
    return entries


# ---------------------------------------------------------------------------------------------
# Custom folders: images/ + train.csv, test.csv, optional val.csv and *_clean.csv
# ---------------------------------------------------------------------------------------------

OBSERVED_ENCODING = (-1, 0, 1)  # custom CSV cells: 1 positive, -1 negative, 0 or blank unknown
CLEAN_ENCODING = (0, 1)


@dataclass(frozen=True)
class _LabelTable:
    """One parsed label CSV.

    values: N×L int8 in the file's encoding; line_numbers: the 1-based line of each row.
    """
    path: Path
    class_names: list[str]
    image_names: list[str]
    values: np.ndarray
    line_numbers: list[int]


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and (1-based line number, cells) of every non-blank data row."""
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: files saved by Excel
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not header:
        raise ValueError(f"{path} is empty; expected a header line 'image,<class_1>,...,<class_L>'")
    return [cell.strip() for cell in header], rows


def _class_names_from_header(path: Path, header: list[str]) -> list[str]:
    """The class columns of a header 'image,<class_1>,...,<class_L>'."""
    if header[0].lower() != "image":
        raise ValueError(f"{path}, line 1: the image column is missing; the first column must be "
                         f"named 'image' (got {header[0]!r})")
    class_names = header[1:]
    if not class_names:
        raise ValueError(f"{path}, line 1: no class columns after 'image'")
    for column, name in enumerate(class_names, start=2):
        if not name:
            raise ValueError(f"{path}, line 1, column {column}: empty class name")
        if class_names.index(name) != column - 2:
            raise ValueError(f"{path}, line 1, column {column}: duplicate class name {name!r}")
    return class_names


def _parse_cell(cell: str, allowed: tuple[int, ...], blank_allowed: bool, where: str) -> int:
    """One label cell as an int in `allowed`; a blank cell is 0 when `blank_allowed`."""
    text = cell.strip()
    if not text:
        if blank_allowed:
            return 0
        raise ValueError(f"{where}: empty cell; expected one of {list(allowed)}")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: non-numeric value {text!r}; expected one of "
                         f"{list(allowed)}") from None
    if value not in allowed:
        raise ValueError(f"{where}: value {text!r} is outside the encoding {list(allowed)}")
    return int(value)


def _read_label_csv(path: Path, allowed: tuple[int, ...], blank_allowed: bool) -> _LabelTable:
    """Parse and validate one label CSV (header, row lengths, image names, cell values)."""
    header, rows = _read_csv_rows(path)
    class_names = _class_names_from_header(path, header)
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    values = np.zeros((len(rows), len(class_names)), dtype=np.int8)
    image_names, first_line_of = [], {}
    for row_index, (line, cells) in enumerate(rows):
        if len(cells) != len(header):
            raise ValueError(f"{path}, line {line}: {len(cells)} cells but the header has "
                             f"{len(header)} columns")
        name = cells[0].strip()
        if not name:
            raise ValueError(f"{path}, line {line}: empty image name")
        if name in first_line_of:
            raise ValueError(f"{path}, line {line}: duplicate image {name!r} (first on line "
                             f"{first_line_of[name]})")
        first_line_of[name] = line
        image_names.append(name)
        values[row_index] = [
            _parse_cell(cell, allowed, blank_allowed, f"{path}, line {line}, class {class_name!r}")
            for cell, class_name in zip(cells[1:], class_names)]
    return _LabelTable(path, class_names, image_names, values, [line for line, _ in rows])


def _check_same_classes(reference: _LabelTable, other: _LabelTable) -> None:
    """Refuse `other` unless its header lists the same classes in the same order."""
    if other.class_names == reference.class_names:
        return
    for column, (expected, found) in enumerate(zip(reference.class_names, other.class_names), 2):
        if expected != found:
            raise ValueError(f"header mismatch: {other.path} has class {found!r} in column "
                             f"{column} where {reference.path} has {expected!r}; every CSV must "
                             f"list the same classes in the same order")
    raise ValueError(f"header mismatch: {other.path} has {len(other.class_names)} classes but "
                     f"{reference.path} has {len(reference.class_names)}")


def _check_same_images(observed: _LabelTable, clean: _LabelTable) -> None:
    """Refuse a clean-label file whose image column differs from its observed file's."""
    if clean.image_names == observed.image_names:
        return
    for row, (expected, found) in enumerate(zip(observed.image_names, clean.image_names)):
        if expected != found:
            raise ValueError(f"{clean.path}, line {clean.line_numbers[row]}: image {found!r} but "
                             f"{observed.path}, line {observed.line_numbers[row]} has "
                             f"{expected!r}; the clean file must list the same images in the "
                             f"same order")
    raise ValueError(f"{clean.path} has {len(clean.image_names)} rows but {observed.path} has "
                     f"{len(observed.image_names)}; they must list the same images")


def _check_images_exist(image_dir: Path, table: _LabelTable, shown: int = 5) -> None:
    """Refuse a table naming image files that do not exist under `image_dir` (lists a few)."""
    missing = [(line, name) for line, name in zip(table.line_numbers, table.image_names)
               if not (image_dir / name).is_file()]
    if missing:
        listed = ", ".join(f"{name!r} (line {line})" for line, name in missing[:shown])
        more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
        raise FileNotFoundError(f"{table.path}: {len(missing)} image file(s) not found under "
                                f"{image_dir}: {listed}{more}")


def _require_file(path: Path, what: str) -> None:
    """FileNotFoundError naming a required part of a custom folder."""
    if not path.exists():
        raise FileNotFoundError(f"missing required {what} {path}; a custom dataset needs images/, "
                                f"train.csv and test.csv (see data/README.md)")


def load_custom_folder(folder: Path) -> tuple[list[str], dict[str, LabelledSplit]]:
    """Read and validate a custom dataset folder (format in data/README.md).

    Returns:
        (class_names, splits) with splits keyed "train", "test" and, only when val.csv exists,
        "val". Observed labels are int8 in {-1, 0, +1} (blank cells → 0); true labels come from
        the matching *_clean.csv (uint8 in {0, 1}) or are None.
    Raises:
        FileNotFoundError: a required file or an image file is missing.
        ValueError: a malformed CSV; the message names the file, the line and the class.
    """
    folder = Path(folder)
    image_dir = folder / CUSTOM_IMAGE_DIR
    _require_file(folder, "folder")
    _require_file(image_dir, "image folder")
    _require_file(folder / "train.csv", "file")
    _require_file(folder / "test.csv", "file")
    if (folder / "val_clean.csv").exists() and not (folder / "val.csv").exists():
        raise ValueError(f"{folder / 'val_clean.csv'} exists but {folder / 'val.csv'} does not")
    phases = [phase for phase in ("train", "val", "test") if (folder / f"{phase}.csv").exists()]
    tables = {phase: _read_label_csv(folder / f"{phase}.csv", OBSERVED_ENCODING, True)
              for phase in phases}
    splits = {}
    for phase, table in tables.items():
        _check_same_classes(tables["train"], table)
        _check_images_exist(image_dir, table)
        clean_path = folder / f"{phase}_clean.csv"
        true_labels = None
        if clean_path.exists():
            clean = _read_label_csv(clean_path, CLEAN_ENCODING, blank_allowed=False)
            _check_same_classes(table, clean)
            _check_same_images(table, clean)
            true_labels = clean.values.astype(np.uint8)
        splits[phase] = LabelledSplit(table.image_names, table.values, true_labels)
    return tables["train"].class_names, splits
