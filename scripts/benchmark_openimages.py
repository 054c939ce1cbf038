"""OpenImages-scale label benchmark: memory and speed of the sparse label state, and the throughput
of the CSV preparation (V3, V6 or V7 layout: --release), on generated data.

    python scripts/benchmark_openimages.py                      # full scale, CPU: ~10 minutes
    python scripts/benchmark_openimages.py --num_images 100000 --csv_rows 200000   # a quick run
    python scripts/benchmark_openimages.py --release v7         # V6/V7 scale: 9M images × 9,605
    python scripts/benchmark_openimages.py --num_images 370000 --entries_per_image 60
                                                   # V3's real density (~220M entries at 3.7M
                                                   # images), a tenth of the images, extrapolated

The density is a flag (--entries_per_image): the figures of docs/benchmarks.md are at 5.7 (the
count first assumed) and 60 (the first listed V3 training images carry 116–322 human-verified rows
each, ~80 % negatives; 60 trainable entries per image is the realistic end). When --num_images is
below --full_scale_images the label-state memory is also extrapolated linearly to full scale (the
CSR arrays and the image ids grow with the images at a fixed density), and the report says so.

1. Labels of full scale are generated (default 3.7M images × 5000 classes, 5.7 labelled entries per
   image of which 2.7 positive: ~21M entries; class frequencies skewed as in OpenImages), saved as
   a sparse .npz (sparse_labels.py), then loaded by a fresh process that builds the training label
   state (`SparseLabelStore`) and times it. The label state's RAM is that process's resident-set
   growth over its baseline after the imports: the peak (VmHWM, reset through
   /proc/self/clear_refs where the kernel allows) and what stays.
2. `rows` (a batch of B dense label rows) and `apply_relabel` are timed with no relabels, after
   LL-Cp-like steps (k relabels per batch), and with a large settled relabel set.
3. The preparation (`openimages.prepare_split`) runs on generated trees in the official layout
   of --release (--csv_rows/4 and --csv_rows annotation rows, sorted by ImageID like the real
   file; 15 % of them of classes that are not trainable; one empty .jpg per image), each in a
   fresh process. rows/s of the larger run and the peak RAM growth are extrapolated linearly to
   the annotation rows of the release's train split at this density (its images ×
   --entries_per_image / 0.85; the memory along the line through the two runs).
4. `openimages.read_image_ids` on a generated images.csv of --images_csv_rows rows (V3's train
   images.csv lists ~9M images, more than carry labels): seconds and peak RAM, extrapolated
   linearly to 9M rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from largeloss.data import openimages
from largeloss.data.sparse_labels import SparseLabels, load_sparse_labels, save_sparse_labels
from largeloss.methods.label_stores import SparseLabelStore

V3_TRAIN_IMAGES = 3_700_000  # images of V3 train with human-verified labels
V3_IMAGES_CSV_ROWS = 9_000_000  # rows of V3's train images.csv (every listed image)
TRAINABLE_FRACTION = 0.85  # write_raw_tree: 15 % of the annotation rows name untrainable classes
# Scale of each release's train split: (labelled images, trainable classes), the defaults of
# --num_images / --full_scale_images and --num_classes. V6/V7: ~9M images, 9,605 classes; at 5.7
# trainable entries per image their train rows come to ~60M, in line with the 61.4M human-verified
# labels of the V7 page and its 2.74 GB train file (docs/openimages_releases.md).
SCALE = {"v3": (V3_TRAIN_IMAGES, 5000), "v6": (9_000_000, 9605), "v7": (9_000_000, 9605)}
GIB = 1 << 30


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", choices=sorted(SCALE), default="v3",
                        help="the release whose scale and file layout are generated (default v3)")
    parser.add_argument("--num_images", type=int,
                        help="default: the release's train images (V3 3.7M, V6/V7 9M)")
    parser.add_argument("--num_classes", type=int,
                        help="default: the release's trainable classes (V3 5000, V6/V7 9605)")
    parser.add_argument("--entries_per_image", type=float, default=5.7,
                        help="mean labelled entries per image (default 5.7: ~21M for 3.7M images)")
    parser.add_argument("--positives_per_image", type=float, default=2.7, help="default: 2.7")
    parser.add_argument("--batch_size", type=int, default=16, help="rows per batch (default 16)")
    parser.add_argument("--relabels_per_batch", type=int, default=160,
                        help="LL-Cp relabels per batch in the relabel timing (default 160 = "
                             "0.2 %% of 16 × 5000 entries)")
    parser.add_argument("--settled_relabels", type=int, default=5_000_000,
                        help="size of the large relabel set timed last (default 5M)")
    parser.add_argument("--csv_rows", type=int, default=3_000_000,
                        help="annotation rows of the larger generated V3 tree (default 3M; 0 "
                             "skips the preparation benchmark)")
    parser.add_argument("--full_scale_images", type=int,
                        help="images the label-state memory is extrapolated to when --num_images "
                             "is smaller (default: the release's train images, V3 3.7M)")
    parser.add_argument("--images_csv_rows", type=int, default=1_000_000,
                        help="rows of the generated images.csv whose read is timed and "
                             "extrapolated to V3's 9M (default 1M; 0 skips it)")
    parser.add_argument("--device", default="cpu", help="where the label state lives (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--work_dir", type=Path,
                        help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=("store", "csv", "images_csv"), help=argparse.SUPPRESS)
    parser.add_argument("--child_path", type=Path, help=argparse.SUPPRESS)
    return parser


# --- memory of this process ---------------------------------------------------------------------

def status_kib(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Set VmHWM back to the current RSS (Linux ≥ 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return status_kib("VmHWM") <= status_kib("VmRSS") + 1024


class RssMeter:
    """Resident-set growth from the moment it is made: now, and the peak."""

    def __init__(self):
        self.peak_was_reset = reset_peak_rss()
        self.baseline = status_kib("VmRSS")

    def growth_gib(self) -> float:
        return (status_kib("VmRSS") - self.baseline) / (1 << 20)

    def peak_growth_gib(self) -> float:
        return (status_kib("VmHWM") - self.baseline) / (1 << 20)


# --- generated data -----------------------------------------------------------------------------

def class_probabilities(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Skewed class frequencies (Zipf-like, exponent 1, in a random class order), as in
    OpenImages where a few classes have most labels."""
    weights = 1.0 / (np.arange(num_classes) + 10.0)
    return rng.permutation(weights / weights.sum())


