r"""Format an official dataset archive into a Cole folder (docs/protocol.md), or redraw its observed labels.

    python scripts/prepare_data.py --dataset pascal --raw_dir RAW --out_dir data/pascal
    python scripts/prepare_data.py --dataset coco --raw_dir RAW --out_dir data/coco \
        --num_pos 1 --num_neg 0 --seed 1200
    python scripts/prepare_data.py --dataset cub --obs_only --out_dir data/cub \
        --num_pos 1 --num_neg 1
    python scripts/prepare_data.py --dataset openimages --raw_dir RAW --out_dir data/openimages \
        --image_dir RAW/images                  # V3 (RAW = the unpacked 2017_11/), V6 or V7

Writes formatted_{train,val}_{images,labels,labels_obs}.npy, class_names.txt and, where the source
has boxes (pascal, coco), formatted_{train,val}_boxes.json. OpenImages (V3, V6, V7) has real
partial labels and too many classes for N×L files: it gets {train,validation,test}_labels.npz
(sparse_labels.py), class_names.txt, classes.csv and metadata.json instead (openimages.py; the
release is recognised from the files in RAW, or given with --release). data/README.md says where each archive
comes from and what layout RAW must have.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from largeloss.data import formats, openimages, prepare
from largeloss.data.sparse_labels import load_sparse_labels

SPARSE_DATASETS = ("openimages",)  # real partial labels, written in the sparse format


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    """The command line; see the module docstring for examples."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True,
                        choices=sorted([*prepare.FORMATTERS, *SPARSE_DATASETS]),
                        help="which official dataset to format")
    parser.add_argument("--raw_dir", type=Path,
                        help="folder holding the extracted official files (layout in "
                             "data/README.md); not needed with --obs_only")
    parser.add_argument("--out_dir", type=Path,
                        help="Cole folder to write (default: data/<dataset>)")
    parser.add_argument("--obs_only", action="store_true",
                        help="only redraw formatted_{train,val}_labels_obs.npy from the clean "
                             "label files already in --out_dir")
    parser.add_argument("--num_pos", type=non_negative_int, default=1,
                        help="observed positives kept per image (paper: 1)")
    parser.add_argument("--num_neg", type=non_negative_int, default=0,
                        help="observed negatives kept per image (paper: 0; iu needs > 0)")
    parser.add_argument("--seed", type=int, default=formats.SPLIT_SEED,
                        help="RandomState seed of the observed-label draw, fresh per phase "
                             "(paper: 1200)")
    parser.add_argument("--image_dir", type=Path,
                        help="openimages only: the folder holding {train,validation,test}/"
                             "<ImageID>.jpg (default: RAW/images); labelled images missing there "
                             "are dropped and counted")
    parser.add_argument("--release", choices=sorted(openimages.RELEASES),
                        help="openimages only: which release RAW holds (default: recognised "
                             "from its files; docs/openimages_releases.md lists them)")
    return parser


def mean_per_row(mask: np.ndarray) -> float:
    """Mean number of True entries per row of an N×L mask (0 when N = 0)."""
    return float(mask.sum(axis=1).mean()) if len(mask) else 0.0


def print_summary(out_dir: Path, true_labels: dict[str, np.ndarray],
                  observed: dict[str, np.ndarray]) -> None:
    """Rows × classes and positives per image for each official phase, then the project's
    train/val/test sizes (docs/protocol.md: the Cole split of the official train phase)."""
    for phase, labels in true_labels.items():
        print(f"{phase}: {labels.shape[0]} rows × {labels.shape[1]} classes; per image "
              f"{mean_per_row(labels == 1):.2f} positives (clean), "
              f"{mean_per_row(observed[phase] == 1):.2f} observed positives, "
              f"{mean_per_row(observed[phase] == -1):.2f} observed negatives; "
              f"{int((labels.sum(axis=1) == 0).sum())} rows with no positive")
    train_rows, val_rows = formats.train_val_split(true_labels["train"].shape[0])
    print(f"project split: {len(train_rows)} train / {len(val_rows)} val / "
          f"{true_labels['val'].shape[0]} test rows; files in {out_dir}")


def main(argv: list[str] | None = None) -> int:
    """Format (or with --obs_only redraw the observed labels), write, check, summarise."""
    args = get_args_parser().parse_args(argv)
    out_dir = args.out_dir or Path("data") / args.dataset
    if args.dataset in SPARSE_DATASETS:
        return prepare_sparse(args, out_dir)
    for flag in ("image_dir", "release"):
        if getattr(args, flag) is not None:
            get_args_parser().error(f"--{flag} applies to --dataset openimages only")
    if args.obs_only:
        true_labels = {phase: formats.load_true_labels(out_dir, phase) for phase in formats.PHASES}
        observed = prepare.write_observed_labels(out_dir, true_labels, args.num_pos, args.num_neg,
                                                 args.seed)
    else:
        if args.raw_dir is None:
            get_args_parser().error("--raw_dir is required unless --obs_only is given")
        formatted = prepare.FORMATTERS[args.dataset](args.raw_dir)
        observed = prepare.write_cole_folder(out_dir, formatted, args.num_pos, args.num_neg,
                                             args.seed)
        true_labels = {phase: content.true_labels for phase, content in formatted.phases.items()}
        if formatted.class_names is None:
            print(f"note: the source names no classes; no {formats.CLASS_NAMES_FILE} written")
    formats.load_cole_folder(out_dir)  # read back what was written, with the trainer's checks
    print_summary(out_dir, true_labels, observed)
    image_dir = out_dir / formats.IMAGE_DIRS[args.dataset]
    if not image_dir.is_dir():
        print(f"note: the trainer reads images from {image_dir}, which does not exist yet "
              f"(see data/README.md)")
    return 0


def prepare_sparse(args: argparse.Namespace, out_dir: Path) -> int:
    """OpenImages: real partial labels, so no observed-label draw (--num_pos, --num_neg and --seed
    do not apply). Write, read back with the loader's checks, report."""
    if args.obs_only:
        get_args_parser().error(f"--obs_only does not apply to {args.dataset}: its observed "
                                f"labels are the real partial labels")
    if args.raw_dir is None:
        get_args_parser().error("--raw_dir is required")
    try:
        release = openimages.resolve_release(args.raw_dir, args.release)
    except (FileNotFoundError, ValueError) as error:
        get_args_parser().error(str(error))
    print(f"OpenImages {release.name} ({'given by --release' if args.release else 'recognised from'}"
          f" {args.raw_dir / release.trainable})", flush=True)
    report = openimages.prepare_openimages(args.raw_dir, out_dir, args.image_dir,
                                           release=release.name.lower())
    for split in report["splits"]:
        load_sparse_labels(openimages.labels_file(out_dir, split))
    print(openimages.format_report(report))
    print(f"files in {out_dir}: "
          f"{', '.join(openimages.labels_file(out_dir, split).name for split in report['splits'])}"
          f", {openimages.CLASS_NAMES_FILE}, {openimages.CLASSES_FILE}, {openimages.METADATA_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
