"""The rules that turn vision-language similarities into pseudo-labels (docs/pseudo_labels.md): pure
functions of tensors, used by the methods at each step (per-step flips) and by
scripts/make_pseudo_labels.py (VLPL's fixed rule, stored as labels.npy).

Encodings: cosines c ∈ [−1, 1]; observed labels and pseudo-labels y′ ∈ {−1, 0, +1}
(negative/unknown/positive), int8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DampSettings:
    """AEVLP's DAMP hyper-parameters (docs/pseudo_labels.md table; configs/*.json of the authors' code).

    temperature T of the per-view softmax; eta η_cfg, the cap of the gate; threshold on ŝ
    (non-strict); grid g (V = g² + 1 views); top_k classes considered positive; negative_ratio
    ρ_neg (n_neg = int(ρ_neg·L) classes with the lowest m̃ are set to `negatives`)."""
    temperature: float
    eta: float
    threshold: float
    grid: int
    top_k: int
    negative_ratio: float


DAMP_PRESETS = {
    "pascal": DampSettings(0.01, 0.0, 0.5, 4, 3, 0.2),
    "coco": DampSettings(0.01, 0.3, 0.5, 4, 3, 0.3),
    "nuswide": DampSettings(0.01, 0.3, 0.6, 4, 3, 0.2),
    "cub": DampSettings(0.1, 0.005, 0.005, 5, 32, 0.2),
}
DAMP_DEFAULT_GRID = 4          # datasets without a preset (custom data)

VLPL_TEMPERATURE = 0.01        # docs/vlp_methods.md: the CLI defaults of the authors' code
VLPL_THRESHOLD = 0.3


def damp_aggregate(view_probs: Tensor, observed: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """DAMP's aggregation of per-view class probabilities (docs/pseudo_labels.md steps 6–7).

    view_probs: B×V×L, each view's softmax over classes; view 0 the whole image, views 1…V−1 the
        g² grid tiles (V ≥ 2). observed: B×L in {−1, 0, +1}.
    Returns (ŝ B×L = ½·(s⁰ + γ·a + (1−γ)·b) with a/b the max/min over tiles and γ = 1[a > η],
    η = min(max_j s⁰_j·1[observed_j = 1], eta) per row (0 for a row without a positive);
    m̃ B×L = ½·(s⁰ + mean over tiles)).
    """
    if view_probs.shape[1] < 2:
        raise ValueError(f"DAMP needs the global view and grid tiles, got {view_probs.shape[1]} "
                         f"view(s)")
    global_probs, tiles = view_probs[:, 0], view_probs[:, 1:]
    tile_max, tile_min = tiles.amax(dim=1), tiles.amin(dim=1)
    positive = (observed == 1).to(global_probs.dtype)
    gate = torch.clamp((global_probs * positive).amax(dim=1, keepdim=True), max=eta)
    chosen = torch.where(tile_max > gate, tile_max, tile_min)
    return 0.5 * (global_probs + chosen), 0.5 * (global_probs + tiles.mean(dim=1))


def damp_labels_from_scores(combined: Tensor, mean_combined: Tensor, threshold: float,
                            top_k: int, negative_ratio: float, negatives: int = 0) -> Tensor:
    """DAMP's rule on aggregated scores (docs/pseudo_labels.md steps 8–9).

    combined: ŝ B×L; mean_combined: m̃ B×L (damp_aggregate). Of the top_k classes by ŝ, those with
    ŝ ≥ threshold get +1; then the int(negative_ratio·L) classes with the lowest m̃ get `negatives`:
    0 as the released code (it can only delete a positive; no −1 is ever produced), −1 our
    reading of the paper's figure. Everything else 0. Returns B×L int8.
    """
    if negatives not in (0, -1):
        raise ValueError(f"negatives must be 0 (the released code) or -1, got {negatives}")
    num_classes = combined.shape[1]
    labels = torch.zeros(combined.shape, dtype=torch.int8, device=combined.device)
    top_values, top_classes = combined.topk(min(top_k, num_classes), dim=1)
    labels.scatter_(1, top_classes, (top_values >= threshold).to(torch.int8))
    num_negatives = int(negative_ratio * num_classes)
    if num_negatives > 0:
        lowest = mean_combined.topk(num_negatives, dim=1, largest=False).indices
        labels.scatter_(1, lowest, negatives)
    return labels


def damp_pseudo_labels(cosines: Tensor, observed: Tensor, settings: DampSettings,
                       negatives: int = 0) -> Tensor:
    """DAMP pseudo-labels from raw cosines (docs/pseudo_labels.md steps 5–9).

    cosines: B×V×L (pseudo_labels.PseudoLabels.views), observed: B×L in {−1, 0, +1}.
    Returns B×L int8 in {0, +1} ({−1, 0, +1} with negatives=−1)."""
    view_probs = torch.softmax(cosines.float() / settings.temperature, dim=-1)
    combined, mean_combined = damp_aggregate(view_probs, observed, settings.eta)
    return damp_labels_from_scores(combined, mean_combined, settings.threshold, settings.top_k,
                                   settings.negative_ratio, negatives)


def vlpl_pseudo_labels(cosines: Tensor, temperature: float = VLPL_TEMPERATURE,
                       threshold: float = VLPL_THRESHOLD) -> Tensor:
    """VLPL's rule (docs/vlp_methods.md): y′_j = 1 iff softmax(c/T)_j > threshold (strict), else 0;
    at most ⌊1/threshold⌋ positives per image. cosines: B×L (or …×L). Returns int8, same shape."""
    probs = torch.softmax(cosines.float() / temperature, dim=-1)
    return (probs > threshold).to(torch.int8)
