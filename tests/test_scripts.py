"""Tests of the reproduction kit: scripts/{paper_numbers,reproduce,summarize,plot_curves}.py and
scripts/sweep_delta_rel.sh, on generated run folders and fake interpreters (no training)."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from largeloss.experiment import paper_numbers, presets
from largeloss.reporting import plot_curves, summarize

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
SWEEP = SCRIPTS / "sweep_delta_rel.sh"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"kit_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = load_script("reproduce")


def make_run(folder: Path, *, dataset="coco", method="an", seed=0, delta_rel=0.2, train_mode="end_to_end",
             test_map=None, val_map=None, best_epoch=3, epochs_logged=0, error=None, metrics=None,
             settings=None):
    """A run folder as main.py writes it; results.json only when test_map is given. `settings`
    adds or overrides config.json keys."""
    loss, mod_scheme = paper_numbers.method_flags(method)
    folder.mkdir(parents=True)
    config = {"dataset": dataset, "loss": loss, "mod_scheme": mod_scheme, "method": method,
              "delta_rel": delta_rel, "seed": seed, "train_mode": train_mode, "epochs": 10,
              "batch_size": 16, "lr": 1e-5, "optimizer": "adam", "arch": "resnet50",
              "git_sha": "0" * 40, "versions": {"torch": "x"}, **(settings or {})}
    (folder / "config.json").write_text(json.dumps(config))
    if metrics is None:
        metrics = [{"phase": train_mode if train_mode != "linear_init" else "end_to_end", "epoch": epoch,
                    "train_loss": 1.0 / epoch, "val_map": 50.0 + epoch, "modified": 10 * (epoch - 1),
                    "modified_fraction": 0.001 * (epoch - 1), "seconds": 1.0, "images_per_s": 100.0}
                   for epoch in range(1, epochs_logged + 1)]
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    if error is not None:
        (folder / "error.txt").write_text(error)
    if test_map is not None:
        results = {"best_epoch": best_epoch, "val_map": test_map + 1.0 if val_map is None else val_map,
                   "test_map": test_map, "test_ap": [test_map / 100] * 3, "class_names": ["a", "b", "c"],
                   "method": method, "dataset": dataset, "seed": seed, "delta_rel": delta_rel,
                   "train_mode": train_mode, "stopped_early": False, "epochs_run": 10}
        (folder / "results.json").write_text(json.dumps(results))


def table_row(report: str, *cells: str) -> str:
    """The one Markdown table line whose leading cells are `cells`."""
    prefix = "| " + " | ".join(cells) + " |"
    matches = [line for line in report.splitlines() if line.startswith(prefix)]
    assert len(matches) == 1, (prefix, report)
    return matches[0]


# ----------------------------------------------------------------------------------- paper_numbers

def test_paper_numbers_table_is_complete_and_spot_values_match_spec():
    for setting in paper_numbers.SETTINGS:
        for dataset in paper_numbers.PAPER_DATASETS:
            assert set(paper_numbers.PAPER_MAP[setting][dataset]) == set(paper_numbers.METHODS)
    assert paper_numbers.paper_map("pascal", "LL-R", "end_to_end") == 89.2
    assert paper_numbers.paper_map("cub", "bce", "linear_init") == 34.0
    assert paper_numbers.paper_map("nuswide", "role", "linear_init") == 51.0
    assert paper_numbers.paper_map("digits", "an", "end_to_end") is None
    assert paper_numbers.paper_map("coco", "an", "linear") is None
    assert paper_numbers.best_hparams("cub", "LL-Ct") == {"optimizer": "adam", "lr": 7.5e-5, "epochs": 10,
                                                          "delta_rel": 0.4}
    assert paper_numbers.best_hparams("coco", "wan") == {"optimizer": "adam", "lr": 1e-5, "epochs": 10}
    with pytest.raises(ValueError):
        paper_numbers.method_flags("LL-X")


# ----------------------------------------------------------------------------------------- summarize

def test_summarize_mean_std_paper_diff_and_incomplete_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, value in enumerate([64.0, 65.0, 66.5]):
        make_run(runs / "coco/end_to_end/an" / f"seed{seed}", method="an", seed=seed, test_map=value)
    for seed, value in enumerate([70.0, 70.5, 71.0]):
        make_run(runs / "coco/end_to_end/LL-Ct" / f"seed{seed}", method="LL-Ct", seed=seed, test_map=value,
                 best_epoch=seed + 2)
    make_run(runs / "coco/end_to_end/LL-R/seed0", method="LL-R", epochs_logged=2,
             error="RuntimeError: CUDA out of memory\nmore detail\n")
    make_run(runs / "coco/end_to_end/LL-R/seed1", method="LL-R", epochs_logged=3)
    csv_path, md_path = tmp_path / "table.csv", tmp_path / "table.md"

    assert summarize.main([str(runs), "--out", str(md_path), "--csv", str(csv_path)]) == 0
    report = capsys.readouterr().out
    assert md_path.read_text() == report
    # an: mean 65.1667, sample std 1.2583; paper COCO E2E an 64.1
    an_row = table_row(report, "coco", "end_to_end", "an", "—", "3", "0,1,2", "65.17 ± 1.26")
    assert an_row.endswith("| 64.1 | +1.07 | — |")
    # LL-Ct Δrel 0.2: mean 70.5, std 0.5, mean best epoch 3.0; paper 70.5
    ll_row = table_row(report, "coco", "end_to_end", "LL-Ct", "0.2", "3", "0,1,2", "70.50 ± 0.50")
    assert "| 3.0 |" in ll_row and ll_row.endswith("| 70.5 | +0.00 | — |")
    assert report.index(an_row) < report.index(ll_row)  # the paper's row order

    incomplete = report.split("## Unfinished and failed runs (2)")[1]
    failed = table_row(incomplete, "failed", str(runs / "coco/end_to_end/LL-R/seed0"))
    assert failed.endswith("| end_to_end 2 | RuntimeError: CUDA out of memory |")
    unfinished = table_row(incomplete, "unfinished", str(runs / "coco/end_to_end/LL-R/seed1"))
    assert unfinished.endswith("| end_to_end 3 | — |")

    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["n"]) for r in rows] == [("an", "3"), ("LL-Ct", "3")]
    assert float(rows[0]["test_map_mean"]) == pytest.approx(65.1666667)
    assert float(rows[0]["test_map_std"]) == pytest.approx(1.2583057)
    assert rows[0]["paper"] == "64.1"


def test_summarize_chosen_delta_rel_uses_best_mean_val_map(tmp_path, capsys):
    runs = tmp_path / "runs"
    # Δrel 0.1 has the better test mAP, 0.4 the better val mAP: the protocol picks 0.4.
    for seed in range(2):
        make_run(runs / f"pascal/sweep/LL-R_d0.1/seed{seed}", dataset="pascal", method="LL-R", seed=seed,
                 delta_rel=0.1, test_map=90.0 + seed, val_map=80.0)
        make_run(runs / f"pascal/sweep/LL-R_d0.4/seed{seed}", dataset="pascal", method="LL-R", seed=seed,
                 delta_rel=0.4, test_map=88.0 + seed, val_map=81.0 + seed)
    make_run(runs / "pascal/sweep/LL-Ct_d0.2/seed0", dataset="pascal", method="LL-Ct", delta_rel=0.2,
             test_map=89.0)  # one Δrel only: no chosen line; one seed: std "—"
    assert summarize.main([str(runs)]) == 0
    report = capsys.readouterr().out
    chosen = [line for line in report.splitlines() if "(chosen Δrel)" in line]
    assert chosen == [table_row(report, "pascal", "end_to_end", "LL-R", "0.4 (chosen Δrel)", "2", "0,1",
                                "88.50 ± 0.71")]
    assert chosen[0].endswith("| 89.2 | -0.70 | — |")
    table_row(report, "pascal", "end_to_end", "LL-R", "0.1", "2", "0,1", "90.50 ± 0.71")
    table_row(report, "pascal", "end_to_end", "LL-Ct", "0.2", "1", "0", "89.00 ± —")
    assert "Unfinished" not in report


def test_summarize_traceback_shows_its_message_and_torn_metrics_line(tmp_path, capsys):
    run = tmp_path / "runs/x"
    make_run(run, epochs_logged=2, error="Traceback (most recent call last):\n  File x\nValueError: bad\n")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"phase": "end_to_end", "ep')  # killed while writing
    assert summarize.main([str(tmp_path / "runs")]) == 0
    report = capsys.readouterr().out
    assert table_row(report, "failed", str(run)).endswith("| end_to_end 2 | ValueError: bad |")
    assert "(no finished run)" in report


def test_summarize_exits_2_without_run_folders(tmp_path, capsys):
    (tmp_path / "empty/sub").mkdir(parents=True)
    assert summarize.main([str(tmp_path / "empty")]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert summarize.main([str(tmp_path / "missing")]) == 2


def test_summarize_splits_runs_whose_settings_differ_and_names_the_keys(tmp_path, capsys):
    """Three LL-R seed-0 runs with other epochs / train sizes once came out as one row 'n=3, seeds
    0,0,0': each is its own row now, naming the settings that differ from the rows beside it."""
    runs = tmp_path / "runs"
    for name, epochs, train_size, value in (("a", 20, 1000, 70.0), ("b", 2, 64, 40.0),
                                             ("c", 2, 1000, 55.0)):
        make_run(runs / name, dataset="digits", method="LL-R", delta_rel=1.0, test_map=value,
                 settings={"epochs": epochs, "train_size": train_size, "out_dir": str(runs / name)})
    assert summarize.main([str(runs), "--csv", str(tmp_path / "table.csv")]) == 0
    report = capsys.readouterr().out
    rows = [line for line in report.splitlines() if line.startswith("| digits ")]
    assert len(rows) == 3
    for epochs, train_size, value in ((20, 1000, "70.00"), (2, 64, "40.00"), (2, 1000, "55.00")):
        row = table_row(report, "digits", "end_to_end", "LL-R", "1", "1", "0", f"{value} ± —")
        assert row.endswith(f"| settings differ: epochs={epochs}, train_size={train_size} |")
    with open(tmp_path / "table.csv") as handle:
        assert sorted(r["differing_settings"] for r in csv.DictReader(handle)) == [
            "epochs=2, train_size=1000", "epochs=2, train_size=64", "epochs=20, train_size=1000"]


