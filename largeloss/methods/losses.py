"""Every loss of the project, computed from logits (docs/methods.md).

Label encodings (docs/protocol.md §Label encodings):
    observed      B×L in {-1, 0, +1}: observed negative, unobserved, observed positive
    true_labels   B×L in {0, 1}: clean labels (only the full-label baselines and IUN may use them)

Every per-entry matrix is reduced as `sum / (B·L)` (zeros included), then the method's regulariser is
added undivided. Large-loss schemes (Kim et al., CVPR 2022, Eq. 4–6) sit on top of `an`.

Public contract:
    an_loss(logits, observed), large_loss(logits, observed, scheme, epoch, delta_rel), ... -> LossOutput
        one pure function per loss; the method objects (registry.py) call them
    compute_loss(method, logits, observed, ...) -> LossOutput   any of them by name (LOSSES)
    to_observed(labels, unknown)   NaN or ignore-index labels → {-1, 0, +1}
    ll_num_modified(scheme, epoch, delta_rel, batch_size, num_classes) -> int
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LL_SCHEMES = ("LL-R", "LL-Ct", "LL-Cp")
# Which of LL-Cp's modified entries become positives for good: those strictly above the threshold
# R (the LL paper, docs/methods.md §LL-R, LL-Ct, LL-Cp), or every modified one, loss ≥ R (BoostLU's code).
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


# --- the large-loss schedule (docs/methods.md §LL schedule) --------------------------------------

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
    """Which candidates have a large loss (docs/methods.md §LL schedule).

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


# --- one function per loss: logits B×L (any float dtype; computed in float32) → LossOutput --------

def _output(per_entry: Tensor, regulariser: Tensor | None = None, modified: Tensor | None = None,
            relabel: Tensor | None = None) -> LossOutput:
    """sum / (B·L) of the per-entry losses, plus the regulariser undivided (docs/methods.md)."""
    loss = per_entry.sum() / per_entry.numel()
    if regulariser is not None:
        loss = loss + regulariser
    nothing = torch.zeros(per_entry.shape, dtype=torch.bool, device=per_entry.device)
    return LossOutput(loss=loss, modified=nothing if modified is None else modified,
                      relabel=nothing if relabel is None else relabel)


def bce_loss(logits: Tensor, true_labels: Tensor) -> LossOutput:
    """Full-label BCE on the clean labels (true_labels B×L in {0, 1}): the upper bound."""
    return _output(bce(logits.float(), true_labels.float()))


def bce_ls_loss(logits: Tensor, true_labels: Tensor) -> LossOutput:
    """Full-label BCE with label smoothing ε = LABEL_SMOOTHING."""
    return _output(smoothed_bce(logits.float(), true_labels.float()))


def iun_loss(logits: Tensor, observed: Tensor, true_labels: Tensor) -> LossOutput:
    """IUN: observed positives as positives, true negatives as negatives, unobserved positives ignored."""
    logits = logits.float()
    per_entry = torch.where(observed == 1, bce(logits, 1.0), bce(logits, 0.0))
    ignored = (observed != 1) & (true_labels == 1)
    return _output(per_entry.masked_fill(ignored, 0.0))


def iu_loss(logits: Tensor, observed: Tensor) -> LossOutput:
    """IU: observed positives and observed negatives; unobserved entries contribute 0."""
    logits = logits.float()
    per_entry = torch.where(observed == 1, bce(logits, 1.0), bce(logits, 0.0))
    return _output(per_entry.masked_fill(observed == 0, 0.0))


def _an_target(observed: Tensor) -> Tensor:
    return observed.clamp(min=0).to(torch.float32)


def an_loss(logits: Tensor, observed: Tensor) -> LossOutput:
    """AN: every unobserved label is a negative."""
    return _output(bce(logits.float(), _an_target(observed)))


def an_ls_loss(logits: Tensor, observed: Tensor) -> LossOutput:
    """AN-LS: AN with label smoothing ε = LABEL_SMOOTHING."""
    return _output(smoothed_bce(logits.float(), _an_target(observed)))


