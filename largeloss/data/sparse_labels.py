"""Sparse observed labels for many classes: a CSR file format, a long-CSV reader, and the
training-set label store that holds only the labelled entries.

Encoding (docs/protocol.md): +1 observed positive, −1 observed negative, 0 unobserved. An entry absent
from the CSR arrays is unobserved.

One split of N images and L classes with nnz labelled entries (`SparseLabels`):
    indptr       int64 (N+1,)  image i's entries are [indptr[i], indptr[i+1]); indptr[0] = 0,
                 non-decreasing, indptr[N] = nnz
    indices      int32 (nnz,)  class index in [0, L), strictly increasing within an image
    values       int8  (nnz,)  +1 or −1
    image_ids    str   (N,)    unique image names (OpenImages: the ImageID; long CSV: the image
                 path relative to the image folder)
    class_names  str   (L,)    unique class identifiers in the model's column order (OpenImages:
                 the MIDs of classes-trainable.txt)

Files: one `.npz` per split holding these five arrays (`save_sparse_labels`, `load_sparse_labels`;
no pickles), or a long CSV `image,class,label` beside a class list (`read_long_csv`, format in
data/README.md). Memory is 8·(N+1) + 5·nnz bytes plus the names: OpenImages V3 train
(3.7M images, 21M entries) takes ~135 MB where a dense N×L int8 matrix takes 18.5 GB; at the
real density of its human-verified rows (~60 per image, 220M entries) ~1.1 GB. The check of a
loaded file walks the entries in chunks (CHECK_CHUNK), so its temporaries stay within 64 MB
rather than ~4 bytes per entry (0.9 GB at 220M entries).

`SparseLabelStore` is the training-set state built from these arrays, with the interface of
`losses.ObservedLabelStore` (rows, apply_relabel, num_relabeled, state_dict, load_state_dict).
"""
from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from largeloss.utils import atomic

CSR_KEYS = ("indptr", "indices", "values", "image_ids", "class_names")
LONG_CSV_COLUMNS = ("image", "class", "label")
CHECK_CHUNK = 1 << 24  # entries checked at a time: ~4 bytes of temporaries each, 64 MB at most


@dataclass(frozen=True)
class SparseLabels:
    """The observed labels of one split in CSR form (shapes and encodings in the module docstring).

    image_ids and class_names are numpy unicode arrays (a Python list of 3.7M strings would take
    ~4× the memory).
    """
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    image_ids: np.ndarray
    class_names: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_labelled(self) -> int:
        """nnz: the number of labelled (image, class) entries."""
        return len(self.indices)

    def entry_rows(self) -> np.ndarray:
        """nnz int64: the image (row) index of every entry, aligned with `indices`."""
        return np.repeat(np.arange(self.num_images, dtype=np.int64), np.diff(self.indptr))

    def labelled_per_class(self) -> tuple[np.ndarray, np.ndarray]:
        """(positives, negatives): two L-vectors of int64, the labelled entries of each class."""
        positive = self.values == 1
        return (np.bincount(self.indices[positive], minlength=self.num_classes),
                np.bincount(self.indices[~positive], minlength=self.num_classes))

    def to_dense(self) -> np.ndarray:
        """N×L int8 in {-1, 0, +1}. N·L bytes: for small sets and tests only."""
        dense = np.zeros((self.num_images, self.num_classes), dtype=np.int8)
        dense[self.entry_rows(), self.indices] = self.values
        return dense

    @classmethod
    def from_dense(cls, observed: np.ndarray, image_ids, class_names) -> SparseLabels:
        """The CSR form of an N×L matrix in {-1, 0, +1} (rows in order, classes ascending)."""
        observed = np.asarray(observed)
        rows, classes = np.nonzero(observed)  # row-major: classes ascend within a row
        indptr = np.zeros(observed.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=observed.shape[0]), out=indptr[1:])
        return cls(indptr, classes.astype(np.int32), observed[rows, classes].astype(np.int8),
                   np.asarray(image_ids, dtype=str), np.asarray(class_names, dtype=str))


