"""Tests of peer_losses.py (and BoostLU in models.py) against docs/methods.md.

Every expected number is typed from the worked examples of docs/methods.md §Worked examples,
never produced by the code under test. The examples use
    Ex-A: X = [[2, −1, 0]], Y = [[1, 0, 0]]
    Ex-B: X = [[2, −1, 0.8], [−0.5, 1.5, −3]], Y = [[1, 0, 0], [0, 1, 0]]
and print 6 decimals, hence the tolerance.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from largeloss.experiment import paper_numbers
from largeloss.experiment.paper_numbers import PEER_PAPER_MAP
from largeloss.experiment.presets import PEER_DATASETS, PEER_PRESETS
from largeloss.methods import losses
from largeloss.methods.peer_losses import (FOCAL_AUTHORS_REDUCTION, apl_num_per_pass, apl_pass,
                                           apl_pass_after_epoch, apl_unobserved_counts, em_loss, em_per_entry,
                                           gr_loss, gr_per_entry, gr_schedule, hill_loss, hill_per_entry,
                                           splc_loss, splc_per_entry)
from largeloss.nn.models import MultiLabelNet, boostlu, build_model

TOL = 2e-6  # docs/methods.md prints 6 decimals
EX_A = ([[2.0, -1.0, 0.0]], [[1, 0, 0]])
EX_B = ([[2.0, -1.0, 0.8], [-0.5, 1.5, -3.0]], [[1, 0, 0], [0, 1, 0]])


def tensors(example):
    logits, observed = example
    return torch.tensor(logits), torch.tensor(observed, dtype=torch.int8)


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), rtol=0, atol=TOL)


# ---------------------------------------------------------------- BoostLU (docs/methods.md §BoostLU)

def identity_head_model(bias, boost_alpha):
    """A MultiLabelNet whose feature map is its input and whose head is the identity plus `bias`,
    so the CAM of class j is input channel j + bias_j."""
    model = MultiLabelNet(nn.Identity(), num_features=2, num_classes=2, boost_alpha=boost_alpha)
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(2))
        model.head.bias.copy_(torch.tensor(bias))
    return model


# docs/methods.md §Worked examples: A₁ = [[1, −2], [3, −1]], A₂ = −1 everywhere (bias included), y = [1, 0].
@pytest.mark.parametrize("alpha,logits,per_entry,reduced", [
    (1.0, [0.25, -1.0], [0.575939, 0.313262], 0.444601),
    (5.0, [4.25, -1.0], [0.014163, 0.313262], 0.163713),
])
def test_boostlu_worked_example_through_the_model_with_the_bias_before_the_boost(
        alpha, logits, per_entry, reduced):
    bias = [0.5, -0.25]  # the worked example's maps include the bias: feed A − b, the head adds b back
    cams = torch.tensor([[[1.0, -2.0], [3.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    images = (cams - torch.tensor(bias).view(2, 1, 1)).unsqueeze(0)
    model = identity_head_model(bias, alpha)
    outputs = model(images)
    close(outputs[0], logits)
    observed = torch.tensor([[1, 0]], dtype=torch.int8)
    close(losses.bce(outputs, torch.tensor([[1.0, 0.0]]))[0], per_entry)
    close(losses.compute_loss("an", outputs, observed).loss, reduced)
    close(model.class_activation_maps(images).mean(dim=(2, 3))[0], logits)


def test_boostlu_gradient_worked_example():
    """Worked examples: with α = 5, ∂x₁/∂A₁ = [[1.25, 0.25], [1.25, 0.25]]: α/hw where A > 0, else 1/hw."""
    images = torch.tensor([[[[1.0, -2.0], [3.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]]],
                          requires_grad=True)
    identity_head_model([0.0, 0.0], 5.0)(images)[0, 0].backward()
    close(images.grad[0, 0], [[1.25, 0.25], [1.25, 0.25]])
    close(images.grad[0, 1], [[0.0, 0.0], [0.0, 0.0]])


def test_boostlu_is_strict_at_zero():
    """a = 0 takes the identity branch: value 0, gradient 1 (not α, not α + 1)."""
    activations = torch.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    boosted = boostlu(activations, 5.0)
    boosted.sum().backward()
    close(boosted.detach(), [-2.0, 0.0, 15.0])
    close(activations.grad, [1.0, 1.0, 5.0])


def test_alpha_one_is_the_linear_head_and_keeps_the_pooled_path(monkeypatch):
    torch.manual_seed(0)
    model = build_model("small_cnn", "none", 10).eval()
    assert model.boost_alpha == 1.0
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model.head(model.pooled_features(images))
        cams = model.class_activation_maps(images)
        monkeypatch.setattr(MultiLabelNet, "class_activation_maps",
                            lambda *args: pytest.fail("α = 1 must not go through the CAM"))
        logits = model(images)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(cams.mean(dim=(2, 3)), logits, rtol=1e-4, atol=1e-5)


def test_alpha_five_logits_are_the_mean_of_the_boosted_unboosted_cams():
    torch.manual_seed(0)
    model = build_model("small_cnn", "none", 10).eval()
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        plain_cams = model.class_activation_maps(images)
        model.boost_alpha = 5.0
        logits, boosted_cams = model(images), model.class_activation_maps(images)
    assert logits.dtype == torch.float32 and logits.shape == (2, 10)
    torch.testing.assert_close(boosted_cams, boostlu(plain_cams, 5.0))
    torch.testing.assert_close(logits, boosted_cams.mean(dim=(2, 3)))
    # The boost is increasing: each map's maximal cell is unchanged.
    assert torch.equal(boosted_cams.flatten(2).argmax(2), plain_cams.flatten(2).argmax(2))


@pytest.mark.parametrize("scheme", ["LL-R", "LL-Ct", "LL-Cp"])
def test_ll_with_boostlu_modifies_k_entries_and_llcp_k_is_constant(scheme):
    """docs/methods.md §BoostLU, §LL schedule: R/Ct k = ⌈B·L·(t−1)·Δ⌉, Cp k = ⌈B·L·Δ⌉ for every t ≥ 2, on boosted logits.
    B = 16, L = 80 (COCO) and BoostLU's Δrel (0.5 / 0.2 / 0.1 %): B·L·Δ = 6.4 / 2.56 / 1.28."""
    generator = torch.Generator().manual_seed(0)
    logits = boostlu(torch.randn(16, 80, 3, 3, generator=generator), 5.0).mean(dim=(2, 3))
    observed = torch.zeros(16, 80, dtype=torch.int8)
    observed[torch.arange(16), torch.arange(16) * 3] = 1
    delta_rel = PEER_PRESETS[f"{scheme}+BoostLU"]["coco"]["loss"]["delta_rel"]
    expected = {"LL-R": [0, 7, 13, 20, 26, 32, 39, 45, 52, 58],
                "LL-Ct": [0, 3, 6, 8, 11, 13, 16, 18, 21, 24],
                "LL-Cp": [0, 2, 2, 2, 2, 2, 2, 2, 2, 2]}[scheme]
    counts = [int(losses.compute_loss(scheme, logits, observed, epoch=epoch,
                                      delta_rel=delta_rel).modified.sum()) for epoch in range(1, 11)]
    assert counts == expected


