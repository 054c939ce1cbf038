"""Pseudo-label folders (docs/pseudo_labels.md): what a frozen vision-language model said about each training
image, computed once offline (scripts/make_pseudo_labels.py) and read, never written, by training.

A `<name>.pl/` folder holds plain .npy files (loaded with allow_pickle=False, the numeric arrays
memory-mapped) and meta.json:

    image_ids.npy  unicode (N,)        relative image paths, as the rows of the dataset's image list
    labels.npy     int8 (N, F, L)      hard pseudo-labels y' in {-1, 0, +1} (negative/unknown/positive)
    scores.npy     float16 (N, F, V, L) raw cosine similarities c in [-1, 1] (no temperature, no softmax)
    meta.json      format_version, num_classes, class_names_sha256, kind, views, flips, ...

F flip variants: f = 0 the image as stored, f = 1 horizontally flipped (F = 1: unflipped only).
V views: r = 0 the whole image; r = 1 + y·g + x the tile at row y, column x of a g×g grid (V = 1 or
g² + 1). At least one of labels/scores exists. Temperatures, thresholds and top-k are training
hyper-parameters applied to `scores` by the method; `labels` serve methods whose rule is fixed.

Contract with the methods (registry.Method):
    a method declares `needs_pseudo_labels = True` and receives the run's PseudoLabels (already
    moved to its device) as the keyword `pseudo_labels` of its __init__ (methods.build passes it);
    a method that also declares `needs_flips = True` gets `flipped` (B bool, True where the training
    image of that row was flipped; None when no flip was drawn, e.g. on cached features) as a
    keyword of its loss(): the engine calls `method.loss_of_batch(logits, sample_ids, epoch,
    flipped)`. Then
        labels, scores = pseudo_labels.rows(sample_ids, flipped)     # policy match-train (VLPL)
        scores = pseudo_labels.views(sample_ids, random_view_flips(...))   # per-view (AEVLP)
        scores = pseudo_labels.views(sample_ids)                      # fixed: f = 0 everywhere
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from largeloss.utils.atomic import save_npy, save_text
from largeloss.utils.errors import InputError

FORMAT_VERSION = 1
SUFFIX = ".pl"
SCORE_LIMIT = 1.0 + 1e-3   # |cosine| above this is not a cosine (float16 rounding allowed)
CHECK_CHUNK_ROWS = 4096    # rows validated at a time (bounded memory on COCO/NUS-sized files)


def class_names_sha256(class_names) -> str:
    """SHA-256 of the class names joined by newlines (meta.json's class_names_sha256)."""
    return hashlib.sha256("\n".join(class_names).encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)  # identity, not an element-wise tensor comparison
class PseudoLabels:
    """The rows of a pseudo-label folder for one training split.

    image_ids: (N,) the training split's ids, in the split's order (sample id i ↔ image_ids[i]).
    file_rows: N int64, the row of the folder's arrays holding sample i.
    labels: (rows, F, L) int8 in {-1, 0, +1}, or None; scores: (rows, F, V, L) float16, or None.
        On the CPU they are the memory-mapped files (copy-on-write pages, never written); `to`
        a GPU copies the N training rows there once (COCO: 357 MB of scores), so that a step's
        lookup is device indexing without a host sync.
    meta: meta.json as a dict.
    """
    path: Path
    image_ids: np.ndarray
    class_names: tuple
    meta: dict
    file_rows: Tensor
    labels: Tensor | None
    scores: Tensor | None

    @property
    def num_flips(self) -> int:
        """F: 1 (unflipped only) or 2 (unflipped, flipped)."""
        return (self.labels if self.labels is not None else self.scores).shape[1]

    @property
    def num_views(self) -> int:
        """V of `scores` (1: the global view only; g² + 1 with a g×g grid); 0 without scores."""
        return 0 if self.scores is None else self.scores.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.file_rows.device

    def __len__(self) -> int:
        return len(self.file_rows)

    def to(self, device: torch.device | str) -> PseudoLabels:
        """The same pseudo-labels on `device`: on the CPU unchanged (memory-mapped), elsewhere the
        training rows copied there (then file_rows is 0..N−1)."""
        device = torch.device(device)
        if device.type == "cpu" and self.device.type == "cpu":
            return self
        rows = self.file_rows.cpu()
        return replace(self, file_rows=torch.arange(len(rows), device=device),
                       labels=None if self.labels is None else self.labels[rows].to(device),
                       scores=None if self.scores is None else self.scores[rows].to(device))

    def _variant(self, file_rows: Tensor, flipped: Tensor | None) -> Tensor:
        """The flip variant per row: `flipped` as 0/1 when the file has F = 2, else 0."""
        if flipped is None or self.num_flips == 1:
            return torch.zeros_like(file_rows)
        return flipped.to(device=file_rows.device, dtype=torch.long)

    def rows(self, sample_ids: Tensor, flipped: Tensor | None = None
             ) -> tuple[Tensor | None, Tensor | None]:
        """A batch's pseudo-labels of one flip variant, on sample_ids' device.

        sample_ids: B training-split rows (int64). flipped: B bool, the flip of each row's training
        image, or None. The variant is f = flipped[i] (policy match-train, VLPL) when the file has
        F = 2; with F = 1 or flipped None it is f = 0 (the unflipped image) for every row.
        Returns (labels B×L int8 in {-1, 0, +1}, or None without labels.npy;
                 scores B×L float32 of view r = 0, the whole image, or None without scores.npy).
        """
        file_rows = self.file_rows[sample_ids.to(self.device)]
        variant = self._variant(file_rows, flipped)
        labels = None if self.labels is None else self.labels[file_rows, variant]
        scores = None if self.scores is None else self.scores[file_rows, variant, 0].float()
        out = sample_ids.device
        return (None if labels is None else labels.to(out),
                None if scores is None else scores.to(out))

    def views(self, sample_ids: Tensor, view_flips: Tensor | None = None) -> Tensor:
        """Every view's scores of a batch, on sample_ids' device: B×V×L float32 cosines.

        view_flips: B×V bool, the flip variant of each view (policy per-view, AEVLP: draw them
        with random_view_flips); None: f = 0 for every view (policy fixed). A file with F = 1 has
        only f = 0, whatever view_flips says. Raises ValueError when the folder has no scores."""
        if self.scores is None:
            raise ValueError(f"{self.path} has no scores.npy (only hard labels)")
        file_rows = self.file_rows[sample_ids.to(self.device)]
        view_index = torch.arange(self.num_views, device=self.device)
        if view_flips is None or self.num_flips == 1:
            variant = torch.zeros((len(file_rows), self.num_views), dtype=torch.long,
                                  device=self.device)
        else:
            variant = view_flips.to(device=self.device, dtype=torch.long)
        scores = self.scores[file_rows[:, None], variant, view_index[None, :]]
        return scores.float().to(sample_ids.device)


def random_view_flips(batch_size: int, num_views: int, device: torch.device | str,
                      generator: torch.Generator | None = None) -> Tensor:
    """B×V bool, each view's own flip bit ~ Bernoulli(0.5) (docs/pseudo_labels.md policy per-view). From
    the device's default generator unless `generator` is given: seeded and saved in checkpoints by
    the engine, and identical on every process, which all see the global batch."""
    return torch.rand((batch_size, num_views), device=device, generator=generator) < 0.5


# --- reading and checking a folder ------------------------------------------------------------

def load_pseudo_labels(path: Path | str, image_ids, class_names) -> PseudoLabels:
    """The pseudo-labels of a training split from a `<name>.pl/` folder, checked.

    image_ids: the training split's N ids (relative image paths, in split order); the folder may
    hold more rows (e.g. the whole official train split): rows are selected by id.
    class_names: the dataset's L class names.
    Raises InputError (one line naming the file and the first offending row) for: a missing file,
    a missing or duplicate id, a class count or class-name hash that differs, labels outside
    {-1, 0, +1} or not int8, scores not float16, not finite or beyond |c| ≤ 1 + 1e-3, F ∉ {1, 2}, V
    not as meta.json says, shapes that disagree.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"--pseudo_labels {folder}: no such folder (make one with "
                         f"scripts/make_pseudo_labels.py; docs/pseudo_labels.md)")
    meta = read_meta(folder)
    class_names = tuple(class_names)
    check_meta(folder, meta, class_names)
    file_ids = read_image_ids(folder)
    labels = read_array(folder / "labels.npy", np.int8, 3)
    scores = read_array(folder / "scores.npy", np.float16, 4)
    if labels is None and scores is None:
        raise InputError(f"{folder}: holds neither labels.npy nor scores.npy (at least one is needed)")
    check_shapes(folder, meta, len(file_ids), len(class_names), labels, scores)
    if labels is not None:
        check_label_values(folder / "labels.npy", labels)
    if scores is not None:
        check_score_values(folder / "scores.npy", scores)
    file_rows = select_rows(folder / "image_ids.npy", file_ids, image_ids)
    return PseudoLabels(folder, np.asarray(image_ids, dtype=str), class_names, meta,
                        torch.from_numpy(file_rows),
                        None if labels is None else torch.from_numpy(labels),
                        None if scores is None else torch.from_numpy(scores))


def read_meta(folder: Path) -> dict:
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise InputError(f"{meta_file} is missing (a pseudo-label folder needs meta.json)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{meta_file} is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_file} must hold a JSON object")
    return meta


def check_meta(folder: Path, meta: dict, class_names: tuple) -> None:
    """Format version, class count and class-name hash against the dataset's."""
    meta_file = folder / "meta.json"
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{meta_file}: format_version {version!r}, this tool reads "
                         f"{FORMAT_VERSION}")
    if meta.get("num_classes") != len(class_names):
        raise InputError(f"{meta_file}: num_classes {meta.get('num_classes')!r}, the dataset has "
                         f"{len(class_names)} classes")
    recorded = meta.get("class_names_sha256")
    if recorded is not None and recorded != class_names_sha256(class_names):
        raise InputError(f"{meta_file}: class_names_sha256 differs from the dataset's class names "
                         f"(made for another class list or order; first names here: "
                         f"{list(class_names[:3])})")


