"""Tests of losses.py against hand-computed values from docs/methods.md (and docs/protocol.md §Label encodings).

Every expected number is written from the formula of docs/methods.md with math.log / math.exp on scalars
(see the helpers below), never by running torch's BCE on the same tensors.

    BCE(x, 1) = −log σ(x)     = log(1 + e^(−x))
    BCE(x, 0) = −log(1 − σ(x)) = log(1 + e^x)
    BCE(x, t) = t·BCE(x, 1) + (1 − t)·BCE(x, 0)          (soft targets, ROLE)
Reduction: loss = Σ per-entry / (B·L) + regulariser (epr, role), the regulariser not divided.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from largeloss.methods.label_stores import LabelEstimator, ObservedLabelStore
from largeloss.methods.losses import LL_SCHEMES, LOSSES, LossOutput, compute_loss, ll_num_modified

EPS = 0.1  # label-smoothing ε of bce_ls / an_ls


# ---------------------------------------------------------------- scalar reference formulas
def sig(x: float) -> float:
    """σ(x)."""
    return 1.0 / (1.0 + math.exp(-x))


def bce1(x: float) -> float:
    """BCE(x, 1) = −log σ(x) = log(1 + e^(−x))."""
    return math.log1p(math.exp(-x))


def bce0(x: float) -> float:
    """BCE(x, 0) = −log(1 − σ(x)) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def bce(x: float, t: float) -> float:
    """BCE with a (possibly soft) target t."""
    return t * bce1(x) + (1.0 - t) * bce0(x)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def approx(value: float):
    return pytest.approx(value, rel=1e-5, abs=1e-6)


def tensor(rows, dtype=torch.float32, grad=False):
    return torch.tensor(rows, dtype=dtype, requires_grad=grad)


def mask(shape, entries):
    """B×L bool mask with True at the listed (row, col) entries."""
    out = torch.zeros(shape, dtype=torch.bool)
    for b, l in entries:
        out[b, l] = True
    return out


def assert_mask(got, shape, entries):
    assert got.dtype == torch.bool
    assert tuple(got.shape) == tuple(shape)
    assert torch.equal(got.cpu(), mask(shape, entries)), f"got True at {got.nonzero().tolist()}"


# ---------------------------------------------------------------- the small base case (B=2, L=3)
X = [[0.0, 2.0, -1.0],
     [3.0, -2.0, 1.0]]
OBS = [[1, 0, -1],
       [0, 1, 0]]
TRUE = [[1, 1, 0],
        [1, 1, 0]]
THETA = [[1.0, -1.0, 0.5],
         [0.0, 2.0, -3.0]]
B, L = 2, 3
BL = B * L


def _row_sigmoid_mean(rows):
    """(1/B) Σ_b Σ_l σ(rows[b][l])."""
    return sum(sum(sig(v) for v in row) for row in rows) / len(rows)


def expected_base(method: str, k: float = 1.5) -> float:
    """Hand-written per-entry sums of docs/methods.md §Cole et al.'s baselines for the base case."""
    if method == "bce":      # targets TRUE
        return (bce1(0) + bce1(2) + bce0(-1) + bce1(3) + bce1(-2) + bce0(1)) / BL
    if method == "bce_ls":   # (1−ε)·BCE(x,true) + ε·BCE(x,1−true)
        return ((1 - EPS) * (bce1(0) + bce1(2) + bce0(-1) + bce1(3) + bce1(-2) + bce0(1))
                + EPS * (bce0(0) + bce0(2) + bce1(-1) + bce0(3) + bce0(-2) + bce1(1))) / BL
    if method == "iun":      # obs +1: BCE(x,1); true 0: BCE(x,0); unobserved true positives (x=2, x=3): 0
        return (bce1(0) + bce0(-1) + bce1(-2) + bce0(1)) / BL
    if method == "iu":       # obs +1: BCE(x,1); obs −1: BCE(x,0); else 0
        return (bce1(0) + bce0(-1) + bce1(-2)) / BL
    if method == "an":       # y = obs.clip(0) = [[1,0,0],[0,1,0]]
        return (bce1(0) + bce0(2) + bce0(-1) + bce0(3) + bce1(-2) + bce0(1)) / BL
    if method == "an_ls":
        return ((1 - EPS) * (bce1(0) + bce0(2) + bce0(-1) + bce0(3) + bce1(-2) + bce0(1))
                + EPS * (bce0(0) + bce1(2) + bce1(-1) + bce1(3) + bce0(-2) + bce1(1))) / BL
    if method == "wan":      # γ = 1/(L−1) = 1/2 on every entry that is not an observed positive
        return (bce1(0) + bce1(-2) + 0.5 * (bce0(2) + bce0(-1) + bce0(3) + bce0(1))) / BL
    if method == "epr":      # observed positives only + ((mean row-sum of σ(x) − k)/L)²
        reg = ((_row_sigmoid_mean(X) - k) / L) ** 2
        return (bce1(0) + bce1(-2)) / BL + reg
    if method == "role":
        return expected_role(X, OBS, THETA, k)
    raise AssertionError(method)


def expected_role(x, obs, theta, k):
    """docs/methods.md §ROLE per entry 0.5·[pos(p)+pos(e)] + 0.5·[BCE(x,ē)+BCE(θ,p̄)], /(B·L), + regulariser."""
    rows, cols = len(x), len(x[0])
    total = 0.0
    for b in range(rows):
        for l in range(cols):
            xv, tv = x[b][l], theta[b][l]
            if obs[b][l] == 1:
                total += 0.5 * (bce1(xv) + bce1(tv))            # −log p − log e
            total += 0.5 * (bce(xv, sig(tv)) + bce(tv, sig(xv)))  # both cross terms, every entry
    reg = 0.5 * (((_row_sigmoid_mean(x) - k) / cols) ** 2 + ((_row_sigmoid_mean(theta) - k) / cols) ** 2)
    return total / (rows * cols) + reg