def generate_labels(args: argparse.Namespace) -> SparseLabels:
    """Random CSR labels of the requested size: row lengths 1 + Poisson, classes drawn with skew
    and made unique within a row, each entry positive with p = positives / entries."""
    rng = np.random.default_rng(args.seed)
    lengths = 1 + rng.poisson(args.entries_per_image - 1, size=args.num_images)
    rows = np.repeat(np.arange(args.num_images, dtype=np.int64), lengths)
    classes = rng.choice(args.num_classes, size=len(rows),
                         p=class_probabilities(args.num_classes, rng))
    keys = np.unique(rows * args.num_classes + classes)  # sorted; drops repeats within a row
    del rows, classes
    indptr = np.zeros(args.num_images + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // args.num_classes, minlength=args.num_images), out=indptr[1:])
    positive = rng.random(len(keys)) < args.positives_per_image / args.entries_per_image
    image_ids = np.array([f"{number:016x}" for number in
                          rng.integers(0, 1 << 62, size=args.num_images)])
    return SparseLabels(indptr, (keys % args.num_classes).astype(np.int32),
                        np.where(positive, 1, -1).astype(np.int8), np.unique(image_ids),
                        np.array([f"/m/{number:05d}" for number in range(args.num_classes)]))


def write_raw_tree(raw_dir: Path, num_rows: int, args: argparse.Namespace) -> int:
    """The trainable classes, the class descriptions and train's image list and annotations in
    the layout of args.release (openimages.RELEASES) with about `num_rows` annotation rows, plus an
    empty .jpg per image. Returns the row count."""
    release = openimages.RELEASES[args.release]
    rng = np.random.default_rng(args.seed + num_rows)
    num_images = max(1, round(num_rows / args.entries_per_image))
    trainable = [f"/m/{number:05d}" for number in range(args.num_classes)]
    other = [f"/m/x{number:05d}" for number in range(2 * args.num_classes)]
    for path in (release.images["train"], release.annotations["train"]):
        (raw_dir / path).parent.mkdir(parents=True, exist_ok=True)
    (raw_dir / release.trainable).write_text("\n".join(trainable) + "\n")
    (raw_dir / release.descriptions).write_text(
        "LabelName,DisplayName\n" * release.descriptions_header + "".join(f'{mid},"Class {mid}, described"\n' for mid in trainable + other))
    image_ids = np.unique([f"{number:016x}" for number in rng.integers(0, 1 << 62, num_images)])
    lengths = 1 + rng.poisson(args.entries_per_image - 1, size=len(image_ids))
    probabilities = class_probabilities(args.num_classes, rng)
    with open(raw_dir / release.images["train"], "w") as handle:
        handle.write("ImageID,Subset,OriginalURL\n")
        handle.writelines(f"{image},train,https://example.org/{image}.jpg\n" for image in image_ids)
    num_rows = 0
    with open(raw_dir / release.annotations["train"], "w") as handle:
        handle.write("ImageID,Source,LabelName,Confidence\n")
        for start in range(0, len(image_ids), 100_000):
            block = slice(start, start + 100_000)
            rows = np.repeat(np.arange(start, start + len(image_ids[block])), lengths[block])
            classes = rng.choice(args.num_classes, size=len(rows), p=probabilities)
            not_trainable = rng.random(len(rows)) < 0.15
            confidences = (rng.random(len(rows)) < args.positives_per_image
                           / args.entries_per_image).astype(int)
            handle.writelines(
                f"{image_ids[row]},verification,"
                f"{other[label] if skip else trainable[label]},{confidence}\n"
                for row, label, skip, confidence in zip(rows, classes, not_trainable, confidences))
            num_rows += len(rows)
    image_dir = raw_dir / "images" / "train"
    image_dir.mkdir(parents=True)
    for image in image_ids:
        (image_dir / f"{image}.jpg").touch()
    return num_rows


# --- the measurements (each in a fresh process: `--child`) --------------------------------------

def median_seconds(function, repeats: int) -> float:
    """Median wall time of `function()` over `repeats` calls, after 5 untimed ones."""
    for _ in range(5):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_relabels(store: SparseLabelStore, sample_ids: torch.Tensor, count: int,
                    generator: torch.Generator) -> torch.Tensor:
    """B×L bool: `count` random unobserved entries of the batch (what LL-Cp hands over)."""
    batch_size, num_classes = len(sample_ids), store.num_classes
    relabel = torch.zeros(batch_size * num_classes, dtype=torch.bool)
    relabel[torch.randperm(batch_size * num_classes, generator=generator)[:count]] = True
    return relabel.view(batch_size, num_classes).to(store.device) & (store.rows(sample_ids) == 0)


def measure_store(npz: Path, args: argparse.Namespace) -> dict:
    """Load the labels, build the store, time rows and apply_relabel; RSS growth throughout."""
    meter = RssMeter()
    result = {"peak_rss_reset": meter.peak_was_reset}
    start = time.perf_counter()
    labels = load_sparse_labels(npz)
    result["load_seconds"] = time.perf_counter() - start
    result["loaded_gib"] = meter.growth_gib()
    start = time.perf_counter()
    store = SparseLabelStore.from_labels(labels, args.device)
    result["build_seconds"] = time.perf_counter() - start
    result["built_gib"], result["peak_built_gib"] = meter.growth_gib(), meter.peak_growth_gib()
    result["store_tensor_bytes"] = sum(t.numel() * t.element_size()
                                       for t in (store.indptr, store.indices, store.values))
    result.update(num_images=store.num_images, num_classes=store.num_classes,
                  num_labelled=store.num_labelled, num_unobserved=store.num_unobserved,
                  max_row_length=store._max_row_length)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, store.num_images, (args.batch_size,), generator=generator)
               for _ in range(64)]
    cycle = iter(range(1 << 40))
    result["rows_ms"] = 1e3 * median_seconds(lambda: store.rows(batches[next(cycle) % 64]), 500)
    steps = 300
    relabel_times = []
    for _ in range(steps):  # LL-Cp-like: each step relabels k unobserved entries of its batch
        sample_ids = torch.randperm(store.num_images, generator=generator)[:args.batch_size]
        relabel = random_relabels(store, sample_ids, args.relabels_per_batch, generator)
        start = time.perf_counter()
        store.apply_relabel(sample_ids, relabel)
        relabel_times.append(time.perf_counter() - start)
    result["apply_relabel_ms"] = 1e3 * statistics.median(relabel_times)
    result["relabeled_after_steps"] = store.num_relabeled
    result["rows_with_recent_relabels_ms"] = 1e3 * median_seconds(
        lambda: store.rows(batches[next(cycle) % 64]), 500)
    keys = torch.unique(torch.randint(0, store.num_images * store.num_classes,
                                      (args.settled_relabels,), generator=generator))
    state = store.state_dict()
    state.update(relabeled=keys, relabeled_negatives=torch.tensor(0))
    store.load_state_dict(state)  # a late-training state: a large settled relabel set
    result["settled_relabels"] = store.num_relabeled
    result["rows_with_settled_relabels_ms"] = 1e3 * median_seconds(
        lambda: store.rows(batches[next(cycle) % 64]), 500)
    relabel_times = []
    for _ in range(100):
        sample_ids = torch.randperm(store.num_images, generator=generator)[:args.batch_size]
        relabel = random_relabels(store, sample_ids, args.relabels_per_batch, generator)
        start = time.perf_counter()
        store.apply_relabel(sample_ids, relabel)
        relabel_times.append(time.perf_counter() - start)
    result["apply_relabel_settled_ms"] = 1e3 * statistics.median(relabel_times)
    result["final_gib"] = meter.growth_gib()
    result["peak_gib"] = meter.peak_growth_gib()
    return result


