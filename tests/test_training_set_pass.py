"""The end-of-epoch pass over the training set (engine/train.py): a run whose N×L float32 scores
would not fit is refused at start, with the memory it needs (issue 20), on a tiny digits run with
the bound monkeypatched."""
from __future__ import annotations

import re

import pytest

from largeloss import cli
from largeloss.engine import train
from largeloss.utils.errors import InputError

TINY_DIGITS = ["--dataset", "digits", "--digits_train_size", "32", "--device", "cpu",
               "--num_workers", "0", "--batch_size", "16", "--image_size", "32",
               "--early_stop_drop", "0"]
APL = ["--loss", "em", "--mod_scheme", "APL", "--epochs", "2", "--apl_warmup_epochs", "1"]
MESSAGE = re.compile(r"(\d+) × (\d+) × 4 bytes = ([\d,]+) bytes")


def refusal(capsys, out_dir, flags: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of a run refused at start: nothing in its run folder."""
    code = cli.main([*TINY_DIGITS, *flags, "--out_dir", str(out_dir)])
    assert not (out_dir / "config.json").exists() and not (out_dir / "last.pt").exists()
    return code, capsys.readouterr().err


def test_openimages_scale_is_refused_with_the_memory_it_needs():
    with pytest.raises(InputError, match=r"3700000 × 5000 × 4 bytes = 74,000,000,000 bytes"):
        train.check_training_set_pass_fits(3_700_000, 5000, bound_bytes=8 * 10**9)
    train.check_training_set_pass_fits(3_700_000, 5000, bound_bytes=74 * 10**9)  # at the bound
    assert 0 < train.training_set_pass_bound_bytes()


@pytest.mark.filterwarnings("ignore:no observed positive")
@pytest.mark.parametrize("flags", [APL, ["--loss", "an", "--epochs", "1", "--track_train"]],
                         ids=["method end_epoch", "track_train"])
def test_a_pass_over_the_bound_is_refused_before_training(monkeypatch, capsys, tmp_path, flags):
    monkeypatch.setattr(train, "training_set_pass_bound_bytes", lambda: 100)
    code, error = refusal(capsys, tmp_path / "run", flags)
    assert code == 2 and "Traceback" not in error
    num_images, num_classes, needed = MESSAGE.search(error).groups()
    assert int(num_classes) == 10 and 0 < int(num_images) <= 32
    assert int(needed.replace(",", "")) == int(num_images) * 10 * 4 > 100
    assert "over the bound of 100 bytes" in error


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_a_pass_at_the_bound_runs_and_a_method_without_the_pass_is_not_checked(monkeypatch, capsys,
                                                                              tmp_path):
    monkeypatch.setattr(train, "training_set_pass_bound_bytes", lambda: 100)
    out_dir = tmp_path / "an"
    code = cli.main([*TINY_DIGITS, "--loss", "an", "--mod_scheme", "none", "--epochs", "1",
                     "--out_dir", str(out_dir)])
    assert code == 0  # AN has no end-of-epoch pass: the bound does not apply
    needed = int(MESSAGE.search(refusal(capsys, tmp_path / "apl", APL)[1]).group(3).replace(",", ""))
    monkeypatch.setattr(train, "training_set_pass_bound_bytes", lambda: needed)
    out_dir = tmp_path / "fits"
    assert cli.main([*TINY_DIGITS, *APL, "--out_dir", str(out_dir)]) == 0
    assert (out_dir / "results.json").exists()
