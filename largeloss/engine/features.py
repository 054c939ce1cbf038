"""Features: extracting, caching and loading the pooled backbone features that a linear head
trains on (Cole et al.'s LinearInit and linear mode, docs/linear.md), and the batches of them that the
training loop (train.py) iterates like a loader of images.

    python main.py --dataset coco --train_mode linear_init   # phase 1: the head on cached features
                                                             # (25 epochs), phase 2: end-to-end from it
    python main.py --dataset coco --train_mode linear        # phase 1 only: the head, tested
    python main.py --dataset features --data_root DIR --train_mode linear    # your own vectors

Feature cache. Pooled backbone features (`MultiLabelNet.pooled_features`) of the unflipped images
(eval mode, the validation preprocessing, float32), extracted once and kept in `--feature_cache`
(default `<data_root>/features/`; digits, which has no folder: `data/digits_cache/`). One
`<name>.npy` per split (N×D float32, rows in the split's order) and beside it `<name>.json`, which
records what produced it: dataset, data root, arch, weights (name; file path, size and mtime; or
the seed of a random init), image size, split, rows and a sha256 of the image list. When the
record disagrees with the run, the cache is rebuilt and a note says why; it is never used stale.
Names follow Cole et al.: `{phase}_features_imagenet_resnet50.npy` (imagenet_v1 weights, 448 px;
other weights, archs or sizes change the name). For a Cole folder the phases are the OFFICIAL
ones, so the authors' published files fit: `train` holds the trainer's train and val rows (split
by formats.train_val_split), `val` is the test set. A file without a sidecar, in the cache folder
or in `<data_root>` where Cole's code keeps it, is used only as their published features: resnet50,
imagenet_v1, 448 px and matching row counts (a note says so); otherwise it is refused, never
overwritten.

Features dataset (--dataset features). `<data_root>/features.npz`, or --data_root FILE.npz:
    train_features  N×D float           required
    train_labels    N×L in {0, 1}       clean labels; needed when train_observed or val_* is
                                        absent, and by bce, bce_ls and iun
    train_observed  N×L in {-1, 0, +1}  optional; default formats.make_observed_labels(train_labels)
                                        (one positive per row, Cole et al.'s RandomState(1200))
    val_features    M×D float           optional, together with val_labels (M×L in {0, 1}, clean);
    val_labels                          default: 20 % of the train rows (formats.train_val_split)
    test_features   T×D float           required
    test_labels     T×L in {0, 1}       required (clean)
    class_names     L strings           optional (default class_0, class_1, ...)

Linear phase (train.py). The head, nn.Linear(D, L), trained on features held as one tensor on the
device: batches (`FeatureBatches`) are index slices of a permutation drawn from (seed + epoch), as
a DistributedSampler draws it; the run's method computes the loss, its LL epoch count starting at
1, and ROLE trains its estimator at head_lr_mult × --linear_lr. Adam without weight decay (Cole et
al.), --linear_epochs epochs (no early stop), val mAP every epoch; the best-val epoch's head and
method state are kept. LinearInit's phase 2 starts from them, with a fresh optimizer and the LL
epoch count again at 1.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from largeloss.data import formats, loading
from largeloss.data.loading import DevicePreprocess, ImageFileDataset, TensorImageDataset
from largeloss.data.splits import ExperimentData, Split
from largeloss.experiment.presets import PAPER_DATASETS
from largeloss.nn.models import SMALL_CNNS, MultiLabelNet, build_image_model, is_local_path, predict
from largeloss.utils import atomic
from largeloss.utils.distributed import SINGLE_PROCESS, EvalBatches, TrainBatches, World
from largeloss.utils.errors import InputError

PAPER_IMAGE_SIZE = 448
COLE_FEATURE_DIM = 2048   # ResNet-50's pooled features
FEATURES_FILE = "features.npz"
NPZ_KEYS = ("train_features", "train_labels", "train_observed", "val_features", "val_labels",
            "test_features", "test_labels", "class_names")
SPLITS = ("train", "val", "test")

Extractor = Callable[[], tuple[MultiLabelNet, DevicePreprocess]]


class FeatureDataset(Dataset):
    """Pre-computed vectors, one N×D float32 tensor; yields (vector, index) like the image sets."""

    def __init__(self, features: Tensor):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.features[index], index


def features_of(split: Split) -> Tensor:
    """N×D features of a split whose images are a FeatureDataset."""
    return split.images.features


def with_features(data: ExperimentData, features: dict[str, Tensor]) -> ExperimentData:
    """`data` with each split's images replaced by its features (labels unchanged)."""
    return dataclasses.replace(data, **{
        name: dataclasses.replace(getattr(data, name), images=FeatureDataset(features[name]))
        for name in SPLITS})