def run_base(method, *, k=1.5, obs_dtype=torch.float32, logits=None, theta=None, **kwargs):
    logits = tensor(X, grad=True) if logits is None else logits
    extra = {}
    if method in ("bce", "bce_ls", "iun"):
        extra["true_labels"] = tensor(TRUE)
    if method in ("epr", "role"):
        extra["expected_num_pos"] = k
    if method == "role":
        extra["estimator_logits"] = tensor(THETA, grad=True) if theta is None else theta
    extra.update(kwargs)
    return compute_loss(method, logits, tensor(OBS, dtype=obs_dtype), **extra)


# ---------------------------------------------------------------- constants and basic contract
def test_method_tuples():
    """LOSSES and LL_SCHEMES list the methods of docs/methods.md in the agreed order."""
    assert tuple(LOSSES) == ("bce", "bce_ls", "iun", "iu", "an", "an_ls", "wan", "epr", "role",
                              "LL-R", "LL-Ct", "LL-Cp")
    assert tuple(LL_SCHEMES) == ("LL-R", "LL-Ct", "LL-Cp")


def test_reference_helpers():
    """Sanity of the scalar helpers: BCE(0,·) = log 2, BCE(x,1) − BCE(x,0) = −x."""
    assert bce1(0) == pytest.approx(math.log(2))
    assert bce0(0) == pytest.approx(math.log(2))
    assert bce1(2) - bce0(2) == pytest.approx(-2)
    assert bce(1.5, 0.25) == pytest.approx(-(0.25 * math.log(sig(1.5)) + 0.75 * math.log(1 - sig(1.5))))
    assert logit(0.6) == pytest.approx(math.log(1.5))


BASE_METHODS = ["bce", "bce_ls", "iun", "iu", "an", "an_ls", "wan", "epr", "role"]


@pytest.mark.parametrize("method", BASE_METHODS)
def test_base_case_value(method):
    """Each baseline method matches its hand-computed value on the 2×3 case."""
    out = run_base(method)
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0
    assert out.loss.item() == approx(expected_base(method))


@pytest.mark.parametrize("method", ["epr", "role"])
@pytest.mark.parametrize("k", [0.5, 1.5, 2.9])
def test_regulariser_depends_on_expected_num_pos(method, k):
    """epr / role add their regulariser undivided by B·L, for several k."""
    out = run_base(method, k=k)
    assert out.loss.item() == approx(expected_base(method, k))


def test_epr_regulariser_not_divided():
    """epr at k = 0.5: regulariser ((1.7263 − 0.5)/3)² ≈ 0.167 is added as is."""
    reg = ((_row_sigmoid_mean(X) - 0.5) / L) ** 2
    assert reg > 0.1  # big enough that dividing it by B·L = 6 would be caught
    out = run_base("epr", k=0.5)
    assert out.loss.item() == approx((bce1(0) + bce1(-2)) / BL + reg)


def test_wan_gamma_uses_number_of_classes():
    """wan with L = 5: γ = 1/4 on every non-positive entry (observed negative included)."""
    x = [[1.0, -1.0, 2.0, 0.0, 0.5]]
    obs = [[0, 1, 0, -1, 0]]
    out = compute_loss("wan", tensor(x), tensor(obs))
    expected = (bce1(-1) + 0.25 * (bce0(1) + bce0(2) + bce0(0) + bce0(0.5))) / 5
    assert out.loss.item() == approx(expected)


def test_iun_ignores_unobserved_true_positives_only():
    """iun: an unobserved true positive contributes 0 whatever its logit; unobserved true negatives count."""
    obs = tensor([[1, 0, 0]])
    true = tensor([[1, 1, 0]])
    a = compute_loss("iun", tensor([[0.5, 7.0, -1.0]]), obs, true_labels=true).loss.item()
    b = compute_loss("iun", tensor([[0.5, -7.0, -1.0]]), obs, true_labels=true).loss.item()
    assert a == approx((bce1(0.5) + bce0(-1)) / 3)
    assert b == approx(a)


def test_iu_without_negatives_uses_positives_only():
    """iu: unobserved entries contribute 0, so only observed ±1 entries count."""
    out = compute_loss("iu", tensor([[2.0, 5.0, -4.0, 1.0]]), tensor([[1, 0, 0, -1]]))
    assert out.loss.item() == approx((bce1(2) + bce0(1)) / 4)


@pytest.mark.parametrize("obs_dtype", [torch.float32, torch.float64, torch.int8, torch.int32, torch.int64])
@pytest.mark.parametrize("method", ["an", "LL-Ct", "role", "wan"])
def test_observed_any_numeric_dtype(method, obs_dtype):
    """The observed matrix may come in any numeric dtype; the value does not change."""
    out = run_base(method, obs_dtype=obs_dtype, epoch=2, delta_rel=0.0)
    assert out.loss.item() == approx(expected_base("an" if method == "LL-Ct" else method))


