"""Label files the project reads and writes, and the observed-label protocol.

Encodings (SPEC §1):
    true labels   N×L in {0, 1}
    observed      N×L in {-1, 0, +1}: +1 observed positive, -1 observed negative, 0 unobserved
"""
from __future__ import annotations

import numpy as np

SPLIT_SEED = 1200  # Cole et al.'s seed for the train/val split and the observed labels


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