# --- the feature cache --------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheUnit:
    """One cached file and where its rows go.

    name: the phase in the file name: for a Cole folder the OFFICIAL phase ("train" holds the
        trainer's train and val rows, "val" is its test set), otherwise the trainer's split.
    parts: (trainer split, the file rows it takes) pairs.
    """
    name: str
    parts: tuple[tuple[str, np.ndarray], ...]

    @property
    def num_rows(self) -> int:
        return sum(len(rows) for _, rows in self.parts)


def cache_units(dataset: str, data: ExperimentData) -> list[CacheUnit]:
    if dataset in PAPER_DATASETS:  # docs/protocol.md: official train = train + val, official val = test
        num_official_train = len(data.train) + len(data.val)
        train_rows, val_rows = formats.train_val_split(num_official_train)
        if len(train_rows) != len(data.train):
            raise ValueError(f"{dataset}: train/val sizes {len(data.train)}/{len(data.val)} are "
                             f"not formats.train_val_split({num_official_train})")
        return [CacheUnit("train", (("train", train_rows), ("val", val_rows))),
                CacheUnit("val", (("test", np.arange(len(data.test))),))]
    return [CacheUnit(name, ((name, np.arange(len(getattr(data, name)))),)) for name in SPLITS]


@dataclass(frozen=True)
class FeatureSource:
    """What a run's features are made from: its images (dataset, data_root) and the backbone that
    pools them (arch, weights, image_size; seed, for a random init). Two runs with equal sources
    share cached features; feature_cache: the cache folder (None: feature_cache_dir's default)."""
    dataset: str
    data_root: str
    arch: str
    weights: str
    image_size: int
    seed: int
    feature_cache: str | None = None


def feature_cache_dir(source: FeatureSource) -> Path:
    if source.feature_cache:
        return Path(source.feature_cache)
    root = Path(source.data_root)
    if source.dataset == "digits":  # generated in memory: no data folder to write into
        return root.with_name(root.name + "_cache")
    return root / "features"


def random_init(arch: str, weights: str) -> bool:
    """The backbone starts from a seeded random init (small_cnn ignores --weights)."""
    return arch in SMALL_CNNS or weights == "none"


def weights_identity(source: FeatureSource) -> dict:
    if random_init(source.arch, source.weights):
        return {"name": "random_init", "seed": source.seed}
    if is_local_path(source.weights):
        path = Path(source.weights).resolve()
        if not path.is_file():
            raise InputError(f"--weights {source.weights}: no such file")
        stat = path.stat()
        return {"file": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"name": source.weights}


def cache_file_name(source: FeatureSource, phase: str) -> str:
    """`{phase}_features_{weights}_{arch}[_{size}px].npy`; Cole's name for imagenet_v1 at 448 px."""
    if random_init(source.arch, source.weights):
        weights = "random"
    elif is_local_path(source.weights):
        weights = "file-" + Path(source.weights).stem
    else:
        weights = {"imagenet_v1": "imagenet"}.get(source.weights, source.weights)
    size = "" if source.image_size == PAPER_IMAGE_SIZE else f"_{source.image_size}px"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{phase}_features_{weights}_{source.arch}{size}") + ".npy"


