"""Run one cell (or one column) of the paper's table with the authors' hyper-parameters.

    python scripts/reproduce.py --dataset coco --method LL-Ct --dry_run        # print the 3 commands
    python scripts/reproduce.py --dataset pascal --method all --seeds 3        # 9 methods x 3 seeds
    python scripts/reproduce.py --dataset cub --method an_ls --setting linear_init \
        --extra "--data_root /data/cub --device cuda"
    python scripts/summarize.py runs/repro                                      # then the table

Every command is printed in full (dataset, loss, mod_scheme, delta_rel, optimizer, lr, batch size,
epochs, train_mode, seed, out_dir), with the paper's number for the cell beside it, then run one after
another. The first failing run stops the script with that run's exit code. A run whose folder already
holds results.json is skipped (pass --force to run it again), so an interrupted reproduction resumes.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python scripts/reproduce.py` puts scripts/, not the root, on the path
    sys.path.insert(0, str(REPO_ROOT))

from scripts.paper_numbers import (  # noqa: E402
    BATCH_SIZE, EPOCHS, LL_SCHEMES, METHODS, SETTINGS, best_hparams, method_flags, paper_map)

DATASETS = ("pascal", "coco", "nuswide", "cub", "digits")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Build (and run) the commands for one cell of the paper's table (SPEC §7) with the "
                    "authors' hyper-parameters (SPEC §6): per dataset optimizer and lr (pascal SGD 5e-3, "
                    "coco/nuswide Adam 1e-5, cub Adam 7.5e-5), per scheme and dataset the best Δrel, "
                    f"batch size {BATCH_SIZE}, {EPOCHS} epochs. The baselines (bce, an, wan, an_ls, epr, "
                    "role) have no tuned lr in the LL paper: they get the dataset's optimizer and lr. "
                    "digits is the project's CPU demo (config.py's settings, 20 epochs), not in the "
                    "paper (no paper number).",
        epilog="Example: python scripts/reproduce.py --dataset coco --method LL-Ct --dry_run")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--method", required=True, choices=METHODS + ("all",),
                        help="a row of the table, or 'all' for the whole column (in the paper's order)")
    parser.add_argument("--setting", default="end_to_end", choices=SETTINGS,
                        help="end_to_end (E2E) or linear_init (LI: Cole's linear phase, then fine-tuning); "
                             "passed to main.py as --train_mode")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (report mean ± std over them)")
    parser.add_argument("--first_seed", type=int, default=0, help="seeds are first_seed … first_seed+seeds−1")
    parser.add_argument("--runs_dir", default="runs/repro",
                        help="runs go to RUNS_DIR/<dataset>/<setting>/<method>/seed<k>")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--extra", default="",
                        help='more flags for every run, one string, e.g. --extra "--data_root /d/coco '
                             '--device cuda"; a flag given here after the defaults overrides them')
    parser.add_argument("--force", action="store_true",
                        help="run again even where the folder already holds results.json")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for main.py (default: the one running this script)")
    return parser


def build_command(python: str, dataset: str, method: str, setting: str, seed: int, out_dir: str,
                  extra: list[str]) -> list[str]:
    """The full main.py command for one run; every hyper-parameter explicit."""
    loss, mod_scheme = method_flags(method)
    hparams = best_hparams(dataset, method)
    main_py = os.path.relpath(REPO_ROOT / "main.py")
    command = [python, main_py, "--dataset", dataset, "--loss", loss, "--mod_scheme", mod_scheme]
    if method in LL_SCHEMES:  # Δrel means nothing to the other methods
        command += ["--delta_rel", str(hparams["delta_rel"])]
    command += ["--optimizer", hparams["optimizer"], "--lr", str(hparams["lr"]),
                "--batch_size", str(BATCH_SIZE), "--epochs", str(hparams["epochs"]), "--train_mode", setting,
                "--seed", str(seed), "--out_dir", out_dir]
    return command + extra


def paper_note(dataset: str, method: str, setting: str) -> str:
    value = paper_map(dataset, method, setting)
    column = {"end_to_end": "E2E", "linear_init": "LI"}[setting]
    if value is None:
        return f"# paper: none ({dataset} is not in the paper)"
    return f"# paper {column} {dataset} {method}: {value:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.seeds < 1:
        print("reproduce: --seeds must be at least 1", file=sys.stderr)
        return 2
    methods = METHODS if args.method == "all" else (args.method,)
    extra = shlex.split(args.extra)
    runs = []
    for method in methods:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            out_dir = os.path.join(args.runs_dir, args.dataset, args.setting, method, f"seed{seed}")
            command = build_command(args.python, args.dataset, method, args.setting, seed, out_dir, extra)
            runs.append((method, out_dir, command))

    for index, (method, out_dir, command) in enumerate(runs, 1):
        line = f"{shlex.join(command)}  {paper_note(args.dataset, method, args.setting)}"
        done = os.path.isfile(os.path.join(out_dir, "results.json"))
        if done and not args.force:
            print(f"# [{index}/{len(runs)}] done, skipped (results.json exists): {line}", flush=True)
            continue
        print(line if args.dry_run else f"# [{index}/{len(runs)}]\n{line}", flush=True)
        if args.dry_run:
            continue
        returncode = subprocess.run(command).returncode
        if returncode < 0:  # killed by a signal: report it as a shell would (128 + signal)
            returncode = 128 - returncode
        if returncode != 0:
            print(f"reproduce: run {index}/{len(runs)} failed with exit code {returncode}: {out_dir}",
                  file=sys.stderr)
            return returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
