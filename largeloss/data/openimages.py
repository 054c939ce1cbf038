"""OpenImages V3 (the "2017_11" release) → sparse label files, for
`scripts/prepare_data.py --dataset openimages`.

Real partial labels: for each image, human verifiers marked some classes present (Confidence 1 →
observed +1) and some absent (Confidence 0 → observed −1); every other class is unobserved (0).
The train split is the supervision, validation is for model selection, and the labelled entries
of validation and test are their evaluation masks (metrics.sparse_masked_average_precisions).

RAW layout (the official file names):
    RAW/classes-trainable.txt        one class MID per line: the model's classes, in this order
    RAW/class-descriptions.csv       MID,display name (no header; names may be quoted)
    RAW/{split}/images.csv           header with an ImageID column: the split's images
    RAW/{split}/annotations-human.csv   ImageID,Source,LabelName,Confidence
    IMAGE_DIR/{split}/{ImageID}.jpg  the downloaded images (IMAGE_DIR defaults to RAW/images)
with split in train, validation, test.

Per split, out_dir/{split}_labels.npz (sparse_labels.py's CSR format; image_ids are ImageIDs,
class_names the trainable MIDs), and once class_names.txt (display names in the model's order)
and metadata.json (where the images are, and the report below).

What is dropped, each counted in the report:
    rows whose LabelName is not a trainable class;
    rows whose ImageID is not in the split's images.csv;
    repeated (image, class) rows: agreeing repeats are kept once, and an entry whose rows
        disagree (Confidence 1 and 0) is dropped, i.e. left unobserved;
    images with no trainable label left (including images that have no human label at all);
    images that have labels but no file IMAGE_DIR/{split}/{ImageID}.jpg (downloads miss some).
Images come out sorted by ImageID; each image's classes ascend. A malformed row (a cell count
other than the header's, a Confidence other than 0 or 1) is an error naming the file and line.

Memory: the annotation CSV is streamed; what is kept is 9 bytes per trainable row (an int64 key
row·L + class and an int8 label) plus the image ids (64 bytes each as a unicode array). Measured on
generated trees and extrapolated to the 21M rows of V3 train: ~0.8 GiB at the peak, ~1 minute on
2 cores (docs/benchmarks.md).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from largeloss.data.sparse_labels import SparseLabels, read_class_names, save_sparse_labels
from largeloss.utils import atomic

SPLITS = ("train", "validation", "test")
SPLIT_ROLES = {"train": "supervision", "validation": "model selection", "test": "test"}
CONFIDENCE_LABEL = {"1": 1, "0": -1, "1.0": 1, "0.0": -1}  # verified present / verified absent
ANNOTATION_COLUMNS = ("ImageID", "LabelName", "Confidence")
CLASS_NAMES_FILE = "class_names.txt"
METADATA_FILE = "metadata.json"
CHUNK_ROWS = 1 << 18  # rows (or names) parsed between two vectorised steps


def labels_file(out_dir: Path, split: str) -> Path:
    return Path(out_dir) / f"{split}_labels.npz"


def read_trainable_classes(path: Path) -> list[str]:
    """The MIDs of classes-trainable.txt in file order (the model's column order)."""
    _require(Path(path))
    return read_class_names(path)


def read_class_descriptions(path: Path) -> dict[str, str]:
    """MID → display name from class-descriptions.csv (no header; a quoted name may hold a
    comma)."""
    path = Path(path)
    _require(path)
    names = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for cells in reader:
            if not cells:
                continue
            if len(cells) != 2:
                raise ValueError(f"{path}, line {reader.line_num}: {len(cells)} cell(s), expected "
                                 f"2 (MID,name; quote a name that holds a comma)")
            names[cells[0].strip()] = cells[1].strip()
    return names


def _require(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; data/README.md (OpenImages V3) gives the layout "
                                f"of --raw_dir")


def _header_columns(path: Path, header: list[str], required: tuple[str, ...]) -> list[int]:
    """The positions of the `required` columns in `header`, or a ValueError naming the file."""
    header = [cell.strip() for cell in header]
    for column in required:
        if column not in header:
            raise ValueError(f"{path}, line 1: missing column {column!r} (header: "
                             f"{','.join(header) or 'empty'})")
    return [header.index(column) for column in required]


def _sorted_strings(strings: Iterable[str]) -> np.ndarray:
    """A sorted unicode array of `strings`, built CHUNK_ROWS at a time: never a Python list of
    millions of strings (~75 bytes each against the array's 4 per character)."""
    chunks, chunk = [], []
    for string in strings:
        chunk.append(string)
        if len(chunk) == CHUNK_ROWS:
            chunks.append(np.asarray(chunk, dtype=str))
            chunk.clear()
    chunks.append(np.asarray(chunk, dtype=str))
    array = np.concatenate(chunks)
    array.sort()
    return array


def read_image_ids(path: Path) -> np.ndarray:
    """The ImageID column of images.csv: a sorted unicode array. A repeated ImageID is an error."""
    path = Path(path)
    _require(path)

    def ids_in_file(reader, id_column: int):
        for cells in reader:
            if not cells:
                continue
            if len(cells) <= id_column:
                raise ValueError(f"{path}, line {reader.line_num}: {len(cells)} cell(s), the "
                                 f"ImageID column is missing")
            yield cells[id_column]

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        (id_column,) = _header_columns(path, next(reader, []), ("ImageID",))
        image_ids = _sorted_strings(ids_in_file(reader, id_column))
    repeated = np.nonzero(image_ids[1:] == image_ids[:-1])[0]
    if len(repeated):
        raise ValueError(f"{path}: ImageID {str(image_ids[repeated[0]])!r} is listed more than "
                         f"once")
    return image_ids


def list_image_files(folder: Path) -> np.ndarray:
    """The ImageIDs with a file `folder/{ImageID}.jpg`: a sorted unicode array (one directory
    listing, not one stat per image)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; images are read from "
                                f"IMAGE_DIR/<split>/<ImageID>.jpg (pass --image_dir)")
    with os.scandir(folder) as entries:
        return _sorted_strings(entry.name[:-4] for entry in entries if entry.name.endswith(".jpg"))


def _sorted_lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, found): where each of `ids` sits in `sorted_ids`, and whether it is there."""
    positions = np.searchsorted(sorted_ids, ids)
    if len(sorted_ids) == 0:
        return positions, np.zeros(len(ids), dtype=bool)
    found = sorted_ids[np.minimum(positions, len(sorted_ids) - 1)] == ids
    return positions, found


def _bad_row(path: Path, line: int, problem: str) -> ValueError:
    return ValueError(f"{path}, line {line}: {problem}")


def read_annotations(path: Path, class_index: dict[str, int], image_ids: np.ndarray,
                     description: str = "annotations") -> tuple[np.ndarray, np.ndarray, dict]:
    """Stream annotations-human.csv into flat arrays of labelled entries.

    Args:
        class_index: trainable MID → class index.
        image_ids: the split's sorted ImageIDs (row i of the output is image_ids[i]).
    Returns:
        keys: int64 row·L + class, one per kept row, in file order (may repeat);
        labels: int8 ±1 aligned with keys;
        counts: {"rows_read", "rows_not_trainable", "rows_unknown_image"}.
    A progress bar (rows) is shown only on a terminal."""
    path = Path(path)
    _require(path)
    num_classes = len(class_index)
    key_chunks, label_chunks = [], []
    counts = {"rows_unknown_image": 0}
    chunk_ids, chunk_classes, chunk_labels = [], [], []

    def flush() -> None:
        """Look the chunk's images up at once and keep the rows of known images."""
        rows, found = _sorted_lookup(image_ids, np.asarray(chunk_ids, dtype=str))
        counts["rows_unknown_image"] += int((~found).sum())
        classes = np.asarray(chunk_classes, dtype=np.int64)
        key_chunks.append(rows[found] * num_classes + classes[found])
        label_chunks.append(np.asarray(chunk_labels, dtype=np.int8)[found])
        progress.update(len(chunk_ids))
        for chunk in (chunk_ids, chunk_classes, chunk_labels):
            chunk.clear()

    with open(path, newline="", encoding="utf-8") as handle, tqdm(
            desc=description, unit=" rows", unit_scale=True, disable=not sys.stderr.isatty()) as progress:
        reader = csv.reader(handle)
        header = next(reader, [])
        id_column, class_column, confidence_column = _header_columns(path, header,
                                                                     ANNOTATION_COLUMNS)
        num_columns, rows_read, rows_not_trainable = len(header), 0, 0
        for cells in reader:  # the hot loop: ~21M rows for V3 train; local names only
            if len(cells) != num_columns:
                if not cells:
                    continue
                raise _bad_row(path, reader.line_num, f"{len(cells)} cell(s) but the header has "
                               f"{num_columns} columns ({','.join(header)})")
            rows_read += 1
            label = CONFIDENCE_LABEL.get(cells[confidence_column])
            if label is None:
                raise _bad_row(path, reader.line_num, f"Confidence {cells[confidence_column]!r} is "
                               f"neither 1 (verified present) nor 0 (verified absent)")
            class_number = class_index.get(cells[class_column])
            if class_number is None:
                rows_not_trainable += 1
                continue
            chunk_ids.append(cells[id_column])
            chunk_classes.append(class_number)
            chunk_labels.append(label)
            if len(chunk_ids) == CHUNK_ROWS:
                flush()
        flush()
    counts.update(rows_read=rows_read, rows_not_trainable=rows_not_trainable)
    return np.concatenate(key_chunks), np.concatenate(label_chunks), counts


def merge_repeated_entries(keys: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                           dict]:
    """Sort the entries by key and keep each (image, class) once.

    Returns: (sorted unique keys, their labels, {"duplicate_rows": rows beyond the first of an
    entry, "conflicting_entries": entries whose rows disagree, dropped}).
    """
    order = np.argsort(keys, kind="stable")
    keys, labels = keys[order], labels[order]
    del order
    if len(keys) == 0 or (keys[1:] != keys[:-1]).all():
        return keys, labels, {"duplicate_rows": 0, "conflicting_entries": 0}
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    agreeing = np.minimum.reduceat(labels, starts) == np.maximum.reduceat(labels, starts)
    kept = starts[agreeing]
    return keys[kept], labels[kept], {"duplicate_rows": len(keys) - len(starts),
                                      "conflicting_entries": int((~agreeing).sum())}


def prepare_split(raw_dir: Path, split: str, image_dir: Path, class_mids: list[str]
                  ) -> tuple[SparseLabels, dict]:
    """One split's labels in CSR form, and the split's report (counts of everything dropped)."""
    num_classes = len(class_mids)
    image_ids = read_image_ids(Path(raw_dir) / split / "images.csv")
    on_disk = _sorted_lookup(list_image_files(Path(image_dir) / split), image_ids)[1]
    keys, labels, counts = read_annotations(
        Path(raw_dir) / split / "annotations-human.csv",
        {mid: index for index, mid in enumerate(class_mids)}, image_ids, f"{split} annotations")
    keys, labels, repeats = merge_repeated_entries(keys, labels)
    rows = keys // num_classes
    has_label = np.bincount(rows, minlength=len(image_ids)) > 0
    kept_images = has_label & on_disk
    if not kept_images.any():
        raise ValueError(f"{split}: no image is left (of {len(image_ids)} listed, "
                         f"{int(has_label.sum())} have a trainable label and "
                         f"{int(on_disk.sum())} are on disk under {Path(image_dir) / split})")
    kept_entries = kept_images[rows]
    new_row = np.cumsum(kept_images) - 1
    rows, keys, labels = new_row[rows[kept_entries]], keys[kept_entries], labels[kept_entries]
    indptr = np.zeros(int(kept_images.sum()) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(indptr) - 1), out=indptr[1:])
    sparse = SparseLabels(indptr, (keys % num_classes).astype(np.int32), labels,
                          image_ids[kept_images], np.asarray(class_mids, dtype=str))
    report = {"images_listed": len(image_ids),
              "images_without_trainable_label": int((~has_label).sum()),
              "images_missing_on_disk": int((has_label & ~on_disk).sum()),
              "images_kept": sparse.num_images,
              **counts, **repeats,
              "entries_of_missing_images": int((~kept_entries).sum()),
              "entries_kept": sparse.num_labelled,
              "positives": int((labels == 1).sum()), "negatives": int((labels == -1).sum())}
    return sparse, report


