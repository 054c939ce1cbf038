"""Mean average precision (SPEC §2): per class scikit-learn AP on float32 scores."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score


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
    scores = np.asarray(scores, dtype=np.float32).T          # L×N: each class contiguous
    targets = np.asarray(targets).T
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape[::-1]} and targets {targets.shape[::-1]} differ "
                         f"in shape")
    num_rows = scores.shape[1]
    order = np.argsort(-scores, axis=1)     # descending; the order within ties does not matter
    ranked_scores = np.take_along_axis(scores, order, axis=1)
    hits = np.take_along_axis(targets, order, axis=1).astype(np.float64)
    true_positives = np.cumsum(hits, axis=1)
    # the last position of every run of tied scores is a threshold; each row takes the
    # precision at the threshold that admits it
    is_threshold = np.ones(scores.shape, dtype=bool)
    is_threshold[:, :-1] = ranked_scores[:, :-1] != ranked_scores[:, 1:]
    positions = np.broadcast_to(np.arange(num_rows), scores.shape)
    threshold_of = np.minimum.accumulate(np.where(is_threshold, positions, num_rows)[:, ::-1],
                                         axis=1)[:, ::-1]
    precision = np.take_along_axis(true_positives, threshold_of, axis=1) / (threshold_of + 1)
    num_positives = hits.sum(axis=1)
    return np.where(num_positives > 0, (hits * precision).sum(axis=1) / np.maximum(num_positives, 1),
                    0.0)