def wan_loss(logits: Tensor, observed: Tensor) -> LossOutput:
    """WAN: AN with the negatives weighted 1/(L−1)."""
    logits = logits.float()
    weak_negative_weight = 1.0 / (logits.shape[1] - 1)
    return _output(torch.where(observed == 1, bce(logits, 1.0), weak_negative_weight * bce(logits, 0.0)))


def epr_loss(logits: Tensor, observed: Tensor, expected_num_pos: float) -> LossOutput:
    """EPR: −log p on observed positives plus the expected-positive regulariser (Cole et al. Eq. 8)."""
    logits = logits.float()
    per_entry = bce(logits, 1.0).masked_fill(observed != 1, 0.0)
    return _output(per_entry, expected_positive_regulariser(torch.sigmoid(logits), expected_num_pos))


def role_loss(logits: Tensor, observed: Tensor, estimator_logits: Tensor,
              expected_num_pos: float) -> LossOutput:
    """ROLE (Cole et al. Eq. 10), docs/methods.md §ROLE: classifier and estimator teach each other.

    0.5·[pos(p) + pos(e)] + 0.5·[BCE(x, ē) + BCE(θ, p̄)], pos = −log on observed positives, with
    ē, p̄ detached so the classifier never gets gradient through the estimator and vice versa.
    estimator_logits: B×L rows of the label estimator θ for this batch.
    """
    logits, estimator_logits = logits.float(), estimator_logits.float()
    probs = torch.sigmoid(logits)
    estimates = torch.sigmoid(estimator_logits)
    positive = observed == 1
    observed_positive_terms = (bce(logits, 1.0) + bce(estimator_logits, 1.0)).masked_fill(~positive, 0.0)
    cross_terms = bce(logits, estimates.detach()) + bce(estimator_logits, probs.detach())
    per_entry = 0.5 * observed_positive_terms + 0.5 * cross_terms
    regulariser = 0.5 * (expected_positive_regulariser(probs, expected_num_pos)
                         + expected_positive_regulariser(estimates, expected_num_pos))
    return _output(per_entry, regulariser)


def large_loss(logits: Tensor, observed: Tensor, scheme: str, epoch: int, delta_rel: float,
               llcp_relabel: str = "above") -> LossOutput:
    """AN with the large unobserved losses rejected (LL-R) or their targets flipped (LL-Ct, LL-Cp),
    Kim et al. Eq. 4–6. k from ll_num_modified(scheme, epoch, Δrel, B, L); `modified` marks the
    modified entries; `relabel` LL-Cp's permanent relabels: those "above" R (the LL paper) or every
    "modified" one (BoostLU's code; with k = 1 the former relabels nothing, the latter one entry)."""
    if llcp_relabel not in LLCP_RELABEL:
        raise ValueError(f"llcp_relabel must be one of {LLCP_RELABEL}, got {llcp_relabel!r}")
    logits = logits.float()
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
        return _output(per_entry, modified=modified)
    return _output(per_entry, modified=modified, relabel=above if llcp_relabel == "above" else modified)


# --- the public entry: one batch, a method by name --------------------------------------------------

LOSSES: dict[str, Callable[..., LossOutput]] = {
    "bce": bce_loss, "bce_ls": bce_ls_loss, "iun": iun_loss, "iu": iu_loss, "an": an_loss,
    "an_ls": an_ls_loss, "wan": wan_loss, "epr": epr_loss, "role": role_loss,
    **{scheme: functools.partial(large_loss, scheme=scheme) for scheme in LL_SCHEMES},
}