def test_summarize_flags_a_backbone_or_image_size_other_than_the_papers(tmp_path, capsys):
    """A run beside the paper's number says when it did not train the paper's ResNet-50 at 448 px
    (OpenImages: ResNet-101 at 224 px); digits has no paper number, so nothing to flag."""
    runs = tmp_path / "runs"
    for name, dataset, method, arch, image_size in (
            ("paper", "coco", "an", "resnet50", 448), ("small", "coco", "LL-R", "resnet18", 224),
            ("size", "pascal", "LL-Ct", "resnet50", 224), ("oi", "openimages", "LL-R", "resnet101", 224),
            ("digits", "digits", "LL-R", "small_cnn", 48)):
        make_run(runs / name, dataset=dataset, method=method, test_map=50.0,
                 settings={"arch": arch, "image_size": image_size})
    assert summarize.main([str(runs), "--csv", str(tmp_path / "table.csv")]) == 0
    report = capsys.readouterr().out
    check = {(line.split(" | ")[0][2:], line.split(" | ")[2]): line.rsplit(" | ", 1)[1][:-2]
             for line in report.splitlines() if line.startswith("| ") and " | end_to_end | " in line}
    assert check == {
        ("coco", "an"): "—",
        ("coco", "LL-R"): "not the paper's setup: arch=resnet18, image_size=224 (paper: resnet50, 448 px)",
        ("pascal", "LL-Ct"): "not the paper's setup: image_size=224 (paper: resnet50, 448 px)",
        ("openimages", "LL-R"): "—", ("digits", "LL-R"): "—"}
    with open(tmp_path / "table.csv") as handle:
        flagged = {row["dataset"]: row["not_paper_setup"] for row in csv.DictReader(handle)}
    assert flagged["pascal"] == "image_size=224 (paper: resnet50, 448 px)" and flagged["digits"] == ""


