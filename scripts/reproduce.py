"""Run one cell (or one column) of the paper's table with the authors' hyper-parameters, or the
authors' Δrel sweep of the large-loss schemes.

    python scripts/reproduce.py --dataset coco --method LL-Ct --dry_run        # print the 3 commands
    python scripts/reproduce.py --dataset pascal --method all --seeds 3        # 9 methods x 3 seeds
    python scripts/reproduce.py --dataset cub --method an_ls --setting linear_init \
        --extra "--data_root /data/cub --device cuda"
    python scripts/reproduce.py --dataset coco --sweep_delta_rel --seeds 1     # 3 schemes x 5 Δrel
    python scripts/reproduce.py --dataset coco --sweep_delta_rel --setting linear   # the same as 15
                                                     # linear heads on cached features, one pass
    python scripts/reproduce.py --dataset coco --method gr --dry_run           # a later method
    python scripts/reproduce.py --dataset pascal --method peers --seeds 3      # all 8 later rows
    python scripts/reproduce.py --dataset coco --method aevlp --dry_run        # pseudo-labels, then GPR
    python scripts/summarize.py runs/repro                                      # then the table

The methods after the LL paper (PEER_METHODS: LL-R/Ct/Cp+BoostLU, em, APL, hill, splc, gr) run with
their authors' published hyper-parameters per dataset (scripts/paper_numbers.py's peer_flags, from
presets.PEER_PRESETS), end to end only, their paper's number beside each command. So do the vision-language rows (VLP_METHODS: aevlp =
GPR on DAMP pseudo-labels, vlpl, crisp = CRISP-Eq7, our variant of CRISP's loss; docs/vlp_methods.md):
aevlp and vlpl first print the offline command that makes their pseudo-label folder with CLIP
(scripts/make_pseudo_labels.py, on a GPU, once per dataset; skipped when its meta.json exists) and
pass it to every run with --pseudo_labels.

Every command is printed in full (dataset, loss, mod_scheme, delta_rel, optimizer, lr, batch size,
epochs, train_mode, seed, out_dir), with the paper's number for the cell beside it, then run one after
another. The first failing run stops the script with that run's exit code. A run whose folder already
holds results.json is skipped (pass --force to run it again, with --overwrite), so an interrupted
reproduction resumes: an unfinished run with a last.pt continues with --resume, a folder that holds
only a failed start is replaced (--overwrite; main.py refuses to reuse a run folder otherwise).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from largeloss.experiment.paper_numbers import (DELTA_REL_GRID, LL_SCHEMES, METHODS, PEER_METHODS, SETTINGS,
                                                VLP_METHODS, best_hparams, method_flags, paper_map,
                                                peer_flags, peer_note, pseudo_label_command, pseudo_label_dir)
from largeloss.experiment.presets import DATASET_DEFAULTS

DATASETS = ("pascal", "coco", "nuswide", "cub", "digits")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Build (and run) the commands for one cell of the paper's table (docs/reproducing.md) with the "
                    "authors' hyper-parameters (docs/protocol.md): per dataset optimizer and lr (pascal SGD 5e-3, "
                    "coco/nuswide Adam 1e-5, cub Adam 7.5e-5), per scheme and dataset the best Δrel, "
                    "batch size 16, 10 epochs. The baselines (bce, an, wan, an_ls, epr, "
                    "role) have no tuned lr in the LL paper: they get the dataset's optimizer and lr. "
                    "digits is the project's CPU demo (config.py's settings, 20 epochs), not in the "
                    "paper (no paper number).",
        epilog="Example: python scripts/reproduce.py --dataset coco --method LL-Ct --dry_run")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--method", choices=METHODS + PEER_METHODS + VLP_METHODS + ("all", "peers", "vlp"),
                        help="a row of the table, 'all' for the LL paper's whole column (in the paper's "
                             "order), 'peers' for the rows of the later methods, or 'vlp' for the "
                             "vision-language pseudo-label rows and CRISP (both end to end only)")
    parser.add_argument("--sweep_delta_rel", action="store_true",
                        help=f"instead of --method: every large-loss scheme ({', '.join(LL_SCHEMES)}) "
                             f"at every Δrel the authors searched ({', '.join(map(str, DELTA_REL_GRID))}), "
                             f"end to end, optimizer/lr/epochs left to the CLI's dataset defaults; runs "
                             f"go to RUNS_DIR/<dataset>/sweep/<scheme>_d<Δrel>/seed<k>. With --setting "
                             f"linear: one main.py --sweep_delta_rel per seed, the 15 linear heads "
                             f"trained together on cached features in "
                             f"RUNS_DIR/<dataset>/sweep_linear/seed<k>/<scheme>_d<Δrel>")
    parser.add_argument("--setting", default="end_to_end", choices=SETTINGS + ("linear",),
                        help="end_to_end (E2E) or linear_init (LI: Cole's linear phase, then fine-tuning); "
                             "passed to main.py as --train_mode; linear (the head on cached "
                             "features) with --sweep_delta_rel only")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (report mean ± std over them)")
    parser.add_argument("--first_seed", type=int, default=0, help="seeds are first_seed … first_seed+seeds−1")
    parser.add_argument("--runs_dir",
                        help="runs go to RUNS_DIR/<dataset>/<setting>/<method>/seed<k> (default: "
                             "runs/repro; runs/sweep with --sweep_delta_rel)")
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
    main_py = os.path.relpath(REPO_ROOT / "main.py")
    command = [python, main_py, "--dataset", dataset, "--loss", loss, "--mod_scheme", mod_scheme]
    if method in PEER_METHODS + VLP_METHODS:
        folder = pseudo_label_dir(dataset, method)
        pseudo_labels = [] if folder is None else ["--pseudo_labels", folder]
        return command + peer_flags(dataset, method) + pseudo_labels + [
            "--train_mode", setting, "--seed", str(seed), "--out_dir", out_dir] + extra
    hparams = best_hparams(dataset, method)
    if method in LL_SCHEMES:  # Δrel means nothing to the other methods
        command += ["--delta_rel", str(hparams["delta_rel"])]
    command += ["--optimizer", hparams["optimizer"], "--lr", str(hparams["lr"]),
                "--batch_size", str(DATASET_DEFAULTS[dataset].batch_size), "--epochs", str(hparams["epochs"]),
                "--train_mode", setting,
                "--seed", str(seed), "--out_dir", out_dir]
    return command + extra


def paper_note(dataset: str, method: str, setting: str) -> str:
    if method in PEER_METHODS + VLP_METHODS:
        return peer_note(dataset, method)
    value = paper_map(dataset, method, setting)
    column = {"end_to_end": "E2E", "linear_init": "LI"}[setting]
    if value is None:
        return f"# paper: none ({dataset} is not in the paper)"
    return f"# paper {column} {dataset} {method}: {value:.1f}"


def table_runs(args: argparse.Namespace, extra: list[str]) -> list[tuple[str, str, list[str]]]:
    """(what, out_dir, command) of each cell run: methods in the paper's order, then seeds."""
    methods = {"all": METHODS, "peers": PEER_METHODS, "vlp": VLP_METHODS}.get(args.method,
                                                                             (args.method,))
    runs = []
    for method in methods:
        producer = pseudo_label_command(args.python, args.dataset, method)
        if producer is not None:
            runs.append(("# pseudo-labels, once per dataset (a GPU and CLIP weights)",
                         pseudo_label_dir(args.dataset, method), producer))
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            out_dir = os.path.join(args.runs_dir, args.dataset, args.setting, method, f"seed{seed}")
            command = build_command(args.python, args.dataset, method, args.setting, seed, out_dir,
                                    extra)
            runs.append((paper_note(args.dataset, method, args.setting), out_dir, command))
    return runs