@pytest.mark.parametrize("true_dtype", [torch.float32, torch.int64, torch.uint8])
def test_true_labels_any_numeric_dtype(true_dtype):
    """bce accepts integer true labels too."""
    out = compute_loss("bce", tensor(X), tensor(OBS), true_labels=tensor(TRUE, dtype=true_dtype))
    assert out.loss.item() == approx(expected_base("bce"))


@pytest.mark.parametrize("method", BASE_METHODS)
def test_baselines_modify_and_relabel_nothing(method):
    """Non-LL methods return all-False `modified` and `relabel` masks of shape B×L."""
    out = run_base(method, epoch=5, delta_rel=50.0)
    assert_mask(out.modified, (B, L), [])
    assert_mask(out.relabel, (B, L), [])


@pytest.mark.parametrize("method", BASE_METHODS)
def test_baseline_gradient_flows(method):
    """Each loss is differentiable with respect to the logits (finite, non-zero gradient)."""
    logits = tensor(X, grad=True)
    run_base(method, logits=logits).loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_an_gradient_by_hand():
    """an: d loss / d x = (σ(x) − y)/(B·L) for every entry."""
    logits = tensor(X, grad=True)
    compute_loss("an", logits, tensor(OBS)).loss.backward()
    y = [[1, 0, 0], [0, 1, 0]]
    expected = torch.tensor([[(sig(X[b][l]) - y[b][l]) / BL for l in range(L)] for b in range(B)])
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-7)


def test_check_values_false_skips_validation():
    """check_values=False gives the same result on valid input and does not reject odd values."""
    a = compute_loss("an", tensor(X), tensor(OBS), check_values=False).loss.item()
    assert a == approx(expected_base("an"))
    compute_loss("an", tensor(X), tensor([[1, 0, 2], [0, 1, 0]]), check_values=False)


# ---------------------------------------------------------------- large-loss schemes (docs/methods.md §LL schedule)
# B=2, L=4, B·L = 8. Observed: a positive with a huge loss (x=−6: BCE(−6,1) ≈ 6.0) and a negative with
# a huge loss (x=8: BCE(8,0) ≈ 8.0); both exceed every candidate loss and must never be modified.
# Candidates (obs 0) and their ranking losses BCE(x,0): x = 3 > 2 = 2 (tie) > 0.5 > −1 > −2.
XL = [[-6.0, 3.0, 2.0, 0.5],
      [8.0, 2.0, -1.0, -2.0]]
OBSL = [[1, 0, 0, 0],
        [-1, 0, 0, 0]]
SL = (2, 4)
BLL = 8
DREL = 25.0  # percent: epoch 2 → k = ceil(8·1·25/100) = 2 for all schemes; epoch 3 → 4 (LL-R/Ct), 2 (LL-Cp)
CANDIDATES = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
TOP2_WITH_TIE = [(0, 1), (0, 2), (1, 1)]   # R = BCE(2,0): both x=2 entries tie at R
TOP4 = [(0, 1), (0, 2), (1, 1), (0, 3)]     # R = BCE(0.5,0)

AN_L = (bce1(-6) + bce0(3) + bce0(2) + bce0(0.5) + bce0(8) + bce0(2) + bce0(-1) + bce0(-2)) / BLL


def run_ll(scheme, epoch, delta_rel=DREL, logits=None, observed=OBSL):
    logits = tensor(XL, grad=True) if logits is None else logits
    return compute_loss(scheme, logits, tensor(observed), epoch=epoch, delta_rel=delta_rel)


def test_ll_case_counts():
    """The hand case's k values come from ll_num_modified as the comments say."""
    assert [ll_num_modified(s, 2, DREL, 2, 4) for s in LL_SCHEMES] == [2, 2, 2]
    assert [ll_num_modified(s, 3, DREL, 2, 4) for s in LL_SCHEMES] == [4, 4, 2]


def test_an_value_of_ll_case():
    """Plain an on the LL case: every entry BCE(x, obs.clip(0))."""
    assert run_ll("an", 1).loss.item() == approx(AN_L)


@pytest.mark.parametrize("scheme", LL_SCHEMES)
@pytest.mark.parametrize("delta_rel", [0.0, 0.2, DREL, 100.0])
def test_epoch_one_equals_an(scheme, delta_rel):
    """Epoch 1 is a warm-up: every scheme equals plain an and modifies / relabels nothing."""
    out = run_ll(scheme, 1, delta_rel)
    assert out.loss.item() == approx(AN_L)
    assert_mask(out.modified, SL, [])
    assert_mask(out.relabel, SL, [])


@pytest.mark.parametrize("scheme", LL_SCHEMES)
@pytest.mark.parametrize("epoch", [2, 5])
def test_zero_delta_rel_equals_an(scheme, epoch):
    """Δrel = 0 gives k = 0: plain an at every epoch, nothing modified."""
    out = run_ll(scheme, epoch, 0.0)
    assert out.loss.item() == approx(AN_L)
    assert_mask(out.modified, SL, [])
    assert_mask(out.relabel, SL, [])


@pytest.mark.parametrize("scheme", LL_SCHEMES)
def test_epoch_two_modified_set_includes_ties(scheme):
    """Epoch 2, k = 2: R = BCE(2,0) and both tied x=2 candidates are modified with x=3 (3 entries)."""
    out = run_ll(scheme, 2)
    assert_mask(out.modified, SL, TOP2_WITH_TIE)


