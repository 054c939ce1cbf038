"""Speed benchmark (issue 8): the authors'-style pipeline against this project's fast path.

Both run in one process on the same generated JPEGs (500×375 crops of scikit-learn's two bundled
sample photos), with the same model, batch size, image size and number of loader workers:

  reference  PIL decode → Resize → RandomHorizontalFlip → ToTensor → Normalize in the workers
             (float32 images and the labels through the loader), workers re-forked every epoch,
             fp32, `loss.item()` after every step (a host sync), as the authors' code does.
  fast       loading.ImageFileDataset (uint8 from the workers) + loading.make_loader (persistent
             workers, pinned memory on cuda) + loading.DevicePreprocess (flip and normalisation on
             the device) + the real train.train_one_epoch and models.predict, with --amp,
             --channels_last and optionally --compile.

    python scripts/benchmark.py --device cpu     # small_cnn, 128 px, batch 16, channels_last:
                                                 # minutes on 2 idle cores
    python scripts/benchmark.py --device cpu --threads 1   # on a CPU shared with other jobs
    python scripts/benchmark.py --device cuda    # ResNet-50 (weights none), 448 px, batch 16,
                                                 # bf16, channels_last
    python scripts/benchmark.py --device cuda --compile --cache_images
    python scripts/benchmark.py --device cpu --num_images 32 --image_size 64 --steps 2 --repeats 1
    python scripts/benchmark.py --device cuda --nproc 1 2 4 8   # scaling over processes (torchrun)

With --nproc the script measures instead how training scales over processes: for each count N it
runs `torchrun --standalone --nproc_per_node=N main.py` on the digits set (generated in memory,
resized to --image_size, --num_images images) with a global batch of N × --batch_size (the batch
per process fixed), 2 epochs, and reports the second epoch's images/s, the speed-up over the first
count and the efficiency (speed-up / N).

Every figure is images/s over whole passes of the image set (epochs): one untimed warm-up pass,
then the median of --repeats timed passes, the reference and fast passes alternating so that a
change in machine load hits both. The LL overhead is measured on one pre-loaded device batch, so
the loader does not dominate. The last line sums up the ratios (fast / reference):

    summary: train 2.30x, eval 1.80x, loader 1.50x (cached 20.0x), LL overhead 0.7 % (loss alone 0.50 %)
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from largeloss.data import loading
from largeloss.engine import train
from largeloss.experiment.config import parse_args
from largeloss.methods import registry as methods
from largeloss.methods.losses import compute_loss
from largeloss.nn.models import autocast, build_model, predict

DEVICE_DEFAULTS = {
    "cpu": {"arch": "small_cnn", "image_size": 128, "num_images": 256, "num_workers": 2,
            "amp": "off", "channels_last": True, "steps": 6},
    "cuda": {"arch": "resnet50", "image_size": 448, "num_images": 2048, "num_workers": 8,
             "amp": "bf16", "channels_last": True, "steps": 30},
}
JPEG_SIZE = (500, 375)   # width, height: a typical Pascal/COCO photo
NUM_CLASSES = 20         # Pascal's label count
METHOD = "LL-Ct"         # the training method timed by both pipelines
TIMED_EPOCH = 3          # from epoch 2 on the LL schedule modifies entries (k > 0)
DELTA_REL = 0.2          # Δrel in percent per epoch (the authors' Pascal value for LL-Ct)
LOSS_ITERATIONS = 50     # loss + backward evaluations per timed pass of the loss-only figure


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="picks the defaults of the flags below (default: cpu)")
    parser.add_argument("--arch", help="default: small_cnn on cpu, resnet50 on cuda (weights none)")
    parser.add_argument("--image_size", type=int, help="square input in pixels (default: 128 cpu, 448 cuda)")
    parser.add_argument("--batch_size", type=int, default=16, help="default: 16 (paper)")
    parser.add_argument("--num_images", type=int,
                        help="generated JPEGs = images per pass (default: 256 cpu, 2048 cuda; "
                             "fewer makes the reference's per-epoch worker start-up weigh more)")
    parser.add_argument("--num_workers", type=int,
                        help="loader workers of both pipelines (default: 2 cpu, 8 cuda)")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"),
                        help="fast path autocast (default: bf16 on cuda; off on cpu, where bf16 "
                             "without native bf16 instructions is many times slower)")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction,
                        help="fast path NHWC (default: on; on this project's 2-core CPU it made "
                             "small_cnn evaluation 1.27x faster and training neither faster nor slower)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's model")
    parser.add_argument("--cache_images", action="store_true",
                        help="fast path trains and evaluates from loading.cache_images (decoded "
                             "once, untimed); the cached loader is timed either way")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per figure (median)")
    parser.add_argument("--steps", type=int,
                        help="training steps per timed pass of the LL-overhead measurement "
                             "(default: 6 cpu, 30 cuda)")
    parser.add_argument("--work_dir", metavar="DIR",
                        help="folder for the generated JPEGs (default: a temporary folder, removed)")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads of the main process, both pipelines (default: "
                             "torch's, one per core). On a CPU shared with other jobs use 1: two "
                             "threads on two busy cores made DevicePreprocess 7x slower (40 vs 6 ms "
                             "a batch) and the loss 30x slower, waiting for descheduled threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nproc", type=int, nargs="+", metavar="N",
                        help="measure the scaling of training over these process counts instead")
    return parser


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    for name, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# --- the image set ------------------------------------------------------------------------------

def write_jpeg_set(folder: Path, num_images: int, seed: int) -> list[str]:
    """`num_images` photo-like 500×375 JPEGs (quality 90): random 4:3 crops (55–100 % of the
    largest) of scikit-learn's china.jpg and flower.jpg, randomly mirrored. Returns file names."""
    from sklearn.datasets import load_sample_images
    photos = [Image.fromarray(photo) for photo in load_sample_images().images]
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(num_images):
        photo = photos[index % len(photos)]
        largest_width = min(photo.width, photo.height * JPEG_SIZE[0] / JPEG_SIZE[1])
        width = largest_width * rng.uniform(0.55, 1.0)
        height = width * JPEG_SIZE[1] / JPEG_SIZE[0]
        left, top = rng.uniform(0, photo.width - width), rng.uniform(0, photo.height - height)
        image = photo.resize(JPEG_SIZE, Image.BICUBIC, box=(left, top, left + width, top + height))
        if rng.rand() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        names.append(f"{index:05d}.jpg")
        image.save(folder / names[-1], quality=90)
    return names