# ---------------------------------------------------------------- EM and APL (docs/methods.md §EM, §EM+APL)

def test_em_worked_example_per_entry():
    logits, observed = tensors(EX_A)
    close(em_per_entry(logits, observed, alpha=0.1)[0], [0.126928, -0.058220, -0.069315])


@pytest.mark.parametrize("logits,observed,alpha,reduced", [
    (EX_A[0], EX_A[1], 0.1, -0.000202),  # already negative
    (EX_A[0], EX_A[1], 0.2, -0.042714),
    (EX_A[0], EX_A[1], 0.01, 0.038058),
    ([[-3.0, 0.0, 1.0]], [[0, 0, 0]], 0.1, -0.048874),  # a row with no positive
])
def test_em_worked_example_reduced(logits, observed, alpha, reduced):
    output = em_loss(*tensors((logits, observed)), alpha=alpha)
    close(output.loss, reduced)
    assert not output.modified.any() and not output.relabel.any()


def test_em_row_without_positive_per_entry():
    logits, observed = tensors(([[-3.0, 0.0, 1.0]], [[0, 0, 0]]))
    close(em_per_entry(logits, observed, alpha=0.1)[0], [-0.019086, -0.069315, -0.058220])


def test_em_gradient_worked_example():
    """Worked examples: ∂ℓ/∂x at the unobserved x = −1, α = 0.1, is α·x·p(1−p) = −0.019661."""
    logits = torch.tensor([[2.0, -1.0, 0.0]], requires_grad=True)
    em_per_entry(logits, tensors(EX_A)[1], alpha=0.1)[0, 1].backward()
    close(logits.grad[0], [0.0, -0.019661, 0.0])


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.2, 1.0])
def test_em_unobserved_term_lies_between_minus_alpha_ln2_and_zero(alpha):
    generator = torch.Generator().manual_seed(1)
    logits = torch.cat([torch.randn(4000, generator=generator) * 8,
                        torch.tensor([0.0, -40.0, 40.0, 1e-4])]).view(-1, 4)
    terms = em_per_entry(logits, torch.zeros_like(logits, dtype=torch.int8), alpha=alpha)
    assert terms.min() >= -alpha * math.log(2) - 1e-7 and terms.max() <= 0.0
    close(terms.view(-1)[-4], -alpha * math.log(2))  # the minimum, at p = ½


