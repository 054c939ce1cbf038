"""Image datasets and loaders, and the on-device image pipeline.

Workers only decode and resize to uint8 (3×S×S); flip and normalisation run on the training
device (`DevicePreprocess`). Labels never travel through the workers: every dataset yields
`(image_uint8, sample_index)` and the main process looks the labels up by index. An unreadable
image stops the run with a one-line InputError naming the file, also when a worker read it
(`ImageLoader`)."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms.v2 import functional as TF

from largeloss.utils.distributed import SINGLE_PROCESS, EvalBatches, TrainBatches, World
from largeloss.utils.errors import InputError


class ImageFileDataset(Dataset):
    """Decodes image files to RGB, resizes to (S, S) (aspect not kept, no crop, docs/protocol.md), uint8."""

    def __init__(self, image_dir: Path, image_paths: list[str], image_size: int):
        self.image_dir = Path(image_dir)
        self.image_paths = list(image_paths)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.image_dir / self.image_paths[index]
        try:
            with warnings.catch_warnings():  # PIL warns above MAX_IMAGE_PIXELS, raises above 2×
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image = to_rgb(image).resize((self.image_size, self.image_size),
                                                 Image.BILINEAR)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise InputError(f"cannot read image {path} (row {index}): {error} Shrink the file: "
                             f"the model sees it at {self.image_size}×{self.image_size} "
                             f"pixels") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise InputError(f"cannot read image {path} (row {index}): {error}") from None
        return TF.pil_to_tensor(image), index


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image.

    16-bit greyscale (modes I;16, I;16B, I;16L, and I, as Pillow opens 16-bit PNGs and TIFFs) keeps
    its high byte (value >> 8), as Pillow itself reduces 16-bit RGB: convert("RGB") would clip
    every value above 255 to white. Raises ValueError for values outside 0..65535 and for float
    pixels (mode F), whose range is unknown.
    """
    if image.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no known range; save the image "
                         "with 8 or 16 bits per channel")
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"pixel values {values.min()}..{values.max()} (mode {image.mode}) are "
                             f"outside the 16-bit range 0..65535")
        image = Image.fromarray((values >> 8).astype(np.uint8))
    return image.convert("RGB")


class TensorImageDataset(Dataset):
    """Images already in memory: N×3×S×S uint8; image_paths: the files they were decoded from
    (--cache_images), None for generated images."""

    def __init__(self, images: Tensor, image_paths: list[str] | None = None):
        self.images = images
        self.image_paths = image_paths

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], index


def cache_images(images: Dataset, num_workers: int, batch_size: int = 64) -> TensorImageDataset:
    """Decode and resize every image once (in `num_workers` processes) into one N×3×S×S uint8
    tensor, so that later epochs read memory instead of JPEGs. The pixels are the same, so the
    maths is too. Costs N·3·S² bytes of RAM: Pascal's 5,717 training images at 448 px take 3.4 GB,
    COCO's 82,081 take 49 GB (too many)."""
    if isinstance(images, TensorImageDataset) or len(images) == 0:
        return images
    first_image, _ = images[0]
    cached = torch.empty((len(images), *first_image.shape), dtype=first_image.dtype)
    for batch, sample_ids in ImageLoader(images, batch_size=batch_size, num_workers=num_workers):
        cached[sample_ids] = batch
    return TensorImageDataset(cached, getattr(images, "image_paths", None))


@dataclass(frozen=True)
class ReadFailure:
    """An InputError raised in a loader worker, passed on as data: raised there, DataLoader would
    re-raise it in the main process inside a worker traceback ("Caught InputError in DataLoader
    worker process 0. Original Traceback ...") instead of its one-line message."""
    message: str


