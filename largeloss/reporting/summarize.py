"""Summarise a tree of run folders into the paper's table: test mAP mean ± std over seeds.

    python scripts/summarize.py runs/repro
    python scripts/summarize.py runs/sweep --out table.md --csv table.csv

A run folder is any folder holding config.json. Finished runs (results.json present) are grouped by
their whole resolved configuration (config.json) except the seed and the keys that change no maths
(NOT_MATHS_KEYS: folders, device, workers, logging, git SHA, ...); each group reports test mAP mean ±
sample std (ddof=1; "—" for a single seed), the seeds, mean best-val epoch, the paper's number
(docs/reproducing.md: E2E for end_to_end, LI for linear_init) and ours − paper. Rows that share dataset, setting,
method and Δrel but differ elsewhere name the differing settings in the "check" column, which also
flags a seed that occurs twice in a group (a copied or rerun folder) and a network or image size
other than the paper's (paper_numbers.PAPER_SETUP). OpenImages rows name their release
(results.json "data_release": "openimages V7"), so releases never share a row and only the paper's
release (V3) stands beside the paper's number. Where one method has several
Δrel, an extra line gives the Δrel with the best mean *val* mAP ("chosen Δrel") among rows of
otherwise equal settings: that is the protocol's choice, never the best test mAP.

Unfinished runs (no results.json) and failed ones (error.txt, or unreadable files) are listed below the
table with their last epoch, never dropped. Exit 0 even then; exit 2 when RUNS_DIR has no run folder.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path

from largeloss.experiment.paper_numbers import (METHODS, OPENIMAGES_PAPER_RELEASE, PAPER_DATASETS,
                                                PEER_METHODS, method_label, paper_map, paper_setup,
                                                takes_delta_rel)

DATASET_ORDER = PAPER_DATASETS + ("openimages", "openimages V3", "openimages V6", "openimages V7",
                                  "digits")
GROUP_NAMES = ("G1", "G2", "G3", "G4", "G5")  # OpenImages class groups (results.json "groups")
TRAIN_MODE_ORDER = ("end_to_end", "linear_init", "linear")
CSV_FIELDS = ("dataset", "train_mode", "method", "delta_rel", "chosen_delta_rel", "n", "seeds",
              "test_map_mean", "test_map_std", "val_map_mean", "best_epoch_mean", "stopped_early",
              "paper", "diff", "not_paper_setup", "differing_settings", "duplicate_seeds",
              "unmeasured_classes",
              *(f"{name.lower()}_map" for name in GROUP_NAMES), "measured_map")
# config.json keys that do not change the maths of a run (where it runs, how it is logged, what
# produced it, analyses that leave training unchanged), and the seed: runs that differ only in
# these are seeds of one configuration. Every other key (epochs, train_size, lr, amp, data_root,
# ...) splits groups.
NOT_MATHS_KEYS = frozenset({
    "seed", "out_dir", "resume", "eval_only", "stop_after", "log_every", "device", "num_workers",
    "cache_images", "feature_cache", "channels_last", "compile", "git_sha", "versions", "config",
    "command", "git_dirty", "overwrite", "split", "logger", "sweep",
    "track_train", "pointing_game", "track_images"})
# Shown in their own columns; delta_rel there only for the LL schemes (elsewhere it means nothing).
ROW_KEYS = ("dataset", "train_mode", "method", "delta_rel")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs_dir", help="folder searched recursively for run folders (with config.json)")
    parser.add_argument("--out", help="also write the Markdown report to this file")
    parser.add_argument("--csv", help="write one row per group (and chosen-Δrel line) to this CSV file")
    return parser


def find_run_dirs(root: str) -> list[str]:
    """Folders under `root` (itself included) that hold config.json, sorted; not searched below them."""
    run_dirs = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        if "config.json" in files:
            run_dirs.append(folder)
            subfolders.clear()
    return sorted(run_dirs)


def read_metrics(path: str) -> list[dict]:
    """The metrics.jsonl rows; a torn last line (a run killed while writing) is skipped."""
    rows = []
    if os.path.isfile(path):
        with open(path) as handle:
            for line in handle:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def error_line(path: str) -> str:
    """First line of error.txt; for a Python traceback the last line, which carries the message."""
    with open(path, errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    if not lines:
        return "(error.txt is empty)"
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def method_of(config: dict) -> str | None:
    """The run's row: its method (+BoostLU with that head); older configs: from loss and scheme."""
    if config.get("method"):
        return method_label(config)
    scheme = config.get("mod_scheme")
    if config.get("loss") == "an" and scheme not in (None, "none"):
        return scheme
    return config.get("loss")