def test_em_apl_worked_example():
    """Worked examples: Ex-A with class 3 a pseudo-negative s = 0.05, α = 0.1, β = 0.9: the third entry is
    0.9·ln 2 since p = ½ there."""
    logits, observed = tensors(EX_A)
    mask = torch.tensor([[False, False, True]])
    targets = torch.tensor([[float("nan"), float("nan"), 0.05]])  # read under the mask only
    per_entry = em_per_entry(logits, observed, alpha=0.1, beta=0.9, pseudo_targets=targets,
                             pseudo_mask=mask)
    close(per_entry[0], [0.126928, -0.058220, 0.623832])
    output = em_loss(logits, observed, alpha=0.1, beta=0.9, pseudo_targets=targets, pseudo_mask=mask)
    close(output.loss, 0.230847)
    assert output.modified.tolist() == [[False, False, True]]


def test_em_apl_mask_never_overrides_observed_labels():
    """The pseudo store is separate: a mask on an observed +1 or −1 entry is ignored."""
    logits = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    observed = torch.tensor([[1, -1, 0]], dtype=torch.int8)
    targets, mask = torch.full((1, 3), 0.3), torch.ones(1, 3, dtype=torch.bool)
    per_entry = em_per_entry(logits, observed, alpha=0.1, beta=0.9, pseudo_targets=targets,
                             pseudo_mask=mask)
    close(per_entry[0, :2], [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0))])
    soft_bce = 0.3 * math.log1p(math.exp(-0.5)) + 0.7 * math.log1p(math.exp(0.5))
    close(per_entry[0, 2], 0.9 * soft_bce)
    per_entry.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("unobserved,warmup,per_pass", [(4400, 5, 792), (4400, 4, 660),
                                                         (4400, 3, 565), (10, 5, 1)])
def test_apl_per_class_counts_floor(unobserved, warmup, per_pass):
    """Worked examples: n_j = ⌊0.9·U_j/(10 − T_w)⌋."""
    counts = apl_num_per_pass(torch.tensor([unobserved]), warmup_epochs=warmup, num_epochs=10,
                              proportion=0.9)
    assert counts.tolist() == [per_pass]


