"""Plot the per-epoch curves of one or more runs, overlaid.

    python scripts/plot_curves.py runs/repro/coco/end_to_end/an/seed0 \
        runs/repro/coco/end_to_end/LL-Ct/seed0 --out curves.png --labels AN LL-Ct

Panels, from each run's metrics.jsonl: clean val mAP, train loss, and the fraction of unobserved
training entries an LL scheme modified (0 for the other methods); when the metrics hold the
memorisation analysis (docs/analyses.md: loss_observed_pos, loss_true_neg, loss_false_neg) a fourth panel shows
the three loss groups. The x axis is the epoch index in the order logged, so a linear_init run shows
its linear phase, then its end-to-end phase (a dotted line marks the change). Legend: --labels, or
method, Δrel and seed from config.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on a headless machine
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from largeloss.experiment.paper_numbers import takes_delta_rel
from largeloss.reporting.summarize import method_of, read_metrics

LOSS_GROUPS = (("loss_observed_pos", "observed positives", "-"),
               ("loss_true_neg", "unobserved true negatives", "--"),
               ("loss_false_neg", "false negatives", ":"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders with metrics.jsonl")
    parser.add_argument("--out", required=True, help="image file to write (.png, .pdf, .svg)")
    parser.add_argument("--labels", nargs="+", help="one legend label per RUN_DIR, in order")
    parser.add_argument("--title", help="figure title")
    return parser


def default_label(run_dir: str) -> str:
    """method [Δrel] seed from config.json; the folder name when there is none."""
    try:
        with open(os.path.join(run_dir, "config.json")) as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return os.path.basename(os.path.normpath(run_dir))
    method = method_of(config) or "?"
    shows_delta = takes_delta_rel(method) and "delta_rel" in config
    delta = f" Δrel {config['delta_rel']:g}" if shows_delta else ""
    return f"{method}{delta} seed{config.get('seed', '?')}"


def series(metrics: list[dict], name: str, scale: float = 1.0) -> list[float]:
    """One value per logged epoch; NaN where the run did not log it (matplotlib leaves a gap)."""
    values = []
    for row in metrics:
        value = row.get(name)
        values.append(math.nan if value is None else float(value) * scale)
    return values


def phase_changes(metrics: list[dict]) -> list[float]:
    """x positions between two epochs of different phases."""
    return [index + 0.5 for index in range(1, len(metrics))
            if metrics[index].get("phase") != metrics[index - 1].get("phase")]


def plot_runs(runs: list[tuple[str, list[dict]]], out: str, title: str | None = None) -> None:
    """Draw `runs` = [(label, metrics rows)] into `out`."""
    with_groups = any(name in row for _, metrics in runs for row in metrics for name, _, _ in LOSS_GROUPS)
    num_panels = 4 if with_groups else 3
    figure, axes = plt.subplots(1, num_panels, figsize=(4.6 * num_panels, 3.8), squeeze=False)
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for run_index, (label, metrics) in enumerate(runs):
        color = colors[run_index % len(colors)]
        epochs = list(range(1, len(metrics) + 1))
        axes[0].plot(epochs, series(metrics, "val_map"), "o-", color=color, label=label, markersize=3)
        axes[1].plot(epochs, series(metrics, "train_loss"), "o-", color=color, markersize=3)
        axes[2].plot(epochs, series(metrics, "modified_fraction", scale=100.0), "o-", color=color,
                     markersize=3)
        if with_groups:
            for name, _, style in LOSS_GROUPS:
                axes[3].plot(epochs, series(metrics, name), linestyle=style, color=color)
        for x in phase_changes(metrics):
            for axis in axes:
                axis.axvline(x, color=color, linestyle=":", alpha=0.6)
    titles = ["clean val mAP", "train loss", "LL: modified entries", "train loss by entry group"]
    ylabels = ["mAP (0-100)", "loss", "% of unobserved entries", "mean loss"]
    for axis, panel_title, ylabel in zip(axes, titles, ylabels):
        axis.set_title(panel_title)
        axis.set_ylabel(ylabel)
        axis.set_xlabel("epoch (all phases, in order)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    if with_groups:
        axes[3].legend(handles=[Line2D([], [], color="black", linestyle=style, label=text)
                                for _, text, style in LOSS_GROUPS], fontsize="small")
    save_figure(figure, out, title)


def save_figure(figure, out: str, title: str | None) -> None:
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def labels_match(program: str, labels: list[str] | None, run_dirs: list[str]) -> bool:
    """--labels, when given, names every run folder; else a one-line error on stderr."""
    if labels is not None and len(labels) != len(run_dirs):
        print(f"{program}: {len(labels)} labels for {len(run_dirs)} run folders", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not labels_match("plot_curves", args.labels, args.run_dirs):
        return 2
    runs = []
    for index, run_dir in enumerate(args.run_dirs):
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        metrics = read_metrics(metrics_path)
        if not metrics:
            reason = "has no metrics.jsonl" if not os.path.isfile(metrics_path) else "has an empty metrics.jsonl"
            print(f"plot_curves: {run_dir} {reason} (not a run folder, or no epoch finished yet)",
                  file=sys.stderr)
            return 2
        runs.append((args.labels[index] if args.labels else default_label(run_dir), metrics))
    plot_runs(runs, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
