"""The formatters in formats.py on tiny fake official trees, and scripts/prepare_data.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from largeloss.data import formats, prepare
from largeloss.data.formats import PASCAL_CLASSES, load_boxes, load_cole_folder, make_observed_labels

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    """scripts/prepare_data.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts" /
                                                  "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- PASCAL VOC 2012

# phase -> image name -> {class: flag}; every other (image, class) pair is flagged -1.
VOC_FLAGS = {
    "train": {"2008_000003": {"cat": 1, "dog": 1}, "2008_000001": {"aeroplane": 1, "person": 0},
              "2008_000002": {"person": 0}},  # only "difficult": no positive, so no row
    "val": {"2009_000010": {"tvmonitor": 1}, "2009_000005": {"bird": 1, "cat": 1}},
}
VOC_OBJECTS = {"2008_000003": [("cat", 10, 20, 110, 120), ("dog", 5, 6, 7.5, 8)],
               "2008_000001": [("aeroplane", 1, 2, 300, 200), ("person", 3, 4, 5, 6)],
               "2008_000002": [("person", 1, 1, 2, 2)], "2009_000010": [("tvmonitor", 1, 2, 3, 4)],
               "2009_000005": [("bird", 1, 1, 9, 9), ("cat", 2, 2, 8, 8)]}


def write_voc_tree(raw_dir: Path, with_annotations: bool = True) -> None:
    """VOCdevkit/VOC2012/ImageSets/Main/<class>_<phase>.txt (+ Annotations/<name>.xml)."""
    voc_root = raw_dir / "VOCdevkit" / "VOC2012"
    (voc_root / "ImageSets" / "Main").mkdir(parents=True)
    for phase, flags in VOC_FLAGS.items():
        for class_name in PASCAL_CLASSES:
            lines = [f"{name} {'' if flag_of.get(class_name, -1) < 0 else ' '}"
                     f"{flag_of.get(class_name, -1)}" for name, flag_of in flags.items()]
            (voc_root / "ImageSets" / "Main" / f"{class_name}_{phase}.txt").write_text(
                "\n".join(lines) + "\n")
    if with_annotations:
        (voc_root / "Annotations").mkdir()
        for name, objects in VOC_OBJECTS.items():
            xml_objects = "".join(
                f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
                f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                for cls, x0, y0, x1, y1 in objects)
            (voc_root / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.jpg</filename><size><width>500</width>"
                f"<height>375</height><depth>3</depth></size>{xml_objects}</annotation>")


def one_hot_rows(rows: list[list[int]], num_classes: int) -> np.ndarray:
    """Expected N×L label matrix from each row's positive class indices."""
    labels = np.zeros((len(rows), num_classes), dtype=np.float32)
    for row, classes in enumerate(rows):
        labels[row, classes] = 1
    return labels


def test_format_pascal_labels_order_and_boxes(tmp_path):
    write_voc_tree(tmp_path)
    formatted = prepare.format_pascal(tmp_path)
    assert formatted.class_names == list(PASCAL_CLASSES)
    train, val = formatted.phases["train"], formatted.phases["val"]
    assert train.image_paths == ["2008_000001.jpg", "2008_000003.jpg"]  # sorted; 000002 dropped
    np.testing.assert_array_equal(train.true_labels, one_hot_rows([[0], [7, 11]], 20))
    assert train.true_labels.dtype == np.float32
    assert val.image_paths == ["2009_000005.jpg", "2009_000010.jpg"]
    np.testing.assert_array_equal(val.true_labels, one_hot_rows([[2, 7], [19]], 20))
    assert train.boxes[1] == {"width": 500, "height": 375,
                              "boxes": [[7, 10, 20, 110, 120], [11, 5, 6, 7.5, 8]]}
    assert train.boxes[0]["boxes"] == [[0, 1, 2, 300, 200], [14, 3, 4, 5, 6]]


def test_format_pascal_without_annotations_has_no_boxes(tmp_path):
    write_voc_tree(tmp_path, with_annotations=False)
    assert prepare.format_pascal(tmp_path).phases["val"].boxes is None


def test_format_pascal_refuses_missing_tree_and_bad_lines(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2012.*trainval tar"):
        prepare.format_pascal(tmp_path)
    write_voc_tree(tmp_path)
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Main/cow_val.txt").write_text("2009_000005 2\n")
    with pytest.raises(ValueError, match=r"cow_val\.txt, line 1: expected 'name flag'"):
        prepare.format_pascal(tmp_path)


# ---------------------------------------------------------------- COCO 2014

def write_coco_tree(raw_dir: Path) -> None:
    """annotations/instances_{train,val}2014.json with categories listed out of id order."""
    categories = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"},
                  {"id": 2, "name": "bicycle"}]
    phases = {
        "train": ([9, 10, 100, 7], [(9, 3, [1, 2, 3, 4]), (10, 1, [0, 0, 10, 20]),
                                    (10, 2, [5.5, 6, 1, 1]), (100, 1, [2, 2, 2, 2])]),
        "val": ([42], [(42, 2, [1, 1, 1, 1])]),
    }
    (raw_dir / "annotations").mkdir(parents=True)
    for phase, (image_ids, phase_annotations) in phases.items():
        instances = {
            "categories": categories,
            "images": [{"id": image_id, "width": 600 + image_id, "height": 400,
                        "file_name": f"COCO_{phase}2014_{image_id:012d}.jpg"}
                       for image_id in image_ids],
            "annotations": [{"id": index, "image_id": image_id, "category_id": category_id,
                             "bbox": bbox, "iscrowd": 0}
                            for index, (image_id, category_id, bbox) in enumerate(phase_annotations)],
        }
        (raw_dir / "annotations" / f"instances_{phase}2014.json").write_text(json.dumps(instances))