def test_apl_unobserved_counts_per_class():
    observed = torch.tensor([[1, 0, 0], [0, -1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.int8)
    assert apl_unobserved_counts(observed).tolist() == [3, 3, 2]


@pytest.mark.parametrize("reference_last_pass,epochs", [(False, [5, 6, 7, 8, 9]),
                                                        (True, [5, 6, 7, 8, 9, 10])])
def test_apl_passes_run_from_the_warmup_epoch(reference_last_pass, epochs):
    """docs/methods.md §EM+APL: passes after epochs T_w … T−1 (T − T_w = 5 used passes); the code adds a wasted
    one after epoch T."""
    runs = [epoch for epoch in range(1, 11)
            if apl_pass_after_epoch(epoch, warmup_epochs=5, num_epochs=10,
                                    reference_last_pass=reference_last_pass)]
    assert runs == epochs


def test_apl_pass_selects_the_smallest_probabilities_of_the_pool_per_class():
    probs = torch.tensor([[0.10, 0.50], [0.05, 0.40], [0.30, 0.01], [0.20, 0.02], [0.02, 0.60]])
    observed = torch.tensor([[0, 0], [0, 0], [1, 0], [0, -1], [0, 0]], dtype=torch.int8)
    targets = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.9, 0.0]])
    mask = torch.tensor([[False, False]] * 4 + [[True, False]])  # (4, 0) labelled by a past pass
    new_targets, new_mask = apl_pass(probs, observed, targets, mask, torch.tensor([2, 9]))
    # Class 0 pool: rows 0, 1, 3 (row 2 observed, row 4 labelled; its p = 0.02 is the smallest
    # but it left the pool) → the 2 smallest: rows 1 (0.05) and 0 (0.10), not row 3 (0.20).
    # Class 1 pool: rows 0, 1, 2, 4 (row 3 observed −1) → all 4, fewer than n = 9.
    assert new_mask.tolist() == [[True, True], [True, True], [False, True], [False, False],
                                 [True, True]]
    close(new_targets, [[0.10, 0.50], [0.05, 0.40], [0.0, 0.01], [0.0, 0.0], [0.9, 0.60]])
    assert mask.sum() == 1 and targets.sum() == pytest.approx(0.9)  # inputs untouched


def test_apl_passes_label_about_theta_of_each_class():
    generator = torch.Generator().manual_seed(2)
    observed = (torch.rand(500, 3, generator=generator) < 0.1).to(torch.int8)
    per_pass = apl_num_per_pass(apl_unobserved_counts(observed), warmup_epochs=5, num_epochs=10)
    targets, mask = torch.zeros(500, 3), torch.zeros(500, 3, dtype=torch.bool)
    for epoch in range(1, 11):
        if apl_pass_after_epoch(epoch, warmup_epochs=5, num_epochs=10):
            probs = torch.rand(500, 3, generator=generator)
            targets, mask = apl_pass(probs, observed, targets, mask, per_pass)
    assert mask.sum(0).tolist() == (per_pass * 5).tolist()
    assert ((0.9 * apl_unobserved_counts(observed) - mask.sum(0)) < 5).all()
    assert not (mask & (observed != 0)).any()


# ---------------------------------------------------------------- Hill and SPLC (docs/methods.md §Hill, §SPLC)

@pytest.mark.parametrize("example,per_entry,reduced", [
    (EX_A, [[0.022658, 0.089042, 0.250000]], 0.120567),
    (EX_B, [[0.022658, 0.089042, 0.385625], [0.159992, 0.067573, 0.003267]], 0.121360),
])
def test_hill_worked_examples(example, per_entry, reduced):
    logits, observed = tensors(example)
    close(hill_per_entry(logits, observed), per_entry)
    close(hill_loss(logits, observed).loss, reduced)


def test_hill_sum_reduction_is_the_authors():
    close(hill_loss(*tensors(EX_A), reduction=FOCAL_AUTHORS_REDUCTION).loss, 0.361700)


