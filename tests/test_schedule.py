"""Schedule of the number of modified entries k for the large-loss schemes (docs/methods.md §LL schedule).

`ll_num_modified(scheme, epoch, delta_rel, batch_size, num_classes)` is the *uncapped* k:
  LL-R, LL-Ct: ceil(B·L·(t−1)·Δrel/100)    (Δrel in percent per epoch, t the 1-based epoch)
  LL-Cp:       ceil(B·L·Δrel/100) from epoch 2 on
and 0 at epoch 1 (warm-up) for all three. The expected values below are either written out by hand
or computed with exact rational arithmetic (fractions.Fraction of the decimal Δrel), never with floats.
"""
from __future__ import annotations

import math
from fractions import Fraction

import pytest

from largeloss.methods.losses import LL_SCHEMES, ll_num_modified  # noqa: E402

GROWING = ("LL-R", "LL-Ct")
EPOCHS = list(range(1, 11))


def exact_ceil(numerator: Fraction) -> int:
    """Ceiling of an exact rational number."""
    return -((-numerator.numerator) // numerator.denominator)


def exact_k(scheme: str, epoch: int, delta_rel: str, batch: int, classes: int) -> int:
    """k of docs/methods.md §LL schedule in exact arithmetic; delta_rel is given as a decimal string."""
    if epoch == 1:
        return 0
    steps = 1 if scheme == "LL-Cp" else epoch - 1
    return exact_ceil(Fraction(batch * classes * steps) * Fraction(delta_rel) / 100)


def test_ll_schemes_constant():
    """The three large-loss schemes are exported in the paper's order."""
    assert tuple(LL_SCHEMES) == ("LL-R", "LL-Ct", "LL-Cp")


# pascal: B·L = 320, 0.2 % → 0.64 per epoch: ceil(0, .64, 1.28, 1.92, 2.56, 3.2, 3.84, 4.48, 5.12, 5.76)
# coco:   B·L = 1280, 0.2 % → 2.56 per epoch: ceil(0, 2.56, 5.12, 7.68, 10.24, 12.8, 15.36, 17.92, 20.48, 23.04)
@pytest.mark.parametrize("scheme", GROWING)
@pytest.mark.parametrize("batch, classes, delta_rel, expected", [
    (16, 20, 0.2, [0, 1, 2, 2, 3, 4, 4, 5, 6, 6]),        # pascal
    (16, 80, 0.2, [0, 3, 6, 8, 11, 13, 16, 18, 21, 24]),  # coco
], ids=["pascal", "coco"])
def test_growing_schedule_over_ten_epochs(scheme, batch, classes, delta_rel, expected):
    """LL-R / LL-Ct: k = ceil(B·L·(t−1)·Δrel/100) grows linearly over epochs 1–10."""
    got = [ll_num_modified(scheme, epoch, delta_rel, batch, classes) for epoch in EPOCHS]
    assert got == expected


@pytest.mark.parametrize("batch, classes, delta_rel, constant", [
    (16, 20, 0.1, 1),   # 0.32 → 1
    (16, 20, 0.2, 1),   # 0.64 → 1
    (16, 80, 0.2, 3),   # 2.56 → 3
    (16, 81, 0.2, 3),   # 2.592 → 3
    (16, 312, 0.2, 10),  # 9.984 → 10
    (8, 20, 0.5, 1),    # 0.8 → 1
    (16, 80, 2.5, 32),  # 32 exactly
], ids=["pascal-0.1", "pascal-0.2", "coco-0.2", "nus-0.2", "cub-0.2", "b8-0.5", "exact-32"])
def test_llcp_schedule_is_constant_from_epoch_two(batch, classes, delta_rel, constant):
    """LL-Cp: k = 0 at epoch 1, then ceil(B·L·Δrel/100) at every later epoch."""
    got = [ll_num_modified("LL-Cp", epoch, delta_rel, batch, classes) for epoch in EPOCHS]
    assert got == [0] + [constant] * 9


@pytest.mark.parametrize("scheme", LL_SCHEMES)
@pytest.mark.parametrize("delta_rel", [0.1, 0.5, 5.0, 100.0])
def test_epoch_one_is_warm_up(scheme, delta_rel):
    """Epoch 1 modifies nothing for every scheme, whatever Δrel."""
    assert ll_num_modified(scheme, 1, delta_rel, 16, 20) == 0


@pytest.mark.parametrize("scheme", LL_SCHEMES)
@pytest.mark.parametrize("epoch", EPOCHS)
def test_zero_delta_rel_modifies_nothing(scheme, epoch):
    """Δrel = 0 gives k = 0 at every epoch."""
    assert ll_num_modified(scheme, epoch, 0.0, 16, 80) == 0


@pytest.mark.parametrize("scheme", LL_SCHEMES)
@pytest.mark.parametrize("epoch", [2, 5, 10])
def test_returns_plain_int(scheme, epoch):
    """k is a Python int (usable as a count / topk argument)."""
    k = ll_num_modified(scheme, epoch, 0.2, 16, 20)
    assert isinstance(k, int) and not isinstance(k, bool)


@pytest.mark.parametrize("scheme", GROWING)
@pytest.mark.parametrize("delta_rel, batch, classes, epoch, expected", [
    (0.5, 8, 20, 6, 4),      # 8·20·5·0.5/100 = 4 exactly (docs/methods.md's example)
    (0.1, 10, 100, 4, 3),    # (t−1)·Δrel/100·B·L evaluates to 3.0000000000000004 in floats
    (0.1, 10, 100, 10, 9),   # B·L·((t−1)·(Δrel/100)) evaluates to 9.000000000000002 in floats
    (0.1, 5, 100, 7, 3),
    (0.2, 5, 100, 10, 9),
    (0.3, 10, 100, 3, 6),
    (0.4, 25, 20, 6, 10),
    (0.2, 16, 80, 6, 13),    # not integral: 12.8 → 13 (sanity)
    (1.1, 100, 20, 4, 66),   # B·L·(t−1)·Δrel/100 evaluates to 66.00000000000001 in floats
    (1.1, 10, 5000, 2, 550),
], ids=lambda v: str(v))
def test_no_float_drift_at_exact_products(scheme, delta_rel, batch, classes, epoch, expected):
    """When B·L·(t−1)·Δrel/100 is an integer, k is that integer (no ceil of 3.0000000000000004)."""
    assert ll_num_modified(scheme, epoch, delta_rel, batch, classes) == expected


@pytest.mark.parametrize("delta_rel, batch, classes, expected", [
    (0.5, 8, 20, 1),        # 0.8 → 1
    (0.5, 16, 20, 2),       # 1.6 → 2
    (1.1, 100, 20, 22),     # 22 exactly (B·L·(Δrel/100) evaluates to 22.000000000000004)
    (2.5, 16, 80, 32),      # 32 exactly
    (0.5, 40, 20, 4),       # 4 exactly
])
def test_llcp_no_float_drift(delta_rel, batch, classes, expected):
    """LL-Cp's constant k has no float drift either."""
    assert ll_num_modified("LL-Cp", 2, delta_rel, batch, classes) == expected
    assert ll_num_modified("LL-Cp", 7, delta_rel, batch, classes) == expected


@pytest.mark.parametrize("scheme", LL_SCHEMES)
@pytest.mark.parametrize("delta_rel", ["0.1", "0.2", "0.3", "0.4", "0.5", "1.1"])
def test_sweep_matches_exact_rational_ceil(scheme, delta_rel):
    """Over a grid of B, L, t, k equals the exact rational ceil (integral products included)."""
    integral_products = 0
    for batch in (1, 2, 3, 5, 8, 10, 16, 25, 32, 50, 100):
        for classes in (4, 5, 20, 40, 50, 80, 81, 100, 312):
            for epoch in EPOCHS:
                expected = exact_k(scheme, epoch, delta_rel, batch, classes)
                got = ll_num_modified(scheme, epoch, float(delta_rel), batch, classes)
                assert got == expected, (scheme, epoch, delta_rel, batch, classes)
                steps = 1 if scheme == "LL-Cp" else epoch - 1
                if (Fraction(batch * classes * steps) * Fraction(delta_rel) / 100).denominator == 1:
                    integral_products += 1
    assert integral_products > 0  # the grid does exercise exact products


def test_exact_ceil_helper():
    """Sanity of the test's own exact ceiling helper."""
    assert exact_ceil(Fraction(64, 100)) == 1
    assert exact_ceil(Fraction(4)) == 4
    assert exact_ceil(Fraction(0)) == 0
    assert exact_k("LL-R", 6, "0.5", 8, 20) == 4
    assert exact_k("LL-Cp", 9, "0.2", 16, 80) == math.ceil(2.56)