def to_observed(labels, unknown: float = 0) -> Tensor:
    """Labels as the project encodes them: {-1, 0, +1} (negative, unknown, positive), int8.

    unknown: the value that marks an unknown label in `labels`.
        0 (default): `labels` are already in {-1, 0, +1} and are returned as a tensor, unchanged.
        NaN: `labels` in {0, 1, NaN}, NaN unknown (the partial-label toolkit mlcpl's convention).
        any other number, e.g. -100: an ignore index; `labels` in {0, 1, unknown} (torchmetrics').
    Raises ValueError for values outside the chosen convention.
    """
    labels = torch.as_tensor(labels)
    if unknown == 0:
        return labels  # as given: the callers check or cast the values
    is_unknown = labels.isnan() if math.isnan(unknown) else labels == unknown
    known = labels[~is_unknown]
    if not bool(((known == 0) | (known == 1)).all()):
        raise ValueError(f"labels with unknown={unknown} must be 0, 1 or {unknown}")
    signed = torch.where(labels == 1, 1, -1).to(torch.int8)
    return signed.masked_fill(is_unknown, 0)


def compute_loss(method: str, logits: Tensor, observed: Tensor, *, true_labels: Tensor | None = None,
                 epoch: int = 1, delta_rel: float = 0.0, expected_num_pos: float | None = None,
                 estimator_logits: Tensor | None = None, check_values: bool = True,
                 llcp_relabel: str = "above", unknown: float = 0) -> LossOutput:
    """The loss of `method` on one batch: LOSSES[method] given the arguments it takes.

    Args:
        method: a key of LOSSES (the two papers' losses and schemes).
        logits: B×L classifier logits (any float dtype; computed in float32).
        observed: B×L in {-1, 0, +1}; or in another convention named by `unknown` (to_observed).
        true_labels: B×L in {0, 1}; needed by bce, bce_ls, iun.
        epoch: 1-based epoch (LL schedule).
        delta_rel: Δrel in percent per epoch (LL schemes).
        expected_num_pos: expected positives per image k (epr, role).
        estimator_logits: B×L rows of ROLE's θ for this batch (role).
        check_values: verify the encodings (one host sync); the trainer validates once at load
            time and passes False.
        llcp_relabel: LL-Cp's permanent relabels, "above" R (the LL paper) or every "modified" entry.
        unknown: the value marking unknown labels in `observed` (0, NaN, or an ignore index).
    """
    if method not in LOSSES:
        raise ValueError(f"method must be one of {tuple(LOSSES)}, got {method!r}")
    observed = to_observed(observed, unknown)
    offered = {"observed": observed, "true_labels": true_labels, "epoch": epoch, "delta_rel": delta_rel,
               "expected_num_pos": expected_num_pos, "estimator_logits": estimator_logits,
               "llcp_relabel": llcp_relabel}
    function = LOSSES[method]
    taken = [name for name in inspect.signature(function).parameters if name in offered]
    _check_arguments(method, logits, {"observed": observed, "epoch": epoch, "delta_rel": delta_rel,
                                      **{name: offered[name] for name in taken}}, check_values)
    return function(logits, **{name: offered[name] for name in taken})


def _check_arguments(method: str, logits: Tensor, arguments: dict, check_values: bool) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be B×L, got shape {tuple(logits.shape)}")
    for name, value in arguments.items():
        if value is None:
            raise ValueError(f"method {method!r} needs {name}")
        if isinstance(value, Tensor) and value.shape != logits.shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, logits {tuple(logits.shape)}")
    if arguments.get("epoch", 1) < 1:
        raise ValueError(f"epoch is 1-based, got {arguments['epoch']}")
    if arguments.get("delta_rel", 0) < 0:
        raise ValueError(f"delta_rel must be >= 0 (percent per epoch), got {arguments['delta_rel']}")
    if check_values:
        observed = arguments["observed"]
        if not torch.isin(observed, torch.tensor([-1, 0, 1], device=observed.device)).all():
            raise ValueError("observed must contain only -1, 0, +1")
        true_labels = arguments.get("true_labels")
        if true_labels is not None and not torch.isin(
                true_labels, torch.tensor([0, 1], device=true_labels.device)).all():
            raise ValueError("true_labels must contain only 0 and 1")