@pytest.mark.parametrize("example,epoch,per_entry,reduced", [
    (EX_A, 1, [[0.022658, 0.022658, 0.173287]], 0.072868),
    (EX_A, 5, [[0.022658, 0.022658, 0.173287]], 0.072868),  # nothing exceeds τ
    (EX_B, 1, [[0.022658, 0.022658, 0.557520], [0.067573, 0.067573, 0.000109]], 0.123015),
    (EX_B, 2, [[0.022658, 0.022658, 0.035669], [0.067573, 0.067573, 0.000109]], 0.036040),
])
def test_splc_worked_examples(example, epoch, per_entry, reduced):
    """Worked examples; epoch is 1-based: the authors' 0-based e = 0 is epoch 1, e ≥ 1 is epoch ≥ 2. In Ex-B from
    epoch 2, entry (0, 2) (σ(0.8) = 0.690 > 0.6) flips to positive, scored without margin."""
    logits, observed = tensors(example)
    per_entry_actual, flipped = splc_per_entry(logits, observed, epoch)
    close(per_entry_actual, per_entry)
    output = splc_loss(logits, observed, epoch)
    close(output.loss, reduced)
    assert output.modified.equal(flipped) and not output.relabel.any()
    assert flipped.sum() == (1 if example is EX_B and epoch >= 2 else 0)


def test_splc_flips_nothing_in_epoch_one_and_only_unobserved_entries_later():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 10, generator=generator) * 4
    observed = torch.randint(-1, 2, (32, 10), generator=generator).to(torch.int8)
    per_entry, flipped = splc_per_entry(logits, observed, 1)
    assert not flipped.any()
    torch.testing.assert_close(per_entry, splc_per_entry(logits, observed, 2, tau=1.0)[0])
    _, flipped_later = splc_per_entry(logits, observed, 2)
    assert flipped_later.any()
    assert flipped_later.equal((observed == 0) & (torch.sigmoid(logits) > 0.6))


# ---------------------------------------------------------------- GR loss (docs/methods.md §GR)

# docs/methods.md §Worked examples: the default schedule with T = 8, n = 0 (b_t = −2 throughout), the authors' off-by-one.
GR_TABLE = {1: (0.0, 0.5375, 1.8125), 2: (0.25, 0.575, 1.625), 3: (0.5, 0.6125, 1.4375),
            4: (0.75, 0.65, 1.25), 5: (1.0, 0.6875, 1.0625), 6: (1.25, 0.725, 0.875),
            7: (1.5, 0.7625, 0.6875), 8: (1.75, 0.8, 0.5)}


@pytest.mark.parametrize("epoch", sorted(GR_TABLE))
def test_gr_schedule_table(epoch):
    schedule = gr_schedule(epoch, num_epochs=8)
    close([schedule.w, schedule.b, schedule.mu, schedule.sigma], [GR_TABLE[epoch][0], -2.0,
                                                                  *GR_TABLE[epoch][1:]])


def test_gr_aligned_schedule_reaches_every_final_value_at_the_last_epoch():
    schedule = gr_schedule(8, num_epochs=8, beta=(0.0, 2.0, -2.0, -8.0), reference_off_by_one=False)
    close([schedule.w, schedule.b, schedule.mu, schedule.sigma], [2.0, -8.0, 0.8, 0.5])
    off_by_one = gr_schedule(8, num_epochs=8, beta=(0.0, 2.0, -2.0, -8.0))
    close([off_by_one.w, off_by_one.b], [1.75, -7.25])  # 7/8 of the way


@pytest.mark.parametrize("epoch,expected", [(1, (0.0, 0.5, 2.0)), (2, (0.0, 0.5, 2.0)),
                                            (3, (0.0, 0.6, 1.5)), (4, (1.0, 0.7, 1.0)),
                                            (5, (2.0, 0.8, 0.5))])
