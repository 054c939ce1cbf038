"""Time the Δrel × LL-scheme sweep of linear training on COCO-sized cached features: the 15 runs
one after another (separately) and as one stacked sweep (engine/sweep.py), beside the FLOP floor.

    python scripts/benchmark_linear_sweep.py --threads 1            # both, full COCO size (~15 min)
    python scripts/benchmark_linear_sweep.py --threads 1 --epochs 2 --train_size 16384   # reduced
    python scripts/benchmark_linear_sweep.py --mode stacked         # the stacked sweep only
    python scripts/benchmark_linear_sweep.py --batch_size 8 --lr 1e-4 --epochs 25   # Cole's batch
    python scripts/benchmark_linear_sweep.py --write_npz data/synthetic_coco/features.npz --epochs 0

The features are synthetic but shaped like COCO's cached ResNet-50 features: 65,665 train /
16,416 val / 40,137 test rows × 2048 float32, 80 classes, about 2.9 positives per image with
COCO-like skewed class frequencies, one observed positive per training row (formats'
protocol), and non-negative features that carry the labels (a prototype per class) under a shared
low-rank component and noise. They are generated in memory (seeded), not timed.

Each run is what `main.py --dataset features --train_mode linear` does after loading the .npz
(train.fit with the features in memory: run folder, --linear_epochs epochs with val mAP each, best-val head, test mAP),
for Δrel ∈ {0.1, …, 0.5} × {LL-R, LL-Ct, LL-Cp}; the separate total is the sum of the 15 runs'
wall times. The stacked sweep is `main.py --sweep_delta_rel` (sweep.fit_sweep with the features
in memory): the same 15 heads as one nn.Linear(D, 15·L), each step one pass over the batch.

The FLOP floor is the multiply-adds the sweep cannot avoid (per head and epoch: the forward and
the weight gradient of the training rows, 2·2·N·D·L, and the val forward, 2·N_val·D·L; the test
forward once), divided by the GEMM rate this script measures first: float32 matmuls of a
training batch by the stacked head, B×D · D×(K·L), on the threads the runs use (the best of
several repetitions).
The batch size and learning rate are this script's flags: the sweep's default batch (1024) is
faster than Cole et al.'s 8 and is another protocol; `--batch_size 8 --lr 1e-4` times theirs.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from largeloss.data import formats
from largeloss.data.splits import ExperimentData, Split
from largeloss.engine import sweep, train
from largeloss.engine.features import FeatureDataset
from largeloss.experiment.config import parse_args

SCHEMES = ("LL-R", "LL-Ct", "LL-Cp")
DELTA_RELS = (0.1, 0.2, 0.3, 0.4, 0.5)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--train_size", type=int, default=65665)
    parser.add_argument("--val_size", type=int, default=16416)
    parser.add_argument("--test_size", type=int, default=40137)
    parser.add_argument("--dim", type=int, default=2048, help="feature width (ResNet-50: 2048)")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=25,
                        help="--linear_epochs of every run (default: 25, Cole et al.'s)")
    parser.add_argument("--batch_size", type=int, default=1024,
                        help="--linear_batch_size of every run (default: 1024; Cole et al.: 8)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="--linear_lr of every run (default: 1e-3; Cole et al. at batch 8: 1e-4)")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    parser.add_argument("--delta_rels", nargs="+", type=float, default=list(DELTA_RELS),
                        help="Δrel values in percent per epoch (default: 0.1 … 0.5)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's choice, usually the core count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", help="where the 15 run folders go (default: a temporary folder, "
                                          "deleted afterwards)")
    parser.add_argument("--mode", choices=("both", "separate", "stacked"), default="both",
                        help="time the runs separately, stacked, or both in this one process "
                             "(default: both)")
    parser.add_argument("--write_npz", metavar="FILE",
                        help="also save the synthetic set as a --dataset features .npz")
    return parser


def synthetic_features(num_rows: int, dim: int, num_classes: int,
                       generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(features N×D float32 ≥ 0, clean labels N×L uint8): skewed class frequencies with about 2.9
    positives per row (at least one), features = relu(labels·prototypes + shared + noise)."""
    frequencies = 1.0 / np.arange(1, num_classes + 1) ** 0.8
    frequencies *= 1.9 / frequencies.sum()        # + the one forced positive ≈ 2.9 per image
    draws = torch.rand(num_rows, num_classes, generator=generator)
    labels = (draws < torch.as_tensor(frequencies, dtype=torch.float32)).to(torch.uint8)
    forced = torch.multinomial(torch.as_tensor(frequencies), num_rows, replacement=True,
                               generator=generator)
    labels[torch.arange(num_rows), forced] = 1
    prototypes = 0.5 * torch.randn(num_classes, dim, generator=generator)
    scene_basis = torch.randn(16, dim, generator=generator)
    features = labels.float() @ prototypes
    features += torch.randn(num_rows, 16, generator=generator) @ scene_basis
    features += 2.0 * torch.randn(num_rows, dim, generator=generator)
    return features.clamp_(min=0).numpy(), labels.numpy()


