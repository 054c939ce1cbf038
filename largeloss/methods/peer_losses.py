"""The methods after the LL paper as pure functions of tensors (docs/methods.md).

BoostLU (Kim et al., CVPR 2023), EM and EM+APL (Zhou et al., ECCV 2022), Hill and SPLC (Zhang et al.,
arXiv 2112.07368), GR loss (Chen et al., IJCAI 2024). Later wrapped as registered method objects;
nothing here holds state: the stores that outlive a batch (APL's soft targets) are passed in.

Encodings (docs/protocol.md §Label encodings):
    logits    B×L, any float dtype (computed in float32, or float64 if given)
    observed  B×L in {-1, 0, +1}: observed negative, unobserved, observed positive
    epoch     1-based, t = 1…T (SPLC's 0-based e_c = 1 is start_epoch = 2 here)

Every loss is computed from logits (sp(z) = log(1+e^z), −log p = sp(−x), −log(1−p) = sp(x)), not
from −log(p + ε) on probabilities as the reference code does (docs/methods.md). Each loss function
returns losses.LossOutput(loss, modified, relabel), reduced as R(M) = Σ M / (B·L) unless stated:
    modified  B×L bool: entries scored under a label other than the observed one in this batch
              (SPLC's temporary flips, EM+APL's pseudo-negatives); all False otherwise
    relabel   B×L bool, always all False: none of these methods writes a label permanently from
              the loss (APL's pseudo-labels come from `apl_pass`, once per epoch)

Paper or reference code. The four papers' full texts were not readable (docs/methods.md): where the
two are known to differ, or the code has a defect, the default is the paper / the defect-free form
and the authors' behaviour is behind a keyword argument, commented "paper" / "authors' code".
Observed negatives (−1) are in none of the reference codes; each function says what it does with
them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from largeloss.methods.losses import LossOutput, bce

__all__ = ["binary_entropy", "em_per_entry", "em_loss", "apl_unobserved_counts",
           "apl_num_per_pass", "apl_pass_after_epoch", "apl_pass", "hill_per_entry", "hill_loss",
           "splc_per_entry", "splc_loss", "GRSchedule", "gr_schedule", "gr_per_entry", "gr_loss"]

# --- the authors' defaults (docs/methods.md §Flags of the later methods) --------------------------
BOOSTLU_ALPHA = 5.0
BOOSTLU_DELTA_REL = {"LL-R": 0.5, "LL-Ct": 0.2, "LL-Cp": 0.1}  # percent per epoch, every dataset
# EM / APL: the reference sets them per dataset; these are pascal's, its CLI's default dataset.
EM_ALPHA = 0.2
APL_BETA = 0.02
APL_WARMUP_EPOCHS = 5
APL_PROPORTION = 0.9  # θ, `neg_proportion`
APL_NUM_EPOCHS = 10
HILL_LAMBDA = 1.5
HILL_MARGIN = 1.0
HILL_GAMMA = 2.0
SPLC_TAU = 0.6
SPLC_MARGIN = 1.0
SPLC_GAMMA = 2.0
SPLC_START_EPOCH = 2  # 1-based; the code's 0-based e ≥ e_c = 1
# Hill and SPLC's reduction. Their code sums over the B·L entries (docs/methods.md); this
# project runs R, the mean of every other method, as the default, the CLI's and the preset's
# (`--reduction sum` is theirs). The one place both are written.
FOCAL_REDUCTION = "mean"
FOCAL_AUTHORS_REDUCTION = "sum"
GR_BETA = (0.0, 2.0, -2.0, -2.0)  # (w₀, w_T, b₀, b_T)
GR_ALPHA = (0.5, 2.0, 0.8, 0.5)  # (μ₀, σ₀, μ_T, σ_T)
GR_Q2 = 0.01
GR_Q3 = 1.0
GR_NUM_EPOCHS = 8
GR_LINEAR_INIT = 0  # n, epochs with a frozen backbone


def _check_shapes(logits: Tensor, observed: Tensor) -> None:
    if logits.ndim != 2 or observed.shape != logits.shape:
        raise ValueError(f"logits and observed must both be B×L, got {tuple(logits.shape)} and "
                         f"{tuple(observed.shape)}")


def _as_float(logits: Tensor) -> Tensor:
    """float32 for half/bfloat16 inputs (as losses.compute_loss); float64 stays float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _reduce(per_entry: Tensor, reduction: str = "mean") -> Tensor:
    """R(M) = Σ M / (B·L) ("mean", the project's protocol) or Σ M ("sum", Hill/SPLC's code)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return per_entry.sum() if reduction == "sum" else per_entry.sum() / per_entry.numel()


def _output(loss: Tensor, modified: Tensor | None, like: Tensor) -> LossOutput:
    nothing = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    return LossOutput(loss=loss, modified=nothing if modified is None else modified, relabel=nothing)


# --- EM and APL (docs/methods.md §EM, §EM+APL) ----------------------------------------------------

def binary_entropy(logits: Tensor) -> Tensor:
    """H(p) = −p·log p − (1−p)·log(1−p), p = σ(x), per entry, from logits: p·sp(−x) + (1−p)·sp(x)."""
    probs = torch.sigmoid(logits)
    return probs * F.softplus(-logits) + (1 - probs) * F.softplus(logits)


def em_per_entry(logits: Tensor, observed: Tensor, *, alpha: float = EM_ALPHA,
                 pseudo_targets: Tensor | None = None, pseudo_mask: Tensor | None = None,
                 beta: float = APL_BETA) -> Tensor:
    """B×L per-entry EM loss (docs/methods.md §EM), with APL's soft pseudo-negatives (§EM+APL).

        y = +1:                      −log p
        y = 0, not pseudo-labelled:  −α·H(p), in [−α·ln 2, 0]: drives the logit towards 0
        y = 0, pseudo-negative s:    β·[s·(−log p) + (1−s)·(−log(1−p))], β·BCE with soft target s
        y = −1:                      −log(1−p). An extension: the reference asserts y ≥ 0.
    pseudo_targets (B×L float, s = p at labelling time) and pseudo_mask (B×L bool) are APL's store,
    kept apart from `observed` (docs/methods.md); the mask acts on unobserved entries only,
    and pseudo_targets is read only under the mask. The loss can be negative: never clamp it.
    """
    _check_shapes(logits, observed)
    if (pseudo_mask is None) != (pseudo_targets is None):
        raise ValueError("pass pseudo_targets and pseudo_mask together (EM+APL) or neither (EM)")
    logits = _as_float(logits)
    per_entry = torch.where(observed == 1, bce(logits, 1.0), -alpha * binary_entropy(logits))
    per_entry = torch.where(observed == -1, bce(logits, 0.0), per_entry)
    if pseudo_mask is not None:
        pseudo = pseudo_mask & (observed == 0)
        # Read under the mask only: a NaN elsewhere would still reach the gradient through bce.
        targets = pseudo_targets.to(logits.dtype).masked_fill(~pseudo, 0.0)
        per_entry = torch.where(pseudo, beta * bce(logits, targets), per_entry)
    return per_entry


def em_loss(logits: Tensor, observed: Tensor, *, alpha: float = EM_ALPHA,
            pseudo_targets: Tensor | None = None, pseudo_mask: Tensor | None = None,
            beta: float = APL_BETA) -> LossOutput:
    """EM (without a pseudo_mask) or EM+APL, reduced by R; modified = the pseudo-negatives scored."""
    per_entry = em_per_entry(logits, observed, alpha=alpha, pseudo_targets=pseudo_targets,
                             pseudo_mask=pseudo_mask, beta=beta)
    modified = None if pseudo_mask is None else pseudo_mask & (observed == 0)
    return _output(_reduce(per_entry), modified, logits)


def apl_unobserved_counts(observed: Tensor) -> Tensor:
    """U_j: the unobserved training entries per class (N×L → L), counted once, before any pass."""
    return (observed == 0).sum(dim=0)


def apl_num_per_pass(unobserved_counts: Tensor, *, warmup_epochs: int = APL_WARMUP_EPOCHS,
                     num_epochs: int = APL_NUM_EPOCHS, proportion: float = APL_PROPORTION) -> Tensor:
    """n_j = ⌊θ·U_j / (T − T_w)⌋ pseudo-negatives per class and pass (docs/methods.md; poster θ′).

    The quotient is rounded to 9 decimals before the floor, so an exact quotient floors to itself
    even when float arithmetic lands just below it (where the reference's int() gives one less).
    """
    if not 0 < warmup_epochs < num_epochs:
        raise ValueError(f"need 0 < warmup_epochs < num_epochs, got {warmup_epochs}, {num_epochs}")
    per_pass = unobserved_counts.double() * proportion / (num_epochs - warmup_epochs)
    return torch.floor(torch.round(per_pass, decimals=9)).long()


def apl_pass_after_epoch(epoch: int, *, warmup_epochs: int = APL_WARMUP_EPOCHS,
                         num_epochs: int = APL_NUM_EPOCHS,
                         reference_last_pass: bool = False) -> bool:
    """Whether APL's pseudo-labelling pass runs after the training phase of 1-based `epoch`.

    Passes run after epochs T_w … T−1 (T − T_w passes, as n_j assumes); their labels are used from
    the next epoch on, so epochs 1 … T_w are pure EM. Default: no pass after epoch T, whose labels
    would never be used. reference_last_pass=True: authors' code, which also runs that wasted pass.
    """
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    last = num_epochs if reference_last_pass else num_epochs - 1
    return warmup_epochs <= epoch <= last


def apl_pass(probs: Tensor, observed: Tensor, pseudo_targets: Tensor, pseudo_mask: Tensor,
             num_per_pass: Tensor) -> tuple[Tensor, Tensor]:
    """One APL pass over the training set (docs/methods.md §EM+APL): new (pseudo_targets, pseudo_mask).

    Args:
        probs: N×L σ(x) of the whole training set (eval mode, no gradient), indexed by dataset index.
        observed: N×L in {-1, 0, +1}; pseudo_targets: N×L float; pseudo_mask: N×L bool.
        num_per_pass: L, n_j from `apl_num_per_pass`.
    For each class j, among the entries still in the pool (observed 0 and not yet pseudo-labelled),
    the n_j with the smallest p (fewer if the pool is smaller) become pseudo-negatives with soft
    target s = p. Labelled entries keep their s and leave the pool. Inputs are not modified.
    """
    pool = (observed == 0) & ~pseudo_mask
    ranked = probs.float().masked_fill(~pool, math.inf)
    rank = ranked.argsort(dim=0, stable=True).argsort(dim=0)  # position of each entry in its column
    selected = pool & (rank < num_per_pass.to(rank.device).view(1, -1))
    new_targets = torch.where(selected, probs.to(pseudo_targets.dtype), pseudo_targets)
    return new_targets, pseudo_mask | selected


# --- Hill and SPLC (docs/methods.md §Hill, §SPLC) -------------------------------------------------

def _focal_positive(logits: Tensor, gamma: float) -> Tensor:
    """−(1 − r)^γ·log r, r = σ(z); the focal weight is not detached."""
    return torch.sigmoid(-logits).pow(gamma) * bce(logits, 1.0)


def _focal_negative(logits: Tensor, gamma: float) -> Tensor:
    """−r^γ·log(1 − r), r = σ(z)."""
    return torch.sigmoid(logits).pow(gamma) * bce(logits, 0.0)


def hill_per_entry(logits: Tensor, observed: Tensor, *, lam: float = HILL_LAMBDA,
                   margin: float = HILL_MARGIN, gamma: float = HILL_GAMMA) -> Tensor:
    """B×L per-entry Hill loss (docs/methods.md §Hill).

        y = +1:         focal margin, −(1 − p_m)^γ·log p_m with p_m = σ(x − m)
        otherwise:      (λ − p)·p², no margin, no focal factor; ∂/∂x = p²(1−p)(2λ − 3p)
    Observed negatives take the negative branch, as "everything not positive" does in the code.
    """
    _check_shapes(logits, observed)
    logits = _as_float(logits)
    probs = torch.sigmoid(logits)
    return torch.where(observed == 1, _focal_positive(logits - margin, gamma),
                       (lam - probs) * probs.square())


def hill_loss(logits: Tensor, observed: Tensor, *, lam: float = HILL_LAMBDA,
              margin: float = HILL_MARGIN, gamma: float = HILL_GAMMA,
              reduction: str = FOCAL_REDUCTION) -> LossOutput:
    """Hill. reduction "mean" is R, the project's protocol; "sum" is the authors' code (Σ over B·L).
    With Adam and no weight decay the two differ only through Adam's ε (docs/methods.md §SPLC)."""
    per_entry = hill_per_entry(logits, observed, lam=lam, margin=margin, gamma=gamma)
    return _output(_reduce(per_entry, reduction), None, logits)


def splc_per_entry(logits: Tensor, observed: Tensor, epoch: int, *, tau: float = SPLC_TAU,
                   margin: float = SPLC_MARGIN, gamma: float = SPLC_GAMMA,
                   start_epoch: int = SPLC_START_EPOCH) -> tuple[Tensor, Tensor]:
    """B×L per-entry SPLC loss and the B×L bool of entries flipped to positive (docs/methods.md §SPLC).

    z = x − m on observed positives, z = x elsewhere; r = σ(z). From 1-based epoch `start_epoch`
    on, unobserved entries with σ(x) > τ (strict) count as positives in this batch only, scored
    without margin; the flip is recomputed every batch, never stored, and carries no gradient.
        positive (observed or flipped):  −(1 − r)^γ·log r
        otherwise:                       −r^γ·log(1 − r)
    Observed negatives are never flipped (an extension: the code has none).
    """
    _check_shapes(logits, observed)
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    logits = _as_float(logits)
    positive = observed == 1
    shifted = torch.where(positive, logits - margin, logits)
    flipped = (observed == 0) & (torch.sigmoid(shifted.detach()) > tau)
    if epoch < start_epoch:
        flipped = torch.zeros_like(flipped)
    per_entry = torch.where(positive | flipped, _focal_positive(shifted, gamma),
                            _focal_negative(shifted, gamma))
    return per_entry, flipped


def splc_loss(logits: Tensor, observed: Tensor, epoch: int, *, tau: float = SPLC_TAU,
              margin: float = SPLC_MARGIN, gamma: float = SPLC_GAMMA,
              start_epoch: int = SPLC_START_EPOCH, reduction: str = FOCAL_REDUCTION) -> LossOutput:
    """SPLC; modified = this batch's flips. reduction as in `hill_loss` ("sum": authors' code)."""
    per_entry, flipped = splc_per_entry(logits, observed, epoch, tau=tau, margin=margin,
                                        gamma=gamma, start_epoch=start_epoch)
    return _output(_reduce(per_entry, reduction), flipped, logits)


# --- GR loss (docs/methods.md §GR) ----------------------------------------------------------------

@dataclass(frozen=True)
class GRSchedule:
    """The four epoch-dependent scalars: k̂ = σ(w·p̄ + b), v = exp(−(p̄ − μ)²/(2σ²))."""
    w: float
    b: float
    mu: float
    sigma: float


def gr_schedule(epoch: int, *, num_epochs: int = GR_NUM_EPOCHS, linear_init: int = GR_LINEAR_INIT,
                beta: tuple = GR_BETA, alpha: tuple = GR_ALPHA,
                reference_off_by_one: bool = True) -> GRSchedule:
    """(w_t, b_t, μ_t, σ_t) at 1-based `epoch` (docs/methods.md §GR); beta = (w₀, w_T, b₀, b_T),
    alpha = (μ₀, σ₀, μ_T, σ_T), n = linear_init, T = num_epochs.

    reference_off_by_one=True (default; authors' code, which produced the published numbers):
        w, b move by max(t − n − 1, 0)/(T − n): they reach only (T−n−1)/(T−n) of the way at t = T;
        μ, σ move by max(t − n, 0)/(T − n): they already move at t = n+1 and arrive at t = T.
    False: w and b follow μ and σ's progress, so all four arrive at t = T. This is the project's
    reading of "w_T", not a form taken from the paper (unread).
    """
    if not 1 <= epoch <= num_epochs or not 0 <= linear_init < num_epochs:
        raise ValueError(f"need 1 <= epoch <= num_epochs and 0 <= linear_init < num_epochs, got "
                         f"epoch {epoch}, num_epochs {num_epochs}, linear_init {linear_init}")
    span = num_epochs - linear_init
    progress = max(epoch - linear_init, 0) / span
    progress_wb = max(epoch - linear_init - 1, 0) / span if reference_off_by_one else progress
    (w0, w_end, b0, b_end), (mu0, sigma0, mu_end, sigma_end) = beta, alpha
    return GRSchedule(w=w0 + (w_end - w0) * progress_wb, b=b0 + (b_end - b0) * progress_wb,
                      mu=mu0 + (mu_end - mu0) * progress,
                      sigma=sigma0 + (sigma_end - sigma0) * progress)


def _generalised_ce(log_prob: Tensor, q: float) -> Tensor:
    """(1 − P^q)/q from log P, exact for small q (−expm1); q = 0 is the limit −log P."""
    return -log_prob if q == 0 else -torch.expm1(q * log_prob) / q


def gr_per_entry(logits: Tensor, observed: Tensor, schedule: GRSchedule, *, q2: float = GR_Q2,
                 q3: float = GR_Q3, observed_negatives: str = "bce") -> Tensor:
    """B×L per-entry GR loss (docs/methods.md §GR), with p̄ = σ(x) detached:

        y = +1:  −log p, plain CE as in the code (whether the paper's positives use L1 with some q₁
                 is unknown: the paper was not readable)
        y = 0:   v(p̄)·[k̂(p̄)·L1(p; q₂) + (1 − k̂(p̄))·L2(p; q₃)], k̂ and v constants (no gradient)
                 L1(p; q) = (1 − p^q)/q, L2(p; q) = (1 − (1−p)^q)/q
        y = −1:  observed_negatives="bce": −log(1 − p), an extension (default);
                 "ignore": 0, the authors' code, which does not handle observed negatives.
    """
    _check_shapes(logits, observed)
    if observed_negatives not in ("bce", "ignore"):
        raise ValueError(f"observed_negatives must be 'bce' or 'ignore', got {observed_negatives!r}")
    logits = _as_float(logits)
    probs_const = torch.sigmoid(logits).detach()
    soft_label = torch.sigmoid(schedule.w * probs_const + schedule.b)
    weight = torch.exp(-(probs_const - schedule.mu).square() / (2 * schedule.sigma ** 2))
    unobserved = weight * (soft_label * _generalised_ce(F.logsigmoid(logits), q2)
                           + (1 - soft_label) * _generalised_ce(F.logsigmoid(-logits), q3))
    per_entry = torch.where(observed == 1, bce(logits, 1.0), unobserved)
    negative = bce(logits, 0.0) if observed_negatives == "bce" else torch.zeros_like(logits)
    return torch.where(observed == -1, negative, per_entry)


def gr_loss(logits: Tensor, observed: Tensor, epoch: int, *, num_epochs: int = GR_NUM_EPOCHS,
            linear_init: int = GR_LINEAR_INIT, beta: tuple = GR_BETA, alpha: tuple = GR_ALPHA,
            q2: float = GR_Q2, q3: float = GR_Q3, reference_off_by_one: bool = True,
            observed_negatives: str = "bce") -> LossOutput:
    """GR loss at 1-based `epoch`, reduced by R (the code's mean over all B·L entries)."""
    schedule = gr_schedule(epoch, num_epochs=num_epochs, linear_init=linear_init, beta=beta,
                           alpha=alpha, reference_off_by_one=reference_off_by_one)
    per_entry = gr_per_entry(logits, observed, schedule, q2=q2, q3=q3,
                             observed_negatives=observed_negatives)
    return _output(_reduce(per_entry), None, logits)




# GR's follow-up AEVLP (GPR loss, same code lineage) per dataset: a hint, not GR's own values
# (GR publishes none). α = (0.5, 2, 0.8, 0.5), q₂ = 0.01 and lr 1e-5 for all.
GR_AEVLP_HINTS = {
    "pascal": {"beta": (0.0, 2.0, -2.0, -2.0), "q3": 1.0, "num_epochs": 8, "batch_size": 8},
    "coco": {"beta": (0.0, 10.0, -2.0, -8.0), "q3": 1.0, "num_epochs": 8, "batch_size": 16},
    "nuswide": {"beta": (0.0, 10.0, -2.0, -8.0), "q3": 1.0, "num_epochs": 10, "batch_size": 16},
    "cub": {"beta": (0.0, 10.0, -2.0, -8.0), "q3": 1.5, "num_epochs": 10, "batch_size": 8},
}
