"""The maths of GPR (AEVLP), VLPL and CRISP-Eq7 (methods/vlp_losses.py) against docs/vlp_methods.md's worked
examples, hand values typed in (4 decimals: atol 1e-4), and their properties: GPR's
pseudo-positive weight within [λ₂, λ₁], VLPL's at most ⌊1/thr⌋ pseudo-positives, CRISP's estimator
on its worked example, and what is detached."""
from __future__ import annotations

import math

import pytest
import torch

from largeloss.methods import peer_losses, vlp_losses
from largeloss.methods.pseudo_label_rules import vlpl_pseudo_labels

# docs/vlp_methods.md notation: Ex-A and Ex-B.
EX_A = torch.tensor([[2.0, -1.0, 0.0]])
Y_A = torch.tensor([[1, 0, 0]])
EX_B = torch.tensor([[2.0, -1.0, 0.8], [-0.5, 1.5, -3.0]])
Y_B = torch.tensor([[1, 0, 0], [0, 1, 0]])
VOC_BETA = (0.0, 2.0, -2.0, -2.0)
COCO_BETA = (0.0, 10.0, -2.0, -8.0)
ALPHA = (0.5, 2.0, 0.8, 0.5)
TOL = {"rtol": 0, "atol": 1e-4}


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.tensor(expected, dtype=torch.float32), **TOL)


# --- GPR (docs/vlp_methods.md) -------------------------------------------------------------------------

@pytest.mark.parametrize("epoch, schedule, per_entry, total", [
    (1, (0.0, -2.0, 0.5375, 1.8125), [[0.1269, 0.4853, 0.5226]], 0.3784),
    (8, (1.75, -2.0, 0.8, 0.5), [[0.1269, 0.5230, 0.4567]], 0.3690),
])
def test_gpr_ex_a_voc_values(epoch, schedule, per_entry, total):
    pseudo = torch.tensor([[1, 1, 0]])
    steps = peer_losses.gr_schedule(epoch, num_epochs=8, beta=VOC_BETA, alpha=ALPHA)
    close([steps.w, steps.b, steps.mu, steps.sigma], schedule)
    close(vlp_losses.gpr_per_entry(EX_A, Y_A, pseudo, steps, q2=0.01, q3=1.0, lam=(0.7, 0.4),
                                   rho=0.9), per_entry)
    output = vlp_losses.gpr_loss(EX_A, Y_A, pseudo, epoch, expected_num_pos=1.5, num_epochs=8,
                                 beta=VOC_BETA, alpha=ALPHA, q2=0.01, q3=1.0, lam=(0.7, 0.4),
                                 rho=0.9, reg=0.05)
    close(output.loss, total)
    assert output.modified.tolist() == [[False, True, False]]


def test_gpr_regulariser_is_epr_scaled_by_l_squared():
    # 0.05·(1.6497 − 1.5)²/9 = 0.000125 (docs/vlp_methods.md)
    assert 0.05 * vlp_losses.gpr_regulariser(EX_A, 1.5).item() == pytest.approx(1.2455e-4, abs=2e-7)


@pytest.mark.parametrize("epoch, per_entry, total", [
    (1, [[0.1269, 0.6066, 0.6496], [0.4463, 0.2014, 0.3853]], 0.4029),
    (8, [[0.1269, 0.6066, 0.6020], [0.2721, 0.2014, 0.0163]], 0.3044),
])
def test_gpr_ex_b_coco_values(epoch, per_entry, total):
    pseudo = torch.tensor([[0, 1, 0], [0, 0, 0]])
    steps = peer_losses.gr_schedule(epoch, num_epochs=8, beta=COCO_BETA, alpha=ALPHA)
    close(vlp_losses.gpr_per_entry(EX_B, Y_B, pseudo, steps, q2=0.01, q3=1.0, lam=(0.7, 0.5)),
          per_entry)
    output = vlp_losses.gpr_loss(EX_B, Y_B, pseudo, epoch, expected_num_pos=2.9, num_epochs=8,
                                 beta=COCO_BETA, alpha=ALPHA, q2=0.01, q3=1.0, lam=(0.7, 0.5),
                                 reg=0.001)
    close(output.loss, total)


@pytest.mark.parametrize("lam", [(0.7, 0.4), (0.7, 0.5), (0.8, 0.2), (0.5, 0.5)])
@pytest.mark.parametrize("epoch", [1, 4, 8])
def test_gpr_pseudo_positive_weight_stays_within_its_bounds(lam, epoch):
    probs = torch.linspace(0, 1, 1001).unsqueeze(0)
    steps = peer_losses.gr_schedule(epoch, num_epochs=8, beta=COCO_BETA, alpha=ALPHA)
    weight = vlp_losses.gpr_pseudo_positive_weight(probs, steps, lam)
    assert weight.min() >= lam[1] - 1e-6 and weight.max() <= lam[0] + 1e-6
    if epoch == 8:  # μ = 0.8, σ = 0.5: v = 1 at p = 0.8 and exp(−0.64/0.5) = 0.2780 at p = 0
        assert weight.min().item() == pytest.approx(lam[1], abs=1e-6)
        assert weight.max().item() == pytest.approx(min(lam[0], 1 - 0.2780), abs=1e-4)


