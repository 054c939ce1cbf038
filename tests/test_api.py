"""The public Python API (`from largeloss import ...`) and the ecosystem's ways of marking unknown
labels: NaN (as the partial-label toolkit mlcpl) and an ignore index (as torchmetrics), converted at
the boundary to the project's {-1, 0, +1}."""
from __future__ import annotations

import math

import pytest
import torch

import largeloss
from largeloss.methods.losses import to_observed

SIGNED = torch.tensor([[1, -1, 0, 0], [0, 1, -1, 0], [0, 0, 0, 1]], dtype=torch.int8)
NAN = torch.tensor([[1.0, 0.0, math.nan, math.nan], [math.nan, 1.0, 0.0, math.nan],
                    [math.nan, math.nan, math.nan, 1.0]])
IGNORE = torch.tensor([[1, 0, -100, -100], [-100, 1, 0, -100], [-100, -100, -100, 1]])


def test_the_package_exports_the_api():
    assert {"build", "compute_loss", "average_precisions", "Method", "register", "LossOutput"} <= set(largeloss.__all__)
    assert "LL-Ct" in largeloss.METHODS and largeloss.__version__


@pytest.mark.parametrize("labels, unknown", [(NAN, math.nan), (IGNORE, -100), (IGNORE.numpy(), -100)],
                         ids=["nan", "ignore_index", "numpy_ignore_index"])
def test_unknown_conventions_convert_to_signed_labels(labels, unknown):
    converted = to_observed(labels, unknown)
    assert converted.dtype == torch.int8
    assert torch.equal(converted, SIGNED)


def test_signed_labels_pass_unchanged():
    assert torch.equal(to_observed(SIGNED), SIGNED)


@pytest.mark.parametrize("labels, unknown", [(torch.tensor([[1.0, 2.0, math.nan]]), math.nan),
                                             (torch.tensor([[1, -1, -100]]), -100)])
def test_values_outside_the_convention_are_refused(labels, unknown):
    with pytest.raises(ValueError, match="must be 0, 1 or"):
        to_observed(labels, unknown)


@pytest.mark.parametrize("method", ["an", "LL-R", "LL-Ct", "LL-Cp", "wan", "iu"])
@pytest.mark.parametrize("labels, unknown", [(NAN, math.nan), (IGNORE, -100)], ids=["nan", "ignore_index"])
def test_compute_loss_takes_nan_and_ignore_index(method, labels, unknown):
    logits = torch.linspace(-2, 2, 12).reshape(3, 4)
    expected = largeloss.compute_loss(method, logits, SIGNED, epoch=3, delta_rel=20.0)
    given = largeloss.compute_loss(method, logits, labels, epoch=3, delta_rel=20.0, unknown=unknown)
    assert given.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    assert torch.equal(given.modified, expected.modified)


def test_a_method_built_from_nan_labels_equals_one_built_from_signed_labels():
    signed = largeloss.build("LL-Cp", SIGNED, delta_rel=20.0)
    from_nan = largeloss.build("LL-Cp", NAN, delta_rel=20.0, unknown=math.nan)
    ids = torch.arange(3)
    assert torch.equal(from_nan.labels.rows(ids), signed.labels.rows(ids))
    logits = torch.linspace(-2, 2, 12).reshape(3, 4)
    assert from_nan.loss(logits, ids, 2).loss.item() == pytest.approx(signed.loss(logits, ids, 2).loss.item())
