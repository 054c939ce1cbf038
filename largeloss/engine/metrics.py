"""Mean average precision (docs/protocol.md): per class scikit-learn AP on float32 scores."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from largeloss.data.splits import Split


def average_precisions(scores: np.ndarray, targets: np.ndarray,
                       known: np.ndarray | None = None) -> np.ndarray:
    """Per-class AP in [0, 1].

    Args:
        scores: N×L float scores (sigmoid or logits: AP depends only on the ranking).
        targets: N×L in {0, 1}.
        known: optional N×L bool; entries that are False are ignored (partially labelled
            evaluation, as for OpenImages).
    A class with no positive gets AP 0 and stays in the mean (the papers' convention).
    """
    scores = np.asarray(scores, dtype=np.float32)
    targets = np.asarray(targets)
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    aps = np.zeros(scores.shape[1], dtype=np.float64)
    for column in range(scores.shape[1]):
        rows = slice(None) if known is None else known[:, column]
        class_targets = targets[rows, column]
        if class_targets.sum() > 0:
            aps[column] = average_precision_score(class_targets, scores[rows, column])
    return aps


def ranked_average_precisions(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP in [0, 1], equal to `average_precisions(scores, targets)` (to rounding), for
    every class at once: one sort per class instead of one scikit-learn call per class. The
    linear phase evaluates with it every epoch, where scikit-learn's per-class calls would cost
    as much as the epoch itself.

    As scikit-learn: one threshold per distinct score (tied scores enter together), and
    AP = Σ_thresholds (recall_t − recall_t−1) · precision_t. A class with no positive gets 0.
    Args:
        scores: N×L float scores (cast to float32, as the metric's protocol says).
        targets: N×L in {0, 1}.
    """
    scores = np.ascontiguousarray(np.asarray(scores, dtype=np.float32).T)  # L×N: each class
    targets = np.ascontiguousarray(np.asarray(targets).T)                  # contiguous
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape[::-1]} and targets {targets.shape[::-1]} differ "
                         f"in shape")
    num_classes, num_rows = scores.shape
    order = np.argsort(-scores, axis=1)     # descending; the order within ties does not matter
    ranked_scores = np.take_along_axis(scores, order, axis=1)
    hits = np.take_along_axis(targets, order, axis=1) == 1
    true_positives = np.cumsum(hits, axis=1, dtype=np.int64)
    classes, ranks = np.nonzero(hits)       # every positive: its class and its rank
    # each positive takes the precision at the threshold that admits it: the last position of
    # its run of tied scores (its own position where no score is tied, the usual case)
    tied = ranked_scores[:, :-1] == ranked_scores[:, 1:]
    thresholds = ranks
    if tied.any():
        positions = np.broadcast_to(np.arange(num_rows), scores.shape)
        is_threshold = np.ones(scores.shape, dtype=bool)
        is_threshold[:, :-1] = ~tied
        threshold_of = np.minimum.accumulate(np.where(is_threshold, positions, num_rows)[:, ::-1],
                                             axis=1)[:, ::-1]
        thresholds = threshold_of[classes, ranks]
    precision = true_positives[classes, thresholds] / (thresholds + 1.0)
    num_positives = np.bincount(classes, minlength=num_classes)
    precision_sums = np.bincount(classes, weights=precision, minlength=num_classes)
    return np.where(num_positives > 0, precision_sums / np.maximum(num_positives, 1), 0.0)


# --- partially labelled evaluation (OpenImages): AP over the labelled entries of each class ------
#
# Each class is ranked among its own labelled entries only (verified positives and verified
# negatives); unlabelled entries take no part. A class is *measurable* when it has at least one
# labelled positive and one labelled negative. Two conventions for the others exist, and both are
# reported:
#     map_all_classes  unmeasurable classes count as AP 0 in the mean over all L classes
#                      (IMCL; the LL paper's OpenImages table)
#     map_measured     unmeasurable classes are left out of the mean (CSL)

