"""Label files the project reads and writes, and the observed-label protocol.

Encodings (SPEC §1):
    true labels   N×L in {0, 1}
    observed      N×L in {-1, 0, +1}: +1 observed positive, -1 observed negative, 0 unobserved

Three kinds of folders enter the program here, each validated once:
    Cole folder    formatted_{train,val}_{images,labels,labels_obs}.npy (+ class_names.txt,
                   formatted_{phase}_boxes.json), written by `scripts/prepare_data.py` from the
                   official archives with the `format_*` functions below (SPEC §2).
    custom folder  images/ + train.csv / val.csv / test.csv (+ *_clean.csv), see data/README.md.
"""
from __future__ import annotations

import csv
import io
import json
import os
import xml.etree.ElementTree as ElementTree
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
    """Keep `num_pos` random positives and `num_neg` random negatives per row (SPEC §2).

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
    """Split the official train rows into train and val (SPEC §2): sorted index arrays."""
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


def _load_npy(path: Path, folder: Path) -> np.ndarray:
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


def _load_image_paths(path: Path, folder: Path) -> list[str]:
    """A formatted_*_images.npy file as a list of N strings."""
    images = _load_npy(path, folder)
    if images.ndim != 1 or images.dtype.kind not in "US":
        raise ValueError(f"{path}: expected a 1-D array of strings, got shape {images.shape} "
                         f"dtype {images.dtype}")
    return [str(name) for name in images.astype(str)]


def load_true_labels(folder: Path, phase: str) -> np.ndarray:
    """formatted_{phase}_labels.npy, validated: N×L uint8 in {0, 1}."""
    path = cole_file(folder, phase, "labels")
    labels = _load_npy(path, Path(folder))
    check_label_matrix(labels, (0, 1), str(path), folder)
    return labels.astype(np.uint8)


def load_cole_folder(folder: Path) -> dict[str, LabelledSplit]:
    """Read and validate a Cole folder (SPEC §2).

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
        image_paths = _load_image_paths(images_file, folder)
        true_labels = load_true_labels(folder, phase)
        observed = _load_npy(observed_file, folder)
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
        num_images = len(_load_image_paths(images_file, Path(folder)))
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


# ---------------------------------------------------------------------------------------------
# Formatters: official archives → Cole arrays (SPEC §2); scripts/prepare_data.py writes them
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FormattedPhase:
    """One official phase produced by a formatter.

    image_paths: N paths relative to IMAGE_DIRS[dataset].
    true_labels: N×L float32 in {0, 1}.
    boxes:       N entries {"width": W, "height": H, "boxes": [[class_index, x0, y0, x1, y1], ...]}
                 in original pixel coordinates, or None when the source has no boxes.
    """
    image_paths: list[str]
    true_labels: np.ndarray
    boxes: list[dict] | None = None


@dataclass(frozen=True)
class FormattedDataset:
    """A formatter's result: class names (None when the source names none) and the phases
    "train" and "val" (the official ones)."""
    class_names: list[str] | None
    phases: dict[str, FormattedPhase]


def _multi_hot(positive_classes: list[list[int]], num_classes: int) -> np.ndarray:
    """N×L float32 in {0, 1} from each row's list of positive class indices."""
    labels = np.zeros((len(positive_classes), num_classes), dtype=np.float32)
    for row, classes in enumerate(positive_classes):
        labels[row, classes] = 1.0
    return labels


def _require_raw(path: Path, hint: str) -> Path:
    """`path` if it exists, else FileNotFoundError naming it with a hint about the raw layout."""
    if not path.exists():
        raise FileNotFoundError(f"missing {path}; {hint} (see data/README.md)")
    return path