def load_run(run_dir: str) -> dict:
    """One run: status finished / unfinished / failed, its group key, and its results."""
    run = {"folder": run_dir, "status": "unfinished", "error": "", "results": None, "key": None}
    metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    last = metrics[-1] if metrics else None
    run["last_epoch"] = f"{last.get('phase', '?')} {last.get('epoch', '?')}" if last else "none"
    try:
        with open(os.path.join(run_dir, "config.json")) as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        run.update(status="failed", error=f"config.json unreadable: {error}")
        return run
    results_path = os.path.join(run_dir, "results.json")
    if os.path.isfile(results_path):
        try:
            with open(results_path) as handle:
                results = json.load(handle)
            float(results["test_map"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            run.update(status="failed", error=f"results.json unreadable: {error!r}")
        else:
            run.update(status="finished", results=results)
    elif os.path.isfile(os.path.join(run_dir, "error.txt")):
        run.update(status="failed", error=error_line(os.path.join(run_dir, "error.txt")))

    def value(name):
        return config.get(name, (run["results"] or {}).get(name))

    method = method_of(config) or (run["results"] or {}).get("method")
    delta_rel = value("delta_rel") if takes_delta_rel(method or "") else None  # means nothing elsewhere
    run["key"] = (dataset_label(value("dataset"), (run["results"] or {}).get("data_release")),
                  value("train_mode"), method, None if delta_rel is None else float(delta_rel))
    run["settings"] = settings_of(config)
    run["seed"] = value("seed")
    return run


def dataset_label(dataset: str | None, release: str | None) -> str | None:
    """The dataset column: with the release where results.json records one ("openimages V6"),
    so that runs of different releases never share a row."""
    return f"{dataset} {release}" if dataset and release else dataset


def paper_dataset(label: str | None) -> str | None:
    """The dataset whose paper numbers a row's label compares with: OpenImages of the paper's
    release (or of an unnamed one, from before V6/V7 were read); None for other releases."""
    dataset, _, release = (label or "").partition(" ")
    if release and not (dataset == "openimages" and release == OPENIMAGES_PAPER_RELEASE):
        return None
    return dataset or None


def setup_difference(dataset: str | None, settings: tuple) -> str:
    """'arch=small_cnn, image_size=32 (paper: resnet50, 448 px)' where the run's network or input
    size differs from the paper's; '' where they match or the config does not say."""
    paper_arch, paper_size = paper_setup(dataset or "")
    mine = {key: json.loads(value) for key, value in settings}
    differing = [f"{key}={mine[key]}" for key, paper in (("arch", paper_arch),
                                                         ("image_size", paper_size))
                 if key in mine and mine[key] != paper]
    return f"{', '.join(differing)} (paper: {paper_arch}, {paper_size} px)" if differing else ""


def settings_of(config: dict) -> tuple:
    """The configuration's maths beyond the row columns: sorted (key, JSON value) pairs."""
    return tuple(sorted((key, json.dumps(value, sort_keys=True)) for key, value in config.items()
                        if key not in NOT_MATHS_KEYS and key not in ROW_KEYS))


def differing_settings(settings: tuple, others: list[tuple]) -> str:
    """'epochs=2, train_size=64': this group's values of the keys on which `others` disagree."""
    mine = dict(settings)
    keys = sorted(set().union(*(dict(other) for other in others)) | set(mine))
    differing = [key for key in keys if len({dict(other).get(key) for other in others}) > 1]
    return ", ".join(f"{key}={_plain(mine[key]) if key in mine else '(absent)'}" for key in differing)


def _plain(json_text: str) -> str:
    value = json.loads(json_text)
    return value if isinstance(value, str) else json_text


def _order(key: tuple) -> tuple:
    dataset, train_mode, method, delta_rel = key

    def rank(item, order):
        return (order.index(item), "") if item in order else (len(order), str(item))

    return (rank(dataset, DATASET_ORDER), rank(train_mode, TRAIN_MODE_ORDER),
            rank(method, METHODS + PEER_METHODS),
            -1.0 if delta_rel is None else delta_rel)


def _seed_order(seed: str) -> tuple:
    return (0, int(seed), "") if seed.isdigit() else (1, 0, seed)


def summarize_groups(runs: list[dict]) -> list[dict]:
    """One row per configuration (up to the seed and NOT_MATHS_KEYS) of finished runs, in table
    order; rows sharing (dataset, train_mode, method, Δrel) name the settings that tell them apart."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if run["status"] == "finished":
            groups.setdefault((run["key"], run["settings"]), []).append(run)
    settings_by_key: dict[tuple, list[tuple]] = {}
    for key, settings in groups:
        settings_by_key.setdefault(key, []).append(settings)
    rows = []
    for key, settings in sorted(groups, key=lambda group: (_order(group[0]), group[1])):
        results = [run["results"] for run in groups[(key, settings)]]
        seeds = [str(run["seed"]) for run in groups[(key, settings)]]
        siblings = settings_by_key[key]
        dataset, train_mode, method, delta_rel = key
        test_maps = [float(r["test_map"]) for r in results]
        val_maps = [float(r["val_map"]) for r in results if r.get("val_map") is not None]
        best_epochs = [float(r["best_epoch"]) for r in results if r.get("best_epoch") is not None]
        compared_with = paper_dataset(dataset)
        paper = None if compared_with is None else paper_map(compared_with, method, train_mode)
        test_mean = statistics.fmean(test_maps)
        rows.append({
            "dataset": dataset, "train_mode": train_mode, "method": method, "delta_rel": delta_rel,
            "chosen_delta_rel": False, "n": len(results),
            "seeds": ",".join(sorted(seeds, key=_seed_order)),
            "test_map_mean": test_mean,
            "test_map_std": statistics.stdev(test_maps) if len(test_maps) > 1 else None,
            "val_map_mean": statistics.fmean(val_maps) if val_maps else None,
            "best_epoch_mean": statistics.fmean(best_epochs) if best_epochs else None,
            "stopped_early": sum(bool(r.get("stopped_early")) for r in results),
            "paper": paper, "diff": None if paper is None else test_mean - paper,
            "not_paper_setup": "" if paper is None else setup_difference(compared_with, settings),
            "settings": settings,
            "differing_settings": differing_settings(settings, siblings) if len(siblings) > 1 else "",
            "duplicate_seeds": ", ".join(f"{seed} ({seeds.count(seed)} runs)"
                                         for seed in sorted(set(seeds), key=_seed_order)
                                         if seeds.count(seed) > 1),
            "unmeasured_classes": unmeasured_classes(results),
            **group_means(results),
        })
    return rows


def _mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def group_means(results: list[dict]) -> dict:
    """Partial-label runs (OpenImages; results.json with "groups"): the mean over seeds of each
    group's test mAP in the printed convention (map_all_classes), and of the overall mAP over
    measurable classes only (map_measured, CSL). None where no run has the value."""
    with_groups = [r for r in results if isinstance(r.get("groups"), dict)]
    means = {f"{name.lower()}_map": _mean_or_none([
        float(r["groups"][name]["map_all_classes"]) for r in with_groups if name in r["groups"]])
        for name in GROUP_NAMES}
    means["measured_map"] = _mean_or_none([float(r["map_measured"]) for r in with_groups
                                           if r.get("map_measured") is not None])
    return means


def format_group_table(rows: list[dict]) -> list[str]:
    """The OpenImages table beside the paper's row: G1–G5 and all, for rows with groups."""
    rows = [row for row in rows if row.get("g1_map") is not None]
    if not rows:
        return []
    lines = ["", "## Partial labels (OpenImages): test mAP per class group", "",
             "mean over seeds; mAP over each class's labelled entries; G1–G5: classes sorted by "
             "labelled training entries, ascending, five groups; G1–G5 and all count unmeasurable "
             "classes as AP 0 (map_all_classes: IMCL, the LL table), measured leaves them out "
             "(CSL); paper: the LL table's all-classes column (V3, ResNet-101, 224 px); the "
             "dataset column names the release.", "",
             "| dataset | setting | method | Δrel | n | G1 | G2 | G3 | G4 | G5 | all | measured "
             "| paper | ours − paper |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        delta = "—" if row["delta_rel"] is None else f"{row['delta_rel']:g}"
        cells = [row["dataset"], row["train_mode"], row["method"], delta, row["n"],
                 *(_number(row[f"{name.lower()}_map"], 2) for name in GROUP_NAMES),
                 _number(row["test_map_mean"], 2), _number(row["measured_map"], 2),
                 _number(row["paper"], 1), _number(row["diff"], 2, signed=True)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def add_chosen_delta_rel(rows: list[dict]) -> list[dict]:
    """After the rows of each method with several Δrel, a copy of the row with the best mean val mAP.

    Ties go to the smaller Δrel; only rows with equal other settings compete. Groups without val
    mAP cannot be chosen.
    """
    by_method: dict[tuple, list[dict]] = {}
    for row in rows:
        by_method.setdefault((row["dataset"], row["train_mode"], row["method"], row["settings"]),
                             []).append(row)
    out = []
    for method_rows in by_method.values():
        out.extend(method_rows)
        candidates = [r for r in method_rows if r["delta_rel"] is not None and r["val_map_mean"] is not None]
        if len({r["delta_rel"] for r in candidates}) > 1:
            best = max(candidates, key=lambda r: (r["val_map_mean"], -r["delta_rel"]))
            out.append({**best, "chosen_delta_rel": True})
    return out


def _number(value, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def format_markdown(runs_dir: str, rows: list[dict], incomplete: list[dict]) -> str:
    lines = [f"# Test mAP: {runs_dir}", "",
             "mean ± sample std (ddof=1) over seeds, 0-100; paper: docs/reproducing.md (E2E for "
             "end_to_end, LI for linear_init), README's methods table for the later methods; chosen "
             "Δrel: best mean val mAP.", "",
             "| dataset | setting | method | Δrel | n | seeds | test mAP | val mAP | best epoch "
             "| early stops | paper | ours − paper | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        delta = "—" if row["delta_rel"] is None else f"{row['delta_rel']:g}"
        if row["chosen_delta_rel"]:
            delta += " (chosen Δrel)"
        test = f"{_number(row['test_map_mean'], 2)} ± {_number(row['test_map_std'], 2)}"
        cells = [row["dataset"], row["train_mode"], row["method"], delta, row["n"], row["seeds"], test,
                 _number(row["val_map_mean"], 2), _number(row["best_epoch_mean"], 1),
                 row["stopped_early"], _number(row["paper"], 1), _number(row["diff"], 2, signed=True),
                 check_cell(row)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if not rows:
        lines.append("| (no finished run) |  |  |  |  |  |  |  |  |  |  |  |  |")
    lines += format_group_table([row for row in rows if not row["chosen_delta_rel"]])
    if incomplete:
        lines += ["", f"## Unfinished and failed runs ({len(incomplete)})", "",
                  "| status | folder | last epoch | error |", "|---|---|---|---|"]
        for run in incomplete:
            cells = [run["status"], run["folder"], run["last_epoch"], run["error"] or "—"]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def unmeasured_classes(results: list[dict]) -> str:
    """'k of L' test classes without a positive or a negative (their AP means nothing), or ''."""
    counts = {(r["test_num_classes"] - r["test_num_measured"], r["test_num_classes"])
              for r in results if r.get("test_num_measured") is not None}
    return ", ".join(f"{missing} of {total}" for missing, total in sorted(counts) if missing)


def check_cell(row: dict) -> str:
    """What a reader must know before trusting the row: a backbone or image size other than the
    paper's number was measured with, mixed settings, duplicate seeds, test classes that cannot be
    measured."""
    checks = []
    if row.get("not_paper_setup"):
        checks.append(f"not the paper's setup: {row['not_paper_setup']}")
    if row.get("unmeasured_classes"):
        checks.append(f"test classes without a positive or a negative: "
                      f"{row['unmeasured_classes']}")
    if row["differing_settings"]:
        checks.append(f"settings differ: {row['differing_settings']}")
    if row["duplicate_seeds"]:
        checks.append(f"duplicate seeds: {row['duplicate_seeds']}")
    return "; ".join(checks) or "—"


def _csv_value(value):
    if value is None:
        return ""
    return round(value, 6) if isinstance(value, float) else value  # drop float noise like 70.39999999999999


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({name: _csv_value(row.get(name)) for name in CSV_FIELDS})


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    run_dirs = find_run_dirs(args.runs_dir) if os.path.isdir(args.runs_dir) else []
    if not run_dirs:
        print(f"summarize: no run folder (a folder with config.json) under {args.runs_dir!r}",
              file=sys.stderr)
        return 2
    runs = [load_run(run_dir) for run_dir in run_dirs]
    rows = add_chosen_delta_rel(summarize_groups(runs))
    incomplete = [run for run in runs if run["status"] != "finished"]
    report = format_markdown(args.runs_dir, rows, incomplete)
    sys.stdout.write(report)
    if args.out:
        Path(args.out).write_text(report)
    if args.csv:
        write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
