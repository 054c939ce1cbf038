"""scripts/gpu_check.py's CPU dry run (issue 20): every section runs at a small scale on the CPU, so
the one-command GPU check cannot rot while no GPU is at hand. About 30 s on an idle 2-core CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO_ROOT / "scripts" / "gpu_check.py"
SECTIONS = ["throughput", "correctness", "distributed", "openimages", "compile"]


def gpu_check(out_dir: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict, Path]:
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--device", "cpu", "--quick",
                           "--out", str(out_dir), *flags], capture_output=True, text=True,
                          timeout=600, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done, json.loads((out_dir / "gpu_check.json").read_text()), out_dir


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return gpu_check(tmp_path_factory.mktemp("gpu_check"))


def test_the_dry_run_runs_every_section_but_compile(dry_run):
    done, results, _ = dry_run
    assert done.returncode == 0, done.stderr[-3000:]
    statuses = {name: section["status"] for name, section in results["sections"].items()}
    assert list(statuses) == SECTIONS
    assert statuses.pop("compile").startswith("skipped: --quick")
    assert set(statuses.values()) == {"ran"}, statuses


def test_throughput_has_both_configurations_with_positive_rates(dry_run):
    configs = dry_run[1]["throughput"]["configs"]
    assert list(configs) == ["fp32", "bf16_channels_last"]
    for figures in configs.values():
        for key in ("train", "eval"):
            reference, fast = (figures[f"{key}_{variant}_images_per_s"]
                               for variant in ("reference", "fast"))
            assert reference > 0 and fast > 0
            assert figures[f"{key}_ratio"] == pytest.approx(fast / reference)
        assert figures["loader_cached_images_per_s"] > 0 and figures["an_step_ms"] > 0


def test_device_cpu_and_torchrun_runs_agree_and_the_gather_is_exact(dry_run):
    results = dry_run[1]
    device_run, cpu_run = (results["correctness"][key] for key in ("device_run", "cpu_run"))
    assert device_run == cpu_run  # both on the CPU in the dry run: the same run twice
    assert device_run["modified"][0] == 0 < device_run["modified"][1]  # LL-Cp acted
    assert device_run["relabeled"][1] > 0
    distributed = results["distributed"]
    assert distributed["torchrun_vs_one_process"]["pass"]
    assert distributed["torchrun_run"]["modified"] == device_run["modified"]
    assert distributed["gather"] == {"backend": "gloo", "world_size": 1, "gathered_equal": True,
                                     "grad_equal": True, "pass": True}
    assert results["correctness"]["bf16_vs_fp32"]["fp32_test_map"] > 0


def test_openimages_store_bytes_follow_the_csr_layout(dry_run):
    for figures in dry_run[1]["openimages"].values():
        # indptr int64 (N+1), indices int32 and values int8 per labelled entry
        assert figures["store_bytes"] == 8 * (figures["num_images"] + 1) + 5 * figures["num_labelled"]
        assert figures["rows_ms"] > 0 and figures["relabeled"] > 0
    densities = [figures["entries_per_image"] for figures in dry_run[1]["openimages"].values()]
    assert 5 < densities[0] < 6.5 and 50 < densities[1] < 61  # repeats within an image dropped


def test_the_table_compares_with_the_goals_and_says_not_measured_on_a_cpu(dry_run):
    table = (dry_run[2] / "gpu_check.md").read_text()
    assert "| training ≥ 900 images/s (448 px, batch 16) |" in table
    for goal in ("training ≥ 900", "evaluation ≥ 2,500", "LL overhead ≤ 2 %", "2× the reference"):
        line = next(line for line in table.splitlines() if goal in line)
        assert line.endswith("| not measured |"), line
    for goal in ("device run = CPU run", "bf16 vs fp32", "torchrun = one process", "OpenImages"):
        line = next(line for line in table.splitlines() if goal in line)
        assert line.endswith("| pass |"), line


def test_sections_that_would_overrun_the_budget_are_skipped_and_said_so(tmp_path):
    done, results, _ = gpu_check(tmp_path, "--budget_s", "1", "--skip", "openimages")
    assert done.returncode == 0, done.stderr[-3000:]
    statuses = {name: section["status"] for name, section in results["sections"].items()}
    assert statuses["openimages"] == "skipped: --skip"
    assert "would overrun the budget" in statuses["throughput"]
    assert "throughput" not in results
    assert "would overrun the budget" in (tmp_path / "gpu_check.md").read_text()
    assert "| training ≥ 900 images/s (448 px, batch 16) | — | not measured |" in (
        tmp_path / "gpu_check.md").read_text()
