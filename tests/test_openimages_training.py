"""`--dataset openimages` end to end: a generated tree in the official V3 layout with tiny JPEGs,
prepared by openimages.prepare_openimages, trained with main.main (sparse labels throughout)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from largeloss import cli as main
from largeloss.data import datasets, openimages
from largeloss.methods import registry as methods
from largeloss.methods.label_stores import build_label_store
from largeloss.reporting import summarize
from largeloss.utils.errors import InputError

CLASSES = [f"/m/c{index}" for index in range(7)]  # 7 classes: G1, G2 take two, G3–G5 one
SPLIT_SIZES = {"train": 24, "validation": 8, "test": 8}
TINY = ["--dataset", "openimages", "--arch", "small_cnn", "--weights", "none", "--image_size",
        "32", "--device", "cpu", "--num_workers", "0", "--batch_size", "8", "--log_every", "1"]


def write_raw_tree(raw_dir: Path, seed: int = 0) -> None:
    """RAW in the official V3 layout: 2–4 verified labels per image (about half positive; class 6
    never labelled in train, class 5 never negative in test), and an 8×8 JPEG per image."""
    rng = np.random.RandomState(seed)
    raw_dir.mkdir(parents=True)
    (raw_dir / "classes-trainable.txt").write_text("\n".join(CLASSES) + "\n")
    (raw_dir / "class-descriptions.csv").write_text(
        "".join(f"{mid},Class {index}\n" for index, mid in enumerate(CLASSES)))
    for split, num_images in SPLIT_SIZES.items():
        (raw_dir / split).mkdir()
        (raw_dir / "images" / split).mkdir(parents=True)
        ids = [f"{split[:2]}{index:03d}" for index in range(num_images)]
        (raw_dir / split / "images.csv").write_text(
            "ImageID,Subset\n" + "".join(f"{image_id},{split}\n" for image_id in ids))
        rows = ["ImageID,Source,LabelName,Confidence"]
        for image_id in ids:
            Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                raw_dir / "images" / split / f"{image_id}.jpg")
            for label in rng.choice(6 if split == "train" else 7, rng.randint(2, 5), replace=False):
                confidence = 1 if (label == 5 and split == "test") else rng.randint(2)
                rows.append(f"{image_id},verification,{CLASSES[label]},{confidence}")
        (raw_dir / split / "annotations-human.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("openimages")
    write_raw_tree(root / "raw")
    openimages.prepare_openimages(root / "raw", root / "data")
    return root / "data"


def test_the_splits_are_sparse_with_their_roles(prepared):
    data = datasets.load_data("openimages", str(prepared), None, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 8, 8)
    assert data.class_names == [f"Class {index}" for index in range(7)]
    assert data.train.observed is None and data.train.sparse.num_classes == 7
    assert data.val.sparse.image_ids[0] == "va000" and data.test.sparse.image_ids[0] == "te000"
    image, index = data.test.images[3]
    assert image.shape == (3, 32, 32) and index == 3
    assert data.test.train_label_counts[6] == 0  # never labelled in train: G1
    store = build_label_store(data.train.labels, torch.device("cpu"))
    np.testing.assert_array_equal(store.to_dense().numpy(), data.train.sparse.to_dense())


def test_training_writes_both_conventions_and_the_groups(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert main.main([*TINY, "--data_root", str(prepared), "--epochs", "2",
                      "--mod_scheme", "LL-Ct", "--delta_rel", "10", "--out_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["map_convention"] == "map_all_classes"
    assert results["test_map"] == results["map_all_classes"]
    assert results["num_classes"] == 7
    positives, negatives = datasets.load_data("openimages", str(prepared), None, 32) \
        .test.sparse.labelled_per_class()
    assert results["num_measured"] == int(((positives > 0) & (negatives > 0)).sum())
    assert results["num_measured"] < 7  # class 5 has no labelled negative in test
    assert results["map_measured"] >= results["map_all_classes"]
    assert list(results["groups"]) == ["G1", "G2", "G3", "G4", "G5"]
    assert [group["num_classes"] for group in results["groups"].values()] == [2, 2, 1, 1, 1]
    assert len(results["test_ap"]) == 7
    printed = capsys.readouterr().out
    assert "over all 7 classes" in printed and "test_map is map_all_classes" in printed
    assert results["data_release"] == "V3"
    assert results["class_ids"] == CLASSES  # the MIDs beside the display names
    assert summarize.main([str(tmp_path)]) == 0  # the G1–G5 columns beside the paper's row
    row = [line for line in capsys.readouterr().out.splitlines()
           if line.startswith("| openimages V3 | end_to_end | LL-Ct | 10 | 1 | ")]
    assert len(row) == 2  # the main table and the group table
    assert row[0].endswith("| not the paper's setup: arch=small_cnn, image_size=32 (paper: "
                           "resnet101, 224 px) |")
    groups = [results["groups"][name]["map_all_classes"] for name in ("G1", "G2", "G3", "G4", "G5")]
    assert row[1].endswith(" | ".join(f"{value:.2f}" for value in groups)
                           + f" | {results['test_map']:.2f} | {results['map_measured']:.2f} | 82.6 | "
                           f"{results['test_map'] - 82.6:+.2f} |")


def test_ll_cp_relabels_persist_through_resume(prepared, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--data_root", str(prepared), "--epochs", "3", "--mod_scheme", "LL-Cp",
            "--delta_rel", "20", "--early_stop_drop", "0", "--out_dir", str(out)]
    assert main.main([*args, "--stop_after", "2"]) == 0
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["method"]["store"]
    assert set(saved) == {"relabeled", "relabeled_negatives", "shape", "num_labelled"}
    assert saved["relabeled"].numel() > 0  # sparse additions, row·L + class
    assert main.main(["--resume", str(out / "last.pt"), "--device", "cpu",
                      "--num_workers", "0"]) == 0
    final = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["method"]["store"]
    assert set(saved["relabeled"].tolist()) <= set(final["relabeled"].tolist())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["relabeled"] == final["relabeled"].numel()


def test_role_is_refused_with_the_memory_it_needs(prepared, tmp_path, capsys):
    assert main.main([*TINY, "--data_root", str(prepared), "--loss", "role",
                      "--out_dir", str(tmp_path / "run")]) == 2
    assert ("--loss role keeps an N×L estimator: 24 × 7 × 12 bytes = 2.02 kB; not with sparse "
            "labels (--dataset openimages)") in capsys.readouterr().err


def test_what_needs_dense_labels_or_clean_labels_is_refused(prepared, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse: exit 2 and the message
        main.main([*TINY, "--data_root", str(prepared), "--train_mode", "linear_init"])
    assert exit_info.value.code == 2
    assert "not with --dataset openimages" in capsys.readouterr().err
    assert main.main([*TINY, "--data_root", str(prepared), "--track_train",
                      "--out_dir", str(tmp_path / "run")]) == 2
    assert "--track_train needs clean training labels" in capsys.readouterr().err


def test_sparse_store_methods_train_and_clean_label_methods_refuse(prepared):
    data = datasets.load_data("openimages", str(prepared), None, 32)
    for name in ("an", "wan", "an_ls", "epr", "iu", "LL-R", "LL-Ct", "LL-Cp"):
        method = methods.build(name, data.train.labels,
                               delta_rel=10.0, expected_num_pos=1.0)
        logits = torch.randn(4, 7, requires_grad=True)
        output = method.loss(logits, torch.arange(4), epoch=2)
        output.loss.backward()
        assert torch.isfinite(output.loss)
    with pytest.raises(InputError, match="needs clean training labels"):
        methods.build("bce", data.train.labels)


def test_a_custom_folder_of_long_csvs_trains_on_the_sparse_store(tmp_path):
    """data/README.md "Many classes": class_names.txt and train/val/test.csv of image,class,label."""
    root = tmp_path / "long"
    rng = np.random.RandomState(0)
    classes = ["cat", "dog", "sea", "sky"]
    (root / "images").mkdir(parents=True)
    (root / "class_names.txt").write_text("\n".join(classes) + "\n")
    for split, count in (("train", 12), ("val", 8), ("test", 8)):
        lines = ["image,class,label"]
        for row in range(count):
            name = f"{split}_{row}.jpg"
            Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "images" / name)
            lines += [f"{name},{classes[row % 4]},1", f"{name},{classes[(row + 1) % 4]},-1"]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "run"
    assert main.main(["--dataset", "custom", "--data_root", str(root), "--arch", "small_cnn",
                      "--weights", "none", "--image_size", "32", "--epochs", "1", "--batch_size",
                      "4", "--device", "cpu", "--num_workers", "0", "--out_dir", str(out_dir)]) == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["num_classes"] == 4 and results["num_measured"] == 4  # each: one + and one −
    assert results["test_map"] == results["map_all_classes"]