def images_digest(unit: CacheUnit, data: ExperimentData) -> str:
    """sha256 of the unit's images in file order: their folder and relative paths, or the pixels
    of in-memory images."""
    digest = hashlib.sha256()
    sources = [(getattr(data, name).images, rows) for name, rows in unit.parts]
    if all(isinstance(images, ImageFileDataset) for images, _ in sources):
        paths = np.empty(unit.num_rows, dtype=object)
        for images, rows in sources:
            folder = images.image_dir.resolve()
            paths[rows] = [f"{folder}/{path}" for path in images.image_paths]
        digest.update("\n".join(paths).encode())
        return digest.hexdigest()
    for images, rows in sources:
        if not isinstance(images, TensorImageDataset):
            raise TypeError(f"cannot identify the images of {type(images).__name__} for the cache")
        digest.update(rows.astype(np.int64).tobytes())
        digest.update(images.images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_identity(source: FeatureSource, unit: CacheUnit, data: ExperimentData) -> dict:
    """What a cached file must have been made from to be used by this run."""
    return {"dataset": source.dataset,
            "data_root": None if source.dataset == "digits" else str(Path(source.data_root).resolve()),
            "arch": source.arch, "weights": weights_identity(source),
            "image_size": source.image_size, "split": unit.name, "rows": unit.num_rows,
            "images_sha256": images_digest(unit, data)}


def sidecar_of(path: Path) -> Path:
    return path.with_suffix(".json")


def read_feature_file(path: Path, num_rows: int, num_features: int | None = None) -> np.ndarray:
    """An N×D float32 array from `path`, checked: rows, width, finite values."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"feature file {path} cannot be read: {error}") from None
    if array.ndim != 2 or array.dtype.kind != "f":
        raise InputError(f"feature file {path}: expected an N×D float array, got shape "
                         f"{array.shape} dtype {array.dtype}")
    if array.shape[0] != num_rows or (num_features is not None and array.shape[1] != num_features):
        raise InputError(f"feature file {path} has shape {array.shape}, expected "
                         f"({num_rows}, {num_features or 'D'})")
    if not np.isfinite(array).all():
        raise InputError(f"feature file {path} holds NaN or infinite values; delete it to rebuild")
    return array.astype(np.float32, copy=False)


def stale_fields(recorded: dict, identity: dict) -> list[str]:
    return [f"{key} {recorded.get(key)!r} (this run: {value!r})"
            for key, value in identity.items() if recorded.get(key) != value]


def cole_published_features(path: Path, source: FeatureSource, num_rows: int) -> np.ndarray | None:
    """A sidecar-less file taken as Cole et al.'s published features, or None when it cannot be."""
    cole_setting = (source.dataset in PAPER_DATASETS and source.arch == "resnet50"
                    and source.weights == "imagenet_v1" and source.image_size == PAPER_IMAGE_SIZE)
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError) as error:
        raise InputError(f"feature file {path} cannot be read: {error}") from None
    if not cole_setting or shape != (num_rows, COLE_FEATURE_DIM):
        print(f"note: {path} has no sidecar and is not Cole et al.'s published features for this "
              f"run (needs a paper dataset, resnet50, imagenet_v1, 448 px, shape "
              f"({num_rows}, {COLE_FEATURE_DIM}); it has {shape})", flush=True)
        return None
    print(f"using {path}: no sidecar, taken as Cole et al.'s published features (resnet50, "
          f"imagenet_v1, 448 px; its {num_rows} rows match)", flush=True)
    return read_feature_file(path, num_rows, COLE_FEATURE_DIM)


