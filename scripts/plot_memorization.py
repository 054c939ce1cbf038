"""The memorisation figure (LL paper, Fig. 1) from runs trained with --track_train.

    python scripts/plot_memorization.py runs/digits_an runs/digits_LL-R --labels AN LL-R \
        --out memorization.png

One panel per run: the mean training loss of observed positives, unobserved true negatives and false
negatives (unobserved true positives) per epoch, a dot at each group's highest loss; --losses eval
(default) plots the end-of-epoch eval-mode pass over the training set (loss_*), --losses training
the losses of the training batches themselves (batch_loss_*: train mode, as the optimiser sees
them, during the epoch). Then, when the
runs logged them, a panel of the LL schemes' precision of modification against the false-negative
base rate (what modifying unobserved entries at random would achieve), and a panel of the
training-set mAP against the clean labels (label recovery).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from largeloss.reporting.plot_curves import LOSS_GROUPS, default_label, labels_match, save_figure, series
from largeloss.reporting.summarize import read_metrics

GROUP_COLORS = {"loss_observed_pos": "tab:green", "loss_true_neg": "tab:blue",
                "loss_false_neg": "tab:red"}
KEY_PREFIX = {"eval": "", "training": "batch_"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folders trained with --track_train")
    parser.add_argument("--out", required=True, help="image file to write (.png, .pdf, .svg)")
    parser.add_argument("--labels", nargs="+", help="one title per RUN_DIR, in order")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--losses", choices=sorted(KEY_PREFIX), default="eval",
                        help="eval: the eval-mode pass over the training set after each epoch; "
                             "training: the training batches during the epoch (default: eval)")
    parser.add_argument("--log_y", action="store_true",
                        help="logarithmic loss axis (the groups differ by orders of magnitude late)")
    return parser


def has(runs: list[tuple[str, list[dict]]], name: str) -> bool:
    return any(row.get(name) is not None for _, metrics in runs for row in metrics)


def plot_group_losses(axis, label: str, metrics: list[dict], losses: str) -> None:
    epochs = [row["epoch"] for row in metrics]
    for name, text, _ in LOSS_GROUPS:
        values = series(metrics, KEY_PREFIX[losses] + name)
        axis.plot(epochs, values, "o-", color=GROUP_COLORS[name], label=text, markersize=3)
        measured = [(value, epoch) for value, epoch in zip(values, epochs) if not math.isnan(value)]
        if measured:
            value, epoch = max(measured)
            axis.plot([epoch], [value], "o", color=GROUP_COLORS[name], markersize=9, alpha=0.35)
    where = "eval pass" if losses == "eval" else "training batches"
    axis.set_title(f"{label}: training-set loss by group ({where})", fontsize="medium")
    axis.set_ylabel("mean BCE against the AN target")


def plot_runs(runs: list[tuple[str, list[dict]]], out: str, title: str | None = None,
              losses: str = "eval", log_y: bool = False) -> None:
    """`runs` = [(label, metrics rows of the last phase)] into `out`."""
    extra = [name for name in ("modification_precision", "train_map_clean") if has(runs, name)]
    num_panels = len(runs) + len(extra)
    figure, axes = plt.subplots(1, num_panels, figsize=(4.8 * num_panels, 3.9), squeeze=False)
    axes = list(axes[0])
    for axis, (label, metrics) in zip(axes, runs):
        plot_group_losses(axis, label, metrics, losses)
        if log_y:
            axis.set_yscale("log")
    axes[0].legend(fontsize="small")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, name in zip(axes[len(runs):], extra):
        for index, (label, metrics) in enumerate(runs):
            epochs = [row["epoch"] for row in metrics]
            color = colors[index % len(colors)]
            if name == "modification_precision":
                if not any(row.get(name) is not None for row in metrics):
                    continue
                axis.plot(epochs, series(metrics, name, 100.0), "o-", color=color, markersize=3,
                          label=f"{label}: precision")
                axis.plot(epochs, series(metrics, "false_negative_rate", 100.0), "--",
                          color=color, label=f"{label}: false-negative base rate")
            else:
                axis.plot(epochs, series(metrics, name), "o-", color=color, markersize=3,
                          label=label)
        axis.set_title("precision of modification" if name == "modification_precision"
                       else "label recovery: train mAP (clean labels)", fontsize="medium")
        axis.set_ylabel("% of modified entries that are false negatives"
                        if name == "modification_precision" else "mAP (0-100)")
        axis.legend(fontsize="small")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    save_figure(figure, out, title)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not labels_match("plot_memorization", args.labels, args.run_dirs):
        return 2
    runs = []
    for index, run_dir in enumerate(args.run_dirs):
        metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        if metrics:  # the last phase only (linear_init logs a linear phase first)
            metrics = [row for row in metrics if row.get("phase") == metrics[-1].get("phase")]
        prefix = KEY_PREFIX[args.losses]
        if not any(row.get(prefix + name) is not None for row in metrics for name, _, _ in LOSS_GROUPS):
            print(f"plot_memorization: {run_dir} has no {prefix}loss_* groups in metrics.jsonl "
                  f"(train it with --track_train)", file=sys.stderr)
            return 2
        runs.append((args.labels[index] if args.labels else default_label(run_dir), metrics))
    plot_runs(runs, args.out, args.title, args.losses, args.log_y)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