def sweep_runs(args: argparse.Namespace, extra: list[str]) -> list[tuple[str, str, list[str]]]:
    """(what, out_dir, command) of the Δrel sweep: seeds, then schemes, then Δrel."""
    main_py = os.path.relpath(REPO_ROOT / "main.py")
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for scheme in LL_SCHEMES:
            for delta_rel in DELTA_REL_GRID:
                out_dir = os.path.join(args.runs_dir, args.dataset, "sweep", f"{scheme}_d{delta_rel}",
                                       f"seed{seed}")
                loss, _ = method_flags(scheme)
                command = [args.python, main_py, "--dataset", args.dataset, "--loss", loss,
                           "--mod_scheme", scheme, "--delta_rel", str(delta_rel), "--train_mode",
                           "end_to_end", "--seed", str(seed), "--out_dir", out_dir]
                runs.append(("", out_dir, command + extra))
    return runs


def linear_sweep_runs(args: argparse.Namespace, extra: list[str]) -> list[tuple[str, str, list[str]]]:
    """(what, out_dir, command) of the Δrel sweep as linear heads: one main.py --sweep_delta_rel
    per seed, every scheme and Δrel a head of one stacked pass (engine/sweep.py)."""
    main_py = os.path.relpath(REPO_ROOT / "main.py")
    loss = method_flags(LL_SCHEMES[0])[0]
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        out_dir = os.path.join(args.runs_dir, args.dataset, "sweep_linear", f"seed{seed}")
        command = [args.python, main_py, "--dataset", args.dataset, "--loss", loss,
                   "--mod_scheme", ",".join(LL_SCHEMES),
                   "--sweep_delta_rel", ",".join(map(str, DELTA_REL_GRID)), "--train_mode", "linear",
                   "--seed", str(seed), "--out_dir", out_dir]
        runs.append((f"# {len(LL_SCHEMES) * len(DELTA_REL_GRID)} linear heads in one pass", out_dir,
                     command + extra))
    return runs