def test_summarize_ignores_engineering_keys_and_flags_duplicate_seeds(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, device, workers in ((0, "cuda", 4), (1, "cpu", 0)):  # no maths differs
        make_run(runs / f"an/seed{seed}", method="an", seed=seed, test_map=60.0 + seed,
                 settings={"device": device, "num_workers": workers, "git_sha": str(seed) * 40,
                           "out_dir": f"runs/an/seed{seed}", "log_every": 10 + seed,
                           "resume": None if seed else "x/last.pt"})
    for copy in ("a", "b"):  # the same run twice (a copied folder)
        make_run(runs / f"wan/{copy}", method="wan", seed=3, test_map=61.0)
    assert summarize.main([str(runs)]) == 0
    report = capsys.readouterr().out
    assert table_row(report, "coco", "end_to_end", "an", "—", "2", "0,1", "60.50 ± 0.71").endswith(
        "| 64.1 | -3.60 | — |")
    assert table_row(report, "coco", "end_to_end", "wan", "—", "2", "3,3").endswith(
        "| duplicate seeds: 3 (2 runs) |")


def test_summarize_command_line(tmp_path):
    make_run(tmp_path / "runs/a", test_map=60.0)
    done = subprocess.run([sys.executable, str(SCRIPTS / "summarize.py"), str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| coco | end_to_end | an | — | 1 | 0 | 60.00 ± — |" in done.stdout


# --------------------------------------------------------------------------------------- plot_curves

def test_plot_curves_writes_png_with_both_phases_and_loss_groups(tmp_path, capsys):
    linear = [{"phase": "linear", "epoch": e, "train_loss": 0.5, "val_map": 40.0 + e, "modified": 0,
               "modified_fraction": 0.0} for e in range(1, 4)]
    end_to_end = [{"phase": "end_to_end", "epoch": e, "train_loss": 0.3, "val_map": 50.0 + e,
                   "modified": 5 * e, "modified_fraction": 0.002 * e, "loss_observed_pos": 0.1,
                   "loss_true_neg": 0.05, "loss_false_neg": 0.4 / e} for e in range(1, 4)]
    make_run(tmp_path / "a", method="an_ls", train_mode="linear_init", metrics=linear + end_to_end)
    make_run(tmp_path / "b", method="LL-Ct", epochs_logged=4)
    out = tmp_path / "curves.png"
    assert plot_curves.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
    assert plot_curves.default_label(str(tmp_path / "b")) == "LL-Ct Δrel 0.2 seed0"
    assert plot_curves.phase_changes(linear + end_to_end) == [3.5]


def test_plot_curves_clear_errors(tmp_path, capsys):
    make_run(tmp_path / "no_metrics")
    out = tmp_path / "curves.png"
    assert plot_curves.main([str(tmp_path / "no_metrics"), "--out", str(out)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    assert not out.exists()
    make_run(tmp_path / "ok", epochs_logged=2)
    assert plot_curves.main([str(tmp_path / "ok"), "--out", str(out), "--labels", "x", "y"]) == 2
    assert "2 labels for 1 run folders" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- sweep

def run_sweep(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The sweep script, running reproduce.py with this interpreter (whatever its environment)."""
    return subprocess.run(["bash", str(SWEEP), *args], capture_output=True, text=True,
                          env={**os.environ, "RUNNER_PYTHON": sys.executable, **env})


def flags_of(command_line: str) -> dict[str, str]:
    words = shlex.split(command_line.split("  #")[0])
    start = next(i for i, word in enumerate(words) if word.endswith("main.py")) + 1
    return dict(zip(words[start::2], words[start + 1::2]))


@pytest.mark.parametrize("seeds", [1, 2])
def test_sweep_dry_run_lists_15_commands_per_seed(tmp_path, seeds):
    done = run_sweep("coco", str(seeds), str(tmp_path / "runs"), DRY_RUN="1", EXTRA_ARGS="--device cpu")
    assert done.returncode == 0, done.stderr
    commands = done.stdout.splitlines()
    assert len(commands) == 15 * seeds
    flags = [flags_of(line) for line in commands]
    assert len({f["--out_dir"] for f in flags}) == 15 * seeds
    assert {(f["--mod_scheme"], f["--delta_rel"], f["--seed"]) for f in flags} == {
        (scheme, delta, str(seed)) for scheme in paper_numbers.LL_SCHEMES
        for delta in ("0.1", "0.2", "0.3", "0.4", "0.5") for seed in range(seeds)}
    assert flags[0]["--out_dir"] == f"{tmp_path}/runs/coco/sweep/LL-R_d0.1/seed0"
    assert all(f["--loss"] == "an" and f["--device"] == "cpu" and f["--train_mode"] == "end_to_end"
               for f in flags)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("dataset", sorted(paper_numbers.BEST_HPARAMS))
def test_sweep_leaves_optimizer_lr_and_epochs_to_the_cli_defaults(tmp_path, dataset):
    done = run_sweep(dataset, "1", str(tmp_path), DRY_RUN="1")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        assert not {"--optimizer", "--lr", "--epochs", "--batch_size"} & set(flags_of(line))


def test_paper_numbers_read_the_cli_defaults():
    """paper_numbers.py derives its hyper-parameters from presets.DATASET_DEFAULTS."""
    for dataset, hparams in paper_numbers.BEST_HPARAMS.items():
        entry = presets.DATASET_DEFAULTS[dataset]
        assert (entry.optimizer, entry.lr, entry.epochs, dict(entry.delta_rel)) == (
            hparams["optimizer"], hparams["lr"], hparams["epochs"], hparams["delta_rel"]), dataset


def fake_python(tmp_path: Path, fail_at: int, exit_code: int = 7) -> tuple[Path, Path]:
    """An interpreter stand-in that logs each call and fails on call number `fail_at`."""
    calls = tmp_path / "calls.txt"
    script = tmp_path / "fake_python"
    script.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {shlex.quote(str(calls))}
n=$(wc -l < {shlex.quote(str(calls))})
if [ "$n" -ge {fail_at} ]; then exit {exit_code}; fi
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, calls


def test_sweep_stops_at_first_failed_run(tmp_path):
    script, calls = fake_python(tmp_path, fail_at=3)
    done = run_sweep("pascal", "2", str(tmp_path / "runs"), PYTHON=str(script))
    assert done.returncode == 7
    assert len(calls.read_text().splitlines()) == 3
    assert "run 3/30 failed with exit code 7" in done.stderr


def test_sweep_with_python_false_fails_at_once(tmp_path):
    done = run_sweep("cub", "1", str(tmp_path / "runs"), PYTHON="false")
    assert done.returncode == 1
    assert done.stdout.count("main.py") == 1


def test_sweep_skips_finished_runs_and_rejects_bad_arguments(tmp_path):
    make_run(tmp_path / "runs/cub/sweep/LL-R_d0.1/seed0", dataset="cub", method="LL-R", delta_rel=0.1,
             test_map=20.0)
    script, calls = fake_python(tmp_path, fail_at=1000)
    done = run_sweep("cub", "1", str(tmp_path / "runs"), PYTHON=str(script))
    assert done.returncode == 0, done.stderr
    assert len(calls.read_text().splitlines()) == 14
    assert run_sweep().returncode == 2
    assert run_sweep("imagenet").returncode == 2
    assert run_sweep("coco", "0").returncode == 2


# ------------------------------------------------------------------------------------------ reproduce

@pytest.mark.parametrize("dataset, method, expected", [
    ("coco", "LL-Ct", {"--optimizer": "adam", "--lr": "1e-05", "--delta_rel": "0.2"}),
    ("pascal", "LL-Cp", {"--optimizer": "sgd", "--lr": "0.005", "--delta_rel": "0.1"}),
    ("cub", "LL-R", {"--optimizer": "adam", "--lr": "7.5e-05", "--delta_rel": "0.4"}),
    ("nuswide", "LL-R", {"--optimizer": "adam", "--lr": "1e-05", "--delta_rel": "0.4"}),
])
def test_reproduce_dry_run_uses_the_authors_hyper_parameters(capsys, dataset, method, expected):
    assert reproduce.main(["--dataset", dataset, "--method", method, "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    paper = paper_numbers.paper_map(dataset, method, "end_to_end")
    for seed, line in enumerate(lines):
        flags = flags_of(line)
        assert {name: flags[name] for name in expected} == expected
        assert flags["--dataset"] == dataset and flags["--loss"] == "an" and flags["--mod_scheme"] == method
        assert (flags["--batch_size"], flags["--epochs"], flags["--train_mode"]) == ("16", "10", "end_to_end")
        assert flags["--seed"] == str(seed)
        assert flags["--out_dir"] == f"runs/repro/{dataset}/end_to_end/{method}/seed{seed}"
        assert line.endswith(f"# paper E2E {dataset} {method}: {paper:.1f}")


def test_reproduce_all_methods_linear_init_and_baselines(capsys):
    argv = ["--dataset", "coco", "--method", "all", "--setting", "linear_init", "--seeds", "2",
            "--first_seed", "5", "--runs_dir", "out", "--dry_run", "--extra", "--device cpu"]
    assert reproduce.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 * 2
    flags = [flags_of(line) for line in lines]
    assert [f["--seed"] for f in flags[:2]] == ["5", "6"]
    an = flags[2]
    assert (an["--loss"], an["--mod_scheme"], "--delta_rel" in an) == ("an", "none", False)
    assert an["--out_dir"] == "out/coco/linear_init/an/seed5"
    assert all(f["--train_mode"] == "linear_init" and f["--device"] == "cpu" for f in flags)
    assert lines[2].endswith("# paper LI coco an: 68.7")
    assert reproduce.main(["--dataset", "digits", "--method", "an", "--seeds", "1", "--dry_run"]) == 0
    assert "# paper: none (digits is not in the paper)" in capsys.readouterr().out


def test_reproduce_runs_in_order_and_stops_at_first_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    script, calls = fake_python(tmp_path, fail_at=2, exit_code=3)
    argv = ["--dataset", "pascal", "--method", "an", "--seeds", "3", "--python", str(script),
            "--runs_dir", "runs"]
    assert reproduce.main(argv) == 3
    logged = calls.read_text().splitlines()
    assert len(logged) == 2 and "--seed 1" in logged[1]
    assert "run 2/3 failed with exit code 3" in capsys.readouterr().err


def test_reproduce_skips_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "runs/pascal/end_to_end/an/seed0", dataset="pascal", test_map=85.0)
    script, calls = fake_python(tmp_path, fail_at=1000)
    argv = ["--dataset", "pascal", "--method", "an", "--seeds", "2", "--python", str(script),
            "--runs_dir", "runs"]
    assert reproduce.main(argv) == 0
    assert len(calls.read_text().splitlines()) == 1
    assert "done, skipped" in capsys.readouterr().out
    assert reproduce.main(argv + ["--force"]) == 0
    assert len(calls.read_text().splitlines()) == 3


def test_reproduce_resumes_an_unfinished_run_and_overwrites_with_force(tmp_path, monkeypatch, capsys):
    """main.py refuses to reuse a run folder: reproduce passes --resume (unfinished, last.pt) or
    --overwrite (--force over a finished run, or a folder without last.pt)."""
    monkeypatch.chdir(tmp_path)
    unfinished = tmp_path / "runs/pascal/end_to_end/an/seed0"
    make_run(unfinished, dataset="pascal")
    (unfinished / "last.pt").write_bytes(b"")
    make_run(tmp_path / "runs/pascal/end_to_end/an/seed1", dataset="pascal", test_map=85.0)
    make_run(tmp_path / "runs/pascal/end_to_end/an/seed2", dataset="pascal", error="failed")
    argv = ["--dataset", "pascal", "--method", "an", "--seeds", "3", "--runs_dir", "runs",
            "--dry_run"]
    assert reproduce.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "--seed" in line]
    assert lines[0].split("  #")[0].endswith("--resume runs/pascal/end_to_end/an/seed0/last.pt")
    assert "done, skipped" in lines[1] and "--overwrite" not in lines[1]
    assert "--overwrite" in lines[2]
    assert reproduce.main(argv + ["--force"]) == 0
    forced = [line for line in capsys.readouterr().out.splitlines() if "--seed 1" in line]
    assert "--overwrite" in forced[0]


def test_summarize_groups_dated_run_folders_by_their_configuration(tmp_path):
    """Default folders are runs/<name>/<YYYYmmdd-HHMMSS>: runs differing only in the command line,
    the dirty flag and the engineering flags are seeds of one configuration."""
    for seed in (0, 1):
        make_run(tmp_path / f"runs/digits_an_seed{seed}/20260101-00000{seed}", dataset="digits",
                 seed=seed, test_map=80.0 + seed,
                 settings={"command": ["main.py", "--seed", str(seed)], "git_dirty": bool(seed),
                           "overwrite": bool(seed), "logger": "none", "split": "test"})
    out = tmp_path / "table.csv"
    assert summarize.main([str(tmp_path / "runs"), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["n"] == "2"


export = load_script("export")
show_cam = load_script("show_cam")


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_export_gives_a_torchvision_resnet50_with_the_same_logits(tmp_path):
    import torchvision

    from largeloss import cli as main
    from largeloss.nn import models
    out_dir = tmp_path / "run"
    assert main.main(["--dataset", "digits", "--digits_train_size", "32", "--device", "cpu",
                      "--num_workers", "0", "--arch", "resnet50", "--weights", "none",
                      "--image_size", "32", "--epochs", "1", "--out_dir", str(out_dir)]) == 0
    assert export.main([str(out_dir / "best.pt"), "--out", str(tmp_path / "resnet50.pt")]) == 0
    exported = torchvision.models.resnet50(num_classes=10)
    exported.load_state_dict(torch.load(tmp_path / "resnet50.pt", weights_only=True), strict=True)
    trained = models.build_model("resnet50", "none", 10)
    trained.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True)["model"])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported.eval()(images), trained.eval()(images), atol=1e-5)


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_export_of_small_cnn_is_the_multilabelnet_state_dict(tmp_path, capsys):
    from largeloss import cli as main
    out_dir = tmp_path / "run"
    assert main.main(["--dataset", "digits", "--digits_train_size", "32", "--device", "cpu",
                      "--num_workers", "0", "--epochs", "1", "--out_dir", str(out_dir)]) == 0
    assert export.main([str(out_dir / "best.pt"), "--out", str(tmp_path / "cnn.pt")]) == 0
    assert "MultiLabelNet" in capsys.readouterr().out
    assert export.main([str(out_dir / "metrics.csv"), "--out", str(tmp_path / "x.pt")]) == 2


# ------------------------------------------------------------------- the methods after the LL paper

@pytest.mark.parametrize("dataset, method, expected, note", [
    ("coco", "gr", {"--loss": "gr", "--mod_scheme": "none", "--optimizer": "adam", "--lr": "1e-05",
                    "--head_lr_mult": "10", "--batch_size": "8", "--epochs": "8",
                    "--early_stop_drop": "2.0", "--gr_q2": "0.01", "--gr_q3": "1.0"},
     "# paper E2E coco GR: 73.17"),
    ("pascal", "LL-R+BoostLU", {"--loss": "an", "--mod_scheme": "LL-R", "--boostlu_alpha": "5.0",
                                "--delta_rel": "0.5", "--optimizer": "adam", "--lr": "1e-05",
                                "--batch_size": "16", "--epochs": "10"},
     "# paper E2E pascal LL-R+BoostLU: 89.29"),
    ("cub", "APL", {"--loss": "em", "--mod_scheme": "APL", "--em_alpha": "0.01", "--apl_beta": "0.4",
                    "--apl_warmup_epochs": "3", "--apl_proportion": "0.9", "--lr": "0.0001",
                    "--head_lr_mult": "1", "--batch_size": "8", "--epochs": "10"},
     "# paper E2E cub EM+APL: 21.84 ± 0.34"),
    ("nuswide", "splc", {"--loss": "splc", "--splc_tau": "0.6", "--focal_margin": "1.0",
                         "--optimizer": "adam", "--lr": "1e-05", "--batch_size": "16"},
     "# paper: none (SPLC's paper has no number on the Cole protocol)"),
    ("cub", "LL-Cp+BoostLU", {"--mod_scheme": "LL-Cp", "--boostlu_alpha": "5.0",
                              "--delta_rel": "0.1", "--llcp_relabel": "modified"},
     "# paper E2E cub LL-Cp+BoostLU: 19.34"),
    ("digits", "LL-Cp+BoostLU", {"--mod_scheme": "LL-Cp", "--boostlu_alpha": "5.0",
                                 "--delta_rel": "1.0", "--lr": "0.001", "--epochs": "20"},
     "# paper: none (digits is not in the paper)"),
])
def test_reproduce_dry_run_of_a_later_method_uses_its_authors_preset(capsys, dataset, method,
                                                                    expected, note):
    assert reproduce.main(["--dataset", dataset, "--method", method, "--seeds", "1", "--dry_run"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    flags = flags_of(line)
    assert {name: flags[name] for name in expected} == expected
    assert flags["--out_dir"] == f"runs/repro/{dataset}/end_to_end/{method}/seed0"
    assert line.endswith(note)
    assert ("--llcp_relabel" in flags) == (method == "LL-Cp+BoostLU" and dataset != "digits")
    if method == "gr":
        words = shlex.split(line.split("  #")[0])
        start = words.index("--gr_beta")
        assert words[start + 1:start + 5] == ["0.0", "2.0", "-2.0", "-2.0"]


def test_reproduce_every_later_method_and_refuse_linear_init(capsys):
    assert reproduce.main(["--dataset", "coco", "--method", "peers", "--seeds", "1", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [flags_of(line)["--out_dir"].split("/")[-2] for line in lines] == \
        list(paper_numbers.PEER_METHODS)
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--dataset", "coco", "--method", "gr", "--setting", "linear_init", "--dry_run"])
    assert exit_info.value.code == 2
    assert "end-to-end numbers only" in capsys.readouterr().err


def test_summarize_keeps_boostlu_runs_apart_with_their_paper_numbers(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in range(2):
        make_run(runs / f"LL-R/seed{seed}", dataset="pascal", method="LL-R", seed=seed,
                 delta_rel=0.2, test_map=88.0)
        boosted = runs / f"LL-R+BoostLU/seed{seed}"
        make_run(boosted, dataset="pascal", method="LL-R", seed=seed, delta_rel=0.5, test_map=89.0)
        config = json.loads((boosted / "config.json").read_text())
        (boosted / "config.json").write_text(json.dumps({**config, "boostlu_alpha": 5.0}))
        make_run(runs / f"gr/seed{seed}", dataset="pascal", method="gr", seed=seed, test_map=90.0)
    assert summarize.main([str(runs)]) == 0
    report = capsys.readouterr().out
    # (the last column is summarize's "check")
    assert table_row(report, "pascal", "end_to_end", "LL-R", "0.2").endswith("| 89.2 | -1.20 | — |")
    assert table_row(report, "pascal", "end_to_end", "LL-R+BoostLU", "0.5").endswith(
        "| 89.3 | -0.29 | — |")
    assert table_row(report, "pascal", "end_to_end", "gr", "—").endswith("| 89.8 | +0.17 | — |")
    assert "(chosen Δrel)" not in report  # LL-R and LL-R+BoostLU are different rows


@pytest.mark.filterwarnings("ignore:no observed positive")
def test_export_refuses_a_boostlu_library_model_and_its_own_checkpoint(tmp_path, capsys):
    """BoostLU's head is no plain classifier: exported as resnet18's fc its logits would differ."""
    from largeloss import cli as main
    from largeloss.nn import models
    out_dir = tmp_path / "run"
    assert main.main(["--dataset", "digits", "--digits_train_size", "32", "--device", "cpu",
                      "--num_workers", "0", "--arch", "resnet18", "--weights", "none",
                      "--image_size", "32", "--epochs", "1", "--boostlu_alpha", "5",
                      "--out_dir", str(out_dir)]) == 0
    checkpoint = torch.load(out_dir / "best.pt", weights_only=True)
    checkpoint["model"]["head.bias"] += 2.0  # positive activations somewhere, which BoostLU boosts
    boosted = models.build_model("resnet18", "none", 10, boost_alpha=5.0)
    boosted.load_state_dict(checkpoint["model"])
    plain = models.build_model("resnet18", "none", 10)
    plain.load_state_dict(checkpoint["model"])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # what a plain export would give: other logits
        assert not torch.allclose(boosted.eval()(images), plain.eval()(images), atol=1e-3)
    capsys.readouterr()
    assert export.main([str(out_dir / "best.pt"), "--out", str(tmp_path / "r18.pt")]) == 2
    assert "BoostLU run (--boostlu_alpha 5) has no plain resnet18" in capsys.readouterr().err
    assert not (tmp_path / "r18.pt").exists()
    before = (out_dir / "best.pt").read_bytes()
    assert export.main([str(out_dir / "best.pt"), "--out", str(out_dir / "best.pt")]) == 2
    assert "is the checkpoint itself" in capsys.readouterr().err
    assert (out_dir / "best.pt").read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip"], ids=["empty", "truncated"])
def test_scripts_name_their_own_argument_for_a_bad_checkpoint(tmp_path, capsys, content):
    bad = tmp_path / "best.pt"
    bad.write_bytes(content)
    assert export.main([str(bad), "--out", str(tmp_path / "x.pt")]) == 2
    message = capsys.readouterr().err
    assert f"checkpoint {bad}" in message and "--eval_only" not in message
    assert len(message.strip().splitlines()) == 1
    assert show_cam.main([str(bad), "--out", str(tmp_path / "x.png")]) == 2
    message = capsys.readouterr().err
    assert f"checkpoint {bad}" in message and len(message.strip().splitlines()) == 1
