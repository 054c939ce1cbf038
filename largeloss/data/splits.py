"""A split of images with its labels, held by the main process (`Split`), the three splits of an
experiment (`ExperimentData`), and what an evaluation split can and cannot measure."""
from __future__ import annotations

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
    printed at the start of a run and kept in results.json."""
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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