def prepare_openimages(raw_dir: Path, out_dir: Path, image_dir: Path | None = None,
                       splits: tuple[str, ...] = SPLITS) -> dict:
    """Write {split}_labels.npz for each split, class_names.txt and metadata.json into out_dir.

    image_dir: holds {split}/{ImageID}.jpg; default raw_dir/images.
    Returns the report: {"num_classes", "classes_without_description", "image_dir", "seconds",
    "splits": {split: prepare_split's report}}.
    """
    start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    image_dir = Path(image_dir) if image_dir is not None else raw_dir / "images"
    class_mids = read_trainable_classes(raw_dir / "classes-trainable.txt")
    descriptions = read_class_descriptions(raw_dir / "class-descriptions.csv")
    report = {"num_classes": len(class_mids),
              "classes_without_description": [mid for mid in class_mids
                                              if mid not in descriptions],
              "image_dir": str(image_dir.resolve()), "splits": {}}
    for split in splits:
        sparse, report["splits"][split] = prepare_split(raw_dir, split, image_dir, class_mids)
        save_sparse_labels(labels_file(out_dir, split), sparse)
        del sparse  # one split in memory at a time
    display_names = "".join(f"{descriptions.get(mid, mid)}\n" for mid in class_mids)
    atomic.save_text(out_dir / CLASS_NAMES_FILE, display_names)
    report["seconds"] = round(time.perf_counter() - start, 1)
    metadata = {"dataset": "openimages", "release": "V3 (2017_11)",
                "label_files": {split: labels_file(out_dir, split).name for split in splits},
                "split_roles": {split: SPLIT_ROLES[split] for split in splits},
                "image_path": "<image_dir>/<split>/<image_id>.jpg",
                "labels": "+1 verified present (Confidence 1), -1 verified absent (Confidence "
                          "0), unobserved otherwise",
                "class_names_file": CLASS_NAMES_FILE, "report": report}
    atomic.save_text(out_dir / METADATA_FILE, json.dumps(metadata, indent=1))
    return report


def format_report(report: dict) -> str:
    """The report as a few lines for the terminal."""
    lines = [f"{report['num_classes']} trainable classes "
             f"({len(report['classes_without_description'])} without a description, named by "
             f"their MID); images from {report['image_dir']}"]
    for split, counts in report["splits"].items():
        lines.append(
            f"{split}: {counts['images_kept']} images kept of {counts['images_listed']} listed "
            f"({counts['images_without_trainable_label']} without a trainable label, "
            f"{counts['images_missing_on_disk']} missing on disk); {counts['rows_read']} rows: "
            f"{counts['rows_not_trainable']} not trainable, {counts['rows_unknown_image']} of "
            f"unlisted images, {counts['duplicate_rows']} repeated, "
            f"{counts['conflicting_entries']} entries conflicting (dropped), "
            f"{counts['entries_of_missing_images']} of missing images; {counts['entries_kept']} "
            f"entries kept ({counts['positives']} +1, {counts['negatives']} -1)")
    lines.append(f"done in {report['seconds']} s")
    return "\n".join(lines)
