"""openimages.py and `prepare_data.py --dataset openimages` on small trees in the official V3
layout, with the awkward parts of the real files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from largeloss.data import openimages
from largeloss.data.sparse_labels import check_sparse_labels, load_sparse_labels

ROOT = Path(__file__).resolve().parents[1]

TRAINABLE = ["/m/cat", "/m/dog", "/m/car"]  # the model's order: not the descriptions' order
DESCRIPTIONS = ('/m/car,Car\n'
                '/m/dog,"Dog, domestic"\n'       # a quoted name holding a comma
                '/m/tree,Tree\n')                # not trainable; /m/cat has no description
HEADER = "ImageID,Source,LabelName,Confidence\n"
TRAIN_ANNOTATIONS = (HEADER +
                     "img_b,verification,/m/dog,1\n"
                     "img_a,verification,/m/cat,0\n"
                     "img_a,verification,/m/car,1\n"
                     "img_a,verification,/m/tree,1\n"      # not a trainable class
                     "img_c,verification,/m/tree,0\n"      # img_c: no trainable label left
                     "img_d,verification,/m/cat,1\n"       # img_d: missing on disk
                     "img_b,crowdsource-verification,/m/dog,1\n"   # agreeing repeat
                     "img_b,verification,/m/car,1\n"
                     "img_b,crowdsource-verification,/m/car,0\n"   # disagreeing: dropped
                     "img_x,verification,/m/cat,1\n")      # not in images.csv
TRAIN_IMAGES = ["img_d", "img_c", "img_b", "img_a", "img_e"]  # img_e: no human label at all
TRAIN_ON_DISK = ["img_a", "img_b", "img_c", "img_e"]
# validation and test: Confidence 1/0 as in train; their labelled entries are the eval mask
EVAL_ANNOTATIONS = (HEADER + "v1,verification,/m/car,0\n" "v1,verification,/m/cat,1\n"
                    "v2,verification,/m/dog,1\n")


def write_tree(raw_dir: Path, image_dir: Path | None = None,
               annotations: dict[str, str] | None = None) -> None:
    """RAW in the official layout, and empty image files under image_dir (default RAW/images)."""
    image_dir = image_dir or raw_dir / "images"
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "classes-trainable.txt").write_text("\n".join(TRAINABLE) + "\n")
    (raw_dir / "class-descriptions.csv").write_text(DESCRIPTIONS)
    trees = {"train": (TRAIN_IMAGES, TRAIN_ON_DISK, TRAIN_ANNOTATIONS),
             "validation": (["v1", "v2"], ["v1", "v2"], EVAL_ANNOTATIONS),
             "test": (["v2", "v1"], ["v1", "v2"], EVAL_ANNOTATIONS)}
    for split, (listed, on_disk, text) in trees.items():
        (raw_dir / split).mkdir()
        (raw_dir / split / "images.csv").write_text(
            "ImageID,Subset,OriginalURL\n" + "".join(f"{image},{split},http://x/{image}.jpg\n"
                                                     for image in listed))
        (raw_dir / split / "annotations-human.csv").write_text(
            (annotations or {}).get(split, text))
        (image_dir / split).mkdir(parents=True)
        for image in on_disk:
            (image_dir / split / f"{image}.jpg").write_bytes(b"")


def test_train_split_labels_and_every_count(tmp_path):
    write_tree(tmp_path)
    labels, report = openimages.prepare_split(tmp_path, "train", tmp_path / "images", TRAINABLE)
    assert labels.image_ids.tolist() == ["img_a", "img_b"]  # sorted by ImageID
    assert labels.class_names.tolist() == TRAINABLE
    np.testing.assert_array_equal(labels.to_dense(), [[-1, 0, 1],    # img_a: cat −1, car +1
                                                      [0, 1, 0]])    # img_b: dog +1; car dropped
    assert report == {"images_listed": 5, "images_without_trainable_label": 2,  # img_c, img_e
                      "images_missing_on_disk": 1, "images_kept": 2,            # img_d
                      "rows_read": 10, "rows_not_trainable": 2, "rows_unknown_image": 1,
                      "duplicate_rows": 2, "conflicting_entries": 1,
                      "entries_of_missing_images": 1, "entries_kept": 3,
                      "positives": 2, "negatives": 1}


def test_chunked_streaming_gives_the_same_labels(tmp_path, monkeypatch):
    write_tree(tmp_path)
    whole, whole_report = openimages.prepare_split(tmp_path, "train", tmp_path / "images",
                                                   TRAINABLE)
    monkeypatch.setattr(openimages, "CHUNK_ROWS", 2)  # five look-ups instead of one
    chunked, chunked_report = openimages.prepare_split(tmp_path, "train", tmp_path / "images",
                                                       TRAINABLE)
    np.testing.assert_array_equal(chunked.to_dense(), whole.to_dense())
    assert chunked_report == whole_report


def test_prepare_writes_every_split_class_names_and_metadata(tmp_path):
    write_tree(tmp_path / "raw")
    report = openimages.prepare_openimages(tmp_path / "raw", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == [
        "class_names.txt", "classes.csv", "metadata.json", "test_labels.npz", "train_labels.npz",
        "validation_labels.npz"]  # no temporary file left behind
    assert (out / "class_names.txt").read_text().splitlines() == ["/m/cat", "Dog, domestic", "Car"]
    assert (out / "classes.csv").read_text().splitlines() == [  # the MID beside each name
        "index,mid,display_name", "0,/m/cat,/m/cat", '1,/m/dog,"Dog, domestic"', "2,/m/car,Car"]
    assert report["release"] == "V3"
    assert report["classes_without_description"] == ["/m/cat"]
    assert report["image_dir"] == str((tmp_path / "raw" / "images").resolve())
    for split in ("validation", "test"):
        labels = load_sparse_labels(out / f"{split}_labels.npz")
        assert labels.image_ids.tolist() == ["v1", "v2"]
        np.testing.assert_array_equal(labels.to_dense(), [[1, 0, -1], [0, 1, 0]])
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["label_files"]["train"] == "train_labels.npz"
    assert metadata["report"]["splits"]["train"]["images_kept"] == 2
    assert metadata["image_path"] == "<image_dir>/<split>/<image_id>.jpg"
    assert metadata["release"] == "V3" and openimages.read_release(out) == "V3"


def test_image_dir_elsewhere(tmp_path):
    write_tree(tmp_path / "raw", image_dir=tmp_path / "downloads")
    report = openimages.prepare_openimages(tmp_path / "raw", tmp_path / "out",
                                           image_dir=tmp_path / "downloads")
    assert report["splits"]["train"]["images_kept"] == 2
    with pytest.raises(FileNotFoundError, match="images.*train does not exist.*--image_dir"):
        openimages.prepare_openimages(tmp_path / "raw", tmp_path / "out2")


@pytest.mark.parametrize("bad_row,message", [
    ("img_a,verification,/m/dog,0.5\n", "line 3: Confidence '0.5' is neither 1"),
    ("img_a,verification,/m/dog,\n", "line 3: Confidence '' is neither 1"),
    ("img_a,/m/dog,1\n", "line 3: 3 cell\\(s\\) but the header has 4 columns"),
    ("img_a,verification,/m/dog,1,extra\n", "line 3: 5 cell\\(s\\) but the header has 4"),
])
def test_malformed_annotation_row_names_file_and_line(tmp_path, bad_row, message):
    text = HEADER + "img_b,verification,/m/dog,1\n" + bad_row + "img_b,verification,/m/cat,1\n"
    write_tree(tmp_path, annotations={"train": text})
    with pytest.raises(ValueError, match=f"train/annotations-human.csv, {message}"):
        openimages.prepare_split(tmp_path, "train", tmp_path / "images", TRAINABLE)


def test_a_bad_confidence_is_an_error_even_for_a_class_that_is_not_trainable(tmp_path):
    text = HEADER + "img_a,verification,/m/tree,yes\n"
    write_tree(tmp_path, annotations={"train": text})
    with pytest.raises(ValueError, match="line 2: Confidence 'yes'"):
        openimages.prepare_split(tmp_path, "train", tmp_path / "images", TRAINABLE)


def test_missing_header_column_and_missing_files(tmp_path):
    write_tree(tmp_path, annotations={"train": "ImageID,Source,LabelName\nimg_a,v,/m/cat\n"})
    with pytest.raises(ValueError, match="annotations-human.csv, line 1: missing column "
                                         "'Confidence'"):
        openimages.prepare_split(tmp_path, "train", tmp_path / "images", TRAINABLE)
    (tmp_path / "validation" / "images.csv").write_text("Id\nv1\n")
    with pytest.raises(ValueError, match="images.csv, line 1: missing column 'ImageID'"):
        openimages.prepare_split(tmp_path, "validation", tmp_path / "images", TRAINABLE)
    (tmp_path / "test" / "annotations-human.csv").unlink()
    with pytest.raises(FileNotFoundError, match="missing .*test/annotations-human.csv"):
        openimages.prepare_split(tmp_path, "test", tmp_path / "images", TRAINABLE)


def test_an_image_listed_twice_is_an_error(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "test" / "images.csv").write_text("ImageID,Subset\nv1,test\nv2,test\nv1,test\n")
    with pytest.raises(ValueError, match="test/images.csv: ImageID 'v1' is listed more than once"):
        openimages.prepare_split(tmp_path, "test", tmp_path / "images", TRAINABLE)


def test_class_files_errors(tmp_path):
    (tmp_path / "classes.txt").write_text("/m/a\n/m/b\n/m/a\n")
    with pytest.raises(ValueError, match="classes.txt, line 3: duplicate class '/m/a'"):
        openimages.read_trainable_classes(tmp_path / "classes.txt")
    (tmp_path / "descriptions.csv").write_text('/m/a,"A, b"\n/m/b,B,extra\n')
    with pytest.raises(ValueError, match="descriptions.csv, line 2: 3 cell\\(s\\), expected 2"):
        openimages.read_class_descriptions(tmp_path / "descriptions.csv")


def test_a_split_with_no_image_left_is_an_error(tmp_path):
    write_tree(tmp_path)
    for image in (tmp_path / "images" / "validation").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="validation: no image is left \\(of 2 listed, 2 have a "
                                         "trainable label and 0 are on disk"):
        openimages.prepare_split(tmp_path, "validation", tmp_path / "images", TRAINABLE)


# ---------------------------------------------------------------- scripts/prepare_data.py

def load_script():
    spec = importlib.util.spec_from_file_location("prepare_data",
                                                  ROOT / "scripts" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_prepares_openimages_and_reports(tmp_path, capsys):
    write_tree(tmp_path / "raw")
    assert load_script().main(["--dataset", "openimages", "--raw_dir", str(tmp_path / "raw"),
                               "--out_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert ("train: 2 images kept of 5 listed (2 without a trainable label, 1 missing on disk); "
            "10 rows: 2 not trainable, 1 of unlisted images, 2 repeated, 1 entries conflicting "
            "(dropped), 1 of missing images; 3 entries kept (2 +1, 1 -1)") in printed
    assert "OpenImages V3 (recognised from" in printed
    assert "OpenImages V3: 3 trainable classes (1 without a description" in printed
    assert (tmp_path / "out" / "train_labels.npz").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--obs_only"], "--obs_only does not apply to openimages"),
    (["--image_dir", "x", "--dataset", "pascal"], "--image_dir applies to --dataset openimages"),
])
def test_script_refuses_options_that_do_not_apply(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as error:
        load_script().main(["--dataset", "openimages", "--raw_dir", str(tmp_path),
                            "--out_dir", str(tmp_path / "out"), *extra])
    assert error.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- scripts/benchmark_openimages.py

def test_benchmark_generators_make_valid_labels_and_a_tree_prepare_split_reads(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "benchmark_openimages", ROOT / "scripts" / "benchmark_openimages.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    args = benchmark.get_args_parser().parse_args(["--num_images", "50", "--num_classes", "40"])
    labels = benchmark.generate_labels(args)
    check_sparse_labels(labels, "generated")
    assert labels.num_images == 50 and 0.8 * 5.7 * 50 < labels.num_labelled <= 5.7 * 50 * 1.3
    num_rows = benchmark.write_raw_tree(tmp_path, 300, args)
    _, report = openimages.prepare_split(tmp_path, "train", tmp_path / "images",
                                         openimages.read_trainable_classes(
                                             tmp_path / "classes-trainable.txt"))
    assert report["rows_read"] == num_rows and report["images_missing_on_disk"] == 0
    assert 0 < report["rows_not_trainable"] < num_rows / 3