def test_format_coco_orders_ids_as_strings_and_converts_boxes(tmp_path):
    write_coco_tree(tmp_path)
    formatted = prepare.format_coco(tmp_path)
    assert formatted.class_names == ["person", "bicycle", "car"]  # categories sorted by id
    train = formatted.phases["train"]
    assert train.image_paths == ["train2014/COCO_train2014_000000000010.jpg",  # "10" < "100" < "9"
                                 "train2014/COCO_train2014_000000000100.jpg",
                                 "train2014/COCO_train2014_000000000009.jpg"]
    np.testing.assert_array_equal(train.true_labels, one_hot_rows([[0, 1], [0], [2]], 3))
    assert train.boxes[0] == {"width": 610, "height": 400,
                              "boxes": [[0, 0, 0, 10, 20], [1, 5.5, 6, 6.5, 7]]}
    assert train.boxes[2] == {"width": 609, "height": 400, "boxes": [[2, 1, 2, 4, 6]]}
    assert formatted.phases["val"].image_paths == ["val2014/COCO_val2014_000000000042.jpg"]


# ---------------------------------------------------------------- NUS-WIDE

def write_nuswide_files(raw_dir: Path, num_classes: int = 81) -> dict[str, np.ndarray]:
    """The authors' formatted_{train,val}_{images,labels}.npy; row 1 has no positive."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    labels = {}
    for phase, rows in (("train", 4), ("val", 2)):
        labels[phase] = (np.random.RandomState(rows).rand(rows, num_classes) < 0.05).astype(float)
        labels[phase][0, 3] = 1
        labels[phase][1] = 0
        np.save(raw_dir / f"formatted_{phase}_images.npy",
                np.array([f"images/{phase}_{row}.jpg" for row in range(rows)]))
        np.save(raw_dir / f"formatted_{phase}_labels.npy", labels[phase])
    return labels


def test_format_nuswide_keeps_rows_without_positive(tmp_path):
    labels = write_nuswide_files(tmp_path)
    formatted = prepare.format_nuswide(tmp_path)
    assert formatted.class_names is None
    train = formatted.phases["train"]
    assert train.image_paths == [f"images/train_{row}.jpg" for row in range(4)]
    np.testing.assert_array_equal(train.true_labels, labels["train"])
    assert train.true_labels[1].sum() == 0


def test_format_nuswide_refuses_wrong_class_count(tmp_path):
    write_nuswide_files(tmp_path, num_classes=80)
    with pytest.raises(ValueError, match=r"formatted_train_labels\.npy has shape \(4, 80\), "
                                         r"expected \(4, 81\)"):
        prepare.format_nuswide(tmp_path)


# ---------------------------------------------------------------- CUB-200-2011

CUB_IMAGES = ["001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg",
              "001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg",
              "002.Laysan_Albatross/Laysan_Albatross_0001_545.jpg",
              "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg"]
CUB_PRESENT = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=np.float32)
CUB_IS_TRAIN = [1, 0, 1, 0]
CUB_ATTRIBUTES = ["has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger",
                  "has_wing_color::blue"]


def write_cub_tree(cub_root: Path, attributes_file: Path) -> None:
    """A CUB_200_2011 folder at `cub_root`; attributes.txt written to `attributes_file`."""
    (cub_root / "attributes").mkdir(parents=True)
    (cub_root / "images.txt").write_text(
        "".join(f"{index} {path}\n" for index, path in enumerate(CUB_IMAGES, start=1)))
    (cub_root / "train_test_split.txt").write_text(
        "".join(f"{index} {flag}\n" for index, flag in enumerate(CUB_IS_TRAIN, start=1)))
    lines = []
    for image_id, row in enumerate(CUB_PRESENT, start=1):
        for attribute_id, present in enumerate(row, start=1):
            certainty = 1 + (image_id + attribute_id) % 4  # every certainty level counts
            extra = " 0" if (image_id, attribute_id) == (2, 3) else ""  # as in the real file
            lines.append(f"{image_id} {attribute_id} {int(present)} {certainty} 12.5{extra}\n")
    (cub_root / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    attributes_file.parent.mkdir(parents=True, exist_ok=True)
    attributes_file.write_text(
        "".join(f"{index} {name}\n" for index, name in enumerate(CUB_ATTRIBUTES, start=1)))


@pytest.mark.parametrize("cub_root,attributes_file", [
    ("CUB_200_2011", "attributes.txt"),  # the tgz extracted into RAW
    ("CUB_200_2011/CUB_200_2011", "CUB_200_2011/attributes.txt"),  # extracted into RAW/CUB_200_2011
    (".", "attributes/attributes.txt"),  # RAW is the CUB_200_2011 folder itself
])
def test_format_cub_layouts(tmp_path, cub_root, attributes_file):
    write_cub_tree(tmp_path / cub_root, tmp_path / attributes_file)
    formatted = prepare.format_cub(tmp_path)
    assert formatted.class_names == CUB_ATTRIBUTES
    train, val = formatted.phases["train"], formatted.phases["val"]
    assert train.image_paths == [CUB_IMAGES[0], CUB_IMAGES[2]]
    assert val.image_paths == [CUB_IMAGES[1], CUB_IMAGES[3]]
    np.testing.assert_array_equal(train.true_labels, CUB_PRESENT[[0, 2]])
    np.testing.assert_array_equal(val.true_labels, CUB_PRESENT[[1, 3]])
    assert train.boxes is None


def test_format_cub_refuses_missing_tree_and_bad_values(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no CUB_200_2011 folder"):
        prepare.format_cub(tmp_path)
    write_cub_tree(tmp_path / "CUB_200_2011", tmp_path / "attributes.txt")
    labels_file = tmp_path / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    lines = labels_file.read_text().splitlines(keepends=True)
    labels_file.write_text("".join(lines[:4]) + "2 2 7 3 1.0\n" + "".join(lines[5:]))
    with pytest.raises(ValueError, match=r"image_attribute_labels\.txt, line 5 \(image 2, "
                                         r"attribute 2\): is_present must be 0 or 1"):
        prepare.format_cub(tmp_path)


# ---------------------------------------------------------------- the script

def test_script_writes_a_cole_folder(tmp_path, capsys):
    write_voc_tree(tmp_path / "raw")
    out_dir = tmp_path / "data" / "pascal"
    assert load_script().main(["--dataset", "pascal", "--raw_dir", str(tmp_path / "raw"),
                               "--out_dir", str(out_dir)]) == 0
    splits = load_cole_folder(out_dir)
    assert splits["train"].image_paths == ["2008_000001.jpg", "2008_000003.jpg"]
    for phase in formats.PHASES:
        labels = np.load(out_dir / f"formatted_{phase}_labels.npy")
        assert labels.dtype == np.float32
        observed = np.load(out_dir / f"formatted_{phase}_labels_obs.npy")
        np.testing.assert_array_equal(observed, make_observed_labels(labels))  # fresh per phase
        assert np.load(out_dir / f"formatted_{phase}_images.npy").dtype.kind == "U"
    assert (out_dir / "class_names.txt").read_text().splitlines() == list(PASCAL_CLASSES)
    assert load_boxes(out_dir, "val")[1]["boxes"] == [[19, 1, 2, 3, 4]]
    assert not list(out_dir.glob(".*tmp"))  # atomic writes leave no temporary files
    summary = capsys.readouterr().out
    assert "train: 2 rows × 20 classes; per image 1.50 positives (clean), 1.00 observed" in summary
    assert "project split: 2 train / 0 val / 2 test rows" in summary


def test_script_obs_only_rewrites_observed_deterministically(tmp_path):
    write_nuswide_files(tmp_path / "raw")
    out_dir = tmp_path / "nuswide"
    script = load_script()
    script.main(["--dataset", "nuswide", "--raw_dir", str(tmp_path / "raw"), "--out_dir",
                 str(out_dir)])
    labels_before = (out_dir / "formatted_train_labels.npy").read_bytes()
    obs_only = ["--dataset", "nuswide", "--obs_only", "--out_dir", str(out_dir), "--num_pos", "2",
                "--num_neg", "1", "--seed", "7"]
    script.main(obs_only)
    first = {phase: (out_dir / f"formatted_{phase}_labels_obs.npy").read_bytes()
             for phase in formats.PHASES}
    script.main(obs_only)
    for phase in formats.PHASES:
        assert (out_dir / f"formatted_{phase}_labels_obs.npy").read_bytes() == first[phase]
        labels = np.load(out_dir / f"formatted_{phase}_labels.npy")
        np.testing.assert_array_equal(np.load(out_dir / f"formatted_{phase}_labels_obs.npy"),
                                      make_observed_labels(labels, 2, 1, 7))
    assert (out_dir / "formatted_train_labels.npy").read_bytes() == labels_before
    observed = load_cole_folder(out_dir)["train"].observed
    assert (observed == -1).sum(axis=1).tolist() == [1, 1, 1, 1]


def test_script_requires_raw_dir_without_obs_only(tmp_path):
    with pytest.raises(SystemExit):
        load_script().main(["--dataset", "cub", "--out_dir", str(tmp_path)])