LLR_E2 = (bce1(-6) + bce0(0.5) + bce0(8) + bce0(-1) + bce0(-2)) / BLL
LLCT_E2 = (bce1(-6) + bce1(3) + bce1(2) + bce0(0.5) + bce0(8) + bce1(2) + bce0(-1) + bce0(-2)) / BLL
LLR_E3 = (bce1(-6) + bce0(8) + bce0(-1) + bce0(-2)) / BLL
LLCT_E3 = (bce1(-6) + bce1(3) + bce1(2) + bce1(0.5) + bce0(8) + bce1(2) + bce0(-1) + bce0(-2)) / BLL


@pytest.mark.parametrize("scheme, epoch, expected, modified", [
    ("LL-R", 2, LLR_E2, TOP2_WITH_TIE),
    ("LL-Ct", 2, LLCT_E2, TOP2_WITH_TIE),
    ("LL-Cp", 2, LLCT_E2, TOP2_WITH_TIE),
    ("LL-R", 3, LLR_E3, TOP4),
    ("LL-Ct", 3, LLCT_E3, TOP4),
    ("LL-Cp", 3, LLCT_E2, TOP2_WITH_TIE),   # LL-Cp's k stays 2
])
def test_ll_values(scheme, epoch, expected, modified):
    """LL-R drops modified entries (still / B·L), LL-Ct and LL-Cp flip them to BCE(x,1)."""
    out = run_ll(scheme, epoch)
    assert out.loss.item() == approx(expected)
    assert_mask(out.modified, SL, modified)


@pytest.mark.parametrize("scheme, epoch", [("LL-R", 2), ("LL-Ct", 2), ("LL-R", 3), ("LL-Ct", 3)])
def test_only_llcp_relabels(scheme, epoch):
    """LL-R and LL-Ct never report entries to relabel."""
    assert_mask(run_ll(scheme, epoch).relabel, SL, [])


def test_llcp_relabel_is_strictly_above_threshold():
    """LL-Cp: modified = candidates with l ≥ R (3 entries), relabel = l > R (only x=3)."""
    out = run_ll("LL-Cp", 2)
    assert_mask(out.modified, SL, TOP2_WITH_TIE)
    assert_mask(out.relabel, SL, [(0, 1)])
    assert out.loss.item() == approx(run_ll("LL-Ct", 2).loss.item())


@pytest.mark.parametrize("scheme", LL_SCHEMES)
def test_all_tied_candidates_are_modified(scheme):
    """k = 1 but three candidates tie at R: all three are modified; LL-Cp relabels none (none > R)."""
    x = [[1.0, 1.0, 1.0, -3.0]]
    obs = [[0, 0, 0, 1]]
    out = compute_loss(scheme, tensor(x), tensor(obs), epoch=2, delta_rel=25.0)  # k = ceil(4·25/100) = 1
    assert_mask(out.modified, (1, 4), [(0, 0), (0, 1), (0, 2)])
    assert_mask(out.relabel, (1, 4), [])
    expected = {"LL-R": bce1(-3) / 4, "LL-Ct": (3 * bce1(1) + bce1(-3)) / 4,
                "LL-Cp": (3 * bce1(1) + bce1(-3)) / 4}[scheme]
    assert out.loss.item() == approx(expected)


@pytest.mark.parametrize("scheme", LL_SCHEMES)
def test_k_capped_at_number_of_candidates(scheme):
    """Δrel = 100 %, epoch 3: k (16 or 8) > 6 candidates → all candidates modified, observed untouched."""
    out = run_ll(scheme, 3, 100.0)
    assert_mask(out.modified, SL, CANDIDATES)
    if scheme == "LL-R":
        assert out.loss.item() == approx((bce1(-6) + bce0(8)) / BLL)
    else:
        flipped = (bce1(-6) + bce1(3) + bce1(2) + bce1(0.5) + bce0(8) + bce1(2) + bce1(-1) + bce1(-2)) / BLL
        assert out.loss.item() == approx(flipped)


@pytest.mark.parametrize("delta_rel, k", [
    (75.0, 6),    # k = ceil(8·75/100) = 6 = number of candidates exactly
    (100.0, 8),   # k = 8, capped at the 6 candidates
    (250.0, 20),  # k = 20, capped at the 6 candidates
])
def test_llcp_relabel_with_k_at_or_above_candidates(delta_rel, k):
    """LL-Cp with (capped) k = 6 = #candidates: R = smallest candidate loss BCE(−2,0), relabel = the 5 above it."""
    assert ll_num_modified("LL-Cp", 3, delta_rel, 2, 4) == k
    out = run_ll("LL-Cp", 3, delta_rel)
    assert_mask(out.modified, SL, CANDIDATES)
    assert_mask(out.relabel, SL, [e for e in CANDIDATES if e != (1, 3)])


@pytest.mark.parametrize("scheme", LL_SCHEMES)
def test_observed_entries_never_modified(scheme):
    """Observed ±1 entries with by far the largest losses are not modified at any epoch."""
    for epoch in range(2, 8):
        out = run_ll(scheme, epoch, 40.0)
        assert not out.modified[0, 0] and not out.modified[1, 0]
        assert not out.relabel[0, 0] and not out.relabel[1, 0]


@pytest.mark.parametrize("scheme", LL_SCHEMES)
def test_no_candidates_means_no_modification(scheme):
    """A batch without unobserved entries: k is capped at 0, the loss is plain an."""
    x = [[2.0, -1.0], [0.5, 3.0]]
    obs = [[1, -1], [-1, 1]]
    out = compute_loss(scheme, tensor(x), tensor(obs), epoch=4, delta_rel=50.0)
    assert_mask(out.modified, (2, 2), [])
    assert_mask(out.relabel, (2, 2), [])
    assert out.loss.item() == approx((bce1(2) + bce0(-1) + bce0(0.5) + bce1(3)) / 4)


