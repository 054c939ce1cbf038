"""A split of images with its labels, held by the main process (`Split`), the three splits of an
experiment (`ExperimentData`), and what an evaluation split can and cannot measure."""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset

from largeloss.data.sparse_labels import SparseLabels
from largeloss.utils.errors import InputError


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
    image_ids: N ids naming the images (relative paths as in the dataset's image list; digits:
        generated names), kept when the images are cached in memory; pseudo-label folders are
        matched to the split by them. None where the split has none (features).
    """
    images: Dataset
    observed: np.ndarray | None
    true_labels: np.ndarray | None
    boxes: list | None = None
    sparse: SparseLabels | None = None
    train_label_counts: np.ndarray | None = None
    image_ids: list[str] | None = None

    def __len__(self) -> int:
        return self.sparse.num_images if self.observed is None else len(self.observed)

    @property
    def labels(self) -> np.ndarray | SparseLabels:
        """The observed labels as held: the N×L matrix, or the CSR form when `sparse`."""
        return self.sparse if self.observed is None else self.observed

    def eval_targets(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(targets N×L in {0,1}, known-mask N×L bool or None) for the metric (dense splits)."""
        if self.true_labels is not None:
            return self.true_labels, None
        return (self.observed == 1).astype(np.uint8), self.observed != 0


@dataclass(frozen=True)
class ExperimentData:
    """The three splits; notes: what an evaluation split cannot measure well (evaluation_problems),
    printed at the start of a run and kept in results.json. class_ids: stable class identifiers
    beside the display names where the dataset has them (OpenImages: the MIDs; display names
    repeat there); release: the dataset release the files came from (OpenImages: "V3", "V6",
    "V7"); both None elsewhere and both kept in results.json."""
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    notes: list[str] = field(default_factory=list)
    class_ids: list[str] | None = None
    release: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


UNMEASURABLE_MAJORITY = 0.5  # fewer measurable classes than this fraction: mAP says little
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
    measurable = int(((positives > 0) & (negatives > 0)).sum())
    if measurable < UNMEASURABLE_MAJORITY * len(names):  # e.g. 100,000 classes, a small val set
        problems.append(f"only {measurable} of {len(names)} classes can be measured, so the mAP "
                        f"(the others count AP 0 or 1 whatever the scores) barely moves with the "
                        f"model: choosing the best epoch by it is meaningless here")
    return problems


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


def data_fingerprint(data: ExperimentData) -> dict:
    """What a run trains and evaluates on, recorded at its start and checked by --resume:
    {"train_size": N, "sha256": hex digest of each split's row count, image list (the relative
    paths; generated images have none) and labels (observed, clean, sparse), and the class
    names}. Moving the folder (--data_root, --image_dir) keeps it; other files change it."""
    digest = hashlib.sha256("\n".join(data.class_names).encode())
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        digest.update(f"|{name}:{len(split)}|".encode())
        paths = getattr(split.images, "image_paths", None)
        if paths is not None:
            digest.update("\n".join(map(str, paths)).encode())
        arrays = [split.observed, split.true_labels]
        if split.sparse is not None:
            arrays += [split.sparse.indptr, split.sparse.indices, split.sparse.values]
        for array in arrays:
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
    return {"train_size": len(data.train), "sha256": digest.hexdigest()}


def check_same_data(recorded: dict | None, data: ExperimentData, what: str,
                    data_root: str) -> None:
    """InputError when `data` is not the data a run started on (`recorded`, its
    data_fingerprint; None for checkpoints written before it was recorded: not checked)."""
    if recorded is None:
        return
    if recorded["train_size"] != len(data.train):
        raise InputError(f"{what}: the run trained on {recorded['train_size']} training images, "
                         f"the data at {data_root} has {len(data.train)}; a resumed run "
                         f"continues its own data (start a new run for other data)")
    if recorded["sha256"] != data_fingerprint(data)["sha256"]:
        raise InputError(f"{what}: the data at {data_root} is not the data the run started on "
                         f"(its label files or image list differ); a resumed run continues its "
                         f"own data: point --data_root / --image_dir at it, or start a new run")


CONTENT_CHECK_MAX_IMAGES = 200_000  # above: split overlap is checked by path only (stat cost)
HASH_CHUNK_BYTES = 1 << 20


def split_files(split: Split) -> list[str] | None:
    """The image files of a split (its folder joined to each listed path, normalised), or None for
    images without files (generated digits)."""
    images = split.images
    if getattr(images, "image_paths", None) is None or not hasattr(images, "image_dir"):
        return None
    return [os.path.normpath(os.path.join(images.image_dir, path)) for path in images.image_paths]


def file_digest(path: str) -> str:
    """sha256 of a file's bytes, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_content_pairs(train_files: list[str], eval_files: list[str]) -> list[tuple[str, str]]:
    """(evaluation file, training file) pairs with identical bytes under different paths. Sizes
    first (one stat per file); only files whose size occurs on both sides are hashed."""
    def sizes(files):
        return {path: os.path.getsize(path) for path in files if os.path.isfile(path)}
    train_sizes, eval_sizes = sizes(train_files), sizes(eval_files)
    shared = set(train_sizes.values()) & set(eval_sizes.values())
    train_by_digest = {file_digest(path): path for path, size in train_sizes.items()
                       if size in shared}
    pairs = []
    for path, size in eval_sizes.items():
        if size in shared:
            twin = train_by_digest.get(file_digest(path))
            if twin is not None and twin != path:
                pairs.append((path, twin))
    return pairs


def split_overlap(data: ExperimentData) -> list[str]:
    """Evaluation images that are also training images: the same file (path), or the same bytes
    under another name (content hash; up to CONTENT_CHECK_MAX_IMAGES images). One description
    per overlapping split; [] when none, or when the images are not files."""
    train_files = split_files(data.train)
    if train_files is None:
        return []
    problems = []
    for name in ("val", "test"):
        eval_files = split_files(getattr(data, name))
        if eval_files is None:
            continue
        same_path = sorted(set(eval_files) & set(train_files))
        same_bytes = []
        if len(train_files) + len(eval_files) <= CONTENT_CHECK_MAX_IMAGES:
            same_bytes = [f"{evaluated} = {trained}" for evaluated, trained
                          in same_content_pairs(train_files, eval_files)]
        if same_path or same_bytes:
            problems.append(f"{len(same_path) + len(same_bytes)} {name} image(s) are also "
                            f"training images ({listed(same_path + same_bytes, 3)})")
    return problems


def check_split_overlap(data: ExperimentData, allow: bool) -> None:
    """Refuse (InputError) evaluation images that are training images, which inflate val and test
    mAP; with `allow` (--allow_split_overlap) a loud warning instead."""
    problems = split_overlap(data)
    if not problems:
        return
    message = "; ".join(problems)
    if not allow:
        raise InputError(f"{message}: their mAP would be inflated; remove them from the "
                         f"evaluation CSV (or pass --allow_split_overlap to train anyway)")
    warnings.warn(f"--allow_split_overlap: {message}; val and test mAP are inflated")