def measure_csv(raw_dir: Path, args: argparse.Namespace) -> dict:
    """openimages.prepare_split on the generated tree: seconds, rows/s, peak RSS growth."""
    meter = RssMeter()
    release = openimages.RELEASES[args.release]
    class_mids = openimages.read_trainable_classes(raw_dir / release.trainable)
    start = time.perf_counter()
    labels, report = openimages.prepare_split(raw_dir, "train", raw_dir / "images", class_mids,
                                              release)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    save_sparse_labels(raw_dir / "train_labels.npz", labels)
    return {"seconds": seconds, "save_seconds": time.perf_counter() - start,
            "rows_per_s": report["rows_read"] / seconds, "report": report,
            "peak_gib": meter.peak_growth_gib(), "peak_rss_reset": meter.peak_was_reset}


def measure_images_csv(path: Path, args: argparse.Namespace) -> dict:
    """openimages.read_image_ids on a generated images.csv: seconds and peak RSS growth."""
    meter = RssMeter()
    start = time.perf_counter()
    image_ids = openimages.read_image_ids(path)
    return {"seconds": time.perf_counter() - start, "rows": len(image_ids),
            "peak_gib": meter.peak_growth_gib(), "peak_rss_reset": meter.peak_was_reset}


def write_images_csv(path: Path, num_rows: int, seed: int) -> None:
    """An images.csv in V3's layout (ImageID,Subset,OriginalURL) of `num_rows` random ImageIDs."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        handle.write("ImageID,Subset,OriginalURL\n")
        for start in range(0, num_rows, 100_000):
            numbers = rng.integers(0, 1 << 62, size=min(100_000, num_rows - start))
            handle.writelines(f"{number:016x},train,https://example.org/{number:016x}.jpg\n"
                              for number in numbers)


def run_child(mode: str, path: Path, args: argparse.Namespace) -> dict:
    """This script in a fresh process (clean memory figures) on `path` (the .npz for "store",
    the RAW folder for "csv"); returns its JSON result."""
    command = [sys.executable, __file__, "--child", mode, "--child_path", str(path),
               *[f"--{name}={value}" for name, value in vars(args).items()
                 if name not in ("child", "child_path", "work_dir") and value is not None]]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --- report -------------------------------------------------------------------------------------

def machine_line(args: argparse.Namespace) -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; torch "
            f"{torch.__version__} ({args.threads} thread), numpy {np.__version__}, python "
            f"{platform.python_version()}, device {args.device}")


def report_store(store: dict, args: argparse.Namespace, dense_gib: float) -> None:
    """The label state's memory and batch-row timings, extrapolated to full scale when smaller."""
    print(f"label state (RSS growth; peak reset: {store['peak_rss_reset']}): loaded and "
          f"checked in {store['load_seconds']:.1f} s, store built in "
          f"{store['build_seconds']:.2f} s: {store['built_gib']:.2f} GiB held (CSR + image "
          f"ids; store tensors {store['store_tensor_bytes'] / 1e6:.0f} MB), peak "
          f"{store['peak_built_gib']:.2f} GiB; after the relabel timings "
          f"{store['final_gib']:.2f} GiB held, peak {store['peak_gib']:.2f} GiB; dense int8 "
          f"would be {dense_gib:.1f} GiB")
    print(f"rows (B={args.batch_size}, longest image {store['max_row_length']} entries): "
          f"{store['rows_ms']:.3f} ms; apply_relabel ({args.relabels_per_batch} per batch): "
          f"{store['apply_relabel_ms']:.3f} ms; rows after {store['relabeled_after_steps']} "
          f"relabels: {store['rows_with_recent_relabels_ms']:.3f} ms; with "
          f"{store['settled_relabels']} settled relabels: rows "
          f"{store['rows_with_settled_relabels_ms']:.3f} ms, apply_relabel "
          f"{store['apply_relabel_settled_ms']:.3f} ms (medians)")
    scale = args.full_scale_images / store["num_images"]
    if scale > 1:
        print(f"extrapolated linearly to {args.full_scale_images / 1e6:.1f}M images (×{scale:.1f}, "
              f"{store['num_labelled'] * scale / 1e6:.0f}M entries; not measured): store tensors "
              f"{store['store_tensor_bytes'] * scale / 1e9:.2f} GB, held "
              f"{store['built_gib'] * scale:.2f} GiB, peak {store['peak_built_gib'] * scale:.2f} "
              f"GiB (the relabel sets do not grow with the images)")


