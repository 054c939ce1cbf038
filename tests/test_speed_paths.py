"""Speed changes no maths (issue 8): the fast data path (uint8 from the workers, flip and
normalisation on the device) gives the reference path's images and losses, the image cache gives the
same pixels, bf16 autocast leaves the test mAP in place, and scripts/benchmark.py runs end to end."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

from largeloss.data import loading
from largeloss.engine import train  # noqa: E402
from largeloss.experiment.config import parse_args  # noqa: E402
from largeloss.methods.label_stores import ObservedLabelStore
from largeloss.methods.losses import compute_loss
from largeloss.nn.models import build_model  # noqa: E402

BENCHMARK = REPO_ROOT / "scripts" / "benchmark.py"
IMAGE_SIZE = 40
NUM_IMAGES = 6
NUM_CLASSES = 5
LOSS_METHODS = ("an", "an_ls", "wan", "LL-R", "LL-Ct", "LL-Cp")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("speed_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = load_benchmark()


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """(folder, file names, N×L observed labels) of a few generated 500×375 JPEGs."""
    folder = tmp_path_factory.mktemp("jpegs")
    names = benchmark.write_jpeg_set(folder, NUM_IMAGES, seed=0)
    return folder, names, benchmark.single_positive_labels(NUM_IMAGES, NUM_CLASSES, seed=0)


def reference_batch(jpegs, mean, std, flip_probability):
    """One batch through the authors'-style loader: float32 images and float32 labels."""
    folder, names, observed = jpegs
    images = benchmark.ReferenceImageDataset(folder, names, observed, IMAGE_SIZE, mean, std,
                                             flip_probability)
    return next(iter(benchmark.reference_loader(images, NUM_IMAGES, False, num_workers=0)))


def fast_uint8_batch(jpegs):
    """One batch through the project's loader: uint8 images and sample indices."""
    folder, names, _ = jpegs
    images = loading.ImageFileDataset(folder, names, IMAGE_SIZE)
    loader = loading.make_loader(images, NUM_IMAGES, False, num_workers=0, seed=0, pin_memory=False)
    return next(iter(loader))


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_gives_the_reference_images_and_losses(jpegs, flip, channels_last):
    torch.manual_seed(0)
    model = build_model("small_cnn", "none", NUM_CLASSES).eval()
    reference_images, reference_observed = reference_batch(jpegs, model.mean, model.std,
                                                           1.0 if flip else 0.0)
    uint8_images, sample_ids = fast_uint8_batch(jpegs)
    assert uint8_images.dtype == torch.uint8
    if flip:  # the flip the device path would draw for every image
        uint8_images = uint8_images.flip(3)
    preprocess = loading.DevicePreprocess(model.mean, model.std, torch.device("cpu"), channels_last)
    fast_images = preprocess(uint8_images, train=False)
    torch.testing.assert_close(fast_images, reference_images, rtol=0, atol=1e-5)

    fast_model = model.to(memory_format=torch.channels_last) if channels_last else model
    with torch.no_grad():
        reference_logits = model(reference_images)
        fast_logits = fast_model(fast_images)
    fast_observed = ObservedLabelStore(jpegs[2]).rows(sample_ids)
    for method in LOSS_METHODS:
        reference = compute_loss(method, reference_logits, reference_observed, epoch=3, delta_rel=5.0)
        fast = compute_loss(method, fast_logits, fast_observed, epoch=3, delta_rel=5.0)
        torch.testing.assert_close(fast.loss, reference.loss, rtol=1e-5, atol=1e-6, msg=method)
        assert torch.equal(fast.modified, reference.modified), method
    assert compute_loss("LL-Ct", fast_logits, fast_observed, epoch=3, delta_rel=5.0).modified.any()


def test_device_flip_is_per_image_mirror_of_the_reference(jpegs):
    """Training mode: every image is the reference image or its mirror, never anything else."""
    mean = std = (0.5, 0.5, 0.5)
    unflipped, _ = reference_batch(jpegs, mean, std, 0.0)
    mirrored, _ = reference_batch(jpegs, mean, std, 1.0)
    uint8_images, _ = fast_uint8_batch(jpegs)
    preprocess = loading.DevicePreprocess(mean, std, torch.device("cpu"))
    torch.manual_seed(3)
    flipped_seen = set()
    for _ in range(4):
        images = preprocess(uint8_images, train=True)
        for image, plain, mirror in zip(images, unflipped, mirrored):
            is_plain = torch.allclose(image, plain, atol=1e-5)
            assert is_plain or torch.allclose(image, mirror, atol=1e-5)
            flipped_seen.add(not is_plain)
    assert flipped_seen == {False, True}


def test_cached_images_are_the_decoded_images(jpegs):
    folder, names, _ = jpegs
    images = loading.ImageFileDataset(folder, names, IMAGE_SIZE)
    cached = loading.cache_images(images, num_workers=0, batch_size=4)
    assert isinstance(cached, loading.TensorImageDataset) and len(cached) == len(images)
    for index in range(len(images)):
        image, sample_id = cached[index]
        assert sample_id == index and torch.equal(image, images[index][0])
    assert loading.cache_images(cached, num_workers=0) is cached


def test_bf16_autocast_does_not_move_the_map(tmp_path):
    """A small_cnn trained 3 epochs on digits; its test mAP under fp32 and under CPU bf16 autocast
    differ by < 0.25 point (docs/speed.md: measured 0.01-0.10 across CPU instruction sets and
    thread counts; 32 px and channels_last keep CPU bf16, which is emulated, fast enough)."""
    config = parse_args(["--dataset", "digits", "--digits_train_size", "600", "--image_size", "32",
                         "--epochs", "3", "--device", "cpu", "--num_workers", "0",
                         "--channels_last", "--out_dir", str(tmp_path)])
    run = train.start_run(config)
    phase = train.end_to_end_phase(run)
    for epoch in range(1, config.epochs + 1):
        train.train_one_epoch(phase, run.method, epoch, run.device, config.log_every)
    fp32, bf16 = (train.evaluate(run.model, run.data.test, run.loaders["test"], run.preprocess,
                                 run.device, amp) for amp in ("off", "bf16"))
    assert fp32["scores"].dtype == bf16["scores"].dtype == np.float32
    assert not np.array_equal(fp32["scores"], bf16["scores"])  # bf16 did run
    assert fp32["map"] > 30  # a trained model, not chance
    assert abs(fp32["map"] - bf16["map"]) < 0.25, (fp32["map"], bf16["map"])


def test_benchmark_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--device", "cpu", "--num_images", "32", "--image_size",
         "48", "--steps", "2", "--repeats", "1", "--num_workers", "1", "--work_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("summary: train "), lines[-1]
    assert "LL overhead" in lines[-1] and "loader" in lines[-1]
    assert len(list((tmp_path / "benchmark_jpegs").glob("*.jpg"))) == 32


def test_benchmark_scaling_mode_reports_a_table(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--device", "cpu", "--nproc", "1", "--num_images", "16",
         "--image_size", "32", "--work_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-3] == "| processes | global batch | images/s | speed-up | efficiency |"
    assert lines[-1].startswith("| 1 | 16 | ") and lines[-1].endswith("| 1.00x | 100 % |")
    assert len((tmp_path / "nproc1" / "metrics.jsonl").read_text().splitlines()) == 2
