"""Record the golden per-epoch metrics of short digits runs (tests/test_golden.py compares them).

    OMP_NUM_THREADS=1 python tests/golden/record.py     # rewrites tests/golden/metrics.json

Recorded once from the code before the engine redesign (issue 11); rerun only when a change is
meant to alter the numbers, and say so in the commit.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]

from largeloss import cli as main  # noqa: E402

GOLDEN_FILE = Path(__file__).with_name("metrics.json")
FIELDS = ("phase", "epoch", "train_loss", "val_map", "modified", "relabeled")
COMMON = ["--dataset", "digits", "--digits_train_size", "96", "--epochs", "3", "--seed", "1"]
RUNS = {
    "an": ["--loss", "an", "--mod_scheme", "none"],
    "LL-R": ["--mod_scheme", "LL-R", "--delta_rel", "2"],
    "LL-Ct": ["--mod_scheme", "LL-Ct", "--delta_rel", "2"],
    "LL-Cp": ["--mod_scheme", "LL-Cp", "--delta_rel", "2"],
    "role": ["--loss", "role"],
    "epr": ["--loss", "epr"],
    "bce": ["--loss", "bce"],
    "linear_LL-Cp": ["--mod_scheme", "LL-Cp", "--delta_rel", "2", "--train_mode", "linear",
                     "--linear_epochs", "3"],
    "linear_init_role": ["--loss", "role", "--train_mode", "linear_init", "--linear_epochs", "2",
                         "--epochs", "2"],
}


def run_and_read(name: str, folder: Path) -> dict:
    """Run one golden configuration in this process; its per-epoch rows and test mAP."""
    out_dir = folder / name
    argv = COMMON + RUNS[name] + ["--out_dir", str(out_dir), "--feature_cache",
                                  str(folder / f"cache_{name}")]
    if main.main(argv) != 0:
        raise RuntimeError(f"golden run {name} failed")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out_dir / "results.json").read_text())
    return {"rows": [{key: row[key] for key in FIELDS} for row in rows],
            "test_map": results["test_map"], "best_epoch": results["best_epoch"]}


def record() -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        return {name: run_and_read(name, Path(folder)) for name in RUNS}


if __name__ == "__main__":
    GOLDEN_FILE.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {GOLDEN_FILE}")
