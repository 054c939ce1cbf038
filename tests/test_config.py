"""Dataset-dependent defaults."""

import pytest

import config


@pytest.mark.parametrize("dataset,num_workers,early_stop_drop", [
    ("digits", 0, 0.0), ("coco", 4, 3.0), ("pascal", 4, 3.0)])
def test_loader_and_early_stop_defaults_depend_on_the_dataset(dataset, num_workers, early_stop_drop):
    resolved = config.parse_args(["--dataset", dataset])
    assert (resolved.num_workers, resolved.early_stop_drop) == (num_workers, early_stop_drop)


def test_explicit_flags_override_the_dataset_defaults():
    resolved = config.parse_args(["--num_workers", "2", "--early_stop_drop", "5"])
    assert (resolved.num_workers, resolved.early_stop_drop) == (2, 5.0)
