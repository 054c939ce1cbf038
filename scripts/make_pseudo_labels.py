"""Make a pseudo-label folder (<name>.pl, docs/pseudo_labels.md) for a dataset's training split, once, offline.

    # AEVLP's DAMP inputs: raw CLIP ViT-B/16 cosines of the whole image and a g×g grid of tiles,
    # unflipped and flipped (the method applies DAMP's temperature/gate/threshold at each step)
    python scripts/make_pseudo_labels.py --dataset coco --kind damp
    # VLPL: CLIP ViT-L/14-336 on the 448 px training tensor resized to 336, both flips, plus its
    # fixed rule softmax(c/0.01) > 0.3 as labels.npy
    python scripts/make_pseudo_labels.py --dataset coco --kind vlpl
    # the user's own data, without a network: a local weights file
    python scripts/make_pseudo_labels.py --dataset custom --data_root data/mine --kind damp \\
        --clip_weights ~/weights/ViT-B-16-openai.bin
    # digits: a simulated pseudo-labeller of set precision and recall, from the clean labels
    python scripts/make_pseudo_labels.py --dataset digits --simulate_precision 0.9 --simulate_recall 0.5

Needs open_clip (pip install -e .[clip]) except for the simulation. CLIP runs batched on the GPU
under fp16 autocast when one is available (--device), on the CPU otherwise. The work is written in
chunks of --chunk_images images; a rerun with the same settings continues where it stopped.
Cost (docs/pseudo_labels.md): N·V·F CLIP forwards, COCO's DAMP 2.2 M (ViT-B/16).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from largeloss.data import datasets
from largeloss.data.loading import ImageLoader, to_rgb
from largeloss.data.pseudo_labels import SUFFIX, save_pseudo_labels
from largeloss.methods.pseudo_label_rules import (DAMP_DEFAULT_GRID, DAMP_PRESETS, VLPL_TEMPERATURE,
                                                  VLPL_THRESHOLD, vlpl_pseudo_labels)
from largeloss.utils.atomic import save_npy, save_text
from largeloss.utils.errors import InputError

try:
    import open_clip  # optional: pip install -e .[clip]
except ImportError:
    open_clip = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # both authors normalise CLIP's input as the backbone's
IMAGENET_STD = (0.229, 0.224, 0.225)
PROMPT_TEMPLATE = "a photo of a {}."
VLPL_TRAIN_SIZE = 448                   # VLPL feeds CLIP the training tensor (448², then resized)
# (open_clip name, pretrained tag) per kind, docs/pseudo_labels.md: the -quickgelu names for OpenAI weights
MODELS = {"damp": ("ViT-B-16-quickgelu", "openai"), "vlpl": ("ViT-L-14-336-quickgelu", "openai")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True,
                        help="pascal, coco, nuswide, cub, custom, openimages or digits")
    parser.add_argument("--data_root", help="dataset folder (default: data/<dataset>)")
    parser.add_argument("--image_dir", help="folder the image paths are relative to (default: the "
                                            "dataset's usual place)")
    parser.add_argument("--out", help="the folder to write, ending in .pl (default: "
                                      "DATA_ROOT/<kind>_<model>.pl; digits: data/digits_sim_p<P>_r<R>.pl)")
    parser.add_argument("--kind", choices=("damp", "vlpl"), default="damp",
                        help="damp: scores of the global view and a g×g grid, AEVLP (docs/pseudo_labels.md); "
                             "vlpl: scores of the training tensor and VLPL's labels (docs/vlp_methods.md) "
                             "(default: damp)")
    parser.add_argument("--model", help="open_clip model name (default: ViT-B-16-quickgelu for damp, "
                                        "ViT-L-14-336-quickgelu for vlpl: OpenAI weights need the "
                                        "-quickgelu names)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag, or none for random weights "
                                             "(tests) (default: openai)")
    parser.add_argument("--clip_weights", metavar="PATH",
                        help="a local weights file for --model (without a network: the file "
                             "open_clip would download for the tag)")
    parser.add_argument("--model_config", metavar="JSON",
                        help="an open_clip model config for a --model open_clip does not list")
    parser.add_argument("--grid", type=int, help="damp: g, the tiles per side (default: the "
                                                 "authors' per dataset, cub 5, otherwise 4)")
    parser.add_argument("--flips", type=int, choices=(1, 2), default=2,
                        help="flip variants: 2 = the image and its mirror (the authors' methods see "
                             "both), 1 = unflipped only (default: 2)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per batch (each gives "
                                                                   "V·F CLIP inputs) (default: 32)")
    parser.add_argument("--chunk_images", type=int, default=2048,
                        help="images per chunk written to disk (a rerun resumes) (default: 2048)")
    parser.add_argument("--num_workers", type=int, default=4, help="image decoding processes")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--simulate_precision", type=float, metavar="P",
                        help="no CLIP: simulated pseudo-positives of expected precision P from the "
                             "clean training labels (digits, or any dataset with clean labels)")
    parser.add_argument("--simulate_recall", type=float, metavar="R",
                        help="simulation: expected recall R (fraction of true positives kept)")
    parser.add_argument("--simulate_seed", type=int, default=0, help="simulation: random seed")
    parser.add_argument("--digits_train_size", type=int, default=1000,
                        help="digits: training images (as main.py's flag) (default: 1000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = command_line(argv)
    try:
        data = datasets.load_data(args.dataset, args.data_root or f"data/{args.dataset}",
                                  args.image_dir, VLPL_TRAIN_SIZE, args.digits_train_size)
        if args.simulate_precision is not None or args.simulate_recall is not None:
            out = simulate(args, data)
        else:
            out = run_clip(args, data)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def command_line(argv: list[str] | None) -> str:
    return shlex.join(["scripts/make_pseudo_labels.py"] + list(sys.argv[1:] if argv is None else argv))


# --- the digits simulation --------------------------------------------------------------------

def simulated_labels(true_labels: np.ndarray, precision: float, recall: float,
                     rng: np.random.Generator) -> np.ndarray:
    """A simulated pseudo-labeller (not a model): each true positive becomes a pseudo-positive with
    probability `recall`; each true negative with probability q = recall·P·(1 − precision) /
    (precision·Nneg) (P, Nneg: the positive and negative entries), so that the expected false
    positives are (1 − precision)/precision times the expected true ones. true_labels: N×L in
    {0, 1}. Returns N×L int8 in {0, +1}."""
    positives = true_labels == 1
    num_positive, num_negative = int(positives.sum()), int((~positives).sum())
    false_rate = recall * num_positive * (1 - precision) / (precision * max(num_negative, 1))
    if false_rate > 1:
        raise InputError(f"--simulate_precision {precision:g} with --simulate_recall {recall:g} "
                         f"needs more false positives than there are negatives; raise the precision")
    draws = rng.random(true_labels.shape)
    return np.where(positives, draws < recall, draws < false_rate).astype(np.int8)


def simulate(args: argparse.Namespace, data) -> Path:
    precision, recall = args.simulate_precision, args.simulate_recall
    if precision is None or recall is None:
        raise InputError("the simulation needs both --simulate_precision and --simulate_recall")
    if not (0 < precision <= 1 and 0 <= recall <= 1):
        raise InputError(f"--simulate_precision must be in (0, 1] and --simulate_recall in [0, 1], "
                         f"got {precision:g} and {recall:g}")
    true_labels = data.train.true_labels
    if true_labels is None:
        raise InputError(f"--dataset {args.dataset}: the simulation needs clean training labels")
    labels = simulated_labels(true_labels, precision, recall,
                              np.random.default_rng(args.simulate_seed))
    hits = int(((labels == 1) & (true_labels == 1)).sum())
    measured = {"precision": hits / max(int((labels == 1).sum()), 1),
                "recall": hits / max(int((true_labels == 1).sum()), 1)}
    out = Path(args.out or f"data/{args.dataset}_sim_p{precision:g}_r{recall:g}{SUFFIX}")
    meta = {"dataset": args.dataset, "kind": "simulated",
            "simulation": {"precision": precision, "recall": recall, "seed": args.simulate_seed,
                           "measured": measured,
                           "note": "a simulation from the clean labels, not a vision-language model"},
            "command": args.command}
    save_pseudo_labels(out, data.train.image_ids, data.class_names, meta, labels=labels[:, None, :])
    print(f"simulated pseudo-labels: precision {measured['precision']:.3f}, recall "
          f"{measured['recall']:.3f} over {len(labels)} training images")
    return out


# --- views of an image (docs/pseudo_labels.md) ---------------------------------------------------

def grid_views(image: Image.Image, grid: int) -> list[Image.Image]:
    """[the whole image, then the g×g tiles row by row]: tile (y, x) is the crop (x·w, y·h,
    (x+1)·w, (y+1)·h) with w = ⌊W/g⌋, h = ⌊H/g⌋; the right and bottom remainder pixels are
    dropped (docs/pseudo_labels.md step 1). V = g² + 1 views."""
    width, height = image.size
    tile_w, tile_h = width // grid, height // grid
    if tile_w == 0 or tile_h == 0:
        raise ValueError(f"an image of {width}×{height} pixels has no {grid}×{grid} grid")
    tiles = [image.crop((x * tile_w, y * tile_h, (x + 1) * tile_w, (y + 1) * tile_h))
             for y in range(grid) for x in range(grid)]
    return [image] + tiles


def view_tensors(views: list[Image.Image], size: int, flips: int) -> torch.Tensor:
    """F×V×3×S×S float: each view Resize((S, S)) bilinear (square, no crop), unflipped (f = 0)
    and mirrored (f = 1), ImageNet-normalised (docs/pseudo_labels.md step 2)."""
    resized = torch.stack([TF.pil_to_tensor(view.resize((size, size), Image.BILINEAR))
                           for view in views]).float() / 255
    variants = [resized, resized.flip(-1)][:flips]
    return normalise(torch.stack(variants))


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (images - mean) / std


def training_tensor_views(image: Image.Image, size: int, flips: int) -> torch.Tensor:
    """F×1×3×S×S: VLPL's CLIP input (docs/pseudo_labels.md): the training tensor (Resize((448, 448))
    bilinear, ImageNet-normalised, flipped for f = 1) resized as a tensor to S×S, bilinear without
    antialiasing (the authors' torchvision 0.12)."""
    train = TF.pil_to_tensor(image.resize((VLPL_TRAIN_SIZE, VLPL_TRAIN_SIZE), Image.BILINEAR))
    train = normalise(train.float() / 255)
    variants = torch.stack([train, train.flip(-1)][:flips])
    return TF.resize(variants, [size, size], antialias=False)[:, None]


@dataclass(frozen=True)
class ViewSettings:
    kind: str      # damp or vlpl
    size: int      # CLIP's input side
    grid: int      # damp's g (vlpl: 0)
    flips: int


class ViewDataset(Dataset):
    """(F×V×3×S×S views, row) of the training images `paths` under `image_dir`, rows `rows`."""

    def __init__(self, image_dir: Path, paths: list[str], rows: range, settings: ViewSettings):
        self.image_dir, self.paths, self.rows, self.settings = image_dir, paths, rows, settings

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        path = self.image_dir / self.paths[row]
        try:
            with Image.open(path) as opened:
                image = to_rgb(opened)
            if self.settings.kind == "vlpl":
                return training_tensor_views(image, self.settings.size, self.settings.flips), row
            views = grid_views(image, self.settings.grid)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read image {path} (training row {row}): {error}") from None
        return view_tensors(views, self.settings.size, self.settings.flips), row


# --- CLIP ---------------------------------------------------------------------------------------

def check_open_clip() -> None:
    if open_clip is None:
        raise InputError("open_clip is not installed: pip install -e .[clip] (or pip install "
                         "open_clip_torch); --simulate_precision/--simulate_recall need no CLIP")


def model_names(args: argparse.Namespace) -> tuple[str, str | None]:
    """(open_clip model name, pretrained tag or local file, None for random weights)."""
    model, pretrained = MODELS[args.kind]
    model = args.model or model
    pretrained = args.clip_weights or args.pretrained or pretrained
    if pretrained == "openai" and not model.endswith("-quickgelu") \
            and f"{model}-quickgelu" in open_clip.list_models():
        raise InputError(f"--model {model} with OpenAI weights builds GELU instead of the QuickGELU "
                         f"they were trained with (every output changes): use --model "
                         f"{model}-quickgelu")
    return model, None if pretrained == "none" else pretrained


def load_clip(args: argparse.Namespace, device: torch.device):
    """(model in eval mode on `device`, tokenizer, model name, pretrained)."""
    check_open_clip()
    if args.model_config:
        open_clip.add_model_config(args.model_config)
    name, pretrained = model_names(args)
    if name not in open_clip.list_models():
        raise InputError(f"--model {name}: open_clip does not know it (pass --model_config JSON)")
    if args.clip_weights and not Path(args.clip_weights).is_file():
        raise InputError(f"--clip_weights {args.clip_weights}: no such file")
    torch.manual_seed(0)  # random weights (pretrained none): the same model when a pass resumes
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except (OSError, RuntimeError, ValueError) as error:  # no network, a tag open_clip lacks
        raise InputError(f"cannot load the CLIP weights {pretrained!r} of {name} ({error}); "
                         f"without a network pass a local weights file with --clip_weights "
                         f"PATH") from None
    return model.eval(), open_clip.get_tokenizer(name), name, pretrained


def prompt_names(class_names: list[str]) -> list[str]:
    """`a photo of a {name}.` with `_` → space (docs/pseudo_labels.md step 3)."""
    return [PROMPT_TEMPLATE.format(name.replace("_", " ")) for name in class_names]


@torch.inference_mode()
def text_features(model, tokenizer, class_names: list[str], device: torch.device) -> torch.Tensor:
    """L×D L2-normalised text features of the prompts, float32."""
    tokens = tokenizer(prompt_names(class_names)).to(device)
    with autocast(device):
        features = model.encode_text(tokens)
    return torch.nn.functional.normalize(features.float(), dim=-1)


def autocast(device: torch.device):
    """fp16 autocast on a GPU (the authors run CLIP in fp16); float32 on the CPU."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


@torch.inference_mode()
def batch_cosines(model, views: torch.Tensor, text: torch.Tensor, device: torch.device) -> np.ndarray:
    """views B×F×V×3×S×S → B×F×V×L cosines ⟨ĥ, t̂⟩, float16."""
    batch, flips, num_views = views.shape[:3]
    images = views.to(device, non_blocking=True).flatten(0, 2)
    with autocast(device):
        features = model.encode_image(images)
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    cosines = (features @ text.T).clamp(-1, 1)
    return cosines.view(batch, flips, num_views, -1).cpu().numpy().astype(np.float16)


# --- the resumable pass -------------------------------------------------------------------------

def resolve_settings(args: argparse.Namespace, model) -> ViewSettings:
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    if args.kind == "vlpl":
        return ViewSettings("vlpl", size, 0, args.flips)
    preset = DAMP_PRESETS.get(args.dataset)
    grid = args.grid or (preset.grid if preset else DAMP_DEFAULT_GRID)
    if grid < 1:
        raise InputError(f"--grid must be >= 1, got {grid}")
    return ViewSettings("damp", size, grid, args.flips)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    return torch.device(name)


def run_clip(args: argparse.Namespace, data) -> Path:
    """CLIP scores (and VLPL's labels) of every training image, chunk by chunk, into a .pl."""
    train = data.train
    images = train.images
    if not hasattr(images, "image_dir"):
        raise InputError(f"--dataset {args.dataset}: no image files to run CLIP on (digits: use "
                         f"--simulate_precision and --simulate_recall)")
    device = resolve_device(args.device)
    model, tokenizer, name, pretrained = load_clip(args, device)
    settings = resolve_settings(args, model)
    default_out = Path(args.data_root or f"data/{args.dataset}") / f"{args.kind}_{name}{SUFFIX}"
    out = Path(args.out or default_out)
    meta = producer_meta(args, name, pretrained, settings, device)
    chunk_dir = prepare_chunks(out, meta)
    text = text_features(model, tokenizer, data.class_names, device)
    num_images = len(train.image_ids)
    starts = range(0, num_images, args.chunk_images)
    for start in tqdm(starts, desc="chunks", disable=not sys.stderr.isatty()):
        rows = range(start, min(start + args.chunk_images, num_images))
        chunk_file = chunk_dir / f"{start:09d}.npy"
        if not chunk_file.is_file():  # written atomically: present means complete
            save_npy(chunk_file, chunk_cosines(model, text, images.image_dir, train.image_ids,
                                               rows, settings, args, device))
    scores = np.concatenate([np.load(chunk_dir / f"{start:09d}.npy") for start in starts])
    labels = (vlpl_pseudo_labels(torch.from_numpy(scores[:, :, 0].astype(np.float32))).numpy()
              if settings.kind == "vlpl" else None)
    save_pseudo_labels(out, train.image_ids, data.class_names, meta, labels=labels, scores=scores)
    shutil.rmtree(chunk_dir)
    return out


def chunk_cosines(model, text: torch.Tensor, image_dir: Path, paths: list[str], rows: range,
                  settings: ViewSettings, args: argparse.Namespace, device: torch.device) -> np.ndarray:
    """len(rows)×F×V×L float16 cosines of the training images `rows`."""
    dataset = ViewDataset(Path(image_dir), paths, rows, settings)
    loader = ImageLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                         pin_memory=device.type == "cuda")
    parts = []
    for views, _ in tqdm(loader, desc=f"images {rows.start}-{rows.stop - 1}", leave=False,
                         disable=not sys.stderr.isatty()):
        parts.append(batch_cosines(model, views, text, device))
    return np.concatenate(parts)


def producer_meta(args: argparse.Namespace, name: str, pretrained: str | None,
                  settings: ViewSettings, device: torch.device) -> dict:
    """meta.json's producer fields (docs/pseudo_labels.md); pseudo_labels.save adds the format fields."""
    preprocess = ({"input": "each view Resize((S, S)) bilinear, no crop", "size": settings.size}
                  if settings.kind == "damp" else
                  {"input": f"Resize(({VLPL_TRAIN_SIZE}, {VLPL_TRAIN_SIZE})) bilinear, then the "
                            f"tensor resized to (S, S) bilinear without antialiasing",
                   "size": settings.size})
    weights = pretrained
    if args.clip_weights:
        weights = f"{Path(args.clip_weights).name} (sha256 {file_sha256(args.clip_weights)[:16]})"
    meta = {"dataset": args.dataset, "kind": settings.kind, "model": name, "pretrained": weights,
            "open_clip_version": open_clip.__version__,
            "precision": "amp_fp16" if device.type == "cuda" else "fp32",
            "preprocess": {**preprocess, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
            "prompt_template": PROMPT_TEMPLATE, "grid": settings.grid or None, "gcn": None,
            "command": args.command}
    if settings.kind == "vlpl":
        meta["labels_rule"] = {"temperature": VLPL_TEMPERATURE, "threshold": VLPL_THRESHOLD,
                               "rule": "softmax(c/T) > threshold (strict), view 0"}
    return meta


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_chunks(out: Path, meta: dict) -> Path:
    """out/.chunks, holding the settings of the pass under way (a rerun with the same settings
    resumes; other settings are refused rather than mixed)."""
    chunk_dir = out / ".chunks"
    settings = {key: value for key, value in meta.items() if key != "command"}
    settings_file = chunk_dir / "settings.json"
    if settings_file.is_file():
        saved = json.loads(settings_file.read_text(encoding="utf-8"))
        if saved != json.loads(json.dumps(settings)):
            raise InputError(f"{out} holds a pass with other settings ({settings_file}); finish it "
                             f"with the same flags, or remove {chunk_dir}")
    elif (out / "meta.json").is_file():
        raise InputError(f"{out} is finished already; remove it to make it again")
    else:
        save_text(settings_file, json.dumps(settings, indent=2, sort_keys=True))
    return chunk_dir


if __name__ == "__main__":
    raise SystemExit(main())