def test_gr_schedule_with_linear_init(epoch, expected):
    """n = 2, T = 5: nothing moves during the frozen epochs; w lags one epoch behind μ, σ."""
    schedule = gr_schedule(epoch, num_epochs=5, linear_init=2, beta=(0.0, 3.0, -2.0, -2.0))
    close([schedule.w, schedule.mu, schedule.sigma], expected)


@pytest.mark.parametrize("example,epoch,per_entry,reduced", [
    (EX_A, 1, [[0.126928, 0.388120, 0.522626]], 0.345891),
    (EX_A, 8, [[0.126928, 0.257937, 0.456684]], 0.280516),
    (EX_B, 1, [[0.126928, 0.388120, 0.649579], [0.446344, 0.201413, 0.385343]], 0.366288),
])
def test_gr_worked_examples(example, epoch, per_entry, reduced):
    logits, observed = tensors(example)
    close(gr_per_entry(logits, observed, gr_schedule(epoch, num_epochs=8)), per_entry)
    output = gr_loss(logits, observed, epoch, num_epochs=8)
    close(output.loss, reduced)
    assert not output.modified.any()


@pytest.mark.parametrize("observed_negatives,expected", [("bce", math.log1p(math.exp(0.3))),
                                                         ("ignore", 0.0)])
def test_gr_observed_negatives(observed_negatives, expected):
    per_entry = gr_per_entry(torch.tensor([[0.3]]), torch.tensor([[-1]], dtype=torch.int8),
                             gr_schedule(1), observed_negatives=observed_negatives)
    close(per_entry[0, 0], expected)


def test_gr_soft_label_and_weight_get_no_gradient():
    """∂ℓ/∂x on an unobserved entry is v·[−k̂·p^(q₂−1) + (1−k̂)·(1−p)^(q₃−1)]·p(1−p) with k̂, v
    held constant, not the total derivative of the value (which also moves k̂ and v)."""
    schedule, q2, q3 = gr_schedule(8, num_epochs=8), 0.01, 1.0
    x = 0.4
    logits = torch.tensor([[x]], dtype=torch.float64, requires_grad=True)
    observed = torch.zeros(1, 1, dtype=torch.int8)
    gr_per_entry(logits, observed, schedule, q2=q2, q3=q3).sum().backward()
    p = 1 / (1 + math.exp(-x))
    soft_label = 1 / (1 + math.exp(-(schedule.w * p + schedule.b)))
    weight = math.exp(-(p - schedule.mu) ** 2 / (2 * schedule.sigma ** 2))
    constant_weights = weight * (-soft_label * p ** (q2 - 1)
                                 + (1 - soft_label) * (1 - p) ** (q3 - 1)) * p * (1 - p)
    assert logits.grad.item() == pytest.approx(constant_weights, abs=1e-6)

    def value(z):
        return gr_per_entry(torch.tensor([[z]], dtype=torch.float64), observed, schedule,
                            q2=q2, q3=q3).item()
    total = (value(x + 1e-5) - value(x - 1e-5)) / 2e-5
    assert abs(total - constant_weights) > 1e-3


@pytest.mark.parametrize("loss_of,x,expected", [
    (lambda x, y: hill_per_entry(x, y), 0.0, 0.1875),  # docs/methods.md §Hill: p²(1−p)(2λ − 3p) at x = 0
    (lambda x, y: em_per_entry(x, y, alpha=0.1), -1.0, -0.019661),
])
def test_unobserved_gradients_worked_examples(loss_of, x, expected):
    logits = torch.tensor([[x]], requires_grad=True)
    loss_of(logits, torch.zeros(1, 1, dtype=torch.int8)).sum().backward()
    close(logits.grad[0, 0], expected)