def _number(text: str | None, source: str) -> int | float:
    """A coordinate from an annotation file: int when integral, else float."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected a number, got {text!r}") from None
    return int(value) if value.is_integer() else value


def _voc_positive_names(path: Path) -> list[str]:
    """Image names flagged 1 in an ImageSets/Main/<class>_<phase>.txt file ("name flag" lines;
    0 = difficult and -1 both count as negative, SPEC §2)."""
    names = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
            raise ValueError(f"{path}, line {line_number}: expected 'name flag' with flag 1, 0 "
                             f"or -1, got {line!r}")
        if fields[1] == "1":
            names.append(fields[0])
    return names


def _voc_boxes(path: Path) -> dict:
    """{"width", "height", "boxes": [[class_index, xmin, ymin, xmax, ymax], ...]} from one
    Annotations/<name>.xml file (VOC's 1-based pixel coordinates, unchanged)."""
    root = ElementTree.parse(_require_raw(path, "every image needs its annotation")).getroot()
    boxes = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in PASCAL_CLASSES:
            raise ValueError(f"{path}: unknown object class {name!r}")
        corners = [_number(obj.findtext(f"bndbox/{tag}"), f"{path} {name} {tag}")
                   for tag in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append([PASCAL_CLASSES.index(name), *corners])
    return {"width": _number(root.findtext("size/width"), f"{path} width"),
            "height": _number(root.findtext("size/height"), f"{path} height"), "boxes": boxes}


def format_pascal(raw_dir: Path) -> FormattedDataset:
    """PASCAL VOC 2012 from raw_dir/VOCdevkit/VOC2012 (SPEC §2).

    Rows: images with ≥1 positive in ImageSets/Main/<class>_<phase>.txt, sorted by name;
    columns: PASCAL_CLASSES (alphabetical); paths "<name>.jpg"; boxes from Annotations/ when that
    folder exists.
    """
    voc_root = _require_raw(Path(raw_dir) / "VOCdevkit" / "VOC2012",
                            "--raw_dir must contain VOCdevkit/VOC2012 (the extracted trainval tar)")
    phases = {}
    for phase in PHASES:
        positives: dict[str, list[int]] = {}
        for class_index, class_name in enumerate(PASCAL_CLASSES):
            image_set = _require_raw(voc_root / "ImageSets" / "Main" / f"{class_name}_{phase}.txt",
                                     "the VOC2012 trainval tar provides ImageSets/Main")
            for name in _voc_positive_names(image_set):
                positives.setdefault(name, []).append(class_index)
        names = sorted(positives)
        annotation_dir = voc_root / "Annotations"
        boxes = ([_voc_boxes(annotation_dir / f"{name}.xml") for name in names]
                 if annotation_dir.is_dir() else None)
        phases[phase] = FormattedPhase([f"{name}.jpg" for name in names],
                                       _multi_hot([positives[name] for name in names],
                                                  len(PASCAL_CLASSES)), boxes)
    return FormattedDataset(list(PASCAL_CLASSES), phases)


def _coco_phase(instances: dict, phase: str, class_index_of: dict[int, int],
                source: Path) -> FormattedPhase:
    """One COCO phase: rows = images with ≥1 annotation, ordered by image id sorted as strings
    (Cole's order, SPEC §2); boxes [x, y, w, h] → [class_index, x, y, x + w, y + h]."""
    sizes = {image["id"]: (image["width"], image["height"]) for image in instances["images"]}
    boxes_of: dict[int, list[list]] = {}
    for annotation in instances["annotations"]:
        x, y, width, height = annotation["bbox"]
        boxes_of.setdefault(annotation["image_id"], []).append(
            [class_index_of[annotation["category_id"]], x, y, x + width, y + height])
    image_ids = sorted(boxes_of, key=str)
    unknown = [image_id for image_id in image_ids if image_id not in sizes]
    if unknown:
        raise ValueError(f"{source}: annotations refer to image id {unknown[0]} which is not in "
                         f"'images' ({len(unknown)} such ids)")
    labels = _multi_hot([[box[0] for box in boxes_of[image_id]] for image_id in image_ids],
                        len(class_index_of))
    paths = [f"{phase}2014/COCO_{phase}2014_{image_id:012d}.jpg" for image_id in image_ids]
    boxes = [{"width": sizes[image_id][0], "height": sizes[image_id][1],
              "boxes": boxes_of[image_id]} for image_id in image_ids]
    return FormattedPhase(paths, labels, boxes)


def format_coco(raw_dir: Path) -> FormattedDataset:
    """COCO 2014 from raw_dir/annotations/instances_{train,val}2014.json (SPEC §2).

    Columns: the `categories` list sorted by id; paths "train2014/COCO_train2014_%012d.jpg" and
    "val2014/COCO_val2014_%012d.jpg".
    """
    class_names, phases = None, {}
    for phase in PHASES:
        path = _require_raw(Path(raw_dir) / "annotations" / f"instances_{phase}2014.json",
                            "extract annotations_trainval2014.zip into --raw_dir")
        with open(path, encoding="utf-8") as handle:
            instances = json.load(handle)
        categories = sorted(instances["categories"], key=lambda category: category["id"])
        names = [category["name"] for category in categories]
        if class_names is not None and names != class_names:
            raise ValueError(f"{path}: categories differ from the train annotations")
        class_names = names
        class_index_of = {category["id"]: index for index, category in enumerate(categories)}
        phases[phase] = _coco_phase(instances, phase, class_index_of, path)
    return FormattedDataset(class_names, phases)


def format_nuswide(raw_dir: Path) -> FormattedDataset:
    """NUS-WIDE from the authors' formatted files in raw_dir (SPEC §2: no public formatter).

    Reads formatted_{train,val}_{images,labels}.npy, checks them (strings, N×81 in {0, 1}, rows
    agree) and keeps every row, including the ≈22 % with no positive. Class names come from
    raw_dir/class_names.txt when present.
    """
    raw_dir = Path(raw_dir)
    hint = "--raw_dir must hold the authors' formatted_{train,val}_{images,labels}.npy"
    phases = {}
    for phase in PHASES:
        images_file = _require_raw(cole_file(raw_dir, phase, "images"), hint)
        labels_file = _require_raw(cole_file(raw_dir, phase, "labels"), hint)
        image_paths = _load_image_paths(images_file, raw_dir)
        labels = _load_npy(labels_file, raw_dir)
        check_label_matrix(labels, (0, 1), str(labels_file))
        if labels.shape != (len(image_paths), NUM_CLASSES["nuswide"]):
            raise ValueError(f"shape mismatch: {labels_file} has shape {labels.shape}, expected "
                             f"({len(image_paths)}, {NUM_CLASSES['nuswide']}) from {images_file}")
        phases[phase] = FormattedPhase(image_paths, labels.astype(np.float32))
    names_file = raw_dir / CLASS_NAMES_FILE
    class_names = (class_names_for(raw_dir, "nuswide", NUM_CLASSES["nuswide"])
                   if names_file.is_file() else None)
    return FormattedDataset(class_names, phases)


def find_cub_root(raw_dir: Path) -> Path:
    """The CUB_200_2011 folder holding images.txt: raw_dir itself, raw_dir/CUB_200_2011, or
    raw_dir/CUB_200_2011/CUB_200_2011 (the tgz extracted into a folder of the same name)."""
    raw_dir = Path(raw_dir)
    candidates = [raw_dir, raw_dir / "CUB_200_2011", raw_dir / "CUB_200_2011" / "CUB_200_2011"]
    for candidate in candidates:
        if (candidate / "images.txt").is_file():
            return candidate
    looked = ", ".join(str(candidate / "images.txt") for candidate in candidates)
    raise FileNotFoundError(f"no CUB_200_2011 folder under {raw_dir}: looked for {looked} "
                            f"(see data/README.md)")


def _read_id_table(path: Path, num_fields: int) -> list[list[str]]:
    """Lines "id value ..." of a CUB text file, split into at most `num_fields` fields
    (the last field keeps its spaces)."""
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split(maxsplit=num_fields - 1)
        if not fields:
            continue
        if len(fields) != num_fields or not fields[0].isdigit():
            raise ValueError(f"{path}, line {line_number}: expected {num_fields} fields starting "
                             f"with an integer id, got {line!r}")
        rows.append(fields)
    return rows


def _cub_attribute_names(cub_root: Path, raw_dir: Path) -> list[str] | None:
    """Attribute names in id order from the first attributes.txt found in the usual places
    (the tgz puts it beside CUB_200_2011/), or None."""
    candidates = [cub_root / "attributes" / "attributes.txt", cub_root / "attributes.txt",
                  cub_root.parent / "attributes.txt", Path(raw_dir) / "attributes.txt"]
    for path in candidates:
        if path.is_file():
            rows = _read_id_table(path, 2)
            if [int(attribute_id) for attribute_id, _ in rows] != list(range(1, len(rows) + 1)):
                raise ValueError(f"{path}: attribute ids must run 1, 2, ..., {len(rows)}")
            return [name for _, name in rows]
    return None


def _cub_attribute_labels(path: Path, image_ids: list[int],
                          num_attributes: int | None) -> np.ndarray:
    """N×A float32 in {0, 1}, rows in `image_ids` order, from image_attribute_labels.txt's
    is_present column (all certainty levels). Lines are "image_id attribute_id is_present
    certainty_id time"; extra trailing fields, which some lines of the real file have, are
    ignored."""
    entries = []  # (line number, image id, attribute id, is_present)
    with open(_require_raw(path, "CUB_200_2011.tgz provides it")) as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split(None, 3)
            if not fields:
                continue
            try:
                entries.append((line_number, int(fields[0]), int(fields[1]), int(fields[2])))
            except (IndexError, ValueError):
                raise ValueError(f"{path}, line {line_number}: expected 'image_id attribute_id "
                                 f"is_present certainty_id time', got {line!r}") from None
    entry_line, entry_image, entry_attribute, entry_present = (
        np.array(entries, dtype=np.int64).reshape(-1, 4).T)
    num_attributes = num_attributes or int(entry_attribute.max(initial=0))
    row_of_image = np.full(max(max(image_ids), int(entry_image.max(initial=0))) + 1, -1)
    row_of_image[image_ids] = np.arange(len(image_ids))
    rows = row_of_image[entry_image.clip(min=0)]
    checks = [(~np.isin(entry_present, (0, 1)), "is_present must be 0 or 1"),
              ((entry_image < 1) | (rows < 0), "image id not in images.txt"),
              ((entry_attribute < 1) | (entry_attribute > num_attributes),
               f"attribute id outside 1..{num_attributes}")]
    for bad, problem in checks:
        if bad.any():
            raise ValueError(f"{path}, line {entry_line[bad][0]} (image "
                             f"{entry_image[bad][0]}, attribute {entry_attribute[bad][0]}): "
                             f"{problem}")
    labels = np.zeros((len(image_ids), num_attributes), dtype=np.float32)
    labels[rows, entry_attribute - 1] = entry_present
    return labels


def format_cub(raw_dir: Path) -> FormattedDataset:
    """CUB-200-2011 attributes (SPEC §2): 312 attribute columns from the is_present column,
    rows in images.txt order, phase from train_test_split.txt (1 → "train", 0 → "val")."""
    cub_root = find_cub_root(raw_dir)
    images = _read_id_table(cub_root / "images.txt", 2)
    if not images:
        raise ValueError(f"{cub_root / 'images.txt'} lists no images")
    image_ids = [int(image_id) for image_id, _ in images]
    class_names = _cub_attribute_names(cub_root, Path(raw_dir))
    labels = _cub_attribute_labels(cub_root / "attributes" / "image_attribute_labels.txt",
                                   image_ids, len(class_names) if class_names else None)
    split_file = _require_raw(cub_root / "train_test_split.txt", "CUB_200_2011.tgz provides it")
    is_train = {int(image_id): flag for image_id, flag in _read_id_table(split_file, 2)}
    missing = [image_id for image_id in image_ids if image_id not in is_train]
    if missing or set(is_train.values()) - {"0", "1"}:
        raise ValueError(f"{split_file}: every image needs a flag 0 or 1 "
                         f"(first image without one: {missing[:1]})")
    phases = {}
    for phase, flag in (("train", "1"), ("val", "0")):
        rows = [row for row, image_id in enumerate(image_ids) if is_train[image_id] == flag]
        phases[phase] = FormattedPhase([images[row][1] for row in rows], labels[rows])
    return FormattedDataset(class_names, phases)


FORMATTERS = {"pascal": format_pascal, "coco": format_coco, "nuswide": format_nuswide,
              "cub": format_cub}


# ---------------------------------------------------------------------------------------------
# Writing a Cole folder (atomic: a reader never sees a half-written file)
# ---------------------------------------------------------------------------------------------

def _write_atomic(path: Path, payload: bytes) -> None:
    """Write `payload` to a temporary file beside `path`, then os.replace it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(payload)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save `array` to `path` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    _write_atomic(path, buffer.getvalue())


def save_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    _write_atomic(path, text.encode("utf-8"))


def write_observed_labels(out_dir: Path, true_labels: dict[str, np.ndarray], num_pos: int,
                          num_neg: int, seed: int) -> dict[str, np.ndarray]:
    """Write formatted_{phase}_labels_obs.npy for each phase from its N×L {0, 1} clean labels,
    one `make_observed_labels` call (a fresh RandomState(seed)) per phase. Returns them."""
    observed = {}
    for phase, labels in true_labels.items():
        observed[phase] = make_observed_labels(labels, num_pos, num_neg, seed)
        save_npy_atomic(cole_file(out_dir, phase, "labels_obs"), observed[phase])
    return observed


def write_cole_folder(out_dir: Path, formatted: FormattedDataset, num_pos: int, num_neg: int,
                      seed: int) -> dict[str, np.ndarray]:
    """Write a formatter's result as a Cole folder (images, labels, observed labels, class names,
    boxes where the source has them). Returns the observed labels per phase."""
    out_dir = Path(out_dir)
    for phase, content in formatted.phases.items():
        save_npy_atomic(cole_file(out_dir, phase, "images"),
                        np.array(content.image_paths, dtype=str))
        save_npy_atomic(cole_file(out_dir, phase, "labels"),
                        content.true_labels.astype(np.float32))
        boxes_file = out_dir / f"formatted_{phase}_boxes.json"
        if content.boxes is not None:
            save_text_atomic(boxes_file, json.dumps(content.boxes))
        elif boxes_file.exists():
            boxes_file.unlink()  # stale boxes from an earlier run would no longer align
    if formatted.class_names is not None:
        save_text_atomic(out_dir / CLASS_NAMES_FILE, "".join(f"{name}\n"
                                                             for name in formatted.class_names))
    return write_observed_labels(
        out_dir, {phase: content.true_labels for phase, content in formatted.phases.items()},
        num_pos, num_neg, seed)
