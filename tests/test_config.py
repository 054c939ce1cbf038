"""Dataset-dependent defaults."""

import pytest

from largeloss.experiment import config


@pytest.mark.parametrize("dataset,num_workers,early_stop_drop", [
    ("digits", 0, 0.0), ("coco", 4, 3.0), ("pascal", 4, 3.0)])
def test_loader_and_early_stop_defaults_depend_on_the_dataset(dataset, num_workers, early_stop_drop):
    resolved = config.parse_args(["--dataset", dataset])
    assert (resolved.num_workers, resolved.early_stop_drop) == (num_workers, early_stop_drop)


def test_explicit_flags_override_the_dataset_defaults():
    resolved = config.parse_args(["--num_workers", "2", "--early_stop_drop", "5"])
    assert (resolved.num_workers, resolved.early_stop_drop) == (2, 5.0)


@pytest.mark.parametrize("flag,value,expected", [
    ("--lr", "0", "> 0"), ("--lr", "-1", "> 0"), ("--lr", "nan", "> 0"), ("--lr", "inf", "> 0"),
    ("--head_lr_mult", "-5", "> 0"), ("--head_lr_mult", "0", "> 0"),
    ("--linear_lr", "0", "> 0"), ("--expected_num_pos", "0", "> 0"),
    ("--expected_num_pos", "-1.5", "> 0"),
    ("--stop_after", "-3", ">= 1"), ("--stop_after", "0", ">= 1"),
    ("--digits_train_size", "0", ">= 1"),
    ("--momentum", "1", "in [0, 1)"), ("--momentum", "-0.1", "in [0, 1)"),
    ("--momentum", "nan", "in [0, 1)"),
    ("--weight_decay", "-0.001", ">= 0"), ("--early_stop_drop", "-1", ">= 0"),
    ("--delta_rel", "-1", "between 0 and 100"), ("--delta_rel", "101", "between 0 and 100"),
    ("--delta_rel", "1000", "between 0 and 100"),
])
def test_out_of_range_flags_are_parse_errors_naming_the_flag(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args([flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"main.py: error: {flag} must be") and expected in error, error


def test_edge_values_of_the_checked_flags_are_accepted():
    resolved = config.parse_args(["--momentum", "0", "--weight_decay", "0", "--early_stop_drop", "0",
                                  "--delta_rel", "100", "--stop_after", "1", "--lr", "1e-9"])
    assert (resolved.momentum, resolved.delta_rel, resolved.stop_after) == (0.0, 100.0, 1)