def build_data(args: argparse.Namespace) -> ExperimentData:
    generator = torch.Generator().manual_seed(args.seed)
    total = args.train_size + args.val_size + args.test_size
    features, labels = synthetic_features(total, args.dim, args.classes, generator)
    train, val = slice(0, args.train_size), slice(args.train_size, args.train_size + args.val_size)
    test = slice(args.train_size + args.val_size, total)
    observed = formats.make_observed_labels(labels[train]).astype(np.int8)
    if args.write_npz:
        Path(args.write_npz).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.write_npz, train_features=features[train], train_labels=labels[train],
                 train_observed=observed, val_features=features[val], val_labels=labels[val],
                 test_features=features[test], test_labels=labels[test],
                 class_names=np.array([f"class_{c}" for c in range(args.classes)]))
        print(f"wrote {args.write_npz}", flush=True)

    def split(rows: slice, split_observed: np.ndarray) -> Split:
        vectors = torch.from_numpy(np.ascontiguousarray(features[rows])).to(args.device)
        return Split(FeatureDataset(vectors), split_observed, labels[rows])

    return ExperimentData(train=split(train, observed), val=split(val, labels[val].astype(np.int8)),
                          test=split(test, labels[test].astype(np.int8)),
                          class_names=[f"class_{c}" for c in range(args.classes)])


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def sweep_configs(args: argparse.Namespace, runs_dir: Path) -> list:
    """The Config of each of the sweep's runs: what main.py --dataset features --train_mode linear
    parses for each scheme and Δrel (scheme-major)."""
    configs = []
    for scheme in args.schemes:
        for delta_rel in args.delta_rels:
            configs.append(parse_args([
                "--dataset", "features", "--train_mode", "linear", "--loss", "an",
                "--mod_scheme", scheme, "--delta_rel", str(delta_rel),
                "--linear_epochs", str(args.epochs), "--linear_batch_size", str(args.batch_size),
                "--linear_lr", str(args.lr), "--seed", str(args.seed), "--device", args.device,
                "--out_dir", str(runs_dir / f"{scheme}_d{delta_rel:g}")]))
    return configs