def read_image_ids(folder: Path) -> np.ndarray:
    ids_file = folder / "image_ids.npy"
    if not ids_file.is_file():
        raise InputError(f"{ids_file} is missing")
    try:
        ids = np.load(ids_file, allow_pickle=False)
    except ValueError as error:
        raise InputError(f"{ids_file}: cannot read ({error}); expected a unicode array") from None
    if ids.dtype.kind != "U" or ids.ndim != 1:
        raise InputError(f"{ids_file}: expected a 1-D unicode array, got {ids.dtype} with shape "
                         f"{ids.shape}")
    return ids


def read_array(path: Path, dtype, ndim: int) -> np.ndarray | None:
    """The memory-mapped array (copy-on-write: never written back), None when the file is
    absent; InputError for another dtype or number of dimensions."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except ValueError as error:
        raise InputError(f"{path}: cannot read ({error})") from None
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise InputError(f"{path}: expected {np.dtype(dtype).name} with {ndim} dimensions, got "
                         f"{array.dtype.name} with shape {array.shape}")
    return array


def check_shapes(folder: Path, meta: dict, num_rows: int, num_classes: int,
                 labels: np.ndarray | None, scores: np.ndarray | None) -> None:
    """Rows, F, V and L of labels (N, F, L) and scores (N, F, V, L) against each other and meta."""
    for name, array in (("labels.npy", labels), ("scores.npy", scores)):
        if array is None:
            continue
        path = folder / name
        if array.shape[0] != num_rows:
            raise InputError(f"{path}: {array.shape[0]} rows, image_ids.npy has {num_rows}")
        if array.shape[1] not in (1, 2):
            raise InputError(f"{path}: {array.shape[1]} flip variants, expected 1 or 2")
        if array.shape[-1] != num_classes:
            raise InputError(f"{path}: {array.shape[-1]} classes, the dataset has {num_classes}")
    if labels is not None and scores is not None and labels.shape[1] != scores.shape[1]:
        raise InputError(f"{folder}: labels.npy has {labels.shape[1]} flip variants, scores.npy "
                         f"{scores.shape[1]}")
    if scores is not None:
        grid = meta.get("grid")
        expected = meta.get("views", 1 if not grid else grid * grid + 1)
        if scores.shape[2] != expected:
            raise InputError(f"{folder / 'scores.npy'}: {scores.shape[2]} views, meta.json says "
                             f"{expected}")


def check_label_values(path: Path, labels: np.ndarray) -> None:
    for start in range(0, len(labels), CHECK_CHUNK_ROWS):
        chunk = np.asarray(labels[start:start + CHECK_CHUNK_ROWS])
        bad = ~np.isin(chunk, (-1, 0, 1))
        if bad.any():
            row = start + int(np.nonzero(bad.reshape(len(chunk), -1).any(axis=1))[0][0])
            raise InputError(f"{path}: row {row} holds {int(chunk[row - start][bad[row - start]][0])}; "
                             f"pseudo-labels are -1, 0 or +1")


def check_score_values(path: Path, scores: np.ndarray) -> None:
    for start in range(0, len(scores), CHECK_CHUNK_ROWS):
        chunk = np.asarray(scores[start:start + CHECK_CHUNK_ROWS], dtype=np.float32)
        bad = ~(np.abs(chunk) <= SCORE_LIMIT)  # also catches nan
        if bad.any():
            row = start + int(np.nonzero(bad.reshape(len(chunk), -1).any(axis=1))[0][0])
            raise InputError(f"{path}: row {row} holds {chunk[row - start][bad[row - start]][0]}; "
                             f"scores are cosine similarities, finite with |c| <= 1")


def select_rows(ids_file: Path, file_ids: np.ndarray, image_ids) -> np.ndarray:
    """N int64: the file row of each training id; InputError for a duplicate or missing id."""
    order = np.argsort(file_ids, kind="stable")
    sorted_ids = file_ids[order]
    duplicate = np.nonzero(sorted_ids[1:] == sorted_ids[:-1])[0]
    if len(duplicate):
        first = sorted(order[duplicate[0]:duplicate[0] + 2])
        raise InputError(f"{ids_file}: id {str(sorted_ids[duplicate[0]])!r} appears twice (rows "
                         f"{first[0]} and {first[1]})")
    wanted = np.asarray(image_ids, dtype=str)
    position = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[position] == wanted) if len(sorted_ids) else np.zeros(len(wanted), bool)
    if not found.all():
        missing = np.nonzero(~found)[0]
        raise InputError(f"{ids_file}: training image {str(wanted[missing[0]])!r} (training row "
                         f"{missing[0]}) is missing, {len(missing)} of {len(wanted)} training "
                         f"ids in all; make the folder for this dataset's training split")
    return order[position].astype(np.int64)


# --- writing a folder -------------------------------------------------------------------------

def save_pseudo_labels(path: Path | str, image_ids, class_names, meta: dict,
                       labels: np.ndarray | None = None,
                       scores: np.ndarray | None = None) -> Path:
    """Write a `<name>.pl/` folder, each file atomically (a crash leaves no half-written file).

    image_ids: (N,) str. labels: (N, F, L) in {-1, 0, +1} (stored int8). scores: (N, F, V, L)
    cosines (stored float16). meta: the producer's fields (kind, model, pretrained, preprocess,
    grid, ...); format_version, num_classes, class_names_sha256, flips and views are set here.
    The arrays are checked as load_pseudo_labels checks them (ValueError naming the problem).
    Returns the folder.
    """
    folder = Path(path)
    image_ids = np.asarray(image_ids, dtype=str)
    class_names = tuple(class_names)
    if labels is None and scores is None:
        raise ValueError("save_pseudo_labels needs labels or scores")
    labels = None if labels is None else np.asarray(labels).astype(np.int8)
    scores = None if scores is None else np.asarray(scores).astype(np.float16)
    some = labels if labels is not None else scores
    meta = {**meta, "format_version": FORMAT_VERSION, "num_classes": len(class_names),
            "class_names_sha256": class_names_sha256(class_names), "flips": int(some.shape[1]),
            "views": None if scores is None else int(scores.shape[2])}
    check_shapes(folder, meta, len(image_ids), len(class_names), labels, scores)
    if labels is not None:
        check_label_values(folder / "labels.npy", labels)
        save_npy(folder / "labels.npy", labels)
    if scores is not None:
        check_score_values(folder / "scores.npy", scores)
        save_npy(folder / "scores.npy", scores)
    save_npy(folder / "image_ids.npy", image_ids)
    save_text(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder
