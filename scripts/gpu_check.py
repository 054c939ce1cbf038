"""Everything only a GPU can show, in one command (issue 20): throughput, correctness on the device,
the multi-process path and the OpenImages label state, into one JSON and one Markdown table.

    python scripts/gpu_check.py --out gpu_check                   # cuda: at most 8 min on one H100/H200
    python scripts/gpu_check.py --device cpu --quick --out /tmp/gpu_check   # the CPU dry run (tests)

No network and no dataset on disk: generated JPEGs in a temporary folder (scripts/benchmark.py's
set) and the digits set, generated in memory. The sections, in the order they run:

  throughput    scripts/benchmark.py's reference pipeline vs the fast path (ResNet-50, weights
                none, 448 px, batch 16): training, evaluation and loader images/s in fp32, then
                bf16 + channels_last, with the LL overhead of a step (LL-Ct vs AN on a pre-loaded
                batch, and the loss + backward alone)
  correctness   one short digits run (small_cnn, LL-Cp) on the device and the same run on the CPU:
                modified and relabeled counts equal, per-epoch losses and test mAP close; the
                device model's test mAP in bf16 vs fp32 within docs/speed.md's 0.25 point
  distributed   `torchrun --nproc_per_node 1` (NCCL on cuda, gloo on cpu) with --sync_bn, end to
                end, against the one-process run; the global-batch gather's collective and its
                gradient under torchrun
  openimages    the sparse label store (SparseLabelStore) on the device at V3 train's scale
                (3.7M images × 5,000 classes, generated on the device) at 5.7 and 60 labelled
                entries per image: its memory, a batch's label rows and an LL-Cp relabel per step
  compile       the throughput section's bf16 + channels_last configuration with --compile (last:
                the longest, the first to go when the budget runs short)

The script keeps to --budget_s (default 480 s): before each section (and each throughput
configuration) it compares its estimate with the time left and skips what would overrun, saying so
in the JSON and the table. The outputs are rewritten after every section, so a run cut short still
leaves what it measured. A section that raises is recorded with its traceback and the next one
runs (device time is scarce: one failure must not lose the rest); the exit status is then 1.

On `--device cpu` every section runs at a small scale (--quick: seconds) and the goals of the GPU
read "not measured"; the test suite runs it (tests/test_gpu_check.py), so the script cannot rot.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import benchmark  # scripts/benchmark.py, beside this file (a script's folder is importable)
import torch
import torch.distributed as dist

from largeloss import cli
from largeloss.engine import train
from largeloss.experiment.config import parse_args
from largeloss.methods.label_stores import SparseLabelStore
from largeloss.utils import distributed

REPO_ROOT = Path(__file__).resolve().parents[1]
GOALS = {"train_images_per_s": 900, "train_ratio": 2.0, "eval_images_per_s": 2500,
         "ll_overhead_percent": 2.0, "bf16_map_points": 0.25, "label_state_gb": 2.0}
LOSS_RTOL = 1e-2  # device vs CPU per-epoch loss: cuDNN convolutions may use TF32 (10-bit mantissa)
MAP_POINTS = 0.5  # device vs CPU test mAP, points
DENSITIES = (5.7, 60.0)  # labelled entries per OpenImages training image (the two ends)
RELABELS_PER_STEP = 160  # LL-Cp-like: 0.2 % of a 16 × 5,000 batch

# Per mode: the throughput run's size, the digits runs' size, the OpenImages scale, and each
# section's estimated seconds (measured on an H200 for cuda; a 2-core EPYC for the dry run).
SCALES = {
    "cuda": {"throughput": ["--num_images", "1024", "--repeats", "3", "--steps", "20"],
             "digits_train_size": 1024, "epochs": 3, "num_images": 3_700_000,
             "num_classes": 5000, "timed_steps": 200,
             "estimate_s": {"throughput": 120, "correctness": 60, "distributed": 60,
                            "openimages": 60, "compile": 150}},
    "quick": {"throughput": ["--arch", "small_cnn", "--image_size", "48", "--num_images", "32",
                             "--repeats", "1", "--steps", "2", "--num_workers", "1"],
              "digits_train_size": 48, "epochs": 2, "num_images": 20_000, "num_classes": 5000,
              "timed_steps": 20,
              "estimate_s": {"throughput": 20, "correctness": 10, "distributed": 20,
                             "openimages": 5, "compile": 60}},
}
THROUGHPUT_CONFIGS = {"fp32": ["--amp", "off", "--no-channels_last"],
                      "bf16_channels_last": ["--amp", "bf16", "--channels_last"],
                      "bf16_channels_last_compile": ["--amp", "bf16", "--channels_last",
                                                     "--compile"]}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for gpu_check.json and gpu_check.md (created)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default: cuda")
    parser.add_argument("--quick", action="store_true",
                        help="small scale, seconds per section (the CPU dry run; any device)")
    parser.add_argument("--budget_s", type=float, default=480,
                        help="wall-clock budget in seconds; sections that would overrun it are "
                             "skipped (default 480: 8 minutes)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SECTION_NAMES, metavar="SECTION",
                        help=f"sections not to run ({', '.join(SECTION_NAMES)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=("torchrun",), help=argparse.SUPPRESS)
    return parser


class Budget:
    """The wall-clock budget of the whole check, from its start."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def refusal(self, what: str, estimate_s: float) -> str | None:
        """Why `what` is skipped (it would overrun), or None when it fits."""
        if estimate_s <= self.left():
            return None
        return (f"skipped: {what} would overrun the budget (estimated {estimate_s:.0f} s, "
                f"{max(self.left(), 0):.0f} s left of {self.seconds:.0f} s)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- 1. throughput (scripts/benchmark.py) -------------------------------------------------------

def throughput_figures(bench_args: argparse.Namespace, results: dict, num_images: int) -> dict:
    """images/s (median of the timed passes) and the LL overhead from run_benchmark's seconds."""
    figures = {}
    for key, variants in (("train", ("reference", "fast")), ("eval", ("reference", "fast")),
                          ("loader", ("reference", "fast", "cached"))):
        for variant in variants:
            figures[f"{key}_{variant}_images_per_s"] = benchmark.rate(num_images,
                                                                      results[key][variant])[0]
        figures[f"{key}_ratio"] = figures[f"{key}_fast_images_per_s"] / figures[
            f"{key}_reference_images_per_s"]
    steps = results["steps"]
    an_step_s = statistics.median(steps["AN"]) / bench_args.steps
    figures["ll_overhead_percent"] = statistics.median(
        100 * (ll / an - 1) for an, ll in zip(steps["AN"], steps[benchmark.METHOD]))
    loss_an, loss_ll = (statistics.median(results["loss_only"][name]) / benchmark.LOSS_ITERATIONS
                        for name in ("an", benchmark.METHOD))
    figures["loss_alone_overhead_percent"] = 100 * (loss_ll - loss_an) / an_step_s
    figures["an_step_ms"] = 1e3 * an_step_s
    figures["host_syncs_per_epoch"] = results.get("host_syncs")
    return figures


def run_throughput(args, budget: Budget, work_dir: Path, configs: list[str]) -> dict:
    """scripts/benchmark.py's run_benchmark for each configuration, on one set of JPEGs."""
    mode = "quick" if args.quick else "cuda"
    base = ["--device", args.device, "--seed", str(args.seed), *SCALES[mode]["throughput"]]
    bench_args = benchmark.resolve_defaults(benchmark.get_args_parser().parse_args(base))
    image_dir = work_dir / "benchmark_jpegs"
    if not image_dir.exists():
        benchmark.write_jpeg_set(image_dir, bench_args.num_images, args.seed)
    image_paths = sorted(path.name for path in image_dir.glob("*.jpg"))
    section = {"model": bench_args.arch, "image_size": bench_args.image_size,
               "batch_size": bench_args.batch_size, "num_images": len(image_paths),
               "num_workers": bench_args.num_workers, "repeats": bench_args.repeats,
               "configs": {}}
    estimate = SCALES[mode]["estimate_s"]["throughput"] / 2
    for name in configs:
        refusal = budget.refusal(f"the {name} configuration", estimate)
        if refusal:
            section["configs"][name] = {"status": refusal}
            continue
        config_args = benchmark.resolve_defaults(benchmark.get_args_parser().parse_args(
            base + THROUGHPUT_CONFIGS[name]))
        start = time.perf_counter()
        results = benchmark.run_benchmark(config_args, image_dir, image_paths)
        section["configs"][name] = {"status": "ran", "seconds": time.perf_counter() - start,
                                    **throughput_figures(config_args, results, len(image_paths))}
        estimate = section["configs"][name]["seconds"] * 1.2
    return section


# --- 2. correctness on the device ---------------------------------------------------------------

def digits_flags(args, out_dir: Path, device: str) -> list[str]:
    """A short LL-Cp digits run (relabels from epoch 2) that the CPU also runs in seconds."""
    scale = SCALES["quick" if args.quick else "cuda"]
    return ["--dataset", "digits", "--digits_train_size", str(scale["digits_train_size"]),
            "--arch", "small_cnn", "--weights", "none", "--image_size", "32", "--batch_size", "16",
            "--epochs", str(scale["epochs"]), "--loss", "an", "--mod_scheme", "LL-Cp",
            "--delta_rel", "5", "--early_stop_drop", "0", "--num_workers", "0",
            "--seed", str(args.seed), "--device", device, "--out_dir", str(out_dir)]


def read_run(out_dir: Path) -> dict:
    """Per-epoch train_loss, modified and relabeled, and the test mAP of a finished run folder."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out_dir / "results.json").read_text())
    return {"train_loss": [row["train_loss"] for row in rows],
            "modified": [row["modified"] for row in rows],
            "relabeled": [row["relabeled"] for row in rows], "test_map": results["test_map"]}


def compare_runs(device_run: dict, reference_run: dict) -> dict:
    """Counts equal, losses within LOSS_RTOL, test mAP within MAP_POINTS."""
    loss_rdiff = max(abs(a - b) / max(abs(b), 1e-12)
                     for a, b in zip(device_run["train_loss"], reference_run["train_loss"]))
    counts_equal = all(device_run[key] == reference_run[key] for key in ("modified", "relabeled"))
    map_diff = abs(device_run["test_map"] - reference_run["test_map"])
    return {"counts_equal": counts_equal, "max_loss_relative_difference": loss_rdiff,
            "test_map_difference": map_diff,
            "pass": counts_equal and loss_rdiff <= LOSS_RTOL and map_diff <= MAP_POINTS}


def bf16_against_fp32(args, out_dir: Path) -> dict:
    """The test mAP of one model trained on the device, evaluated in fp32 and under bf16 autocast
    (as tests/test_speed_paths.py does on the CPU)."""
    config = parse_args(digits_flags(args, out_dir, args.device) + ["--channels_last"])
    run = train.start_run(config)
    phase = train.end_to_end_phase(run)
    for epoch in range(1, config.epochs + 1):
        train.train_one_epoch(phase, run.method, epoch, run.device, config.log_every)
    fp32, bf16 = (train.evaluate(run.model, run.data.test, run.loaders["test"], run.preprocess,
                                 run.device, amp)["map"] for amp in ("off", "bf16"))
    return {"fp32_test_map": fp32, "bf16_test_map": bf16, "difference": abs(fp32 - bf16),
            "pass": abs(fp32 - bf16) < GOALS["bf16_map_points"]}


def run_correctness(args, work_dir: Path) -> dict:
    runs = {}
    for device in (args.device, "cpu"):
        out_dir = work_dir / f"digits_{device}_{len(runs)}"
        code = cli.main(digits_flags(args, out_dir, device))
        if code != 0:
            raise RuntimeError(f"the digits run on {device} exited with {code}")
        runs[f"{device}_{len(runs)}"] = read_run(out_dir)
    device_run, cpu_run = runs.values()
    return {"device_run": device_run, "cpu_run": cpu_run,
            "device_vs_cpu": compare_runs(device_run, cpu_run),
            "bf16_vs_fp32": bf16_against_fp32(args, work_dir / "digits_bf16")}


# --- 3. the multi-process path ------------------------------------------------------------------

def gather_check(device: torch.device) -> dict:
    """The global-batch gather's collective and gradient on this process group
    (distributed._GatherRows: with one process gather_global_batch returns its input before any
    collective, so it is called directly). Every rank's rows equal, as the rank's own rows of
    16 × 20 logits, and the gradient of a weighted sum is the weights times the world size."""
    rank, size = dist.get_rank(), dist.get_world_size()
    logits = torch.randn(16, 20, device=device, requires_grad=True)
    gathered = distributed._GatherRows.apply(logits, rank, size)
    weights = torch.arange(20, device=device, dtype=torch.float32)
    (gathered * weights).sum().backward()
    own_rows = gathered.detach()[rank * 16:(rank + 1) * 16]
    return {"backend": dist.get_backend(), "world_size": size,
            "gathered_equal": bool(torch.equal(own_rows, logits.detach())),
            "grad_equal": bool(torch.equal(logits.grad, (weights * size).expand(16, 20)))}


def torchrun_child(args) -> dict:
    """Under `torchrun --nproc_per_node 1` (one launch: its start-up is most of the cost): the
    digits run through the CLI with --sync_bn, then a process group (NCCL on cuda, gloo on cpu)
    and the gather check."""
    out_dir = args.out / "digits_torchrun"
    code = cli.main(digits_flags(args, out_dir, args.device) + ["--sync_bn"])
    if code != 0:
        raise RuntimeError(f"main.py's digits run under torchrun exited with {code}")
    device = train.resolve_device(args.device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return {"torchrun_run": read_run(out_dir), "gather": gather_check(device)}
    finally:
        dist.destroy_process_group()


def run_distributed(args, budget: Budget, work_dir: Path, single: dict | None) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               __file__, "--child", "torchrun", "--device", args.device, "--out", str(work_dir),
               "--seed", str(args.seed), *["--quick"] * args.quick]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=max(budget.left(), 30),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}:\n{done.stderr[-3000:]}")
    section = json.loads(done.stdout.strip().splitlines()[-1])
    section["gather"]["pass"] = section["gather"]["gathered_equal"] and section["gather"]["grad_equal"]
    section["sync_bn_note"] = ("one process: the model keeps BatchNorm (start_run converts only "
                               "for 2+ processes, and SyncBatchNorm skips the sync for one); the "
                               "cross-GPU statistics need 2+ GPUs")
    if single is not None:
        section["torchrun_vs_one_process"] = compare_runs(section["torchrun_run"], single)
    return section


# --- 4. the OpenImages label state --------------------------------------------------------------

def generated_store(num_images: int, num_classes: int, entries_per_image: float,
                    device: torch.device, generator: torch.Generator) -> SparseLabelStore:
    """A SparseLabelStore of random labels made on `device`: about `entries_per_image` distinct
    classes per image (1 + Poisson draws, Zipf-like class frequencies as in OpenImages, repeats
    within an image dropped), 20 % of them positive (+1), the rest negative (−1)."""
    lengths = 1 + torch.poisson(torch.full((num_images,), entries_per_image - 1, device=device),
                                generator=generator).long()
    rows = torch.repeat_interleave(torch.arange(num_images, device=device), lengths)
    weights = 1.0 / (torch.arange(num_classes, device=device, dtype=torch.float64) + 10.0)
    cdf = torch.cumsum(weights / weights.sum(), 0)
    uniform = torch.rand(len(rows), device=device, dtype=torch.float64, generator=generator)
    classes = torch.searchsorted(cdf, uniform).clamp_(max=num_classes - 1)
    keys = torch.unique(rows * num_classes + classes)
    del rows, classes, uniform
    indptr = torch.zeros(num_images + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(torch.bincount(keys // num_classes, minlength=num_images), 0)
    positive = torch.rand(len(keys), device=device, generator=generator) < 0.2
    values = torch.where(positive, 1, -1).to(torch.int8)
    return SparseLabelStore(indptr.cpu(), (keys % num_classes).int().cpu(), values.cpu(),
                            num_classes, device)


def timed_ms(function, steps: int, device: torch.device) -> float:
    """Median milliseconds of `function()` over `steps` calls (5 untimed first), synchronised."""
    times = []
    for step in range(steps + 5):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        if step >= 5:
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def measure_density(args, entries_per_image: float, device: torch.device) -> dict:
    scale = SCALES["quick" if args.quick else "cuda"]
    generator = torch.Generator(device).manual_seed(args.seed)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    store = generated_store(scale["num_images"], scale["num_classes"], entries_per_image, device,
                            generator)
    result = {"entries_per_image": store.num_labelled / store.num_images,
              "num_images": store.num_images, "num_classes": store.num_classes,
              "num_labelled": store.num_labelled, "seconds_to_generate": time.perf_counter() - start,
              "store_bytes": sum(t.numel() * t.element_size()
                                 for t in (store.indptr, store.indices, store.values))}
    if device.type == "cuda":
        result["device_bytes_held"] = torch.cuda.memory_allocated(device) - allocated
        result["device_peak_bytes_while_generating"] = torch.cuda.max_memory_allocated(device)
    cpu_generator = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, store.num_images, (16,), generator=cpu_generator).to(device)
               for _ in range(64)]
    cycle = iter(range(1 << 40))
    result["rows_ms"] = timed_ms(lambda: store.rows(batches[next(cycle) % 64]),
                                 scale["timed_steps"], device)

    def relabel_step():
        sample_ids = batches[next(cycle) % 64]
        relabel = torch.rand(16, store.num_classes, device=device) < RELABELS_PER_STEP / (
            16 * store.num_classes)
        store.apply_relabel(sample_ids, relabel & (store.rows(sample_ids) == 0))
    result["rows_and_relabel_step_ms"] = timed_ms(relabel_step, scale["timed_steps"], device)
    result["relabeled"] = store.num_relabeled
    result["pass"] = result["store_bytes"] <= GOALS["label_state_gb"] * 1e9
    return result


def run_openimages(args, device: torch.device) -> dict:
    return {f"{density:g}_per_image": measure_density(args, density, device)
            for density in DENSITIES}


# --- the report ---------------------------------------------------------------------------------

def goal(value, passes: bool | None, measured: bool) -> str:
    if not measured or value is None:
        return "not measured"
    return "pass" if passes else "**fail**"


def goal_rows(results: dict, on_gpu: bool) -> list[tuple[str, str, str]]:
    """(goal, measured value, pass/fail/not measured) for the table."""
    configs = {**results.get("throughput", {}).get("configs", {}),
               **results.get("compile", {}).get("configs", {})}
    ran = [figures for figures in configs.values() if figures.get("status") == "ran"]
    best_train = max((f["train_fast_images_per_s"] for f in ran), default=None)
    best_eval = max((f["eval_fast_images_per_s"] for f in ran), default=None)
    best_ratio = max((f["train_ratio"] for f in ran), default=None)
    bf16 = configs.get("bf16_channels_last", {})
    overhead = bf16.get("ll_overhead_percent")
    correct = results.get("correctness", {})
    oi = results.get("openimages", {}).get("60_per_image", {})

    def shown(value, form):
        return "—" if value is None else form.format(value)
    return [
        ("training ≥ 900 images/s (448 px, batch 16)", shown(best_train, "{:.0f}"),
         goal(best_train, best_train is not None and best_train >= GOALS["train_images_per_s"],
              on_gpu)),
        ("training ≥ 2× the reference pipeline", shown(best_ratio, "{:.2f}×"),
         goal(best_ratio, best_ratio is not None and best_ratio >= GOALS["train_ratio"], on_gpu)),
        ("evaluation ≥ 2,500 images/s", shown(best_eval, "{:.0f}"),
         goal(best_eval, best_eval is not None and best_eval >= GOALS["eval_images_per_s"], on_gpu)),
        ("LL overhead ≤ 2 % of a step (bf16)", shown(overhead, "{:+.2f} %"),
         goal(overhead, overhead is not None and overhead <= GOALS["ll_overhead_percent"], on_gpu)),
        ("device run = CPU run (counts equal, losses ≤ 1 %)",
         shown(correct.get("device_vs_cpu", {}).get("max_loss_relative_difference"), "{:.2e}"),
         goal(correct.get("device_vs_cpu"), correct.get("device_vs_cpu", {}).get("pass"), True)),
        ("bf16 vs fp32 test mAP < 0.25 point",
         shown(correct.get("bf16_vs_fp32", {}).get("difference"), "{:.3f}"),
         goal(correct.get("bf16_vs_fp32"), correct.get("bf16_vs_fp32", {}).get("pass"), True)),
        ("torchrun = one process; gather exact",
         shown(results.get("distributed", {}).get("torchrun_vs_one_process", {})
               .get("max_loss_relative_difference"), "{:.2e}"),
         goal(results.get("distributed", {}).get("gather"), distributed_pass(results), True)),
        ("OpenImages label state ≤ 2 GB at 60 entries/image",
         shown(oi.get("store_bytes"), "{:,} bytes"), goal(oi or None, oi.get("pass"), True)),
    ]


def distributed_pass(results: dict) -> bool:
    section = results.get("distributed", {})
    return (section.get("gather", {}).get("pass", False)
            and section.get("torchrun_vs_one_process", {"pass": True})["pass"])


def markdown(results: dict) -> str:
    on_gpu = results["device"] == "cuda" and not results["quick"]
    lines = [f"# GPU check, {results['date']}", "",
             f"- command: `{results['command']}`", f"- device: {results['device_name']}",
             f"- torch {results['torch']}, python {results['python']}; "
             f"{results['seconds']:.0f} s of a {results['budget_s']:.0f} s budget", "",
             "| goal | measured | result |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {verdict} |" for name, value, verdict
              in goal_rows(results, on_gpu)]
    lines += ["", "## Throughput (images/s)", "",
              "| configuration | train ref | train fast | ratio | eval ref | eval fast | "
              "loader ref | loader fast | loader cached | LL overhead | loss alone |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for section in ("throughput", "compile"):
        for name, figures in results.get(section, {}).get("configs", {}).items():
            if figures.get("status") != "ran":
                lines.append(f"| {name} | {figures.get('status')} |||||||||| ")
                continue
            lines.append(
                f"| {name} | {figures['train_reference_images_per_s']:.0f} | "
                f"{figures['train_fast_images_per_s']:.0f} | {figures['train_ratio']:.2f}× | "
                f"{figures['eval_reference_images_per_s']:.0f} | "
                f"{figures['eval_fast_images_per_s']:.0f} | "
                f"{figures['loader_reference_images_per_s']:.0f} | "
                f"{figures['loader_fast_images_per_s']:.0f} | "
                f"{figures['loader_cached_images_per_s']:.0f} | "
                f"{figures['ll_overhead_percent']:+.2f} % | "
                f"{figures['loss_alone_overhead_percent']:.2f} % |")
    lines += ["", "## Sections", "", "| section | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {results['sections'][name]['status']} | "
              f"{results['sections'][name].get('seconds', 0):.0f} |" for name in results["sections"]]
    for density, figures in results.get("openimages", {}).items():
        lines.append(f"\nOpenImages at {figures['entries_per_image']:.1f} entries per image "
                     f"({figures['num_images']:,} × {figures['num_classes']:,}): store "
                     f"{figures['store_bytes'] / 1e9:.2f} GB, rows {figures['rows_ms']:.3f} ms, "
                     f"rows + relabel step {figures['rows_and_relabel_step_ms']:.3f} ms")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(results))


# --- main ---------------------------------------------------------------------------------------

SECTION_NAMES = ("throughput", "correctness", "distributed", "openimages", "compile")


def sections(args, budget: Budget, work_dir: Path, results: dict) -> dict:
    """name → a function running that section (results of the earlier ones in `results`)."""
    device = train.resolve_device(args.device)
    return {
        "throughput": lambda: run_throughput(args, budget, work_dir,
                                             ["fp32", "bf16_channels_last"]),
        "correctness": lambda: run_correctness(args, work_dir),
        "distributed": lambda: run_distributed(
            args, budget, work_dir, results.get("correctness", {}).get("device_run")),
        "openimages": lambda: run_openimages(args, device),
        "compile": lambda: run_throughput(args, budget, work_dir, ["bf16_channels_last_compile"]),
    }


def header(args, argv: list[str]) -> dict:
    device = torch.device(args.device)
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python", "scripts/gpu_check.py", *argv]),
            "device": args.device, "quick": args.quick,
            "device_name": benchmark.device_description(device), "torch": torch.__version__,
            "python": platform.python_version(), "budget_s": args.budget_s, "goals": GOALS,
            "sections": {}, "seconds": 0.0}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.child:
        print(json.dumps(torchrun_child(args)))
        return 0
    budget = Budget(args.budget_s)
    results = header(args, argv)
    estimates = SCALES["quick" if args.quick else "cuda"]["estimate_s"]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        for name, section in sections(args, budget, Path(temporary), results).items():
            refusal = ("skipped: --skip" if name in args.skip
                       else "skipped: --quick does not compile (minutes on a CPU)"
                       if name == "compile" and args.quick
                       else budget.refusal(f"the {name} section", estimates[name]))
            start = time.perf_counter()
            if refusal:
                results["sections"][name] = {"status": refusal}
            else:
                print(f"gpu_check: {name} ({budget.left():.0f} s left)", flush=True)
                try:  # device time is scarce: record the failure, run the next section
                    results[name] = section()
                    results["sections"][name] = {"status": "ran"}
                except Exception:  # noqa: BLE001 (reported in the JSON; the exit status is 1)
                    results["sections"][name] = {"status": "error",
                                                 "traceback": traceback.format_exc()}
                    print(traceback.format_exc(), file=sys.stderr, flush=True)
            results["sections"][name]["seconds"] = time.perf_counter() - start
            results["seconds"] = args.budget_s - budget.left()
            write_outputs(results, args.out)
    print((args.out / "gpu_check.md").read_text())
    return 1 if any(s["status"] == "error" for s in results["sections"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