def check_sparse_labels(labels: SparseLabels, source: str) -> None:
    """Raise ValueError naming `source` (usually the file) and what is wrong, unless `labels` is a
    well-formed CSR split: dtypes, shapes, indptr monotone from 0 to nnz, class indices in range
    and strictly increasing within each image, values ±1, unique image and class names."""
    for key in CSR_KEYS:
        array = getattr(labels, key)
        if not isinstance(array, np.ndarray) or array.ndim != 1:
            raise ValueError(f"{source}: {key} must be a 1-D array, got "
                             f"{getattr(array, 'shape', type(array).__name__)}")
    for key, expected in (("indptr", np.integer), ("indices", np.integer), ("values", np.integer),
                          ("image_ids", np.str_), ("class_names", np.str_)):
        dtype = getattr(labels, key).dtype
        if not np.issubdtype(dtype, expected):
            raise ValueError(f"{source}: {key} has dtype {dtype}, expected "
                             f"{'integers' if expected is np.integer else 'unicode strings'}")
    indptr, indices, values = labels.indptr, labels.indices, labels.values
    num_images, num_classes = len(labels.image_ids), len(labels.class_names)
    if len(indptr) != num_images + 1:
        raise ValueError(f"{source}: indptr has {len(indptr)} entries, expected N+1 = "
                         f"{num_images + 1} for {num_images} image ids")
    if len(values) != len(indices):
        raise ValueError(f"{source}: {len(indices)} indices but {len(values)} values")
    if indptr[0] != 0 or indptr[-1] != len(indices):
        raise ValueError(f"{source}: indptr must run from 0 to nnz = {len(indices)}, got "
                         f"{indptr[0]} … {indptr[-1]}")
    row_lengths = np.diff(indptr)
    if (row_lengths < 0).any():
        raise ValueError(f"{source}: indptr decreases at image {int(np.argmax(row_lengths < 0))}")
    if len(indices) and (indices.min() < 0 or indices.max() >= num_classes):
        bad = int(np.argmax((indices < 0) | (indices >= num_classes)))
        raise ValueError(f"{source}: class index {indices[bad]} (entry {bad}) outside "
                         f"[0, {num_classes})")
    for start in range(0, len(indices), CHECK_CHUNK):  # bounded temporaries (module docstring)
        _check_entry_chunk(labels, source, start, min(start + CHECK_CHUNK, len(indices)))
    for key in ("image_ids", "class_names"):
        names = np.sort(getattr(labels, key))
        repeated = names[1:] == names[:-1]
        if repeated.any():
            raise ValueError(f"{source}: {key} holds {str(names[np.argmax(repeated)])!r} more "
                             f"than once")


def _check_entry_chunk(labels: SparseLabels, source: str, start: int, end: int) -> None:
    """check_sparse_labels on entries [start, end): values ±1, classes strictly increasing within
    each image (entry `start` compared with the one before it)."""
    indptr, indices, values = labels.indptr, labels.indices, labels.values
    bad_values = (values[start:end] != 1) & (values[start:end] != -1)  # not np.isin: it sorts
    if bad_values.any():
        bad = start + int(np.argmax(bad_values))
        raise ValueError(f"{source}: value {values[bad]} (entry {bad}) is not +1 or -1")
    first = max(start, 1)  # entries first … end−1, each against the entry before it
    starts_a_row = np.zeros(end - first, dtype=bool)
    row_starts = indptr[(indptr >= first) & (indptr < end)]
    starts_a_row[row_starts - first] = True
    unordered = ~starts_a_row & (indices[first:end] <= indices[first - 1:end - 1])
    if unordered.any():
        entry = first + int(np.argmax(unordered))
        image = int(np.searchsorted(indptr, entry, side="right")) - 1
        raise ValueError(f"{source}: image {image} ({str(labels.image_ids[image])!r}) lists its "
                         f"classes out of order or twice (class {indices[entry]} after "
                         f"{indices[entry - 1]}); each image's classes must strictly increase")


def save_sparse_labels(path: Path, labels: SparseLabels) -> None:
    """Validate `labels`, then write them to `path` (.npz, uncompressed) atomically."""
    check_sparse_labels(labels, str(path))
    canonical = _canonical(labels)
    def write(temporary: Path) -> None:  # a file object: np.savez adds no ".npz" to the name
        with open(temporary, "wb") as handle:
            np.savez(handle, **{key: getattr(canonical, key) for key in CSR_KEYS})
    atomic.write_atomically(path, write)


def load_sparse_labels(path: Path) -> SparseLabels:
    """Read and validate a split written by `save_sparse_labels`; integer arrays come back in the
    canonical dtypes (indptr int64, indices int32, values int8).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: not an .npz of plain arrays, a missing array, or malformed CSR (the message
            names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; `python scripts/prepare_data.py --dataset "
                                f"openimages ...` writes it (see data/README.md)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} could not be read as an .npz file: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, expected an .npz archive of "
                         f"{list(CSR_KEYS)}")
    with archive:
        missing = [key for key in CSR_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; a sparse label file holds "
                             f"{list(CSR_KEYS)}")
        try:
            arrays = {key: archive[key] for key in CSR_KEYS}
        except ValueError as error:  # an object array (pickle) among them
            raise ValueError(f"{path} could not be read as plain numpy arrays: {error}") from error
    labels = SparseLabels(**arrays)
    check_sparse_labels(labels, str(path))
    return _canonical(labels)


def _canonical(labels: SparseLabels) -> SparseLabels:
    """The same labels with the integer arrays in their documented dtypes (after validation, so
    no value is out of range for them)."""
    return SparseLabels(labels.indptr.astype(np.int64, copy=False),
                        labels.indices.astype(np.int32, copy=False),
                        labels.values.astype(np.int8, copy=False),
                        labels.image_ids, labels.class_names)


# --- the long CSV: image,class,label -------------------------------------------------------------

def read_class_names(path: Path) -> list[str]:
    """A class list: one name per line, in the model's column order (blank lines skipped).
    Raises ValueError naming the file and line of a duplicate."""
    path = Path(path)
    names, first_line_of = [], {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in first_line_of:
            raise ValueError(f"{path}, line {line_number}: duplicate class {name!r} (first on "
                             f"line {first_line_of[name]})")
        first_line_of[name] = line_number
        names.append(name)
    if not names:
        raise ValueError(f"{path} lists no class")
    return names


def _parse_label(text: str, where: str) -> int:
    """A long-CSV label cell: 1 (or +1, 1.0) → +1, -1 → −1; anything else is an error."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in (1.0, -1.0):
        raise ValueError(f"{where}: label {text!r} is not 1 or -1 (the long CSV lists labelled "
                         f"entries only: leave unknown ones out)")
    return int(value)


