"""OpenImages (V3, V6 or V7) → sparse label files, for `scripts/prepare_data.py --dataset
openimages`.

Real partial labels: for each image, human verifiers marked some classes present (Confidence 1 →
observed +1) and some absent (Confidence 0 → observed −1); every other class is unobserved (0).
The train split is the supervision, validation is for model selection, and the labelled entries
of validation and test are their evaluation masks (metrics.sparse_masked_average_precisions).

RAW layouts (the official file names; RELEASES holds them, one table row per release, and the
release is recognised from the files present or given as --release):
    V3 ("2017_11", the LL paper's; RAW is the unpacked 2017_11/ folder):
        RAW/classes-trainable.txt, RAW/class-descriptions.csv (no header),
        RAW/{split}/images.csv, RAW/{split}/annotations-human.csv
    V6 (flat, as downloaded):
        RAW/oidv6-classes-trainable.txt, RAW/oidv6-class-descriptions.csv (header row),
        RAW/oidv6-train-images-with-labels-with-rotation.csv, RAW/validation-images-with-rotation.csv,
        RAW/test-images-with-rotation.csv,
        RAW/oidv6-train-annotations-human-imagelabels.csv,
        RAW/validation-annotations-human-imagelabels.csv, RAW/test-annotations-human-imagelabels.csv
    V7: RAW/oidv7-classes-trainable.txt, RAW/oidv7-class-descriptions.csv (header row),
        RAW/oidv7-{train,val,test}-annotations-human-imagelabels.csv (note "val"), V6's image lists
with split in train, validation, test; in every release:
    classes-trainable   one class MID per line: the model's classes, in this order
    class descriptions  MID,display name (names may be quoted)
    image lists         a header with an ImageID column: the split's images
    annotations         ImageID,Source,LabelName,Confidence (header row)
    IMAGE_DIR/{split}/{ImageID}.jpg  the downloaded images (IMAGE_DIR defaults to RAW/images)

Per split, out_dir/{split}_labels.npz (sparse_labels.py's CSR format; image_ids are ImageIDs,
class_names the trainable MIDs), and once class_names.txt (display names in the model's order),
classes.csv (index,mid,display_name: the MID beside each name, since display names repeat: 53
trainable V3 classes share theirs with another, e.g. "Iris") and metadata.json (the release,
where the images are, and the report below).

What is dropped, each counted in the report:
    rows whose LabelName is not a trainable class;
    rows whose ImageID is not in the split's image list;
    repeated (image, class) rows: agreeing repeats are kept once, and an entry whose rows
        disagree (Confidence 1 and 0) is dropped, i.e. left unobserved;
    images with no trainable label left (including images that have no human label at all);
    images that have labels but no file IMAGE_DIR/{split}/{ImageID}.jpg (downloads miss some).
Images come out sorted by ImageID; each image's classes ascend. A malformed row (a cell count
other than the header's, a Confidence other than 0 or 1) is an error naming the file and line.

Memory: the annotation CSV is streamed; what is kept is 9 bytes per trainable row (an int64 key
row·L + class and an int8 label) plus the image ids (64 bytes each as a unicode array).
docs/openimages_releases.md gives the measured time and peak memory per release.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass
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
CLASSES_FILE = "classes.csv"  # index,mid,display_name: the MID beside each display name
METADATA_FILE = "metadata.json"
CHUNK_ROWS = 1 << 18  # rows (or names) parsed between two vectorised steps


@dataclass(frozen=True)
class Release:
    """One release's file names in RAW (the official ones): the same row format, other names.

    images and annotations map each split (train, validation, test) to a path relative to RAW.
    descriptions_header: whether the class descriptions start with a header row."""
    name: str
    trainable: str
    descriptions: str
    descriptions_header: bool
    images: dict[str, str]
    annotations: dict[str, str]


_V6_IMAGE_LISTS = {"train": "oidv6-train-images-with-labels-with-rotation.csv",
                   "validation": "validation-images-with-rotation.csv",
                   "test": "test-images-with-rotation.csv"}
RELEASES = {
    "v3": Release("V3", "classes-trainable.txt", "class-descriptions.csv", False,
                  {split: f"{split}/images.csv" for split in SPLITS},
                  {split: f"{split}/annotations-human.csv" for split in SPLITS}),
    "v6": Release("V6", "oidv6-classes-trainable.txt", "oidv6-class-descriptions.csv", True,
                  _V6_IMAGE_LISTS,
                  {"train": "oidv6-train-annotations-human-imagelabels.csv",
                   "validation": "validation-annotations-human-imagelabels.csv",
                   "test": "test-annotations-human-imagelabels.csv"}),
    "v7": Release("V7", "oidv7-classes-trainable.txt", "oidv7-class-descriptions.csv", True,
                  _V6_IMAGE_LISTS,
                  {"train": "oidv7-train-annotations-human-imagelabels.csv",
                   "validation": "oidv7-val-annotations-human-imagelabels.csv",
                   "test": "oidv7-test-annotations-human-imagelabels.csv"}),
}


def detect_release(raw_dir: Path) -> Release:
    """The release whose classes-trainable file RAW holds. Raises FileNotFoundError when none
    does, ValueError when several do (then --release chooses)."""
    raw_dir = Path(raw_dir)
    found = [release for release in RELEASES.values() if (raw_dir / release.trainable).is_file()]
    if len(found) == 1:
        return found[0]
    expected = ", ".join(f"{release.trainable} ({release.name})" for release in RELEASES.values())
    if not found:
        raise FileNotFoundError(f"{raw_dir} holds none of {expected}: not an OpenImages folder "
                                f"(V3: the unpacked 2017_11/ folder; V6/V7: the downloaded files "
                                f"side by side; see docs/openimages_releases.md)")
    raise ValueError(f"{raw_dir} holds the files of several releases "
                     f"({', '.join(release.name for release in found)}): pass --release")


def labels_file(out_dir: Path, split: str) -> Path:
    return Path(out_dir) / f"{split}_labels.npz"


def read_trainable_classes(path: Path) -> list[str]:
    """The MIDs of classes-trainable.txt in file order (the model's column order)."""
    _require(Path(path))
    return read_class_names(path)


def read_class_descriptions(path: Path, header: bool = False) -> dict[str, str]:
    """MID → display name from the class descriptions (a quoted name may hold a comma).

    header: the file starts with a header row (V6, V7: LabelName,DisplayName), skipped; a first
    row that is a MID where a header is expected is an error."""
    path = Path(path)
    _require(path)
    names = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        if header:
            first = next(reader, [])
            if first and first[0].strip().startswith("/"):
                raise ValueError(f"{path}, line 1: {','.join(first)!r} is a class, expected the "
                                 f"header row (LabelName,DisplayName) of this release's file")
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
        raise FileNotFoundError(f"missing {path}; docs/openimages_releases.md gives the layout "
                                f"of --raw_dir per release")


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


def prepare_split(raw_dir: Path, split: str, image_dir: Path, class_mids: list[str],
                  release: Release = RELEASES["v3"]) -> tuple[SparseLabels, dict]:
    """One split's labels in CSR form, and the split's report (counts of everything dropped);
    the release's table row says where its files are."""
    num_classes = len(class_mids)
    image_ids = read_image_ids(Path(raw_dir) / release.images[split])
    on_disk = _sorted_lookup(list_image_files(Path(image_dir) / split), image_ids)[1]
    keys, labels, counts = read_annotations(
        Path(raw_dir) / release.annotations[split],
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


def resolve_release(raw_dir: Path, name: str | None = None) -> Release:
    """RELEASES[name] ("v3", "v6", "v7"), or with no name the one `detect_release` finds."""
    if name is None:
        return detect_release(raw_dir)
    if name.lower() not in RELEASES:
        raise ValueError(f"unknown OpenImages release {name!r}; known: {', '.join(RELEASES)}")
    return RELEASES[name.lower()]


def prepare_openimages(raw_dir: Path, out_dir: Path, image_dir: Path | None = None,
                       splits: tuple[str, ...] = SPLITS, release: str | None = None) -> dict:
    """Write {split}_labels.npz for each split, class_names.txt, classes.csv and metadata.json
    into out_dir.

    image_dir: holds {split}/{ImageID}.jpg; default raw_dir/images. release: "v3", "v6", "v7",
    or None to recognise it from the files in raw_dir.
    Returns the report: {"release", "num_classes", "classes_without_description", "image_dir",
    "seconds", "splits": {split: prepare_split's report}}.
    """
    start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    found = resolve_release(raw_dir, release)
    image_dir = Path(image_dir) if image_dir is not None else raw_dir / "images"
    class_mids = read_trainable_classes(raw_dir / found.trainable)
    descriptions = read_class_descriptions(raw_dir / found.descriptions, found.descriptions_header)
    report = {"release": found.name, "num_classes": len(class_mids),
              "classes_without_description": [mid for mid in class_mids
                                              if mid not in descriptions],
              "image_dir": str(image_dir.resolve()), "splits": {}}
    for split in splits:
        sparse, report["splits"][split] = prepare_split(raw_dir, split, image_dir, class_mids,
                                                        found)
        save_sparse_labels(labels_file(out_dir, split), sparse)
        del sparse  # one split in memory at a time
    display_names = [descriptions.get(mid, mid) for mid in class_mids]
    atomic.save_text(out_dir / CLASS_NAMES_FILE, "".join(f"{name}\n" for name in display_names))
    atomic.save_text(out_dir / CLASSES_FILE, classes_csv(class_mids, display_names))
    report["seconds"] = round(time.perf_counter() - start, 1)
    metadata = {"dataset": "openimages", "release": found.name,
                "raw_files": {"trainable": found.trainable, "descriptions": found.descriptions,
                              "images": found.images, "annotations": found.annotations},
                "label_files": {split: labels_file(out_dir, split).name for split in splits},
                "split_roles": {split: SPLIT_ROLES[split] for split in splits},
                "image_path": "<image_dir>/<split>/<image_id>.jpg",
                "labels": "+1 verified present (Confidence 1), -1 verified absent (Confidence "
                          "0), unobserved otherwise",
                "class_names_file": CLASS_NAMES_FILE, "classes_file": CLASSES_FILE,
                "report": report}
    atomic.save_text(out_dir / METADATA_FILE, json.dumps(metadata, indent=1))
    return report


def classes_csv(class_mids: list[str], display_names: list[str]) -> str:
    """classes.csv's text: a header index,mid,display_name, then one row per class in the model's
    order (names quoted where they hold a comma)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "mid", "display_name"])
    writer.writerows((index, mid, name) for index, (mid, name) in
                     enumerate(zip(class_mids, display_names)))
    return text.getvalue()


def read_release(data_root: Path) -> str | None:
    """The release a prepared folder holds ("V3", "V6", "V7"), from its metadata.json; None when
    the folder has no readable metadata. Folders prepared before V6/V7 say "V3 (2017_11)"."""
    metadata_file = Path(data_root) / METADATA_FILE
    if not metadata_file.is_file():
        return None
    try:
        release = json.loads(metadata_file.read_text()).get("release")
    except json.JSONDecodeError:
        return None
    return release.split()[0] if isinstance(release, str) and release.strip() else None


def format_report(report: dict) -> str:
    """The report as a few lines for the terminal."""
    lines = [f"OpenImages {report['release']}: {report['num_classes']} trainable classes "
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
