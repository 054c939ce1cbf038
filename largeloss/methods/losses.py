"""Every loss of the project, computed from logits (SPEC §3–§5).

Label encodings (SPEC §1):
    observed      B×L in {-1, 0, +1}: observed negative, unobserved, observed positive
    true_labels   B×L in {0, 1}: clean labels (only the full-label baselines and IUN may use them)

Every per-entry matrix is reduced as `sum / (B·L)` (zeros included), then the method's regulariser is
added undivided. Large-loss schemes (Kim et al., CVPR 2022, Eq. 4–6) sit on top of `an`.

Public contract:
    compute_loss(method, logits, observed, ...) -> LossOutput
    ll_num_modified(scheme, epoch, delta_rel, batch_size, num_classes) -> int
    LabelEstimator      ROLE's N×L estimator θ (SPEC §5)
    ObservedLabelStore  the observed labels of the training set, with LL-Cp's permanent relabels
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LL_SCHEMES = ("LL-R", "LL-Ct", "LL-Cp")
BASELINES = ("bce", "bce_ls", "iun", "iu", "an", "an_ls", "wan", "epr", "role")
METHODS = BASELINES + LL_SCHEMES
NEEDS_TRUE_LABELS = ("bce", "bce_ls", "iun")
NEEDS_EXPECTED_NUM_POS = ("epr", "role")
# Which of LL-Cp's modified entries become positives for good: those strictly above the threshold
# R (SPEC §4, the LL authors' code), or every modified one, loss ≥ R (BoostLU's code, SPEC_PEERS §1.2).
LLCP_RELABEL = ("above", "modified")
LABEL_SMOOTHING = 0.1  # ε of bce_ls and an_ls


@dataclass(frozen=True)
class LossOutput:
    """loss: scalar; modified / relabel: B×L bool (all False unless an LL scheme acted)."""
    loss: Tensor
    modified: Tensor
    relabel: Tensor


def bce(logits: Tensor, targets: Tensor | float) -> Tensor:
    """Per-entry binary cross-entropy from logits; `targets` broadcast to the logits' shape."""
    if not isinstance(targets, Tensor):
        targets = torch.full_like(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def smoothed_bce(logits: Tensor, targets: Tensor, epsilon: float = LABEL_SMOOTHING) -> Tensor:
    """(1−ε)·BCE(x, t) + ε·BCE(x, 1−t), per entry."""
    return (1 - epsilon) * bce(logits, targets) + epsilon * bce(logits, 1 - targets)


def expected_positive_regulariser(probs: Tensor, expected_num_pos: float) -> Tensor:
    """((mean over the batch of Σ_i p_i) − k) / L)², Cole et al. Eq. 8.  probs: B×L."""
    num_classes = probs.shape[1]
    return ((probs.sum(dim=1).mean() - expected_num_pos) / num_classes) ** 2


# --- the large-loss schedule (SPEC §4) ---------------------------------------------------------

def ll_num_modified(scheme: str, epoch: int, delta_rel: float, batch_size: int,
                    num_classes: int) -> int:
    """k, the number of entries to modify in a batch, before the cap at the number of candidates.

    LL-R / LL-Ct: ceil(B·L·(t−1)·Δrel/100), a fraction of all B·L entries growing by Δrel % per epoch.
    LL-Cp: ceil(B·L·Δrel/100) from epoch 2 on. Epoch 1 is the warm-up (k = 0) for every scheme.
    The product is rounded to 9 decimals before `ceil`, so exact products give exact k
    (0.5 % of 8·20 entries over 5 epochs is 4, not 5).
    """
    if scheme not in LL_SCHEMES:
        raise ValueError(f"scheme must be one of {LL_SCHEMES}, got {scheme!r}")
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    if delta_rel < 0:
        raise ValueError(f"delta_rel must be >= 0 (percent per epoch), got {delta_rel}")
    if epoch == 1:
        return 0
    epochs_of_growth = 1 if scheme == "LL-Cp" else epoch - 1
    fraction_of_entries = batch_size * num_classes * epochs_of_growth * delta_rel / 100
    return math.ceil(round(fraction_of_entries, 9))


def large_loss_masks(negative_losses: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Which candidates have a large loss (SPEC §4).

    Args:
        negative_losses: B×L, BCE(x, 0), used for ranking only.
        candidates: B×L bool, the unobserved entries.
        k: entries to modify; when fewer candidates exist, all of them are modified.
    Returns:
        modified: candidates with loss ≥ R, R the min(k, #candidates)-th largest candidate loss;
        above: candidates with loss > R (LL-Cp's permanent relabels).
    No host synchronisation: non-candidates rank at −inf, and R is the smallest finite value
    among the k largest, which caps k at the number of candidates.
    """
    if k == 0:
        nothing = torch.zeros_like(candidates)
        return nothing, nothing
    ranked = negative_losses.detach().masked_fill(~candidates, -math.inf).flatten()
    largest = torch.topk(ranked, min(k, ranked.numel()), sorted=False).values
    threshold = largest.masked_fill(largest == -math.inf, math.inf).min()
    return candidates & (negative_losses >= threshold), candidates & (negative_losses > threshold)


# --- per-method losses: each returns (per-entry B×L, regulariser scalar or None) ----------------

def _full_label_loss(logits, true_labels, smoothing):
    return (smoothed_bce(logits, true_labels) if smoothing else bce(logits, true_labels)), None


def _iun_loss(logits, observed, true_labels):
    """Observed positives as positives, true negatives as negatives, unobserved positives ignored."""
    per_entry = torch.where(observed == 1, bce(logits, 1.0), bce(logits, 0.0))
    ignored = (observed != 1) & (true_labels == 1)
    return per_entry.masked_fill(ignored, 0.0), None


def _iu_loss(logits, observed):
    per_entry = torch.where(observed == 1, bce(logits, 1.0), bce(logits, 0.0))
    return per_entry.masked_fill(observed == 0, 0.0), None


def _an_target(observed: Tensor) -> Tensor:
    return observed.clamp(min=0).to(torch.float32)


def _wan_loss(logits, observed):
    weak_negative_weight = 1.0 / (logits.shape[1] - 1)
    return torch.where(observed == 1, bce(logits, 1.0), weak_negative_weight * bce(logits, 0.0)), None


def _epr_loss(logits, observed, expected_num_pos):
    per_entry = bce(logits, 1.0).masked_fill(observed != 1, 0.0)
    return per_entry, expected_positive_regulariser(torch.sigmoid(logits), expected_num_pos)


def _role_loss(logits, observed, estimator_logits, expected_num_pos):
    """ROLE (Cole et al. Eq. 10), SPEC §5: classifier and estimator teach each other.

    0.5·[pos(p) + pos(e)] + 0.5·[BCE(x, ē) + BCE(θ, p̄)], pos = −log on observed positives, with
    ē, p̄ detached so the classifier never gets gradient through the estimator and vice versa.
    """
    probs = torch.sigmoid(logits)
    estimates = torch.sigmoid(estimator_logits)
    positive = observed == 1
    observed_positive_terms = (bce(logits, 1.0) + bce(estimator_logits, 1.0)).masked_fill(~positive, 0.0)
    cross_terms = bce(logits, estimates.detach()) + bce(estimator_logits, probs.detach())
    per_entry = 0.5 * observed_positive_terms + 0.5 * cross_terms
    regulariser = 0.5 * (expected_positive_regulariser(probs, expected_num_pos)
                         + expected_positive_regulariser(estimates, expected_num_pos))
    return per_entry, regulariser


def _large_loss(logits, observed, scheme, epoch, delta_rel, llcp_relabel="above"):
    """AN with the large unobserved losses rejected (LL-R) or their targets flipped (LL-Ct, LL-Cp)."""
    negative_losses = bce(logits, 0.0)
    per_entry = torch.where(observed == 1, bce(logits, 1.0), negative_losses)
    batch_size, num_classes = logits.shape
    k = ll_num_modified(scheme, epoch, delta_rel, batch_size, num_classes)
    modified, above = large_loss_masks(negative_losses, observed == 0, k)
    if scheme == "LL-R":
        per_entry = per_entry.masked_fill(modified, 0.0)
    else:
        per_entry = torch.where(modified, bce(logits, 1.0), per_entry)
    if scheme != "LL-Cp":
        return per_entry, modified, torch.zeros_like(modified)
    return per_entry, modified, above if llcp_relabel == "above" else modified


# --- the entry point ----------------------------------------------------------------------------

def compute_loss(method: str, logits: Tensor, observed: Tensor, *, true_labels: Tensor | None = None,
                 epoch: int = 1, delta_rel: float = 0.0, expected_num_pos: float | None = None,
                 estimator_logits: Tensor | None = None, check_values: bool = True,
                 llcp_relabel: str = "above") -> LossOutput:
    """The loss of `method` on one batch.

    Args:
        method: one of METHODS.
        logits: B×L classifier logits (any float dtype; computed in float32).
        observed: B×L in {-1, 0, +1}.
        true_labels: B×L in {0, 1}; needed by bce, bce_ls, iun.
        epoch: 1-based epoch (LL schedule).
        delta_rel: Δrel in percent per epoch (LL schemes).
        expected_num_pos: expected positives per image k (epr, role).
        estimator_logits: B×L rows of ROLE's θ for this batch (role).
        check_values: verify the encodings (one host sync); the trainer validates once at load
            time and passes False.
        llcp_relabel: LL-Cp's permanent relabels, "above" R (SPEC §4) or every "modified" entry
            (BoostLU's code; with k = 1 the former relabels nothing, the latter one entry).
    """
    if llcp_relabel not in LLCP_RELABEL:
        raise ValueError(f"llcp_relabel must be one of {LLCP_RELABEL}, got {llcp_relabel!r}")
    _check_arguments(method, logits, observed, true_labels, epoch, delta_rel, expected_num_pos,
                     estimator_logits, check_values)
    logits = logits.float()
    no_modification = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    modified = relabel = no_modification
    regulariser = None
    if method in LL_SCHEMES:
        per_entry, modified, relabel = _large_loss(logits, observed, method, epoch, delta_rel,
                                                   llcp_relabel)
    elif method in ("bce", "bce_ls"):
        per_entry, regulariser = _full_label_loss(logits, true_labels.float(),
                                                  smoothing=method == "bce_ls")
    elif method == "iun":
        per_entry, regulariser = _iun_loss(logits, observed, true_labels)
    elif method == "iu":
        per_entry, regulariser = _iu_loss(logits, observed)
    elif method == "an":
        per_entry = bce(logits, _an_target(observed))
    elif method == "an_ls":
        per_entry = smoothed_bce(logits, _an_target(observed))
    elif method == "wan":
        per_entry, regulariser = _wan_loss(logits, observed)
    elif method == "epr":
        per_entry, regulariser = _epr_loss(logits, observed, expected_num_pos)
    else:  # role
        per_entry, regulariser = _role_loss(logits, observed, estimator_logits.float(), expected_num_pos)
    loss = per_entry.sum() / per_entry.numel()
    if regulariser is not None:
        loss = loss + regulariser
    return LossOutput(loss=loss, modified=modified, relabel=relabel)


def _check_arguments(method, logits, observed, true_labels, epoch, delta_rel, expected_num_pos,
                     estimator_logits, check_values):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be B×L, got shape {tuple(logits.shape)}")
    if observed.shape != logits.shape:
        raise ValueError(f"observed has shape {tuple(observed.shape)}, logits {tuple(logits.shape)}")
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    if delta_rel < 0:
        raise ValueError(f"delta_rel must be >= 0 (percent per epoch), got {delta_rel}")
    if method in NEEDS_TRUE_LABELS:
        if true_labels is None:
            raise ValueError(f"method {method!r} needs true_labels (clean labels)")
        if true_labels.shape != logits.shape:
            raise ValueError(f"true_labels has shape {tuple(true_labels.shape)}, "
                             f"logits {tuple(logits.shape)}")
    if method in NEEDS_EXPECTED_NUM_POS and expected_num_pos is None:
        raise ValueError(f"method {method!r} needs expected_num_pos (expected positives per image)")
    if method == "role":
        if estimator_logits is None:
            raise ValueError("method 'role' needs estimator_logits (the label estimator's rows)")
        if estimator_logits.shape != logits.shape:
            raise ValueError(f"estimator_logits has shape {tuple(estimator_logits.shape)}, "
                             f"logits {tuple(logits.shape)}")
    if check_values:
        if not torch.isin(observed, torch.tensor([-1, 0, 1], device=observed.device)).all():
            raise ValueError("observed must contain only -1, 0, +1")
        if method in NEEDS_TRUE_LABELS and not torch.isin(
                true_labels, torch.tensor([0, 1], device=true_labels.device)).all():
            raise ValueError("true_labels must contain only 0 and 1")


# --- state that outlives a batch ----------------------------------------------------------------