def _distinct_logits(batch, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randperm(batch * classes, generator=gen).to(torch.float32) / 9.0 - 8.0).reshape(batch, classes)


@pytest.mark.parametrize("scheme", ["LL-R", "LL-Ct"])
@pytest.mark.parametrize("batch, epoch, k", [
    (16, 2, 8),   # ceil(16·10·1·5/100) = 8
    (3, 2, 2),    # ceil(3·10·1·5/100) = ceil(1.5) = 2  (with the nominal B = 16 it would be 8)
    (16, 3, 16),  # ceil(16·10·2·5/100) = 16
    (3, 3, 3),    # ceil(3·10·2·5/100) = 3
])
def test_last_smaller_batch_uses_its_own_size(scheme, batch, epoch, k):
    """A short last batch (B=3) uses its own B for k and for the B·L divisor."""
    classes, delta_rel = 10, 5.0
    assert ll_num_modified(scheme, epoch, delta_rel, batch, classes) == k
    x = _distinct_logits(batch, classes, seed=batch * 100 + epoch)
    obs = torch.zeros(batch, classes)
    obs[:, 0] = 1  # single positive per row in column 0
    out = compute_loss(scheme, x.clone().requires_grad_(True), obs, epoch=epoch, delta_rel=delta_rel)
    values = x.tolist()
    candidates = sorted(((values[b][l], b, l) for b in range(batch) for l in range(1, classes)),
                        reverse=True)  # BCE(x,0) is increasing in x
    chosen = [(b, l) for _, b, l in candidates[:k]]
    assert_mask(out.modified, (batch, classes), chosen)
    total = 0.0
    for b in range(batch):
        for l in range(classes):
            v = values[b][l]
            if l == 0:
                total += bce1(v)
            elif (b, l) in chosen:
                total += 0.0 if scheme == "LL-R" else bce1(v)
            else:
                total += bce0(v)
    assert out.loss.item() == approx(total / (batch * classes))


@pytest.mark.parametrize("batch", [3, 16])
def test_compute_loss_uses_ll_num_modified_capped(batch):
    """modified.sum() = min(ll_num_modified(...), #candidates) when candidate losses are distinct."""
    classes = 10
    x = _distinct_logits(batch, classes, seed=7)
    obs = torch.zeros(batch, classes)
    obs[:, 0] = 1
    obs[0, 1] = -1
    n_candidates = batch * classes - batch - 1
    for scheme in LL_SCHEMES:
        for epoch in range(1, 11):
            for delta_rel in (0.2, 3.0, 40.0):
                out = compute_loss(scheme, x, obs, epoch=epoch, delta_rel=delta_rel)
                k = ll_num_modified(scheme, epoch, delta_rel, batch, classes)
                assert int(out.modified.sum()) == min(k, n_candidates), (scheme, epoch, delta_rel)


# ---------------------------------------------------------------- LL gradients
@pytest.mark.parametrize("scheme", LL_SCHEMES)
def test_ll_gradients(scheme):
    """Rejected: exactly 0; corrected: (σ(x)−1)/(B·L); untouched unobserved: σ(x)/(B·L)."""
    logits = tensor(XL, grad=True)
    run_ll(scheme, 2, logits=logits).loss.backward()
    g = logits.grad
    modified = set(TOP2_WITH_TIE)
    for b in range(2):
        for l in range(4):
            x = XL[b][l]
            if OBSL[b][l] == 1:
                expected = (sig(x) - 1) / BLL
            elif OBSL[b][l] == -1:
                expected = sig(x) / BLL
            elif (b, l) in modified:
                if scheme == "LL-R":
                    assert g[b, l].item() == 0.0, (b, l)
                    continue
                expected = (sig(x) - 1) / BLL
            else:
                expected = sig(x) / BLL
            assert g[b, l].item() == pytest.approx(expected, rel=1e-5, abs=1e-8), (b, l)


# ---------------------------------------------------------------- ROLE (docs/methods.md §ROLE)
def role_hand_gradients(x, obs, theta, k):
    """Hand derivatives of the ROLE loss (docs/methods.md §ROLE).

    d/dx_bl = [0.5·1(obs=+1)·(σ(x)−1) + 0.5·(σ(x) − σ(θ))]/(B·L) + (S_p − k)/(L²·B)·σ'(x)
    d/dθ_bl = [0.5·1(obs=+1)·(σ(θ)−1) + 0.5·(σ(θ) − σ(x))]/(B·L) + (S_e − k)/(L²·B)·σ'(θ)
    with S = mean over the batch of the row sums of σ.
    """
    rows, cols = len(x), len(x[0])
    s_p, s_e = _row_sigmoid_mean(x), _row_sigmoid_mean(theta)
    gx = [[0.0] * cols for _ in range(rows)]
    gt = [[0.0] * cols for _ in range(rows)]
    for b in range(rows):
        for l in range(cols):
            p, e = sig(x[b][l]), sig(theta[b][l])
            pos = 1.0 if obs[b][l] == 1 else 0.0
            gx[b][l] = (0.5 * pos * (p - 1) + 0.5 * (p - e)) / (rows * cols) \
                + (s_p - k) / (cols ** 2 * rows) * p * (1 - p)
            gt[b][l] = (0.5 * pos * (e - 1) + 0.5 * (e - p)) / (rows * cols) \
                + (s_e - k) / (cols ** 2 * rows) * e * (1 - e)
    return torch.tensor(gx), torch.tensor(gt)