def load_or_extract(unit: CacheUnit, data: ExperimentData, source: FeatureSource,
                    extract: Callable[[CacheUnit], np.ndarray]) -> np.ndarray:
    """The unit's features from the cache when it was made for this run, else extract(unit), cached."""
    identity = cache_identity(source, unit, data)
    name = cache_file_name(source, unit.name)
    path = feature_cache_dir(source) / name
    if path.is_file() and sidecar_of(path).is_file():
        recorded = json.loads(sidecar_of(path).read_text())
        stale = stale_fields(recorded, identity)
        if not stale:
            return read_feature_file(path, unit.num_rows, recorded.get("dim"))
        print(f"feature cache {path} is stale, rebuilding: it was made for "
              f"{'; '.join(stale)}", flush=True)
    else:
        for candidate in dict.fromkeys((path, Path(source.data_root) / name)):
            if candidate.is_file() and not sidecar_of(candidate).is_file():
                array = cole_published_features(candidate, source, unit.num_rows)
                if array is not None:
                    return array
                if candidate == path:
                    raise InputError(f"{path} has no sidecar {sidecar_of(path).name}, so its origin "
                                     f"is unknown; it is never overwritten: move it away or pass "
                                     f"another --feature_cache")
    start = time.perf_counter()
    array = extract(unit)
    write_cache(path, array, {**identity, "dim": array.shape[1], "dtype": "float32",
                              "seconds": round(time.perf_counter() - start, 1),
                              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return array


def write_cache(path: Path, array: np.ndarray, record: dict) -> None:
    """The array, then its sidecar (the old sidecar goes first: a crash leaves no false record)."""
    sidecar_of(path).unlink(missing_ok=True)
    atomic.save_npy(path, array)
    atomic.save_text(sidecar_of(path), json.dumps(record, indent=2))
    print(f"cached features {array.shape} in {path}", flush=True)


def extract_unit(unit: CacheUnit, data: ExperimentData, model: MultiLabelNet,
                 preprocess: DevicePreprocess, device: torch.device, batch_size: int,
                 num_workers: int, arch: str) -> np.ndarray:
    """The unit's N×D float32 features, its splits' rows in file order (arch: for the message)."""
    array = None
    for split_name, rows in unit.parts:
        images = getattr(data, split_name).images
        print(f"extracting {arch} features of the {split_name} split ({len(images)} images)",
              flush=True)
        features = extract_features(model, images, preprocess, device, batch_size, num_workers)
        if array is None:
            array = np.empty((unit.num_rows, features.shape[1]), dtype=np.float32)
        array[rows] = features
    return array


def extract_features(model: MultiLabelNet, images: Dataset, preprocess: DevicePreprocess,
                     device: torch.device, batch_size: int, num_workers: int) -> np.ndarray:
    """N×D float32 pooled features of the unflipped images (eval mode), in dataset order."""
    loader = loading.make_loader(images, batch_size, False, num_workers, 0, device.type == "cuda")
    return predict(model.pooled_features, loader, preprocess, device, "off")


def cached_feature_data(source: FeatureSource, data: ExperimentData, device: torch.device,
                        get_extractor: Extractor, batch_size: int, num_workers: int) -> ExperimentData:
    """`data` with features in place of images, from the cache or extracted by get_extractor()'s
    model (called only when something has to be extracted; batch_size, num_workers: its loader).

    The global CPU RNG is left as found (an extraction's DataLoader draws a seed from it), so a
    run does not depend on whether its features were cached.
    """
    def extract(unit: CacheUnit) -> np.ndarray:
        model, preprocess = get_extractor()
        return extract_unit(unit, data, model, preprocess, device, batch_size, num_workers, source.arch)

    features = {}
    with torch.random.fork_rng(devices=[]):
        for unit in cache_units(source.dataset, data):
            array = load_or_extract(unit, data, source, extract)
            for split_name, rows in unit.parts:
                features[split_name] = torch.from_numpy(np.ascontiguousarray(array[rows])).to(device)
    return with_features(data, features)


def backbone_extractor(source: FeatureSource, num_classes: int, device: torch.device,
                       channels_last: bool) -> Extractor:
    """Builds the run's model on first call, as train.start_run does (same seed, same weights)."""
    @functools.cache
    def build() -> tuple[MultiLabelNet, DevicePreprocess]:
        torch.manual_seed(source.seed)
        model = build_image_model(source.arch, source.weights, num_classes, device,
                                  channels_last, source.image_size)
        return model, DevicePreprocess(model.mean, model.std, device, channels_last)
    return build


# --- the features dataset -----------------------------------------------------------------------

def load_features_npz(data_root: Path) -> ExperimentData:
    """--dataset features: the .npz layout of this module's docstring, validated; CPU tensors."""
    path = data_root / FEATURES_FILE if data_root.is_dir() else data_root
    if not path.is_file():
        raise InputError(f"--dataset features: {path} does not exist (expected a .npz with keys "
                         f"{', '.join(NPZ_KEYS)}; see features.py)")
    arrays = read_npz(path)
    check_npz_keys(path, arrays)
    features = {key: checked_features(path, key, arrays[key])
                for key in ("train_features", "val_features", "test_features") if key in arrays}
    widths = {key: value.shape[1] for key, value in features.items()}
    if len(set(widths.values())) > 1:
        raise InputError(f"{path}: the feature keys differ in width (columns): {widths}")
    labels = {}
    for key, allowed in (("train_labels", (0, 1)), ("train_observed", (-1, 0, 1)),
                         ("val_labels", (0, 1)), ("test_labels", (0, 1))):
        if key in arrays:
            labels[key] = checked_labels(path, key, arrays[key], allowed,
                                         features[key.split("_")[0] + "_features"])
    classes = {key: value.shape[1] for key, value in labels.items()}
    if len(set(classes.values())) > 1:
        raise InputError(f"{path}: the label keys differ in number of classes (columns): {classes}")
    num_classes = next(iter(classes.values()))
    class_names = checked_class_names(path, arrays.get("class_names"), num_classes)
    return features_experiment(path, features, labels, class_names)


def check_npz_keys(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The keys of the layout, and the ones that must come together."""
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; the layout has {list(NPZ_KEYS)}")
    for key in ("train_features", "test_features", "test_labels"):
        if key not in arrays:
            raise InputError(f"{path}: missing key '{key}'")
    for present, partner in (("val_features", "val_labels"), ("val_labels", "val_features")):
        if present in arrays and partner not in arrays:
            raise InputError(f"{path}: key '{present}' needs '{partner}' too")
    if "train_observed" not in arrays and "train_labels" not in arrays:
        raise InputError(f"{path}: needs 'train_observed' or 'train_labels' (missing key)")
    if "val_features" not in arrays and "train_labels" not in arrays:
        raise InputError(f"{path}: without 'val_features'/'val_labels' the val split comes from the "
                         f"train rows, and needs their clean labels: missing key 'train_labels'")


def features_experiment(path: Path, features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                        class_names: list[str]) -> ExperimentData:
    """The train / val / test splits of checked arrays (val from the train rows when absent)."""
    true_train = labels.get("train_labels")
    observed = labels.get("train_observed")
    if observed is None:
        observed = formats.make_observed_labels(true_train)
    observed = observed.astype(np.int8)
    num_train = len(features["train_features"])
    if "val_features" in features:
        train_rows = np.arange(num_train)
        val_features, val_labels = features["val_features"], labels["val_labels"]
    else:
        train_rows, val_rows = formats.train_val_split(num_train)
        val_features, val_labels = features["train_features"][val_rows], true_train[val_rows]
    if len(train_rows) == 0 or len(val_features) == 0:
        raise InputError(f"{path}: too few train rows ({num_train}) for a train/val split")

    def split(vectors: np.ndarray, split_observed: np.ndarray, true: np.ndarray | None) -> Split:
        return Split(FeatureDataset(torch.from_numpy(np.ascontiguousarray(vectors))),
                     split_observed, true)

    return ExperimentData(
        train=split(features["train_features"][train_rows], observed[train_rows],
                    None if true_train is None else true_train[train_rows]),
        val=split(val_features, val_labels.astype(np.int8), val_labels),
        test=split(features["test_features"], labels["test_labels"].astype(np.int8),
                   labels["test_labels"]),
        class_names=class_names)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(f"{path}: not a readable .npz file ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: expected a .npz archive of named arrays (np.savez), got a "
                         f"single array")
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except (ValueError, OSError, zipfile.BadZipFile) as error:
                raise InputError(f"{path}: key '{key}' is not a plain array ({error})") from None
    return arrays


def checked_features(path: Path, key: str, values: np.ndarray) -> np.ndarray:
    """N×D float32, finite."""
    if values.ndim != 2 or values.shape[0] == 0 or values.dtype.kind not in "fiu":
        raise InputError(f"{path}: key '{key}' must be a non-empty N×D array of numbers, got shape "
                         f"{values.shape} dtype {values.dtype}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        row = int(np.argwhere(~np.isfinite(values))[0, 0])
        raise InputError(f"{path}: key '{key}' holds NaN or infinite values (first at row {row})")
    return values


def checked_labels(path: Path, key: str, values: np.ndarray, allowed: tuple[int, ...],
                   features: np.ndarray) -> np.ndarray:
    """N×L in `allowed`, as many rows as the split's features."""
    try:
        formats.check_label_matrix(values, allowed, f"{path}: key '{key}'")
    except ValueError as error:
        raise InputError(str(error)) from None
    feature_key = key.split("_")[0] + "_features"
    if len(values) != len(features):
        raise InputError(f"{path}: key '{key}' has {len(values)} rows but '{feature_key}' has "
                         f"{len(features)}")
    return values.astype(np.int8 if -1 in allowed else np.uint8)


def checked_class_names(path: Path, names: np.ndarray | None, num_classes: int) -> list[str]:
    if names is None:
        return [f"class_{index}" for index in range(num_classes)]
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) != num_classes:
        raise InputError(f"{path}: key 'class_names' must be {num_classes} strings (one per label "
                         f"column), got shape {names.shape} dtype {names.dtype}")
    return [str(name) for name in names.astype(str)]


# --- what the training loop iterates ------------------------------------------------------------

class FeatureBatches:
    """Batches of N×D features already on the device: yields (B×D features, B sample ids), as a
    loader of images yields (images, sample ids), with the same batch samplers
    (distributed.TrainBatches: the permutation of (seed + epoch), set with batch_sampler.set_epoch;
    distributed.EvalBatches: this process's block in order). Padding rows (id −1) read row 0."""

    def __init__(self, features: Tensor, batch_size: int, shuffle: bool, seed: int,
                 world: World = SINGLE_PROCESS):
        self.features = features
        self.batch_sampler = (TrainBatches(len(features), batch_size, seed, world) if shuffle
                              else EvalBatches(len(features), batch_size, world))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = list(self.batch_sampler)  # the epoch's ids go to the device in one copy
        order = torch.tensor([row for batch in batches for row in batch], dtype=torch.long)
        order = order.to(self.features.device)
        for sample_ids in order.split([len(batch) for batch in batches]):
            rows = sample_ids.clamp(min=0)
            yield self.features.index_select(0, rows), sample_ids  # 4× faster than [ ]


EVAL_CHUNK_ROWS = 16384  # rows per matrix product when scoring features


def feature_loaders(data: ExperimentData, batch_size: int, seed: int,
                    world: World = SINGLE_PROCESS) -> dict:
    """train (shuffled, `batch_size`), train_eval, val and test (in order) batches of a features
    ExperimentData."""
    def batches(split: Split, size: int, shuffle: bool) -> FeatureBatches:
        return FeatureBatches(features_of(split), size, shuffle, seed, world)
    return {"train": batches(data.train, batch_size, True),
            "train_eval": batches(data.train, EVAL_CHUNK_ROWS, False),
            "val": batches(data.val, EVAL_CHUNK_ROWS, False),
            "test": batches(data.test, EVAL_CHUNK_ROWS, False)}


class PassThrough:
    """The preprocessing of features: none (the images' DevicePreprocess has the same interface)."""

    def random_draws(self, num_rows: int) -> None:
        return None

    def __call__(self, features: Tensor, train: bool, draws: Tensor | None = None) -> Tensor:
        return features


no_preprocess = PassThrough()