@pytest.mark.parametrize("loss_of", [
    lambda x, y: hill_per_entry(x, y),
    lambda x, y: splc_per_entry(x, y, 2)[0],
    lambda x, y: em_per_entry(x, y, alpha=0.2),
])
def test_focal_weights_and_entropy_are_not_detached(loss_of):
    """Hill/SPLC's focal factors and EM's entropy carry gradient: autograd equals a finite
    difference of the value (SPLC's flip mask is boolean, so it has none to carry)."""
    observed = torch.tensor([[1, 0, 0, -1]], dtype=torch.int8)
    logits = torch.tensor([[0.7, 0.9, -0.4, 0.2]], dtype=torch.float64, requires_grad=True)
    loss_of(logits, observed).sum().backward()
    step = torch.eye(4, dtype=torch.float64) * 1e-6
    with torch.no_grad():
        numeric = [(loss_of(logits + step[i], observed).sum() - loss_of(logits - step[i], observed)
                    .sum()).item() / 2e-6 for i in range(4)]
    torch.testing.assert_close(logits.grad[0], torch.tensor(numeric, dtype=torch.float64),
                               rtol=0, atol=1e-6)


# ---------------------------------------------------------------- presets and published numbers

def test_presets_cover_every_method_and_dataset_and_run():
    logits, observed = tensors(EX_B)
    run = {"EM": lambda kw: em_loss(logits, observed, **kw),
           "Hill": lambda kw: hill_loss(logits, observed, **kw),
           "SPLC": lambda kw: splc_loss(logits, observed, 2, **kw),
           "GR": lambda kw: gr_loss(logits, observed, 3, **kw)}
    for method, per_dataset in PEER_PRESETS.items():
        assert tuple(per_dataset) == PEER_DATASETS
        for dataset, preset in per_dataset.items():
            if method in run:
                assert torch.isfinite(run[method](preset["loss"]).loss)
            elif method == "EM+APL":
                em_loss(logits, observed, pseudo_targets=torch.zeros(2, 3),
                        pseudo_mask=torch.zeros(2, 3, dtype=torch.bool), **preset["loss"])
                apl_num_per_pass(torch.tensor([100]), **preset["apl"])
            else:
                scheme = method.split("+")[0]
                losses.compute_loss(scheme, logits, observed, epoch=2, **preset["loss"])
                assert preset["model"] == {"boost_alpha": 5.0}


@pytest.mark.parametrize("method,dataset,field,value", [
    ("EM+APL", "pascal", ("loss", "alpha"), 0.2), ("EM+APL", "coco", ("loss", "beta"), 0.9),
    ("EM+APL", "nuswide", ("apl", "warmup_epochs"), 4), ("EM+APL", "cub", ("train", "lr"), 1e-4),
    ("EM", "cub", ("loss", "alpha"), 0.01), ("EM", "coco", ("train", "batch_size"), 16),
    ("LL-Ct+BoostLU", "cub", ("loss", "delta_rel"), 0.2), ("SPLC", "coco", ("loss", "tau"), 0.6),
    ("GR", "nuswide", ("loss", "q2"), 0.01), ("Hill", "pascal", ("loss", "lam"), 1.5),
])
def test_presets_match_spec_peers(method, dataset, field, value):
    section, name = field
    assert PEER_PRESETS[method][dataset][section][name] == value


@pytest.mark.parametrize("dataset,method,value", [
    ("pascal", "LL-R+BoostLU", 89.29), ("coco", "LL-Ct+BoostLU", 71.78),
    ("cub", "LL-Cp+BoostLU", 19.34), ("nuswide", "EM", 47.15), ("cub", "EM+APL", 21.84),
    ("coco", "GR", 73.17), ("nuswide", "GR", 49.08),
])
def test_paper_map(dataset, method, value):
    assert PEER_PAPER_MAP[dataset][method] == value
    assert "SPLC" not in PEER_PAPER_MAP[dataset] and "Hill" not in PEER_PAPER_MAP[dataset]
    assert paper_numbers.PEER_PAPER_STD["cub"]["EM+APL"] == 0.34
    assert paper_numbers.PEER_RERUN_MAP["BoostLU"]["pascal"]["LL-R"] == 88.27