def test_gpr_branches_follow_the_final_label():
    """ŷ = −1 (an observed negative, or a negative pseudo-label) gets v·(−log(1−p)); an observed
    positive is −log p whatever y′ says; y′ never overrides an observed label."""
    logits = torch.tensor([[0.3, -0.4, 1.2, 0.7]])
    observed = torch.tensor([[1, -1, 0, -1]])
    pseudo = torch.tensor([[0, 1, -1, 1]])
    steps = peer_losses.gr_schedule(3, num_epochs=8, beta=COCO_BETA, alpha=ALPHA)
    per_entry = vlp_losses.gpr_per_entry(logits, observed, pseudo, steps)
    probs = torch.sigmoid(logits)
    weight = torch.exp(-(probs - steps.mu) ** 2 / (2 * steps.sigma ** 2))
    expected = [-math.log(probs[0, 0]), *(weight[0, j] * -math.log(1 - probs[0, j]) for j in (1, 2, 3))]
    close(per_entry[0], expected)


def test_gpr_weights_are_constants_of_the_gradient():
    """∂/∂x of a pseudo-positive entry is (1 − ṽ)·(p − ρ): ṽ from p̄ carries no gradient."""
    logits = torch.tensor([[0.4]], dtype=torch.float64, requires_grad=True)
    steps = peer_losses.gr_schedule(8, num_epochs=8, beta=COCO_BETA, alpha=ALPHA)
    vlp_losses.gpr_per_entry(logits, torch.tensor([[0]]), torch.tensor([[1]]), steps,
                             lam=(0.9, 0.0), rho=0.9).sum().backward()
    prob = torch.sigmoid(logits.detach())
    weight = 1 - torch.exp(-(prob - 0.8) ** 2 / (2 * 0.25))
    torch.testing.assert_close(logits.grad, weight * (prob - 0.9))


# --- VLPL (docs/vlp_methods.md) ------------------------------------------------------------------------

def test_vlpl_rule_on_the_worked_cosines():
    cosines = torch.tensor([[0.27, 0.265, 0.22]])
    close(torch.softmax(cosines / 0.01, dim=1), [[0.6199, 0.3760, 0.0042]])
    assert vlpl_pseudo_labels(cosines, temperature=0.01, threshold=0.3).tolist() == \
        [[1, 1, 0]]
    # strict: a score exactly at the threshold does not pass
    assert vlpl_pseudo_labels(torch.zeros(1, 4), threshold=0.25).tolist() == [[0] * 4]


@pytest.mark.parametrize("alpha, third, total", [(0.2, -0.1386, 0.2792), (0.1, -0.0693, 0.3023),
                                                 (0.01, -0.0069, 0.3231)])
def test_vlpl_ex_a(alpha, third, total):
    pseudo = torch.tensor([[1, 1, 0]])
    close(vlp_losses.vlpl_per_entry(EX_A, Y_A, pseudo, alpha=alpha, beta_pos=0.7),
          [[0.1269, 0.8493, third]])
    close(vlp_losses.vlpl_loss(EX_A, Y_A, pseudo, alpha=alpha, beta_pos=0.7).loss, total)


def test_vlpl_ex_b():
    pseudo = torch.tensor([[0, 1, 0], [0, 0, 0]])
    close(vlp_losses.vlpl_per_entry(EX_B, Y_B, pseudo, alpha=0.1),
          [[0.1269, 0.8493, -0.0619], [-0.0663, 0.2014, -0.0191]])
    close(vlp_losses.vlpl_loss(EX_B, Y_B, pseudo, alpha=0.1).loss, 0.1717)


def test_vlpl_negative_pseudo_labels_are_ignored_and_observed_negatives_are_bce():
    logits = torch.tensor([[0.5, 0.5]])
    per_entry = vlp_losses.vlpl_per_entry(logits, torch.tensor([[0, -1]]), torch.tensor([[-1, 0]]))
    close(per_entry, [[0.0, torch.nn.functional.softplus(torch.tensor(0.5)).item()]])


@pytest.mark.parametrize("threshold", [0.1, 0.15, 0.3, 0.45, 0.5, 0.7])
def test_vlpl_never_more_than_floor_one_over_threshold_pseudo_positives(threshold):
    generator = torch.Generator().manual_seed(0)
    # near-uniform scores: the hardest case for the bound (many classes near the threshold)
    cosines = torch.randn(2000, 40, generator=generator) * 0.002
    for temperature in (0.001, 0.01, 0.1):
        labels = vlpl_pseudo_labels(cosines, temperature=temperature, threshold=threshold)
        assert labels.sum(dim=1).max() <= math.floor(1 / threshold)
    flat = torch.zeros(1, math.floor(1 / threshold))  # equal scores 1/m: at the bound or below
    assert vlpl_pseudo_labels(flat, threshold=threshold * 0.999).sum() == flat.shape[1]


