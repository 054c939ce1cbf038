"""Short digits runs of each kind of method reproduce tests/golden/metrics.json on any machine:
the rows, the modified / relabeled counts and the best epoch exactly, the train loss, val mAP and
test mAP within record.TOLERANCE (measured across thread counts and CPU kernels; record.py's
docstring says how, and how to compare bit-for-bit on one machine before and after a refactor)."""
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
    assert record.differences(result, GOLDEN[name], record.TOLERANCE) == []


def test_differences_compare_counts_exactly_and_floats_within_the_tolerance():
    golden = GOLDEN["LL-Cp"]
    moved = json.loads(json.dumps(golden))
    moved["rows"][1]["train_loss"] += 0.9 * record.TOLERANCE["train_loss"]
    moved["test_map"] -= 0.9 * record.TOLERANCE["test_map"]
    assert record.differences(moved, golden, record.TOLERANCE) == []
    moved["rows"][1]["train_loss"] += 0.2 * record.TOLERANCE["train_loss"]
    moved["rows"][2]["relabeled"] += 1
    moved["best_epoch"] += 1
    found = record.differences(moved, golden, record.TOLERANCE)
    assert [line.split(":")[0].split(" ")[0] for line in found] == \
        ["end_to_end", "end_to_end", "best_epoch"]
    assert "train_loss" in found[0] and "relabeled" in found[1]
    assert record.differences({**golden, "rows": golden["rows"][:2]}, golden, record.TOLERANCE)