def measured_gemm_rate(args: argparse.Namespace, num_heads: int) -> tuple[float, float]:
    """GFLOP/s of float32 B×D · D×(K·L) products on this process's threads (best of 5 timings of
    enough products to take ≥ 0.2 s each), by wall time and by process CPU time (on a shared
    machine the CPU-time rate is what one core does when it runs; compare CPU with CPU)."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(args.batch_size, args.dim, generator=generator).to(args.device)
    weight = torch.rand(args.dim, args.classes * num_heads, generator=generator).to(args.device)
    flops = 2.0 * batch.shape[0] * batch.shape[1] * weight.shape[1]
    repeats, best, best_cpu = 1, 0.0, 0.0
    for _ in range(5):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            torch.mm(batch, weight)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        cpu_seconds = max(time.process_time() - cpu_start, 1e-6)
        best = max(best, flops * repeats / seconds / 1e9)
        best_cpu = max(best_cpu, flops * repeats / cpu_seconds / 1e9)
        repeats = max(repeats, int(repeats * 0.2 / max(seconds, 1e-6)) + 1)
    return best, best_cpu


def floor_flops(args: argparse.Namespace, data: ExperimentData, num_heads: int) -> float:
    """The multiply-adds (×2 FLOP) of the whole sweep that no implementation avoids."""
    per_head_epoch = (4.0 * len(data.train) + 2.0 * len(data.val)) * args.dim * args.classes
    return num_heads * (args.epochs * per_head_epoch + 2.0 * len(data.test) * args.dim * args.classes)


def time_separately(args: argparse.Namespace, data: ExperimentData, configs: list) -> tuple:
    """Each run through train.fit, one after another: (wall seconds, process CPU seconds, results)."""
    total = cpu_total = 0.0
    all_results = []
    for config in configs:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        run_start, cpu_start = time.perf_counter(), time.process_time()
        with open(Path(config.out_dir) / "stdout.txt", "w") as log, contextlib.redirect_stdout(log):
            results = train.fit(config, data)
        seconds = time.perf_counter() - run_start
        total += seconds
        cpu_total += time.process_time() - cpu_start
        all_results.append(results)
        print(f"separate {config.method:<6} Δrel {config.delta_rel:<4g} best epoch "
              f"{results['best_epoch']:>3}  val mAP {results['val_map']:6.2f}  test mAP "
              f"{results['test_map']:6.2f}  {seconds:6.1f} s", flush=True)
    return total, cpu_total, all_results


def time_stacked(data: ExperimentData, configs: list) -> tuple:
    """All runs as one stacked sweep: (wall seconds, process CPU seconds, results per head)."""
    folder = Path(configs[0].out_dir).parent
    folder.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    with open(folder / "stdout.txt", "w") as log, contextlib.redirect_stdout(log):
        all_results = sweep.fit_sweep(configs, data)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    for config, results in zip(configs, all_results):
        print(f"stacked  {config.method:<6} Δrel {config.delta_rel:<4g} best epoch "
              f"{results['best_epoch']:>3}  val mAP {results['val_map']:6.2f}  test mAP "
              f"{results['test_map']:6.2f}", flush=True)
    return seconds, cpu_seconds, all_results


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = build_data(args)
    print(f"synthetic features: train {len(data.train)}, val {len(data.val)}, test {len(data.test)} "
          f"× {args.dim}, {args.classes} classes ({time.perf_counter() - start:.1f} s, not timed)",
          flush=True)
    if args.epochs == 0:
        return 0
    num_heads = len(args.schemes) * len(args.delta_rels)
    rate, cpu_rate = measured_gemm_rate(args, num_heads)
    floor = floor_flops(args, data, num_heads) / (rate * 1e9)
    cpu_floor = floor_flops(args, data, num_heads) / (cpu_rate * 1e9)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {load_average()}; GEMM {args.batch_size}×{args.dim}·{args.dim}×"
          f"{args.classes * num_heads}: {rate:.1f} GFLOP/s (by CPU time {cpu_rate:.1f}); FLOP floor "
          f"of the sweep {floor_flops(args, data, num_heads) / 1e12:.2f} TFLOP = {floor:.1f} s "
          f"(CPU {cpu_floor:.1f} s)", flush=True)
    timings = {}
    with tempfile.TemporaryDirectory() as scratch:
        runs_dir = Path(args.out_dir or scratch)
        if args.mode in ("both", "separate"):
            timings["separate"] = time_separately(args, data, sweep_configs(args, runs_dir / "separate"))
        if args.mode in ("both", "stacked"):
            timings["stacked"] = time_stacked(data, sweep_configs(args, runs_dir / "stacked"))
    report(args, data, num_heads, (floor, cpu_floor), timings)
    return 0


def report(args: argparse.Namespace, data: ExperimentData, num_heads: int,
           floors: tuple[float, float], timings: dict) -> None:
    """The totals beside the floor (and, with both, their ratio and the test mAPs' agreement)."""
    print(f"{num_heads} runs × {args.epochs} epochs (batch {args.batch_size}, lr {args.lr:g}, "
          f"{len(data.train)} × {args.dim} train features, device {args.device}, "
          f"{torch.get_num_threads()} threads; load average now {load_average()})", flush=True)
    floor, cpu_floor = floors
    for mode, (seconds, cpu_seconds, _) in timings.items():
        print(f"{mode:<9}: {seconds:7.1f} s = {seconds / floor:.2f}× the FLOP floor ({floor:.1f} s); "
              f"process CPU {cpu_seconds:.1f} s = {cpu_seconds / cpu_floor:.2f}× the CPU-time "
              f"floor ({cpu_floor:.1f} s)", flush=True)
    if len(timings) == 2:
        separate, stacked = timings["separate"], timings["stacked"]
        gap = max(abs(one["test_map"] - other["test_map"])
                  for one, other in zip(separate[2], stacked[2]))
        print(f"stacked is {separate[0] / stacked[0]:.2f}× faster than separate (CPU time: "
              f"{separate[1] / stacked[1]:.2f}×); the largest "
              f"test mAP difference between a head and its separate run: {gap:.2g}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