def _entry_average_precisions(entry_scores: np.ndarray, entry_classes: np.ndarray,
                              entry_positive: np.ndarray,
                              num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AP from a flat list of labelled entries, every class at once (one sort).

    Args:
        entry_scores: E float scores; entry_classes: E class indices; entry_positive: E bool.
    Returns:
        (aps, measurable): L float64 AP in [0, 1] (0 where not measurable), L bool.
    Same maths as `ranked_average_precisions`: one threshold per distinct score within a class,
    AP = Σ_thresholds (recall_t − recall_t−1) · precision_t.
    """
    entry_scores = np.asarray(entry_scores, dtype=np.float32)
    entry_classes = np.asarray(entry_classes, dtype=np.int64)
    order = np.lexsort((-entry_scores, entry_classes))  # by class, then score descending
    classes, scores = entry_classes[order], entry_scores[order]
    hits = np.asarray(entry_positive, dtype=bool)[order].astype(np.float64)
    num_entries = len(classes)
    num_positives = np.bincount(classes, weights=hits, minlength=num_classes)
    num_labelled = np.bincount(classes, minlength=num_classes)
    measurable = (num_positives > 0) & (num_positives < num_labelled)
    if num_entries == 0:
        return np.zeros(num_classes), measurable
    class_start = np.concatenate([[0], np.cumsum(num_labelled)[:-1]])[classes]
    true_positives = np.cumsum(hits)
    true_positives -= np.concatenate([[0.0], true_positives])[class_start]  # restart per class
    # the last entry of each run of tied scores within a class is a threshold; every entry takes
    # the precision at the threshold that admits it
    is_threshold = np.ones(num_entries, dtype=bool)
    is_threshold[:-1] = (classes[:-1] != classes[1:]) | (scores[:-1] != scores[1:])
    positions = np.arange(num_entries)
    threshold_of = np.minimum.accumulate(np.where(is_threshold, positions, num_entries)[::-1])[::-1]
    precision = true_positives[threshold_of] / (threshold_of - class_start + 1)
    summed = np.bincount(classes, weights=hits * precision, minlength=num_classes)
    aps = np.where(measurable, summed / np.maximum(num_positives, 1), 0.0)
    return aps, measurable


def masked_average_precisions(scores: np.ndarray, targets: np.ndarray,
                              known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AP over the known entries of each class (dense inputs).

    Args:
        scores: N×L float scores (cast to float32).
        targets: N×L in {0, 1}.
        known: N×L bool, the labelled entries (None: all).
    Returns:
        (aps, measurable): L float64 AP in [0, 1], equal to scikit-learn's
        average_precision_score on the known entries of each measurable class, and 0 elsewhere;
        L bool, True where a class has a known positive and a known negative.
    """
    scores = np.asarray(scores, dtype=np.float32)
    targets = np.asarray(targets)
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    known = np.ones(scores.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    rows, classes = np.nonzero(known)
    return _entry_average_precisions(scores[rows, classes], classes, targets[rows, classes] == 1,
                                     scores.shape[1])


def sparse_masked_average_precisions(scores: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                                     values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`masked_average_precisions` from CSR labels, with no N×L mask (OpenImages test:
    125k × 5000 scores, a few million labelled entries).

    Args:
        scores: N×L float scores (cast to float32).
        indptr (N+1), indices (nnz), values (nnz, ±1): the evaluation split's labels in the CSR
            form of sparse_labels.py.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if len(indptr) != scores.shape[0] + 1:
        raise ValueError(f"scores have {scores.shape[0]} rows but indptr describes "
                         f"{len(indptr) - 1} images")
    rows = np.repeat(np.arange(scores.shape[0]), np.diff(indptr))
    return _entry_average_precisions(scores[rows, indices], indices, np.asarray(values) == 1,
                                     scores.shape[1])


def masked_map_summary(aps: np.ndarray, measurable: np.ndarray) -> dict:
    """Both conventions on the 0–100 scale, with the number of classes each one averages.

    Returns:
        {"map_all_classes": mean over all classes, unmeasurable = 0 (IMCL / the LL table),
         "map_measured": mean over measurable classes only (CSL; NaN when there is none),
         "num_classes": L, "num_measured": measurable classes}
    """
    aps, measurable = np.asarray(aps, dtype=np.float64), np.asarray(measurable, dtype=bool)
    num_measured = int(measurable.sum())
    return {"map_all_classes": 100.0 * float(np.where(measurable, aps, 0.0).mean())
            if len(aps) else float("nan"),
            "map_measured": 100.0 * float(aps[measurable].mean()) if num_measured else float("nan"),
            "num_classes": len(aps), "num_measured": num_measured}


def format_masked_map(summary: dict) -> str:
    """One line naming both conventions, e.g. 'mAP 41.20 over all 5000 classes (unmeasurable =
    0; IMCL, LL table) | 43.37 over 4750 measurable classes (CSL)'."""
    return (f"mAP {summary['map_all_classes']:.2f} over all {summary['num_classes']} classes "
            f"(unmeasurable = 0; IMCL, LL table) | {summary['map_measured']:.2f} over "
            f"{summary['num_measured']} measurable classes (CSL)")


def class_groups(train_label_counts: np.ndarray, num_groups: int = 5) -> list[np.ndarray]:
    """Class groups G1…G<num_groups> of the OpenImages table: classes sorted by their number of
    labelled training entries (positives + negatives), ascending, ties by class index, then cut
    into `num_groups` consecutive groups of equal size. When L is not divisible, np.array_split
    decides: the first L mod num_groups groups take one class more.

    Returns: one int64 array of class indices per group, G1 (fewest labels) first.
    """
    train_label_counts = np.asarray(train_label_counts)
    if train_label_counts.ndim != 1:
        raise ValueError(f"train_label_counts must be an L-vector, got {train_label_counts.shape}")
    if not 1 <= num_groups <= len(train_label_counts):
        raise ValueError(f"num_groups must be in [1, L = {len(train_label_counts)}], got "
                         f"{num_groups}")
    order = np.argsort(train_label_counts, kind="stable")
    return [group.astype(np.int64) for group in np.array_split(order, num_groups)]


def grouped_map(aps: np.ndarray, measurable: np.ndarray, groups: list[np.ndarray]) -> dict:
    """`masked_map_summary` for each group ("G1", "G2", …) and for all classes ("overall")."""
    aps, measurable = np.asarray(aps), np.asarray(measurable, dtype=bool)
    summaries = {f"G{number}": masked_map_summary(aps[group], measurable[group])
                 for number, group in enumerate(groups, start=1)}
    summaries["overall"] = masked_map_summary(aps, measurable)
    return summaries


# --- a split's evaluation: dense (clean or observed labels) or sparse (real partial labels) -------

MAP_CONVENTION = "map_all_classes"  # what `map` means on sparse labels (sparse_evaluation)
NUM_CLASS_GROUPS = 5  # G1–G5 of the OpenImages table


def split_metrics(scores: np.ndarray, split: Split) -> dict:
    """mAP of N×L `scores` on `split`: {"map", "ap" (per class, 0-100), "scores", and "coverage"
    (dense: how many classes are measurable) or "masked" (sparse: both conventions, G1–G5)}.
    Clean labels → AP over every image; observed labels only → AP over the known entries."""
    if split.sparse is not None:
        return sparse_evaluation(scores, split)
    targets, known = split.eval_targets()
    aps = (ranked_average_precisions(scores, targets) if known is None
           else average_precisions(scores, targets, known))
    return {"map": 100.0 * float(aps.mean()), "ap": (100.0 * aps).tolist(), "scores": scores,
            "coverage": masked_map_summary(aps, measurable_classes(targets, known))}


def stacked_split_metrics(scores: np.ndarray, split: Split, num_heads: int) -> list[dict]:
    """`split_metrics` of each of `num_heads` heads whose N×L scores are the column blocks of
    `scores` (N×(K·L), head k in columns k·L … (k+1)·L − 1: a sweep's stacked head); with clean
    labels the AP of all K·L columns comes from one vectorised call."""
    num_classes = scores.shape[1] // num_heads
    blocks = [scores[:, head * num_classes:(head + 1) * num_classes] for head in range(num_heads)]
    if split.sparse is not None or num_heads == 1:
        return [split_metrics(block, split) for block in blocks]
    targets, known = split.eval_targets()
    tiled_targets = np.tile(targets, (1, num_heads))
    aps = (ranked_average_precisions(scores, tiled_targets) if known is None
           else average_precisions(scores, tiled_targets, np.tile(known, (1, num_heads))))
    measurable = measurable_classes(targets, known)
    return [{"map": 100.0 * float(head_aps.mean()), "ap": (100.0 * head_aps).tolist(),
             "scores": block, "coverage": masked_map_summary(head_aps, measurable)}
            for head_aps, block in zip(aps.reshape(num_heads, num_classes), blocks)]


def measurable_classes(targets: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """L bool: classes with a positive and a negative among the known entries (AP means
    something only for them: without a positive the papers count AP 0, without a negative AP 1)."""
    known = np.ones(targets.shape, dtype=bool) if known is None else known
    positive = targets == 1
    return (positive & known).any(axis=0) & (~positive & known).any(axis=0)


def sparse_evaluation(scores, split: Split) -> dict:
    """mAP of a split with real partial labels (OpenImages): each class's AP over its labelled
    entries only. scores: N×L float32 (OpenImages test: 125k × 5000 × 4 bytes = 2.5 GB on the
    host, acceptable). `map` (model selection, printed) is MAP_CONVENTION: unmeasurable classes
    (no labelled positive or no labelled negative) count as AP 0 in the mean over all classes, as
    IMCL and the LL paper's table; `masked` holds both conventions overall and for G1–G5 (classes
    sorted by labelled training entries, ascending, five groups)."""
    labels = split.sparse
    aps, measurable = sparse_masked_average_precisions(np.asarray(scores), labels.indptr,
                                                       labels.indices, labels.values)
    groups = class_groups(split.train_label_counts, min(NUM_CLASS_GROUPS, len(aps)))
    summary = grouped_map(aps, measurable, groups)
    masked = {**summary.pop("overall"), "map_convention": MAP_CONVENTION, "groups": summary}
    return {"map": masked[MAP_CONVENTION], "ap": (100.0 * aps).tolist(), "scores": scores,
            "masked": masked}
