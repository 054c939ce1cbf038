"""Vision-language pseudo-label methods and class priors as pure functions of tensors (docs/vlp_methods.md).

GPR (the loss of AEVLP, ICCV 2025), VLPL (Xing et al., CVPR 2024 workshop) and CRISP
(NeurIPS 2025: its class-prior estimator and the clean-room loss "CRISP-Eq7", ours: the paper's Eq. 8 is not
decoded). Written from docs/vlp_methods.md, which was written from the authors' repositories and the CRISP
paper; nothing here is copied from them. Nothing here holds state: the method objects
(methods/vlp.py) keep the priors and read the pseudo-labels.

Encodings (docs/protocol.md, docs/vlp_methods.md header):
    logits          B×L float (computed in float32, or float64 if given)
    observed        B×L in {-1, 0, +1}: observed negative, unobserved, observed positive
    pseudo_labels   B×L in {-1, 0, +1}: y′ from a frozen vision-language model (CLIP)
    final label ŷ   = y where y ≠ 0, else y′
    epoch           1-based, t = 1…T
Losses are computed from logits (−log p = sp(−x), −log(1−p) = sp(x)), not −log(p + ε) as the
authors' code (their ε changes the 4th decimal at most, docs/vlp_methods.md). Reduction
R(M) = Σ M / (B·L) unless stated.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from largeloss.methods import peer_losses
from largeloss.methods.losses import LossOutput, bce

__all__ = ["gpr_pseudo_positive_weight", "gpr_per_entry", "gpr_regulariser", "gpr_loss",
           "vlpl_per_entry", "vlpl_loss", "crisp_class_priors",
           "crisp_per_class", "crisp_loss"]

# --- the authors' defaults (VOC's for GPR; VLPL's CLI defaults; CRISP's δ = τ; docs/vlp_methods.md) ----
GPR_LAMBDA = (0.7, 0.4)   # (λ₁, λ₂): the pseudo-positive weight 1 − ṽ lies in [λ₂, λ₁]
GPR_RHO = 0.9             # soft target of a pseudo-positive
GPR_REG = 0.05            # weight of EPR's regulariser
VLPL_BETA_POS = 0.7       # weight of the pseudo-positive term
VLPL_POSITIVE_TARGET = 0.9  # its soft target, hard-coded by the authors
CRISP_DELTA = 0.01        # δ of the estimator's confidence term
CRISP_TAU = 0.01          # τ of the estimator's confidence term
CRISP_WARMUP_EPOCHS = 1   # epochs of AN before the first estimate (ours; the paper's is unknown)


def _check_shapes(logits: Tensor, *others: Tensor) -> None:
    if logits.ndim != 2 or any(other.shape != logits.shape for other in others):
        raise ValueError(f"logits, observed and pseudo-labels must all be B×L, got "
                         f"{[tuple(t.shape) for t in (logits, *others)]}")


def _final_labels(observed: Tensor, pseudo_labels: Tensor) -> Tensor:
    """ŷ = y where y ≠ 0, else y′ (B×L in {-1, 0, +1})."""
    return torch.where(observed != 0, observed, pseudo_labels.to(observed.dtype))


# --- GPR: AEVLP's loss (docs/vlp_methods.md) -------------------------------------------------------------

def gpr_pseudo_positive_weight(probs_const: Tensor, schedule: peer_losses.GRSchedule,
                               lam: tuple = GPR_LAMBDA) -> Tensor:
    """1 − ṽ with ṽ = clip(v(p̄), 1 − λ₁, 1 − λ₂): the weight of L², within [λ₂, λ₁].
    probs_const: B×L detached probabilities; v = exp(−(p̄ − μ_t)²/(2σ_t²)) as GR's."""
    lam1, lam2 = lam
    weight = torch.exp(-(probs_const - schedule.mu).square() / (2 * schedule.sigma ** 2))
    return 1 - weight.clamp(1 - lam1, 1 - lam2)


def gpr_per_entry(logits: Tensor, observed: Tensor, pseudo_labels: Tensor,
                  schedule: peer_losses.GRSchedule, *, q2: float = peer_losses.GR_Q2,
                  q3: float = peer_losses.GR_Q3, lam: tuple = GPR_LAMBDA,
                  rho: float = GPR_RHO) -> Tensor:
    """B×L per-entry GPR loss (docs/vlp_methods.md, the figure's four branches), p̄ = σ(x) detached:

        L¹ y = +1:            −log p
        L² y = 0, y′ = +1:    (1 − ṽ)·[ρ·(−log p) + (1−ρ)·(−log(1−p))], 1 − ṽ ∈ [λ₂, λ₁]
        L³ ŷ = −1:            v·(−log(1−p)): observed negatives and negative pseudo-labels (the
                              paper's branch; the released DAMP never yields −1, so it never fires
                              there, and the code applies it to observed negatives: the same rule)
        L⁴ ŷ = 0:             v·[k̂·L1(p; q₂) + (1 − k̂)·L2(p; q₃)], GR's unobserved term
    v, ṽ and k̂ are functions of p̄: constants, no gradient.
    """
    _check_shapes(logits, observed, pseudo_labels)
    logits = peer_losses._as_float(logits)
    final = _final_labels(observed, pseudo_labels)
    probs_const = torch.sigmoid(logits).detach()
    weight = torch.exp(-(probs_const - schedule.mu).square() / (2 * schedule.sigma ** 2))
    neutral = peer_losses.gr_per_entry(logits, torch.zeros_like(observed), schedule, q2=q2, q3=q3)
    pseudo_positive = gpr_pseudo_positive_weight(probs_const, schedule, lam) * (
        rho * bce(logits, 1.0) + (1 - rho) * bce(logits, 0.0))
    per_entry = torch.where(final == -1, weight * bce(logits, 0.0), neutral)
    per_entry = torch.where((observed == 0) & (final == 1), pseudo_positive, per_entry)
    return torch.where(observed == 1, bce(logits, 1.0), per_entry)


