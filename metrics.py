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


def mean_average_precision(scores: np.ndarray, targets: np.ndarray,
                           known: np.ndarray | None = None) -> float:
    """mAP on the 0–100 scale."""
    return 100.0 * float(average_precisions(scores, targets, known).mean())
