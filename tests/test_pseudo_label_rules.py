"""The pseudo-label rules (largeloss/methods/pseudo_label_rules.py) against their worked
examples (DAMP: docs/pseudo_labels.md; VLPL: docs/vlp_methods.md; hand values typed in) and their
listed properties."""
from __future__ import annotations

import pytest
import torch

from largeloss.methods.pseudo_label_rules import (DAMP_PRESETS, DampSettings, damp_aggregate,
                                                  damp_labels_from_scores, damp_pseudo_labels,
                                                  vlpl_pseudo_labels)

# docs/pseudo_labels.md: g = 2, L = 3, COCO's T/η/thr, top-k 3; observed positive class 0.
GLOBAL_COSINES = torch.tensor([0.30, 0.28, 0.25])
TILE_PROBS = torch.tensor([[0.70, 0.25, 0.05], [0.02, 0.95, 0.03], [0.60, 0.20, 0.20],
                           [0.90, 0.05, 0.05]])
OBSERVED = torch.tensor([[1, 0, 0]])


def worked_example_view_probs() -> torch.Tensor:
    global_probs = torch.softmax(GLOBAL_COSINES / 0.01, dim=0)
    return torch.cat([global_probs[None], TILE_PROBS])[None]  # 1×5×3


def test_damp_worked_example():
    view_probs = worked_example_view_probs()
    assert view_probs[0, 0].tolist() == pytest.approx([0.8756, 0.1185, 0.0059], abs=1e-4)
    combined, mean_combined = damp_aggregate(view_probs, OBSERVED, eta=0.3)
    assert combined[0].tolist() == pytest.approx([0.8878, 0.5342, 0.0179], abs=1e-4)
    assert mean_combined[0].tolist() == pytest.approx([0.7153, 0.2405, 0.0442], abs=1e-4)
    labels = damp_labels_from_scores(combined, mean_combined, threshold=0.5, top_k=3,
                                     negative_ratio=0.34)  # n_neg = int(1.02) = 1: class 2
    assert labels.dtype == torch.int8 and labels.tolist() == [[1, 1, 0]]
    # with the paper-faithful option the lowest-m̃ class becomes −1
    assert damp_labels_from_scores(combined, mean_combined, 0.5, 3, 0.34, negatives=-1).tolist() \
        == [[1, 1, -1]]


def test_damp_gate_takes_the_best_tile_above_eta():
    """Class 2's best tile (0.20) is below η = 0.3: its min tile is used; with η = 0.1 (γ₂ = 1)
    ŝ₂ = ½(0.0059 + 0.20) = 0.1029 (docs/pseudo_labels.md)."""
    combined, _ = damp_aggregate(worked_example_view_probs(), OBSERVED, eta=0.1)
    assert combined[0, 2].item() == pytest.approx(0.1029, abs=1e-4)


def test_damp_gate_is_zero_for_a_row_without_positive():
    """η = min(max_j s⁰_j·l_j, η_cfg) = 0 without an observed positive: always the max tile."""
    combined, _ = damp_aggregate(worked_example_view_probs(), torch.tensor([[0, 0, -1]]), eta=0.3)
    assert combined[0].tolist() == pytest.approx([0.8878, 0.5342, 0.1029], abs=1e-4)


def test_damp_from_cosines_applies_the_temperature_per_view():
    cosines = torch.log(worked_example_view_probs()) * 0.01  # softmax(c/0.01) gives them back
    settings = DampSettings(temperature=0.01, eta=0.3, threshold=0.5, grid=2, top_k=3,
                            negative_ratio=0.34)
    assert damp_pseudo_labels(cosines, OBSERVED, settings).tolist() == [[1, 1, 0]]
    assert damp_pseudo_labels(cosines, OBSERVED, DampSettings(0.01, 0.3, 0.5, 2, 1, 0.0)).tolist() \
        == [[1, 0, 0]]  # top-1 only


@pytest.mark.parametrize("dataset", sorted(DAMP_PRESETS))
def test_damp_never_yields_minus_one_unless_asked(dataset):
    settings = DAMP_PRESETS[dataset]
    num_classes = {"pascal": 20, "coco": 80, "nuswide": 81, "cub": 312}[dataset]
    generator = torch.Generator().manual_seed(0)
    views = settings.grid ** 2 + 1
    cosines = 0.2 + 0.1 * torch.rand((64, views, num_classes), generator=generator)
    observed = torch.zeros((64, num_classes), dtype=torch.int8)
    observed[torch.arange(64), torch.randint(num_classes, (64,), generator=generator)] = 1
    labels = damp_pseudo_labels(cosines, observed, settings)
    assert set(labels.unique().tolist()) <= {0, 1}
    assert int((labels == 1).sum(dim=1).max()) <= settings.top_k
    with_negatives = damp_pseudo_labels(cosines, observed, settings, negatives=-1)
    assert (with_negatives == -1).sum(dim=1).tolist() == [int(settings.negative_ratio
                                                             * num_classes)] * 64


def test_damp_needs_tiles():
    with pytest.raises(ValueError, match="global view and grid tiles"):
        damp_aggregate(torch.ones(1, 1, 3) / 3, OBSERVED, 0.3)


def test_vlpl_worked_example():
    """docs/vlp_methods.md: cosines [0.27, 0.265, 0.22], T = 0.01 → s = [0.6199, 0.3760, 0.0042] →
    y′ = [1, 1, 0]."""
    cosines = torch.tensor([[0.27, 0.265, 0.22]])
    assert torch.softmax(cosines / 0.01, dim=1)[0].tolist() == pytest.approx(
        [0.6199, 0.3760, 0.0042], abs=1e-4)
    labels = vlpl_pseudo_labels(cosines)
    assert labels.dtype == torch.int8 and labels.tolist() == [[1, 1, 0]]


def test_vlpl_threshold_is_strict():
    """Two equal classes at s = 0.5 each do not pass a threshold of 0.5."""
    assert vlpl_pseudo_labels(torch.tensor([[0.3, 0.3]]), threshold=0.5).tolist() == [[0, 0]]


@pytest.mark.parametrize("threshold", [0.1, 0.25, 0.3])
def test_vlpl_never_more_than_one_over_threshold_positives(threshold):
    """Random cosines, plus rows whose m top classes tie (m = 1…12) so that the bound is
    approached: never more than ⌊1/thr⌋ positives, and the most a tie can give (m with 1/m > thr,
    strict) is reached."""
    generator = torch.Generator().manual_seed(1)
    random_rows = 0.25 + 0.02 * torch.randn((2000, 40), generator=generator)
    tied_rows = torch.full((12, 40), 0.1)
    for m in range(1, 13):
        tied_rows[m - 1, :m] = 0.3
    counts = (vlpl_pseudo_labels(torch.cat([random_rows, tied_rows]), threshold=threshold) == 1
              ).sum(-1)
    assert int(counts.max()) <= int(1 / threshold)
    assert int(counts.max()) == max(m for m in range(1, 13) if 1 / m > threshold)