def is_long_csv(path: Path) -> bool:
    """Whether a label CSV is in the long form: its header names image, class and label."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = {cell.strip().lower() for cell in next(csv.reader(handle), [])}
    return set(LONG_CSV_COLUMNS) <= header


def _refuse_repeated_entries(path: Path, sorted_keys: np.ndarray, lines: np.ndarray,
                             image_ids: list[str], class_names: list[str]) -> None:
    """ValueError at the earliest line that repeats an (image, class) entry; keys sorted stably."""
    repeated = np.nonzero(sorted_keys[1:] == sorted_keys[:-1])[0] + 1
    if len(repeated):
        second = repeated[np.argmin(lines[repeated])]  # the earliest repeat in the file
        raise ValueError(f"{path}, line {lines[second]}: duplicate entry for image "
                         f"{image_ids[sorted_keys[second] // len(class_names)]!r}, class "
                         f"{class_names[sorted_keys[second] % len(class_names)]!r} (first on line "
                         f"{lines[second - 1]})")


def read_long_csv(path: Path, class_names: list[str]) -> SparseLabels:
    """Read a long label CSV into CSR form.

    File: a header naming the columns `image`, `class`, `label` (any order, case-insensitive;
    extra columns are ignored), then one labelled entry per line: the image path, a class name
    from `class_names`, and 1 (positive) or -1 (negative). Images take rows in the order of their
    first line; an image's entries may be spread over the file.

    Raises:
        ValueError naming the file and the (1-based) line: a missing column, an empty image
        name, an unknown class, a label other than ±1, the same (image, class) twice.
    """
    path = Path(path)
    class_index = {name: index for index, name in enumerate(class_names)}
    row_of_image: dict[str, int] = {}
    rows, classes, labels, lines = [], [], [], []
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: files saved by Excel
        reader = csv.reader(handle)
        header = [cell.strip().lower() for cell in next(reader, [])]
        if not header:
            raise ValueError(f"{path} is empty; expected a header line 'image,class,label'")
        for column in LONG_CSV_COLUMNS:
            if column not in header:
                raise ValueError(f"{path}, line 1: missing column {column!r}; the header must "
                                 f"name the columns image,class,label (got {','.join(header)})")
        image_column, class_column, label_column = (header.index(c) for c in LONG_CSV_COLUMNS)
        width = max(image_column, class_column, label_column) + 1
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            line = reader.line_num
            if len(cells) < width:
                raise ValueError(f"{path}, line {line}: {len(cells)} cell(s), a column is "
                                 f"missing (header: {','.join(header)})")
            image, class_name = cells[image_column].strip(), cells[class_column].strip()
            if not image:
                raise ValueError(f"{path}, line {line}: empty image name")
            if class_name not in class_index:
                raise ValueError(f"{path}, line {line}: unknown class {class_name!r} (not one of "
                                 f"the {len(class_names)} classes of the class list)")
            labels.append(_parse_label(cells[label_column].strip(), f"{path}, line {line}"))
            rows.append(row_of_image.setdefault(image, len(row_of_image)))
            classes.append(class_index[class_name])
            lines.append(line)
    if not rows:
        raise ValueError(f"{path} has a header but no labelled entry")
    keys = np.asarray(rows, dtype=np.int64) * len(class_names) + np.asarray(classes)
    order = np.argsort(keys, kind="stable")  # stable: equal keys keep their file order
    keys = keys[order]
    _refuse_repeated_entries(path, keys, np.asarray(lines)[order], list(row_of_image), class_names)
    indptr = np.zeros(len(row_of_image) + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // len(class_names), minlength=len(row_of_image)), out=indptr[1:])
    return SparseLabels(indptr, (keys % len(class_names)).astype(np.int32),
                        np.asarray(labels, dtype=np.int8)[order],
                        np.asarray(list(row_of_image), dtype=str),
                        np.asarray(class_names, dtype=str))


# --- the training-set state ---------------------------------------------------------------------