def single_positive_labels(num_images: int, num_classes: int, seed: int) -> np.ndarray:
    """N×L int8 observed labels: one random +1 per image, the rest unobserved (0)."""
    rng = np.random.RandomState(seed)
    observed = np.zeros((num_images, num_classes), dtype=np.int8)
    observed[np.arange(num_images), rng.randint(num_classes, size=num_images)] = 1
    return observed


# --- the reference pipeline (the authors' style) ------------------------------------------------

class ReferenceImageDataset(Dataset):
    """PIL decode → Resize((S, S)) → RandomHorizontalFlip(p) → ToTensor → Normalize, in the worker.

    Yields (float32 3×S×S normalised image, float32 L observed labels), as the authors' loader.
    """

    def __init__(self, image_dir: Path, image_paths: list[str], observed: np.ndarray,
                 image_size: int, mean, std, flip_probability: float = 0.5):
        self.image_dir, self.image_paths = Path(image_dir), list(image_paths)
        self.observed = torch.as_tensor(observed, dtype=torch.float32)
        self.transform = transforms.Compose([
            transforms.Resize((image_size, image_size)),
            transforms.RandomHorizontalFlip(flip_probability),
            transforms.ToTensor(),
            transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int):
        with Image.open(self.image_dir / self.image_paths[index]) as image:
            image = image.convert("RGB")
        return self.transform(image), self.observed[index]


def reference_loader(images: Dataset, batch_size: int, shuffle: bool, num_workers: int) -> DataLoader:
    """Workers forked anew at every epoch (persistent_workers=False), no pinned memory."""
    return DataLoader(images, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      persistent_workers=False)


def reference_train_epoch(model, loader, optimizer, device: torch.device) -> float:
    """The authors' loop: images and labels from the loader, fp32, a host sync every step."""
    model.train()
    running_loss = 0.0
    for images, observed in loader:
        images, observed = images.to(device), observed.to(device)
        logits = model(images)
        loss = compute_loss(METHOD, logits, observed, epoch=TIMED_EPOCH, delta_rel=DELTA_REL,
                            check_values=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # host sync: the CPU waits for the GPU every step
    return running_loss


@torch.no_grad()
def reference_predict(model, loader, device: torch.device) -> np.ndarray:
    """fp32 scores, copied to the host batch by batch (a sync per batch)."""
    model.eval()
    return torch.cat([torch.sigmoid(model(images.to(device))).cpu() for images, _ in loader]).numpy()


def drain_reference(loader, device: torch.device) -> None:
    for images, observed in loader:
        images.to(device), observed.to(device)


# --- the fast path (the project's code) ---------------------------------------------------------

def fast_config(args: argparse.Namespace, method: str):
    """A Config through the real parser, so every field the trainer reads has its real default."""
    scheme = method if method.startswith("LL-") else "none"
    flags = ["--dataset", "custom", "--arch", args.arch, "--weights", "none",
             "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
             "--num_workers", str(args.num_workers), "--device", args.device, "--amp", args.amp,
             "--loss", "an", "--mod_scheme", scheme, "--delta_rel", str(DELTA_REL),
             "--seed", str(args.seed)]
    flags += ["--channels_last"] * args.channels_last + ["--compile"] * args.compile
    return parse_args(flags)


def drain_fast(loader, preprocess: loading.DevicePreprocess, device: torch.device) -> None:
    """Iterate the loader and make the device batch the model would see (uint8 → float, flip)."""
    for images, sample_ids in loader:
        preprocess(images.to(device, non_blocking=True), train=True)
        sample_ids.to(device, non_blocking=True)


class PreloadedBatches:
    """Stands in for a loader: the same device-resident batch `steps` times (no decoding)."""

    def __init__(self, images: torch.Tensor, sample_ids: torch.Tensor, steps: int):
        self.batches = [(images, sample_ids)] * steps
        self.batch_sampler = self  # the loader interface train_one_epoch uses
        self.seed, self.num_rows = 0, int(sample_ids.max()) + 1  # for the per-sample flip draws

    def set_epoch(self, epoch: int) -> None:
        pass

    def global_batch_size(self, step: int) -> int:
        return len(self.batches[step][1])

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# --- timing -------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_alternating(passes: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each timed pass: one untimed warm-up of each, then `repeats` rounds in turn."""
    for run_pass in passes.values():
        run_pass()
    seconds = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run_pass in passes.items():
            synchronize(device)
            start = time.perf_counter()
            run_pass()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def rate(num_images: int, seconds: list[float]) -> tuple[float, float]:
    """(median images/s, half the relative spread of the passes in percent)."""
    rates = [num_images / value for value in seconds]
    return statistics.median(rates), 50 * (max(rates) - min(rates)) / statistics.median(rates)


def loss_passes(logits: torch.Tensor, observed: torch.Tensor, iterations: int) -> dict:
    """Passes of `iterations` × (compute_loss + backward) on fixed logits, for AN and METHOD."""
    logits = logits.detach().float().requires_grad_()

    def loss_pass(method):
        def run_pass():
            for _ in range(iterations):
                compute_loss(method, logits, observed, epoch=TIMED_EPOCH, delta_rel=DELTA_REL,
                             check_values=False).loss.backward()
        return run_pass
    return {"an": loss_pass("an"), METHOD: loss_pass(METHOD)}


def count_host_syncs(run_pass) -> int:
    """Synchronising CUDA calls during `run_pass` (torch.cuda.set_sync_debug_mode warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_pass()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host {cpu_name()}, {os.cpu_count()} cores)"
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# --- the benchmark ------------------------------------------------------------------------------

def run_benchmark(args: argparse.Namespace, image_dir: Path, image_paths: list[str]) -> dict:
    """Seconds of every timed pass: {"train", "eval", "loader", "steps", "loss_only": {name: [s]}},
    plus "cache_seconds" and, on cuda, "host_syncs"."""
    device = train.resolve_device(args.device)
    config = fast_config(args, METHOD)
    observed = single_positive_labels(len(image_paths), NUM_CLASSES, args.seed)
    torch.manual_seed(args.seed)
    reference_model = build_model(args.arch, "none", NUM_CLASSES).to(device)
    fast_model = copy.deepcopy(reference_model)
    if config.channels_last:
        fast_model = fast_model.to(memory_format=torch.channels_last)
    forward = torch.compile(fast_model) if config.compile else fast_model
    mean, std = reference_model.mean, reference_model.std
    preprocess = loading.DevicePreprocess(mean, std, device, config.channels_last)
    timed_method, an_method = (methods.build(name, observed, device=device,
                                             delta_rel=config.delta_rel)
                               for name in (METHOD, "an"))
    optimizer = train.build_optimizer(train.image_model_groups(fast_model, config.lr,
                                                               config.head_lr_mult),
                                      None, config.optimizer, config.lr, config.momentum,
                                      config.weight_decay)
    phase = train.Phase("end_to_end", fast_model, forward, {}, preprocess, optimizer, epochs=1,
                        amp=config.amp,
                        scaler=torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"))

    def fast_epoch(loader, method=timed_method):
        loader_phase = dataclasses.replace(phase, loaders={"train": loader})
        return lambda: train.train_one_epoch(loader_phase, method, TIMED_EPOCH, device,
                                             config.log_every)

    def reference_images(flip_probability):
        return ReferenceImageDataset(image_dir, image_paths, observed, args.image_size, mean, std,
                                     flip_probability)

    reference_train = reference_loader(reference_images(0.5), args.batch_size, True, args.num_workers)
    reference_eval = reference_loader(reference_images(0.0), args.batch_size, False, args.num_workers)
    reference_optimizer = train.build_optimizer(
        train.image_model_groups(reference_model, config.lr, config.head_lr_mult), None,
        config.optimizer, config.lr, config.momentum, config.weight_decay)
    file_images = loading.ImageFileDataset(image_dir, image_paths, args.image_size)
    start = time.perf_counter()
    cached_images = loading.cache_images(file_images, args.num_workers)
    results = {"cache_seconds": time.perf_counter() - start}
    fast_images = cached_images if args.cache_images else file_images
    pin = device.type == "cuda"
    fast_train, fast_eval, cached_train = (
        loading.make_loader(images, args.batch_size, shuffle, args.num_workers, args.seed, pin)
        for images, shuffle in ((fast_images, True), (fast_images, False), (cached_images, True)))

    print("timing training ...", flush=True)
    results["train"] = time_alternating({
        "reference": lambda: reference_train_epoch(reference_model, reference_train,
                                                   reference_optimizer, device),
        "fast": fast_epoch(fast_train)}, args.repeats, device)
    print("timing evaluation ...", flush=True)
    results["eval"] = time_alternating({
        "reference": lambda: reference_predict(reference_model, reference_eval, device),
        "fast": lambda: predict(fast_model, fast_eval, preprocess, device, config.amp)},
        args.repeats, device)
    print("timing the loaders alone ...", flush=True)
    results["loader"] = time_alternating({
        "reference": lambda: drain_reference(reference_train, device),
        "fast": lambda: drain_fast(fast_train, preprocess, device),
        "cached": lambda: drain_fast(cached_train, preprocess, device)}, args.repeats, device)

    print(f"timing {METHOD} against AN on a pre-loaded batch ...", flush=True)
    sample_ids = torch.arange(args.batch_size, device=device)
    batch_images = cached_images.images[:args.batch_size].to(device)
    batch = PreloadedBatches(batch_images, sample_ids, args.steps)
    results["steps"] = time_alternating({"AN": fast_epoch(batch, an_method),
                                         METHOD: fast_epoch(batch)}, args.repeats, device)
    with torch.no_grad(), autocast(device, config.amp):
        logits = forward(preprocess(batch_images, train=True))
    results["loss_only"] = time_alternating(
        loss_passes(logits, timed_method.labels.rows(sample_ids), LOSS_ITERATIONS), max(args.repeats, 5),
        device)
    if device.type == "cuda":
        results["host_syncs"] = count_host_syncs(fast_epoch(batch))
    return results


def report(args: argparse.Namespace, results: dict, num_images: int, loads: tuple) -> list[str]:
    device = torch.device(args.device)
    on_off = {True: "on", False: "off"}
    lines = [f"device {args.device}: {device_description(device)}",
             f"torch {torch.__version__}, python {platform.python_version()}, "
             f"load average {loads[0]:.2f} at start, {loads[1]:.2f} at end",
             f"model {args.arch} (weights none, {NUM_CLASSES} classes), {args.image_size} px, "
             f"batch {args.batch_size}, {num_images} JPEGs of {JPEG_SIZE[0]}×{JPEG_SIZE[1]}, "
             f"{args.num_workers} workers, method {METHOD} at epoch {TIMED_EPOCH}",
             f"fast path: amp {args.amp}, channels_last {on_off[args.channels_last]}, "
             f"compile {on_off[args.compile]}, cache_images {on_off[args.cache_images]}, "
             f"persistent workers, pinned memory {on_off[args.device == 'cuda']}",
             "reference: fp32, float32 from workers re-forked each epoch, loss.item() each step",
             f"images/s, median of {args.repeats} timed passes after 1 warm-up (± half the spread)",
             f"{'':<14}{'reference':>18}{'fast':>18}{'ratio':>9}"]
    ratios = {}
    rows = [("train", "fast", "training"), ("eval", "fast", "evaluation"),
            ("loader", "fast", "loader only"), ("loader", "cached", "loader, cache")]
    for key, variant, label in rows:
        reference, reference_spread = rate(num_images, results[key]["reference"])
        fast, fast_spread = rate(num_images, results[key][variant])
        ratios[label] = fast / reference
        lines.append(f"{label:<14}{reference:>10.1f} ± {reference_spread:>2.0f} %"
                     f"{fast:>10.1f} ± {fast_spread:>2.0f} %{ratios[label]:>8.2f}x")
    lines.append(f"(loader, cache: loading.cache_images, built once in "
                 f"{results['cache_seconds']:.1f} s, not timed; every loader row ends with "
                 f"normalised float images on the device)")
    an_seconds = statistics.median(results["steps"]["AN"]) / args.steps
    ll_seconds = statistics.median(results["steps"][METHOD]) / args.steps
    # each LL pass over the AN pass just before it, so that a slow drift in load cancels
    paired = [100 * (ll / an - 1) for an, ll in zip(results["steps"]["AN"], results["steps"][METHOD])]
    overhead = statistics.median(paired)
    loss_an, loss_ll = (statistics.median(results["loss_only"][method]) / LOSS_ITERATIONS
                        for method in ("an", METHOD))
    loss_overhead = 100 * (loss_ll - loss_an) / an_seconds
    lines += [f"LL overhead: {METHOD} step {1e3 * ll_seconds:.2f} ms vs AN step "
              f"{1e3 * an_seconds:.2f} ms ({args.steps} steps on a pre-loaded batch): "
              f"{overhead:+.1f} % (median of {args.repeats} paired passes, range "
              f"{min(paired):+.1f} to {max(paired):+.1f} %)",
              f"  loss + backward alone ({LOSS_ITERATIONS}× per pass): {METHOD} {1e3 * loss_ll:.3f} "
              f"ms, AN {1e3 * loss_an:.3f} ms; the difference is {loss_overhead:.2f} % of the AN "
              f"step (what LL adds, free of the step's timing noise)"]
    if "host_syncs" in results:
        lines.append(f"host syncs in one fast training epoch of {args.steps} steps: "
                     f"{results['host_syncs']} (train_one_epoch reads the loss once per epoch and "
                     f"every --log_every steps)")
    lines.append(f"summary: train {ratios['training']:.2f}x, eval {ratios['evaluation']:.2f}x, "
                 f"loader {ratios['loader only']:.2f}x (cached {ratios['loader, cache']:.1f}x), "
                 f"LL overhead {overhead:.1f} % (loss alone {loss_overhead:.2f} %)")
    return lines


def scaling(args: argparse.Namespace) -> int:
    """--nproc: images/s of torchrun training runs with 1 … N processes (see the docstring)."""
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        for processes in args.nproc:
            out_dir = Path(args.work_dir or temporary) / f"nproc{processes}"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={processes}", str(Path(__file__).parents[1] / "main.py"),
                       "--dataset", "digits", "--digits_train_size", str(args.num_images),
                       "--arch", args.arch, "--weights", "none", "--image_size",
                       str(args.image_size), "--batch_size", str(args.batch_size * processes),
                       "--epochs", "2", "--device", args.device, "--num_workers", "0",
                       "--amp", args.amp, "--seed", str(args.seed), "--out_dir", str(out_dir)]
            if args.channels_last:
                command.append("--channels_last")
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            last = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
            rows.append((processes, args.batch_size * processes, last["images_per_s"]))
    base = rows[0][2] / rows[0][0]
    print(f"device {args.device}: {device_description(torch.device(args.device))}; {args.arch}, "
          f"{args.image_size} px, {args.batch_size} images per process, {args.num_images} images")
    print("| processes | global batch | images/s | speed-up | efficiency |\n|---|---|---|---|---|")
    for processes, batch, speed in rows:
        speed_up = speed / (base * rows[0][0])
        print(f"| {processes} | {batch} | {speed:.0f} | {speed_up:.2f}x | "
              f"{100 * speed_up * rows[0][0] / processes:.0f} % |")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = resolve_defaults(get_args_parser().parse_args(argv))
    if args.nproc:
        return scaling(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    start_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as temporary:
        image_dir = Path(args.work_dir or temporary) / "benchmark_jpegs"
        image_paths = write_jpeg_set(image_dir, args.num_images, args.seed)
        print(f"{len(image_paths)} JPEGs in {image_dir}", flush=True)
        results = run_benchmark(args, image_dir, image_paths)
    print("\n".join(report(args, results, len(image_paths), (start_load, os.getloadavg()[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
