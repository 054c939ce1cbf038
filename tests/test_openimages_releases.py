"""OpenImages V6 and V7 (issue 22): small trees in the official layouts of each release, written
here with the file names spelled out (not read from openimages.RELEASES, so that a wrong name in
the table fails), prepared by the one code path of openimages.py, and trained end to end."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from largeloss import cli as main
from largeloss.data import datasets, openimages
from largeloss.data.sparse_labels import load_sparse_labels
from largeloss.reporting import summarize

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")
# The official names per release (download pages of V6 and V7; V7 reuses V6's image lists).
V6_IMAGE_LISTS = {"train": "oidv6-train-images-with-labels-with-rotation.csv",
                  "validation": "validation-images-with-rotation.csv",
                  "test": "test-images-with-rotation.csv"}
LAYOUTS = {
    "v3": {"trainable": "classes-trainable.txt", "descriptions": "class-descriptions.csv",
           "header": False, "images": {split: f"{split}/images.csv" for split in SPLITS},
           "annotations": {split: f"{split}/annotations-human.csv" for split in SPLITS}},
    "v6": {"trainable": "oidv6-classes-trainable.txt", "descriptions": "oidv6-class-descriptions.csv",
           "header": True, "images": V6_IMAGE_LISTS,
           "annotations": {"train": "oidv6-train-annotations-human-imagelabels.csv",
                           "validation": "validation-annotations-human-imagelabels.csv",
                           "test": "test-annotations-human-imagelabels.csv"}},
    "v7": {"trainable": "oidv7-classes-trainable.txt", "descriptions": "oidv7-class-descriptions.csv",
           "header": True, "images": V6_IMAGE_LISTS,
           "annotations": {"train": "oidv7-train-annotations-human-imagelabels.csv",
                           "validation": "oidv7-val-annotations-human-imagelabels.csv",
                           "test": "oidv7-test-annotations-human-imagelabels.csv"}},
}
# V6/V7's image lists have these 12 columns; the preparation reads ImageID only.
IMAGE_LIST_HEADER = ("ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,"
                     "Author,Title,OriginalSize,OriginalMD5,Thumbnail300KURL,Rotation")
DESCRIPTIONS = [("/m/car", "Car"), ("/m/dog", "Dog, domestic"),  # a quoted name with a comma
                ("/m/tree", "Tree")]                             # /m/cat: no description
TRAINABLE = ["/m/cat", "/m/dog", "/m/car"]
ROWS = {  # (ImageID, Source, LabelName, Confidence)
    "train": [("img_a", "verification", "/m/cat", "0"), ("img_a", "verification", "/m/car", "1"),
              ("img_a", "verification", "/m/tree", "1"),            # not trainable
              ("img_b", "verification", "/m/dog", "1"),
              ("img_b", "crowdsource-verification", "/m/dog", "1"),  # agreeing repeat
              ("img_b", "verification", "/m/car", "1"),
              ("img_b", "crowdsource-verification", "/m/car", "0"),  # contradicting: dropped
              ("img_c", "verification", "/m/tree", "0"),            # img_c: nothing trainable
              ("img_d", "verification", "/m/cat", "1")],            # img_d: missing on disk
    "validation": [("v1", "verification", "/m/car", "0"), ("v1", "verification", "/m/cat", "1"),
                   ("v2", "verification", "/m/dog", "1"),
                   ("v2", "verification", "/m/tree", "1")],         # a non-trainable class
    "test": [("v1", "verification", "/m/car", "0"), ("v1", "verification", "/m/cat", "1"),
             ("v2", "verification", "/m/dog", "1"), ("v3", "verification", "/m/tree", "0")],
}
IMAGES = {"train": ["img_a", "img_b", "img_c", "img_d"], "validation": ["v1", "v2"],
          "test": ["v1", "v2", "v3"]}
MISSING_ON_DISK = {"img_d"}


def write_tree(raw_dir: Path, release: str, trainable=TRAINABLE, rows=ROWS, images=IMAGES,
               jpeg: bool = False) -> None:
    """RAW in `release`'s official layout (CRLF class descriptions, as the V7 file has), and an
    image file per listed image (empty, or an 8×8 JPEG) under RAW/images/<split>/."""
    layout = LAYOUTS[release]
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / layout["trainable"]).write_text("\n".join(trainable) + "\n")
    header = "LabelName,DisplayName\r\n" if layout["header"] else ""
    (raw_dir / layout["descriptions"]).write_bytes((header + "".join(
        f'{mid},"{name}"\r\n' if "," in name else f"{mid},{name}\r\n"
        for mid, name in DESCRIPTIONS)).encode())
    rng = np.random.RandomState(0)
    for split in SPLITS:
        for key in ("images", "annotations"):
            (raw_dir / layout[key][split]).parent.mkdir(parents=True, exist_ok=True)
        (raw_dir / layout["images"][split]).write_text(IMAGE_LIST_HEADER + "\n" + "".join(
            f"{image},{split},https://x/{image}.jpg,,,,,,0,,,0.0\n" for image in images[split]))
        (raw_dir / layout["annotations"][split]).write_text(
            "ImageID,Source,LabelName,Confidence\n" + "".join(",".join(row) + "\n"
                                                              for row in rows[split]))
        (raw_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        for image in images[split]:
            if image in MISSING_ON_DISK:
                continue
            path = raw_dir / "images" / split / f"{image}.jpg"
            if jpeg:
                Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
            else:
                path.write_bytes(b"")


@pytest.mark.parametrize("release", ["v6", "v7"])
def test_a_v6_or_v7_tree_prepares_with_every_count(tmp_path, release):
    write_tree(tmp_path / "raw", release)
    assert openimages.detect_release(tmp_path / "raw").name == release.upper()
    report = openimages.prepare_openimages(tmp_path / "raw", tmp_path / "out")
    out = tmp_path / "out"
    assert report["release"] == release.upper()
    assert report["classes_without_description"] == ["/m/cat"]
    # the header row is not a class; the quoted name keeps its comma; /m/cat is named by its MID
    assert (out / "class_names.txt").read_text().splitlines() == ["/m/cat", "Dog, domestic", "Car"]
    train = load_sparse_labels(out / "train_labels.npz")
    assert train.image_ids.tolist() == ["img_a", "img_b"]
    assert train.class_names.tolist() == TRAINABLE
    np.testing.assert_array_equal(train.to_dense(), [[-1, 0, 1], [0, 1, 0]])
    assert report["splits"]["train"] == {
        "images_listed": 4, "images_without_trainable_label": 1, "images_missing_on_disk": 1,
        "images_kept": 2, "rows_read": 9, "rows_not_trainable": 2, "rows_unknown_image": 0,
        "duplicate_rows": 2, "conflicting_entries": 1, "entries_of_missing_images": 1,
        "entries_kept": 3, "positives": 2, "negatives": 1}
    validation = report["splits"]["validation"]
    assert (validation["rows_not_trainable"], validation["entries_kept"]) == (1, 3)
    test = report["splits"]["test"]  # v3: only a non-trainable row, so no image left
    assert (test["images_without_trainable_label"], test["images_kept"]) == (1, 2)
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["release"] == release.upper()
    assert metadata["raw_files"]["annotations"]["validation"] == \
        LAYOUTS[release]["annotations"]["validation"]


def test_the_same_rows_in_the_v3_and_v6_layouts_prepare_to_the_same_labels(tmp_path):
    """Class order aside: it follows each release's trainable list (here reversed for V6)."""
    write_tree(tmp_path / "v3", "v3")
    write_tree(tmp_path / "v6", "v6", trainable=TRAINABLE[::-1])
    openimages.prepare_openimages(tmp_path / "v3", tmp_path / "out3")
    openimages.prepare_openimages(tmp_path / "v6", tmp_path / "out6")
    for split in SPLITS:
        v3, v6 = (load_sparse_labels(tmp_path / out / f"{split}_labels.npz")
                  for out in ("out3", "out6"))
        assert v6.class_names.tolist() == TRAINABLE[::-1]
        np.testing.assert_array_equal(v3.image_ids, v6.image_ids)
        np.testing.assert_array_equal(v3.to_dense(), v6.to_dense()[:, ::-1])
    reports = [json.loads((tmp_path / out / "metadata.json").read_text())["report"]
               for out in ("out3", "out6")]
    assert reports[0]["splits"] == reports[1]["splits"]
    assert (reports[0]["release"], reports[1]["release"]) == ("V3", "V6")