def gpr_regulariser(logits: Tensor, expected_num_pos: float) -> Tensor:
    """EPR's regulariser as GPR scales it: ((1/B)·Σ_iΣ_j p_ij − k)² / L², gradient through p."""
    probs = torch.sigmoid(peer_losses._as_float(logits))
    num_classes = logits.shape[1]
    return (probs.sum(dim=1).mean() - expected_num_pos).square() / num_classes ** 2


def gpr_loss(logits: Tensor, observed: Tensor, pseudo_labels: Tensor, epoch: int, *,
             expected_num_pos: float, num_epochs: int = peer_losses.GR_NUM_EPOCHS,
             linear_init: int = peer_losses.GR_LINEAR_INIT, beta: tuple = peer_losses.GR_BETA,
             alpha: tuple = peer_losses.GR_ALPHA, q2: float = peer_losses.GR_Q2,
             q3: float = peer_losses.GR_Q3, lam: tuple = GPR_LAMBDA, rho: float = GPR_RHO,
             reg: float = GPR_REG, reference_off_by_one: bool = True) -> LossOutput:
    """GPR at 1-based `epoch`: R(per entry) + reg·gpr_regulariser (docs/vlp_methods.md). The schedules
    are GR's, off-by-one included (reference_off_by_one, docs/methods.md). modified = the
    pseudo-positives scored (y = 0, y′ = +1)."""
    schedule = peer_losses.gr_schedule(epoch, num_epochs=num_epochs, linear_init=linear_init,
                                       beta=beta, alpha=alpha,
                                       reference_off_by_one=reference_off_by_one)
    per_entry = gpr_per_entry(logits, observed, pseudo_labels, schedule, q2=q2, q3=q3, lam=lam,
                              rho=rho)
    loss = per_entry.sum() / per_entry.numel() + reg * gpr_regulariser(logits, expected_num_pos)
    modified = (observed == 0) & (pseudo_labels == 1)
    return peer_losses._output(loss, modified, logits)


# --- VLPL (docs/vlp_methods.md) -------------------------------------------------------------------------

def vlpl_per_entry(logits: Tensor, observed: Tensor, pseudo_labels: Tensor, *,
                   alpha: float = peer_losses.EM_ALPHA, beta_pos: float = VLPL_BETA_POS) -> Tensor:
    """B×L per-entry VLPL loss (docs/vlp_methods.md):

        y = +1:            −log p
        y = 0, y′ = +1:    β_pos·[0.9·(−log p) + 0.1·(−log(1−p))]
        y = 0, y′ = 0:     −α·H(p), EM's entropy term (the loss can be negative)
        y = 0, y′ = −1:    0: the authors' negative pseudo-labels are ignored, not negatives
        y = −1:            −log(1−p), as EM here (an extension: the authors' data has none)
    """
    _check_shapes(logits, observed, pseudo_labels)
    logits = peer_losses._as_float(logits)
    per_entry = peer_losses.em_per_entry(logits, observed, alpha=alpha)
    target = VLPL_POSITIVE_TARGET
    pseudo_positive = beta_pos * (target * bce(logits, 1.0) + (1 - target) * bce(logits, 0.0))
    unobserved = observed == 0
    per_entry = torch.where(unobserved & (pseudo_labels == 1), pseudo_positive, per_entry)
    return torch.where(unobserved & (pseudo_labels == -1), torch.zeros_like(per_entry), per_entry)


def vlpl_loss(logits: Tensor, observed: Tensor, pseudo_labels: Tensor, *,
              alpha: float = peer_losses.EM_ALPHA, beta_pos: float = VLPL_BETA_POS) -> LossOutput:
    """VLPL reduced by R; modified = the pseudo-positives scored (y = 0, y′ = +1)."""
    per_entry = vlpl_per_entry(logits, observed, pseudo_labels, alpha=alpha, beta_pos=beta_pos)
    modified = (observed == 0) & (pseudo_labels == 1)
    return peer_losses._output(per_entry.sum() / per_entry.numel(), modified, logits)