def report_preparation(work_dir: Path, args: argparse.Namespace) -> None:
    """prepare_split on two generated trees of --release, extrapolated to its train rows at this
    density."""
    runs = []
    for num_rows in (args.csv_rows // 4, args.csv_rows):  # two sizes: fixed + per-row cost
        start = time.perf_counter()
        raw_dir = work_dir / f"raw_{num_rows}"
        write_raw_tree(raw_dir, num_rows, args)
        generation_seconds = time.perf_counter() - start
        runs.append(run_child("csv", raw_dir, args))
        report = runs[-1]["report"]
        print(f"prepare_split on a generated {args.release.upper()} tree ({generation_seconds:.0f} s "
              f"to write): "
              f"{report['rows_read']} rows, {report['images_listed']} images in "
              f"{runs[-1]['seconds']:.1f} s = {runs[-1]['rows_per_s']:,.0f} rows/s (save "
              f"{runs[-1]['save_seconds']:.1f} s); {report['images_kept']} images, "
              f"{report['entries_kept']} entries kept; peak RSS growth "
              f"{runs[-1]['peak_gib']:.2f} GiB")
        shutil.rmtree(raw_dir)
    (small, large) = runs
    rows_small, rows_large = (run["report"]["rows_read"] for run in runs)
    per_row = (large["peak_gib"] - small["peak_gib"]) / (rows_large - rows_small)
    train_rows = SCALE[args.release][0] * args.entries_per_image / TRAINABLE_FRACTION
    extrapolated = large["peak_gib"] + per_row * (train_rows - rows_large)
    print(f"extrapolated to {train_rows / 1e6:.0f}M rows ({args.release.upper()} train at "
          f"{args.entries_per_image:g} trainable entries per image; images in proportion): "
          f"{train_rows / large['rows_per_s'] / 60:.1f} min at the larger run's rate; peak "
          f"RSS growth ~{extrapolated:.2f} GiB (a line through the two runs: "
          f"{per_row * GIB:.0f} bytes per row)")


def report_images_csv(work_dir: Path, args: argparse.Namespace) -> None:
    """read_image_ids on a generated images.csv, extrapolated to V3's ~9M rows."""
    path = work_dir / "images.csv"
    write_images_csv(path, args.images_csv_rows, args.seed)
    result = run_child("images_csv", path, args)
    scale = V3_IMAGES_CSV_ROWS / result["rows"]
    print(f"images.csv: {result['rows']} rows read in {result['seconds']:.1f} s "
          f"({result['rows'] / result['seconds']:,.0f} rows/s), peak RSS growth "
          f"{result['peak_gib']:.2f} GiB; extrapolated linearly to {V3_IMAGES_CSV_ROWS / 1e6:.0f}M "
          f"rows: {result['seconds'] * scale:.0f} s, {result['peak_gib'] * scale:.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    default_images, default_classes = SCALE[args.release]
    args.num_images = args.num_images or default_images
    args.num_classes = args.num_classes or default_classes
    args.full_scale_images = args.full_scale_images or default_images
    torch.set_num_threads(args.threads)
    if args.child:
        measure = {"store": measure_store, "csv": measure_csv,
                   "images_csv": measure_images_csv}[args.child]
        print(json.dumps(measure(args.child_path, args)))
        return 0
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="benchmark_openimages_"))
    try:
        print(machine_line(args))
        start = time.perf_counter()
        labels = generate_labels(args)
        save_sparse_labels(work_dir / "labels.npz", labels)
        per_image = labels.num_labelled / labels.num_images
        print(f"generated {labels.num_images} images × {labels.num_classes} classes, "
              f"{labels.num_labelled} labelled entries ({per_image:.2f} per image, "
              f"{(labels.values == 1).sum() / labels.num_images:.2f} positive), "
              f"{(work_dir / 'labels.npz').stat().st_size / 1e6:.0f} MB on disk, in "
              f"{time.perf_counter() - start:.0f} s")
        dense_gib = labels.num_images * labels.num_classes / GIB
        del labels
        report_store(run_child("store", work_dir / "labels.npz", args), args, dense_gib)
        if args.csv_rows:
            report_preparation(work_dir, args)
        if args.images_csv_rows:
            report_images_csv(work_dir, args)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
