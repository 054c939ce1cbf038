"""The engine redesign keeps every number: short digits runs of each kind of method reproduce the
per-epoch metrics recorded from the code before it (tests/golden/metrics.json) to 1e-6."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("golden_record", Path(__file__).parent / "golden" / "record.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)

GOLDEN = json.loads(record.GOLDEN_FILE.read_text())


@pytest.mark.parametrize("name", sorted(record.RUNS))
def test_golden_metrics(name, tmp_path):
    result = record.run_and_read(name, tmp_path)
    expected = GOLDEN[name]
    assert [(row["phase"], row["epoch"]) for row in result["rows"]] == \
        [(row["phase"], row["epoch"]) for row in expected["rows"]]
    for row, golden in zip(result["rows"], expected["rows"]):
        assert row["modified"] == golden["modified"], (row, golden)
        assert row["relabeled"] == golden["relabeled"], (row, golden)
        assert row["train_loss"] == pytest.approx(golden["train_loss"], abs=1e-6, rel=0)
        assert row["val_map"] == pytest.approx(golden["val_map"], abs=1e-6, rel=0)
    assert result["test_map"] == pytest.approx(expected["test_map"], abs=1e-6, rel=0)
    assert result["best_epoch"] == expected["best_epoch"]