# --- CRISP (docs/vlp_methods.md) -------------------------------------------------------------------------

SCORES = torch.tensor([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
POSITIVES = torch.tensor([1, 0, 1, 0, 0, 0])


def objective(scores, positives, z, delta=0.01, tau=0.01):
    """CRISP's objective at z (docs/vlp_methods.md), written out for the example (the test's own
    arithmetic)."""
    n, n_p = len(scores), int(positives.sum())
    q = float((scores >= z).sum()) / n
    q_p = float(((scores >= z) & (positives == 1)).sum()) / n_p
    penalty = (1 + tau) * (math.sqrt(math.log(4 / delta) / (2 * n))
                           + math.sqrt(math.log(4 / delta) / (2 * n_p)))
    return q / q_p + penalty / q_p


def test_crisp_estimator_on_the_worked_example():
    values = [objective(SCORES, POSITIVES, z) for z in SCORES.tolist()]
    close(values, [4.2329, 4.5662, 2.4498, 2.6164, 2.7831, 2.9498])
    priors, estimated = vlp_losses.crisp_class_priors(SCORES[:, None], POSITIVES[:, None])
    close(priors, [0.5])
    assert estimated.tolist() == [True]
    # each row repeated 100 times: penalty 0.1950, the same ẑ = 0.7 and π̂ = 0.5
    many = vlp_losses.crisp_class_priors(SCORES.repeat(100)[:, None],
                                         POSITIVES.repeat(100)[:, None])[0]
    close(many, [0.5])
    close(objective(SCORES.repeat(100), POSITIVES.repeat(100), 0.7), 0.6950)


def test_crisp_estimator_runs_classes_independently_and_skips_classes_without_positives():
    probs = torch.stack([SCORES, SCORES.flip(0), torch.full((6,), 0.5)], dim=1)
    observed = torch.stack([POSITIVES, POSITIVES.flip(0), torch.zeros(6, dtype=torch.long)], dim=1)
    observed[3, 2] = -1  # an observed negative is not a positive
    priors, estimated = vlp_losses.crisp_class_priors(probs, observed)
    close(priors, [0.5, 0.5, 0.0])
    assert estimated.tolist() == [True, True, False]


def test_crisp_estimator_counts_ties_together_and_never_exceeds_one():
    # all scores equal: q = q^p = 1 at the only threshold, π̂ = 1
    priors, _ = vlp_losses.crisp_class_priors(torch.full((5, 1), 0.3),
                                              torch.tensor([[1], [0], [0], [0], [0]]))
    close(priors, [1.0])
    random = torch.rand(50, 7, generator=torch.Generator().manual_seed(1))
    observed = (torch.rand(50, 7, generator=torch.Generator().manual_seed(2)) < 0.3).long()
    priors, estimated = vlp_losses.crisp_class_priors(random, observed)
    assert ((priors >= 0) & (priors <= 1)).all() and estimated.all()


def test_crisp_eq7_on_ex_b():
    priors = torch.tensor([0.5, 0.3, 0.1])
    per_class = vlp_losses.crisp_per_class(EX_B, Y_B, priors)
    close(per_class, [0.1192 + 0.1292, 0.1095 + 0.2433, 0.0 + 0.2687])
    close(vlp_losses.crisp_loss(EX_B, Y_B, priors).loss, 0.2899)


def test_crisp_eq7_unbiased_scale_multiplies_the_positive_sums():
    priors = torch.tensor([0.5, 0.3, 0.1])
    weights = torch.tensor([3.0, 2.0, 7.0])  # n/(B·n_j^p) for some n, B, n_j^p
    per_class = vlp_losses.crisp_per_class(EX_B, Y_B, priors, positive_weights=weights)
    # positive sums (1 − p): class 0 row 0 0.1192, class 1 row 1 0.1824, class 2 none
    close(per_class, [2 * 0.5 * 3 * 0.1192 + 0.1292, 2 * 0.3 * 2 * 0.1824 + 0.2433, 0.2687])


def test_crisp_priors_carry_no_gradient_and_the_loss_does():
    priors = torch.tensor([0.5, 0.3, 0.1], requires_grad=True)
    logits = EX_B.clone().requires_grad_(True)
    vlp_losses.crisp_loss(logits, Y_B, priors).loss.backward()
    assert priors.grad is None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("function", [
    lambda x, y, yp: vlp_losses.vlpl_loss(x, y, yp),
    lambda x, y, yp: vlp_losses.gpr_loss(x, y, yp, 1, expected_num_pos=1.0),
])
def test_shapes_must_agree(function):
    with pytest.raises(ValueError, match="B×L"):
        function(EX_B, Y_B, torch.zeros(2, 4, dtype=torch.long))