# --- CRISP (docs/vlp_methods.md) --------------------------------------------------------------------------

def crisp_class_priors(probs: Tensor, observed: Tensor, *, delta: float = CRISP_DELTA,
                       tau: float = CRISP_TAU) -> tuple[Tensor, Tensor]:
    """CRISP's class-prior estimates (docs/vlp_methods.md, the BBE "top bin" estimator), all classes.

    Args:
        probs: N×L σ(g(x)) of the whole training set (current model, no gradient).
        observed: N×L in {-1, 0, +1}; S_j = the images whose observed positive is j.
    Returns (priors L float, estimated L bool). For each class j with n_j^p > 0:
        ẑ_j = argmin over z ∈ {f_j(x_i)} with q̂_j^p(z) > 0 of
              q̂_j(z)/q̂_j^p(z) + (1+τ)/q̂_j^p(z)·(√(log(4/δ)/(2n)) + √(log(4/δ)/(2n_j^p))),
        q̂_j(z) = #{i : f_j(x_i) ≥ z}/n, q̂_j^p(z) = #{x ∈ S_j : f_j(x) ≥ z}/n_j^p,
        π̂_j = q̂_j(ẑ)/q̂_j^p(ẑ), clipped to at most 1 (ours: a prior above 1 means nothing).
    Classes with n_j^p = 0 get estimated False and prior 0 (the caller keeps its previous value).
    One sort per class: O(N log N) for each of the L columns, batched.
    """
    if probs.shape != observed.shape or probs.ndim != 2:
        raise ValueError(f"probs and observed must both be N×L, got {tuple(probs.shape)} and "
                         f"{tuple(observed.shape)}")
    scores = probs.detach().double().T.contiguous()                       # L×N
    positive = (observed == 1).T
    num_images = scores.shape[1]
    num_positive = positive.sum(dim=1)                                    # L
    all_sorted = scores.sort(dim=1).values
    positive_sorted = scores.masked_fill(~positive, -math.inf).sort(dim=1).values
    # counts of f ≥ z for every candidate z (each f_j(x_i)); ties count together
    count_all = num_images - torch.searchsorted(all_sorted, scores, side="left")
    count_positive = num_images - torch.searchsorted(positive_sorted, scores, side="left")
    fraction_all = count_all.double() / num_images
    fraction_positive = count_positive.double() / num_positive.clamp(min=1).unsqueeze(1)
    log_term = math.log(4 / delta)
    confidence = (math.sqrt(log_term / (2 * num_images))
                  + torch.sqrt(log_term / (2 * num_positive.clamp(min=1).double())))
    objective = (fraction_all + (1 + tau) * confidence.unsqueeze(1)) / fraction_positive
    objective = objective.masked_fill(count_positive == 0, math.inf)
    best = objective.argmin(dim=1, keepdim=True)
    ratio = (fraction_all.gather(1, best) / fraction_positive.gather(1, best)).squeeze(1)
    estimated = num_positive > 0
    priors = torch.where(estimated, ratio.clamp(max=1.0), torch.zeros_like(ratio))
    return priors.to(probs.dtype if probs.is_floating_point() else torch.float32), estimated


def crisp_per_class(logits: Tensor, observed: Tensor, priors: Tensor, *,
                    positive_weights: Tensor | None = None) -> Tensor:
    """L per-class terms of CRISP-Eq7, OUR variant of the paper's loss (docs/vlp_methods.md; Eq. 8 is
    not decoded), p = σ(x), π̂ the priors (L, no gradient):

        2π̂_j·mean_{i in batch, y_ij = +1}(1 − p_ij) + |mean_{i in batch} p_ij − π̂_j|
    The first term is 0 when the batch has no positive of class j. positive_weights (L) replaces
    the mean over the batch's positives by w_j·Σ: w_j = n/(B·n_j^p) is unbiased for Eq. 7.
    Observed negatives count as unlabelled (the positive-unlabelled setting of the paper).
    """
    _check_shapes(logits, observed)
    probs = torch.sigmoid(peer_losses._as_float(logits))
    priors = priors.to(probs.dtype).detach()
    positive = (observed == 1).to(probs.dtype)
    positive_sum = ((1 - probs) * positive).sum(dim=0)
    if positive_weights is None:
        positive_term = positive_sum / positive.sum(dim=0).clamp(min=1)
    else:
        positive_term = positive_weights.to(probs.dtype) * positive_sum
    return 2 * priors * positive_term + (probs.mean(dim=0) - priors).abs()


def crisp_loss(logits: Tensor, observed: Tensor, priors: Tensor, *,
               positive_weights: Tensor | None = None) -> LossOutput:
    """CRISP-Eq7 (ours, docs/vlp_methods.md): the mean over the L classes of `crisp_per_class`."""
    per_class = crisp_per_class(logits, observed, priors, positive_weights=positive_weights)
    return peer_losses._output(per_class.mean(), None, logits)