class _FailuresAsData(Dataset):
    """`images`, yielding (ReadFailure, index) where reading the item raises InputError."""

    def __init__(self, images: Dataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            return self.images[index]
        except InputError as error:
            return ReadFailure(str(error)), index


def collate_or_fail(batch: list):
    """default_collate, or the batch's first ReadFailure."""
    failures = [image for image, _ in batch if isinstance(image, ReadFailure)]
    return failures[0] if failures else default_collate(batch)


def iterate(batches):
    """The batches of an ImageLoader (or any loader built with _FailuresAsData and
    collate_or_fail), raising a worker's ReadFailure here as InputError with its message."""
    for batch in batches:
        if isinstance(batch, ReadFailure):
            raise InputError(batch.message)
        yield batch


class ImageLoader(DataLoader):
    """A DataLoader of (uint8 images, sample indices) whose unreadable image stops iteration with
    the dataset's one-line InputError (file and reason) in the main process, with or without
    workers. Options as DataLoader's; `loader.dataset.images` is the dataset passed in."""

    def __init__(self, images: Dataset, **options):
        with torch_worker_count_warning_off():
            super().__init__(_FailuresAsData(images), collate_fn=collate_or_fail, **options)

    def __iter__(self):
        with torch_worker_count_warning_off():
            batches = super().__iter__()
        return iterate(batches)


@contextmanager
def torch_worker_count_warning_off():
    """DataLoader warns about too many workers at construction and again at the first iteration,
    for every loader; `warn_if_too_many_workers` says it once per run instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        yield


def warn_if_too_many_workers(num_workers: int) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus and num_workers > cpus:
        warnings.warn(f"--num_workers {num_workers} exceeds the {cpus} CPUs this process may use; "
                      f"loading may slow down (each loader starts that many workers)")


def make_loader(images: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                pin_memory: bool, world: World = SINGLE_PROCESS) -> ImageLoader:
    """A loader of (uint8 images, sample indices), this process's share of them.

    shuffle: training batches (distributed.TrainBatches): call `loader.batch_sampler.set_epoch(t)`
        so the order is a pure function of (seed, epoch) whatever the number of processes, which
        makes --resume exact; `batch_size` is the global batch. Otherwise evaluation batches of
        this process's block of the split (distributed.EvalBatches).
    """
    batches = (TrainBatches(len(images), batch_size, seed, world) if shuffle
               else EvalBatches(len(images), batch_size, world))
    # Its own generator: each new iterator draws a base seed from it, and from torch's global
    # generator without one, which then drives other draws (once per epoch with no workers, once
    # per run with persistent workers): --num_workers would change the numbers.
    return ImageLoader(images, batch_sampler=batches, num_workers=num_workers,
                       pin_memory=pin_memory, persistent_workers=num_workers > 0,
                       prefetch_factor=4 if num_workers > 0 else None,
                       generator=torch.Generator().manual_seed(seed))


FLIP_STREAM = 0xF11B  # keeps the flips' random stream apart from the data order's (seed + epoch)


def flip_draws(seed: int, epoch: int, num_rows: int) -> Tensor:
    """N float32 uniform draws in [0, 1), one per training sample (flip when < 0.5): a function of
    (seed, epoch, sample) only, so that neither --num_workers, nor the number of processes, nor
    any other draw changes a run's augmentation."""
    generator = np.random.default_rng([seed % 2**64, epoch, FLIP_STREAM])
    return torch.from_numpy(generator.random(num_rows, dtype=np.float32))


class DevicePreprocess:
    """uint8 B×3×S×S on the device → normalised float, with a random horizontal flip (p = 0.5)
    per image when training. The flips are drawn per sample (`epoch_draws`, `flip_draws`): each
    process passes the draws of its shard's sample ids as `draws`."""

    FLIP_BELOW = 0.5  # an image is flipped when its draw is below this

    def __init__(self, mean, std, device: torch.device, channels_last: bool = False):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def epoch_draws(self, seed: int, epoch: int, num_rows: int) -> Tensor:
        """The epoch's N flip draws on the device, indexed by sample id."""
        return flip_draws(seed, epoch, num_rows).to(self.mean.device)

    def __call__(self, images: Tensor, train: bool, draws: Tensor | None = None) -> Tensor:
        """images: B×3×S×S uint8; draws: B uniform draws (flip when < 0.5) when training (drawn
        from torch's generator when not given: benchmarks)."""
        images = images.float()
        if train:
            draws = torch.rand(images.shape[0], device=images.device) if draws is None else draws
            flip = (draws < self.FLIP_BELOW).view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(3), images)
        images = (images - self.mean) / self.std
        return images.contiguous(memory_format=self.memory_format)