def test_release_detection_and_its_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds none of classes-trainable.txt \\(V3\\), "
                                                "oidv6-classes-trainable.txt \\(V6\\)"):
        openimages.detect_release(tmp_path)
    write_tree(tmp_path, "v6")
    write_tree(tmp_path, "v7")
    with pytest.raises(ValueError, match="several releases \\(V6, V7\\): pass --release"):
        openimages.detect_release(tmp_path)
    assert openimages.resolve_release(tmp_path, "v7").annotations["validation"] == \
        "oidv7-val-annotations-human-imagelabels.csv"
    assert openimages.prepare_openimages(tmp_path, tmp_path / "out", release="v7")["release"] == "V7"
    with pytest.raises(ValueError, match="unknown OpenImages release 'v5'"):
        openimages.resolve_release(tmp_path, "v5")


def test_a_v7_descriptions_file_without_its_header_row_is_an_error(tmp_path):
    write_tree(tmp_path, "v7")
    (tmp_path / "oidv7-class-descriptions.csv").write_text("/m/car,Car\n/m/dog,Dog\n")
    with pytest.raises(ValueError, match="oidv7-class-descriptions.csv, line 1: '/m/car,Car' is a "
                                         "class, expected the header row"):
        openimages.prepare_openimages(tmp_path, tmp_path / "out")