@pytest.mark.parametrize("k", [0.5, 1.5])
def test_role_gradients_by_hand(k):
    """ROLE: both the classifier and the estimator gradients match the hand derivatives."""
    logits, theta = tensor(X, grad=True), tensor(THETA, grad=True)
    out = run_base("role", k=k, logits=logits, theta=theta)
    out.loss.backward()
    gx, gt = role_hand_gradients(X, OBS, THETA, k)
    torch.testing.assert_close(logits.grad, gx, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(theta.grad, gt, rtol=1e-5, atol=1e-7)


def test_role_stop_gradients():
    """ROLE: detaching θ leaves the classifier gradient unchanged and vice versa (no cross flow)."""
    logits, theta = tensor(X, grad=True), tensor(THETA, grad=True)
    run_base("role", logits=logits, theta=theta).loss.backward()
    g_logits, g_theta = logits.grad.clone(), theta.grad.clone()

    logits2 = tensor(X, grad=True)
    run_base("role", logits=logits2, theta=tensor(THETA)).loss.backward()
    torch.testing.assert_close(logits2.grad, g_logits, rtol=0, atol=1e-9)

    theta2 = tensor(THETA, grad=True)
    run_base("role", logits=tensor(X), theta=theta2).loss.backward()
    torch.testing.assert_close(theta2.grad, g_theta, rtol=0, atol=1e-9)


def test_role_estimator_unobserved_entry_gradient():
    """ROLE, unobserved entry with the regulariser at 0: dθ = 0.5·(σ(θ) − σ(x))/(B·L)."""
    # One row, L = 2, observed positive in column 0; choose k so that S_e = k makes the θ-regulariser's
    # gradient vanish.
    x = [[1.0, -0.5]]
    theta = [[2.0, 0.7]]
    k = sig(2.0) + sig(0.7)
    logits, th = tensor(x, grad=True), tensor(theta, grad=True)
    out = compute_loss("role", logits, tensor([[1, 0]]), expected_num_pos=k, estimator_logits=th)
    out.loss.backward()
    assert th.grad[0, 1].item() == pytest.approx(0.5 * (sig(0.7) - sig(-0.5)) / 2, rel=1e-4, abs=1e-7)
    assert th.grad[0, 0].item() == pytest.approx(
        (0.5 * (sig(2.0) - 1) + 0.5 * (sig(2.0) - sig(1.0))) / 2, rel=1e-4, abs=1e-7)
    assert out.loss.item() == approx(expected_role(x, [[1, 0]], theta, k))


def test_role_with_label_estimator_rows():
    """ROLE with θ rows from a LabelEstimator: the hand value, and gradient reaches only those rows."""
    observed = torch.tensor([[0, 1, 0], [1, 0, -1], [0, 0, 1], [0, 1, 0]], dtype=torch.float32)
    est = LabelEstimator(observed, seed=3)
    idx = torch.tensor([3, 1])
    theta_rows = est(idx)
    out = compute_loss("role", tensor(X, grad=True), observed[idx], expected_num_pos=1.5,
                       estimator_logits=theta_rows)
    assert out.loss.item() == approx(
        expected_role(X, observed[idx].tolist(), theta_rows.detach().tolist(), 1.5))
    out.loss.backward()
    grad = est.logits.grad
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    assert grad[1].abs().sum() > 0 and grad[3].abs().sum() > 0


# ---------------------------------------------------------------- LabelEstimator (docs/methods.md §ROLE)
def _estimator_observed(n=40, classes=25, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (n, classes), generator=gen).to(torch.float32)


def test_label_estimator_init_values():
    """θ init: +1 → logit(0.995), −1 → logit(0.005), 0 → uniform in (−logit(0.6), logit(0.6))."""
    observed = _estimator_observed()
    est = LabelEstimator(observed, seed=0)
    assert isinstance(est, torch.nn.Module)
    assert isinstance(est.logits, torch.nn.Parameter)
    assert "logits" in dict(est.named_parameters())
    theta = est.logits.detach()
    assert tuple(theta.shape) == tuple(observed.shape)
    assert theta.dtype == torch.float32
    pos, neg, unk = observed == 1, observed == -1, observed == 0
    assert pos.any() and neg.any() and unk.any()
    torch.testing.assert_close(theta[pos], torch.full_like(theta[pos], logit(0.995)), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(theta[neg], torch.full_like(theta[neg], logit(0.005)), rtol=1e-6, atol=1e-5)
    q = logit(0.6)  # = log 1.5 ≈ 0.405
    u = theta[unk]
    assert (u.abs() < q + 1e-6).all()
    # spread over the interval, not a constant
    assert u.min() < -0.5 * q and u.max() > 0.5 * q and u.std() > 0.1


def test_label_estimator_uniform_is_roughly_uniform():
    """Unobserved inits over a large all-zero matrix have mean ≈ 0 and variance ≈ q²/3."""
    est = LabelEstimator(torch.zeros(200, 100), seed=1)
    u = est.logits.detach().flatten().double()
    q = logit(0.6)
    assert abs(u.mean().item()) < 0.01
    assert u.var().item() == pytest.approx(q * q / 3, rel=0.05)


def test_label_estimator_deterministic_per_seed():
    """Same seed → identical θ; different seeds → different θ on unobserved entries."""
    observed = _estimator_observed()
    a = LabelEstimator(observed, seed=5).logits.detach()
    b = LabelEstimator(observed, seed=5).logits.detach()
    c = LabelEstimator(observed, seed=6).logits.detach()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    known = observed != 0
    assert torch.equal(a[known], c[known])


def test_label_estimator_forward_rows_with_grad():
    """estimator(idx) returns θ[idx] (B×L) and backpropagates into exactly those rows."""
    observed = _estimator_observed(n=6, classes=4)
    est = LabelEstimator(observed, seed=0)
    idx = torch.tensor([4, 0, 4])
    rows = est(idx)
    assert tuple(rows.shape) == (3, 4)
    assert rows.requires_grad
    assert torch.equal(rows.detach(), est.logits.detach()[idx])
    rows.sum().backward()
    expected = torch.zeros(6, 4)
    expected[0] = 1
    expected[4] = 2  # row 4 appears twice
    assert torch.equal(est.logits.grad, expected)


# ---------------------------------------------------------------- ObservedLabelStore (docs/methods.md: LL-Cp persistence)
OBS_STORE = [[1, 0, 0, 0],
             [0, 0, 1, -1],
             [0, 1, 0, 0]]


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_store_construction(kind):
    """The store keeps the observed labels as an N×L int8 tensor; rows(idx) indexes them."""
    source = np.array(OBS_STORE, dtype=np.float32)
    store = ObservedLabelStore(source if kind == "numpy" else torch.from_numpy(source))
    assert isinstance(store.observed, torch.Tensor)
    assert store.observed.dtype == torch.int8
    assert store.observed.tolist() == OBS_STORE
    assert store.rows(torch.tensor([2, 0])).tolist() == [OBS_STORE[2], OBS_STORE[0]]
    assert store.num_relabeled == 0


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_store_relabels_leave_the_source_labels_alone(kind):
    """The store holds its own copy, even of int8 labels that as_tensor would share: two methods
    built from one split (a sweep's heads, or runs one after another on the same data) do not see
    each other's LL-Cp relabels, and the split keeps its observed labels."""
    source = np.array(OBS_STORE, dtype=np.int8)
    first = ObservedLabelStore(source if kind == "numpy" else torch.from_numpy(source))
    second = ObservedLabelStore(source if kind == "numpy" else torch.from_numpy(source))
    first.apply_relabel(torch.tensor([0]), mask((1, 4), [(0, 1)]))
    assert first.num_relabeled == 1 and second.num_relabeled == 0
    assert source.tolist() == OBS_STORE


def test_store_relabels_persist_across_calls():
    """apply_relabel maps batch rows back through idx, and the +1s persist across later calls."""
    store = ObservedLabelStore(np.array(OBS_STORE, dtype=np.float32))
    # "epoch 2", batch (2, 0): relabel (batch row 0 = store row 2, col 3)
    store.apply_relabel(torch.tensor([2, 0]), mask((2, 4), [(0, 3)]))
    assert store.num_relabeled == 1
    # "epoch 3", batch (1, 2): relabel store row 1 col 0 and store row 2 col 0
    store.apply_relabel(torch.tensor([1, 2]), mask((2, 4), [(0, 0), (1, 0)]))
    # "epoch 4": nothing to relabel
    store.apply_relabel(torch.tensor([0, 1]), mask((2, 4), []))
    assert store.num_relabeled == 3
    assert isinstance(store.num_relabeled, int)
    assert store.observed.tolist() == [[1, 0, 0, 0],
                                       [1, 0, 1, -1],
                                       [1, 1, 0, 1]]
    assert store.rows(torch.tensor([2])).tolist() == [[1, 1, 0, 1]]


def test_store_state_dict_round_trip():
    """state_dict() is a dict of tensors; loading it (through torch.save/load) into a fresh store restores everything."""
    store = ObservedLabelStore(np.array(OBS_STORE, dtype=np.float32))
    store.apply_relabel(torch.tensor([0, 2]), mask((2, 4), [(0, 1), (1, 3)]))
    state = store.state_dict()
    assert isinstance(state, dict) and state
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = ObservedLabelStore(np.array(OBS_STORE, dtype=np.float32))
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.observed.dtype == torch.int8
    assert torch.equal(fresh.observed, store.observed)
    assert fresh.num_relabeled == 2
    # and it keeps working after the reload
    fresh.apply_relabel(torch.tensor([1]), mask((1, 4), [(0, 1)]))
    assert fresh.num_relabeled == 3
    assert fresh.observed.tolist() == [[1, 1, 0, 0], [0, 1, 1, -1], [0, 1, 0, 1]]


def test_llcp_loop_with_store_over_epochs():
    """LL-Cp over epochs 1–3 with a store and a checkpoint: an entry relabeled in epoch 2 has target 1 in epoch 3."""
    observed0 = [[1, 0, 0, 0], [-1, 0, 0, 0]]
    store = ObservedLabelStore(np.array(observed0, dtype=np.float32))
    idx = torch.tensor([0, 1])

    # epoch 1: warm-up, plain an, nothing relabeled
    out = compute_loss("LL-Cp", tensor(XL, grad=True), store.rows(idx), epoch=1, delta_rel=DREL)
    assert out.loss.item() == approx(AN_L)
    store.apply_relabel(idx, out.relabel)
    assert store.num_relabeled == 0

    # epoch 2: k = 2, R = BCE(2,0); modified {x=3, x=2, x=2}, relabel only x=3 (row 0, col 1)
    out = compute_loss("LL-Cp", tensor(XL, grad=True), store.rows(idx), epoch=2, delta_rel=DREL)
    assert out.loss.item() == approx(LLCT_E2)
    assert_mask(out.relabel, SL, [(0, 1)])
    store.apply_relabel(idx, out.relabel)
    assert store.num_relabeled == 1
    assert store.observed.tolist() == [[1, 1, 0, 0], [-1, 0, 0, 0]]

    # checkpoint and resume in a fresh store
    buffer = io.BytesIO()
    torch.save(store.state_dict(), buffer)
    buffer.seek(0)
    store = ObservedLabelStore(np.array(observed0, dtype=np.float32))
    store.load_state_dict(torch.load(buffer))

    # epoch 3, batch order (1, 0); the model now gives the relabeled entry x = 5. It is an observed
    # positive: target 1 (BCE(5,1)), not a candidate. Candidates: x = 2.5 > 2 > 0.5 > −1 > −2, k = 2,
    # R = BCE(2,0): modified {2.5, 2}, relabel {2.5}. Were (0,1) still a candidate it would rank first.
    x3 = [[8.0, 2.5, -1.0, -2.0],   # store row 1
          [-6.0, 5.0, 2.0, 0.5]]    # store row 0
    idx3 = torch.tensor([1, 0])
    batch_obs = store.rows(idx3)
    assert batch_obs.tolist() == [[-1, 0, 0, 0], [1, 1, 0, 0]]
    out = compute_loss("LL-Cp", tensor(x3, grad=True), batch_obs, epoch=3, delta_rel=DREL)
    assert_mask(out.modified, SL, [(0, 1), (1, 2)])
    assert_mask(out.relabel, SL, [(0, 1)])
    expected = (bce0(8) + bce1(2.5) + bce0(-1) + bce0(-2) + bce1(-6) + bce1(5) + bce1(2) + bce0(0.5)) / BLL
    assert out.loss.item() == approx(expected)
    store.apply_relabel(idx3, out.relabel)
    assert store.num_relabeled == 2
    assert store.observed.tolist() == [[1, 1, 0, 0], [-1, 1, 0, 0]]


# ---------------------------------------------------------------- errors
def _valid_kwargs():
    return dict(
        logits=tensor(X),
        observed=tensor(OBS),
        true_labels=tensor(TRUE),
        expected_num_pos=1.5,
        estimator_logits=tensor(THETA, grad=True),
        epoch=2,
        delta_rel=0.2,
    )


def _call(method, **changes):
    kwargs = _valid_kwargs()
    kwargs.update(changes)
    logits = kwargs.pop("logits")
    observed = kwargs.pop("observed")
    return compute_loss(method, logits, observed, **kwargs)


@pytest.mark.parametrize("method", tuple(LOSSES))
def test_valid_kwargs_do_not_raise(method):
    """The error tests' baseline arguments are valid for every method."""
    out = _call(method)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("method, changes, match", [
    ("nope", {}, "method"),
    ("AN", {}, "method"),
    ("an", {"observed": tensor([[1, 0, 2], [0, 1, 0]])}, "observed"),
    ("an", {"observed": tensor([[1, 0, -2], [0, 1, 0]])}, "observed"),
    ("LL-Ct", {"observed": tensor([[1, 0, 0.5], [0, 1, 0]])}, "observed"),
    ("bce", {"true_labels": tensor([[1, 1, -1], [1, 1, 0]])}, "true_labels"),
    ("iun", {"true_labels": tensor([[1, 1, 2], [1, 1, 0]])}, "true_labels"),
    ("an", {"observed": tensor([[1, 0, 0, 0], [0, 1, 0, 0]])}, "observed"),
    ("LL-R", {"observed": tensor([[1, 0, -1]])}, "observed"),
    ("bce", {"true_labels": tensor([[1, 1, 0, 0], [1, 1, 0, 0]])}, "true_labels"),
    ("bce_ls", {"true_labels": tensor([[1, 1, 0]])}, "true_labels"),
    ("role", {"estimator_logits": tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])}, "estimator_logits"),
    ("role", {"estimator_logits": tensor([[0.0, 1.0, 2.0]])}, "estimator_logits"),
    ("an", {"logits": tensor([0.0, 2.0, -1.0]), "observed": tensor([1, 0, -1]),
            "true_labels": None, "estimator_logits": None}, "logits"),
    ("an", {"logits": torch.zeros(2, 3, 1), "observed": torch.zeros(2, 3, 1),
            "true_labels": None, "estimator_logits": None}, "logits"),
    ("bce", {"true_labels": None}, "true_labels"),
    ("bce_ls", {"true_labels": None}, "true_labels"),
    ("iun", {"true_labels": None}, "true_labels"),
    ("epr", {"expected_num_pos": None}, "expected_num_pos"),
    ("role", {"expected_num_pos": None}, "expected_num_pos"),
    ("role", {"estimator_logits": None}, "estimator_logits"),
    ("LL-R", {"epoch": 0}, "epoch"),
    ("LL-Ct", {"epoch": -1}, "epoch"),
    ("LL-Cp", {"epoch": 0}, "epoch"),
    ("an", {"epoch": 0}, "epoch"),
    ("LL-R", {"delta_rel": -0.1}, "delta_rel"),
    ("LL-Ct", {"delta_rel": -1.0}, "delta_rel"),
    ("LL-Cp", {"delta_rel": -0.2}, "delta_rel"),
    ("an", {"delta_rel": -0.2}, "delta_rel"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_errors_name_the_argument(method, changes, match):
    """Invalid input raises ValueError whose message names the offending argument."""
    with pytest.raises(ValueError, match=match):
        _call(method, **changes)