def sweep_heads(out_dir: str) -> list[str]:
    """The head folders (holding config.json) of a --sweep_delta_rel folder."""
    if not os.path.isdir(out_dir):
        return []
    return [path for path in (os.path.join(out_dir, name) for name in sorted(os.listdir(out_dir)))
            if os.path.isfile(os.path.join(path, "config.json"))]


def finished(out_dir: str) -> bool:
    """A run with results.json, a pseudo-label folder with meta.json, or a sweep folder whose every
    head has results.json."""
    if any(os.path.isfile(os.path.join(out_dir, name)) for name in ("results.json", "meta.json")):
        return True
    heads = sweep_heads(out_dir)
    return bool(heads) and all(os.path.isfile(os.path.join(head, "results.json")) for head in heads)


def folder_flags(out_dir: str, force: bool) -> list[str]:
    """What main.py needs to reuse a folder that already holds a run (it refuses otherwise):
    --resume of an unfinished run's last.pt, else --overwrite (a sweep's heads: always; linear
    heads are trained again, their features are cached)."""
    if not os.path.isfile(os.path.join(out_dir, "config.json")):
        return ["--overwrite"] if sweep_heads(out_dir) else []
    last = os.path.join(out_dir, "last.pt")
    finished = os.path.isfile(os.path.join(out_dir, "results.json"))
    if os.path.isfile(last) and not (finished and force):
        return ["--resume", last]
    return ["--overwrite"]


def run_all(runs: list[tuple[str, str, list[str]]], dry_run: bool, force: bool) -> int:
    """Print each command, then run it unless dry_run; skip folders holding results.json unless
    force; stop at the first failure with its exit code."""
    for index, (note, out_dir, command) in enumerate(runs, 1):
        line = shlex.join(command) + (f"  {note}" if note else "")
        done = finished(out_dir)
        if done and not force:
            print(f"# [{index}/{len(runs)}] done, skipped (results.json or meta.json exists): {line}", flush=True)
            continue
        command = command + folder_flags(out_dir, force)
        line = shlex.join(command) + (f"  {note}" if note else "")
        print(line if dry_run else f"# [{index}/{len(runs)}]\n{line}", flush=True)
        if dry_run:
            continue
        returncode = subprocess.run(command).returncode
        if returncode < 0:  # killed by a signal: report it as a shell would (128 + signal)
            returncode = 128 - returncode
        if returncode != 0:
            print(f"reproduce: run {index}/{len(runs)} failed with exit code {returncode}: {out_dir}",
                  file=sys.stderr)
            return returncode
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if (args.method is None) == (not args.sweep_delta_rel):
        parser.error("give either --method or --sweep_delta_rel")
    if args.seeds < 1:
        print("reproduce: --seeds must be at least 1", file=sys.stderr)
        return 2
    if args.setting != "end_to_end" and (args.method in PEER_METHODS + VLP_METHODS
                                         or args.method in ("peers", "vlp")):
        parser.error(f"--method {args.method}: the later methods' papers report end-to-end "
                     f"numbers only (use --setting end_to_end)")
    if args.setting == "linear" and not args.sweep_delta_rel:
        parser.error("--setting linear: the paper reports E2E and LI; linear heads run here as the "
                     "Δrel sweep only (add --sweep_delta_rel)")
    args.runs_dir = args.runs_dir or ("runs/sweep" if args.sweep_delta_rel else "runs/repro")
    extra = shlex.split(args.extra)
    if args.sweep_delta_rel:
        runs = (linear_sweep_runs if args.setting == "linear" else sweep_runs)(args, extra)
    else:
        runs = table_runs(args, extra)
    return run_all(runs, args.dry_run, args.force)


if __name__ == "__main__":
    raise SystemExit(main())