def test_a_folder_prepared_before_v6_reads_as_v3(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"release": "V3 (2017_11)"}))
    assert openimages.read_release(tmp_path) == "V3"
    assert openimages.read_release(tmp_path / "nowhere") is None


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_data_says_which_release_it_found(tmp_path, capsys):
    write_tree(tmp_path / "raw", "v7")
    script = load_script("prepare_data")
    assert script.main(["--dataset", "openimages", "--raw_dir", str(tmp_path / "raw"),
                        "--out_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"OpenImages V7 (recognised from {tmp_path / 'raw' / 'oidv7-classes-trainable.txt'})" \
        in printed
    assert "OpenImages V7: 3 trainable classes" in printed
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--dataset", "openimages", "--raw_dir", str(tmp_path), "--out_dir",
                     str(tmp_path / "out2")])
    assert exit_info.value.code == 2
    assert "holds none of classes-trainable.txt" in capsys.readouterr().err


# ------------------------------------------------------------------ training on V7, end to end

CLASSES = [f"/m/c{index}" for index in range(5)]
TINY = ["--dataset", "openimages", "--arch", "small_cnn", "--weights", "none", "--image_size",
        "32", "--device", "cpu", "--num_workers", "0", "--batch_size", "8", "--epochs", "1"]


def generated_rows(num_images: dict[str, int]) -> tuple[dict, dict]:
    """Images and rows of every split: 2–3 verified labels per image among 5 classes."""
    rng = np.random.RandomState(1)
    images, rows = {}, {}
    for split, count in num_images.items():
        images[split] = [f"{split[:2]}{index:03d}" for index in range(count)]
        rows[split] = [(image, "verification", CLASSES[label], str(rng.randint(2)))
                       for image in images[split]
                       for label in rng.choice(5, rng.randint(2, 4), replace=False)]
    return images, rows


def test_a_tiny_v7_run_trains_evaluates_and_keeps_apart_from_v3(tmp_path, capsys):
    images, rows = generated_rows({"train": 16, "validation": 8, "test": 8})
    for release in ("v3", "v7"):
        write_tree(tmp_path / release, release, trainable=CLASSES, rows=rows, images=images,
                   jpeg=True)
        openimages.prepare_openimages(tmp_path / release, tmp_path / f"data_{release}")
        assert main.main([*TINY, "--data_root", str(tmp_path / f"data_{release}"),
                          "--out_dir", str(tmp_path / "runs" / release)]) == 0
    data = datasets.load_data("openimages", str(tmp_path / "data_v7"), None, 32)
    assert (data.release, data.class_ids) == ("V7", CLASSES)
    results = json.loads((tmp_path / "runs" / "v7" / "results.json").read_text())
    assert (results["data_release"], results["class_ids"]) == ("V7", CLASSES)
    assert list(results["groups"]) == ["G1", "G2", "G3", "G4", "G5"]
    capsys.readouterr()
    assert summarize.main([str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    v3_rows = [line for line in lines if line.startswith("| openimages V3 | end_to_end | LL-R |")]
    v7_rows = [line for line in lines if line.startswith("| openimages V7 | end_to_end | LL-R |")]
    assert len(v3_rows) == len(v7_rows) == 2  # two rows each (main and group table), never one
    assert "| 82.5 |" in v3_rows[0] and "| 82.5 |" not in v7_rows[0]  # the paper's is V3


def test_eval_only_writes_what_results_json_has(tmp_path, capsys):
    images, rows = generated_rows({"train": 16, "validation": 8, "test": 8})
    write_tree(tmp_path / "raw", "v6", trainable=CLASSES, rows=rows, images=images, jpeg=True)
    openimages.prepare_openimages(tmp_path / "raw", tmp_path / "data")
    run = tmp_path / "run"
    assert main.main([*TINY, "--data_root", str(tmp_path / "data"), "--out_dir", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    for split, name in (("test", "eval_best"), ("val", "eval_best_val")):
        assert main.main(["--eval_only", str(run / "best.pt"), "--split", split,
                          "--device", "cpu", "--num_workers", "0"]) == 0
        evaluated = json.loads((run / f"{name}.json").read_text())
        assert evaluated["scores"] == f"{name}.npy" and (run / f"{name}.npy").is_file()
        assert (evaluated["data_release"], evaluated["class_ids"]) == ("V6", CLASSES)
        for key in ("map_all_classes", "map_measured", "num_classes", "num_measured",
                    "map_convention", "groups"):
            assert key in evaluated, key
        assert evaluated[f"{split}_map"] == evaluated["map_all_classes"]
    test = json.loads((run / "eval_best.json").read_text())  # the same model as results.json's
    for key in ("map_all_classes", "map_measured", "num_classes", "num_measured", "test_map"):
        assert test[key] == pytest.approx(results[key]), key
    assert test["groups"].keys() == results["groups"].keys()
    for name, group in results["groups"].items():
        assert test["groups"][name] == pytest.approx(group, nan_ok=True), name
    assert "val_map is map_all_classes" in capsys.readouterr().out  # eval_only prints both


def test_the_benchmark_writes_a_v7_tree_that_prepare_split_reads(tmp_path):
    benchmark = load_script("benchmark_openimages")
    args = benchmark.get_args_parser().parse_args(["--release", "v7", "--num_images", "50",
                                                   "--num_classes", "40"])
    num_rows = benchmark.write_raw_tree(tmp_path, 300, args)
    assert (tmp_path / "oidv7-train-annotations-human-imagelabels.csv").is_file()
    release = openimages.detect_release(tmp_path)
    assert release.name == "V7"
    _, report = openimages.prepare_split(tmp_path, "train", tmp_path / "images",
                                         openimages.read_trainable_classes(
                                             tmp_path / release.trainable), release)
    assert report["rows_read"] == num_rows and report["images_missing_on_disk"] == 0
