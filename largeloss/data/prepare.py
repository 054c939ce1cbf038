"""Formatters: the official archives of the paper datasets → Cole folders (docs/protocol.md).

Only `scripts/prepare_data.py` uses this module; the trainer reads the folders it writes through
formats.py.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from largeloss.data.formats import (CLASS_NAMES_FILE, NUM_CLASSES, PASCAL_CLASSES, PHASES, check_label_matrix,
                                    class_names_for, cole_file, load_image_paths, load_npy,
                                    make_observed_labels)
from largeloss.utils import atomic

# ---------------------------------------------------------------------------------------------
# Formatters: official archives → Cole arrays (docs/protocol.md); scripts/prepare_data.py writes them
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FormattedPhase:
    """One official phase produced by a formatter.

    image_paths: N paths relative to IMAGE_DIRS[dataset].
    true_labels: N×L float32 in {0, 1}.
    boxes:       N entries {"width": W, "height": H, "boxes": [[class_index, x0, y0, x1, y1], ...]}
                 in original pixel coordinates, or None when the source has no boxes.
    """
    image_paths: list[str]
    true_labels: np.ndarray
    boxes: list[dict] | None = None


@dataclass(frozen=True)
class FormattedDataset:
    """A formatter's result: class names (None when the source names none) and the phases
    "train" and "val" (the official ones)."""
    class_names: list[str] | None
    phases: dict[str, FormattedPhase]


def _multi_hot(positive_classes: list[list[int]], num_classes: int) -> np.ndarray:
    """N×L float32 in {0, 1} from each row's list of positive class indices."""
    labels = np.zeros((len(positive_classes), num_classes), dtype=np.float32)
    for row, classes in enumerate(positive_classes):
        labels[row, classes] = 1.0
    return labels


def _require_raw(path: Path, hint: str) -> Path:
    """`path` if it exists, else FileNotFoundError naming it with a hint about the raw layout."""
    if not path.exists():
        raise FileNotFoundError(f"missing {path}; {hint} (see data/README.md)")
    return path


def _number(text: str | None, source: str) -> int | float:
    """A coordinate from an annotation file: int when integral, else float."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected a number, got {text!r}") from None
    return int(value) if value.is_integer() else value


def _voc_positive_names(path: Path) -> list[str]:
    """Image names flagged 1 in an ImageSets/Main/<class>_<phase>.txt file ("name flag" lines;
    0 = difficult and -1 both count as negative, docs/protocol.md)."""
    names = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
            raise ValueError(f"{path}, line {line_number}: expected 'name flag' with flag 1, 0 "
                             f"or -1, got {line!r}")
        if fields[1] == "1":
            names.append(fields[0])
    return names


def _voc_boxes(path: Path) -> dict:
    """{"width", "height", "boxes": [[class_index, xmin, ymin, xmax, ymax], ...]} from one
    Annotations/<name>.xml file (VOC's 1-based pixel coordinates, unchanged)."""
    root = ElementTree.parse(_require_raw(path, "every image needs its annotation")).getroot()
    boxes = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in PASCAL_CLASSES:
            raise ValueError(f"{path}: unknown object class {name!r}")
        corners = [_number(obj.findtext(f"bndbox/{tag}"), f"{path} {name} {tag}")
                   for tag in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append([PASCAL_CLASSES.index(name), *corners])
    return {"width": _number(root.findtext("size/width"), f"{path} width"),
            "height": _number(root.findtext("size/height"), f"{path} height"), "boxes": boxes}


def format_pascal(raw_dir: Path) -> FormattedDataset:
    """PASCAL VOC 2012 from raw_dir/VOCdevkit/VOC2012 (docs/protocol.md).

    Rows: images with ≥1 positive in ImageSets/Main/<class>_<phase>.txt, sorted by name;
    columns: PASCAL_CLASSES (alphabetical); paths "<name>.jpg"; boxes from Annotations/ when that
    folder exists.
    """
    voc_root = _require_raw(Path(raw_dir) / "VOCdevkit" / "VOC2012",
                            "--raw_dir must contain VOCdevkit/VOC2012 (the extracted trainval tar)")
    phases = {}
    for phase in PHASES:
        positives: dict[str, list[int]] = {}
        for class_index, class_name in enumerate(PASCAL_CLASSES):
            image_set = _require_raw(voc_root / "ImageSets" / "Main" / f"{class_name}_{phase}.txt",
                                     "the VOC2012 trainval tar provides ImageSets/Main")
            for name in _voc_positive_names(image_set):
                positives.setdefault(name, []).append(class_index)
        names = sorted(positives)
        annotation_dir = voc_root / "Annotations"
        boxes = ([_voc_boxes(annotation_dir / f"{name}.xml") for name in names]
                 if annotation_dir.is_dir() else None)
        phases[phase] = FormattedPhase([f"{name}.jpg" for name in names],
                                       _multi_hot([positives[name] for name in names],
                                                  len(PASCAL_CLASSES)), boxes)
    return FormattedDataset(list(PASCAL_CLASSES), phases)


def _coco_phase(instances: dict, phase: str, class_index_of: dict[int, int],
                source: Path) -> FormattedPhase:
    """One COCO phase: rows = images with ≥1 annotation, ordered by image id sorted as strings
    (Cole's order); boxes [x, y, w, h] → [class_index, x, y, x + w, y + h]."""
    sizes = {image["id"]: (image["width"], image["height"]) for image in instances["images"]}
    boxes_of: dict[int, list[list]] = {}
    for annotation in instances["annotations"]:
        x, y, width, height = annotation["bbox"]
        boxes_of.setdefault(annotation["image_id"], []).append(
            [class_index_of[annotation["category_id"]], x, y, x + width, y + height])
    image_ids = sorted(boxes_of, key=str)
    unknown = [image_id for image_id in image_ids if image_id not in sizes]
    if unknown:
        raise ValueError(f"{source}: annotations refer to image id {unknown[0]} which is not in "
                         f"'images' ({len(unknown)} such ids)")
    labels = _multi_hot([[box[0] for box in boxes_of[image_id]] for image_id in image_ids],
                        len(class_index_of))
    paths = [f"{phase}2014/COCO_{phase}2014_{image_id:012d}.jpg" for image_id in image_ids]
    boxes = [{"width": sizes[image_id][0], "height": sizes[image_id][1],
              "boxes": boxes_of[image_id]} for image_id in image_ids]
    return FormattedPhase(paths, labels, boxes)


def format_coco(raw_dir: Path) -> FormattedDataset:
    """COCO 2014 from raw_dir/annotations/instances_{train,val}2014.json (docs/protocol.md).

    Columns: the `categories` list sorted by id; paths "train2014/COCO_train2014_%012d.jpg" and
    "val2014/COCO_val2014_%012d.jpg".
    """
    class_names, phases = None, {}
    for phase in PHASES:
        path = _require_raw(Path(raw_dir) / "annotations" / f"instances_{phase}2014.json",
                            "extract annotations_trainval2014.zip into --raw_dir")
        with open(path, encoding="utf-8") as handle:
            instances = json.load(handle)
        categories = sorted(instances["categories"], key=lambda category: category["id"])
        names = [category["name"] for category in categories]
        if class_names is not None and names != class_names:
            raise ValueError(f"{path}: categories differ from the train annotations")
        class_names = names
        class_index_of = {category["id"]: index for index, category in enumerate(categories)}
        phases[phase] = _coco_phase(instances, phase, class_index_of, path)
    return FormattedDataset(class_names, phases)


def format_nuswide(raw_dir: Path) -> FormattedDataset:
    """NUS-WIDE from the authors' formatted files in raw_dir (no public formatter exists).

    Reads formatted_{train,val}_{images,labels}.npy, checks them (strings, N×81 in {0, 1}, rows
    agree) and keeps every row, including the ≈22 % with no positive. Class names come from
    raw_dir/class_names.txt when present.
    """
    raw_dir = Path(raw_dir)
    hint = "--raw_dir must hold the authors' formatted_{train,val}_{images,labels}.npy"
    phases = {}
    for phase in PHASES:
        images_file = _require_raw(cole_file(raw_dir, phase, "images"), hint)
        labels_file = _require_raw(cole_file(raw_dir, phase, "labels"), hint)
        image_paths = load_image_paths(images_file, raw_dir)
        labels = load_npy(labels_file, raw_dir)
        check_label_matrix(labels, (0, 1), str(labels_file))
        if labels.shape != (len(image_paths), NUM_CLASSES["nuswide"]):
            raise ValueError(f"shape mismatch: {labels_file} has shape {labels.shape}, expected "
                             f"({len(image_paths)}, {NUM_CLASSES['nuswide']}) from {images_file}")
        phases[phase] = FormattedPhase(image_paths, labels.astype(np.float32))
    names_file = raw_dir / CLASS_NAMES_FILE
    class_names = (class_names_for(raw_dir, "nuswide", NUM_CLASSES["nuswide"])
                   if names_file.is_file() else None)
    return FormattedDataset(class_names, phases)


def find_cub_root(raw_dir: Path) -> Path:
    """The CUB_200_2011 folder holding images.txt: raw_dir itself, raw_dir/CUB_200_2011, or
    raw_dir/CUB_200_2011/CUB_200_2011 (the tgz extracted into a folder of the same name)."""
    raw_dir = Path(raw_dir)
    candidates = [raw_dir, raw_dir / "CUB_200_2011", raw_dir / "CUB_200_2011" / "CUB_200_2011"]
    for candidate in candidates:
        if (candidate / "images.txt").is_file():
            return candidate
    looked = ", ".join(str(candidate / "images.txt") for candidate in candidates)
    raise FileNotFoundError(f"no CUB_200_2011 folder under {raw_dir}: looked for {looked} "
                            f"(see data/README.md)")


def _read_id_table(path: Path, num_fields: int) -> list[list[str]]:
    """Lines "id value ..." of a CUB text file, split into at most `num_fields` fields
    (the last field keeps its spaces)."""
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split(maxsplit=num_fields - 1)
        if not fields:
            continue
        if len(fields) != num_fields or not fields[0].isdigit():
            raise ValueError(f"{path}, line {line_number}: expected {num_fields} fields starting "
                             f"with an integer id, got {line!r}")
        rows.append(fields)
    return rows


def _cub_attribute_names(cub_root: Path, raw_dir: Path) -> list[str] | None:
    """Attribute names in id order from the first attributes.txt found in the usual places
    (the tgz puts it beside CUB_200_2011/), or None."""
    candidates = [cub_root / "attributes" / "attributes.txt", cub_root / "attributes.txt",
                  cub_root.parent / "attributes.txt", Path(raw_dir) / "attributes.txt"]
    for path in candidates:
        if path.is_file():
            rows = _read_id_table(path, 2)
            if [int(attribute_id) for attribute_id, _ in rows] != list(range(1, len(rows) + 1)):
                raise ValueError(f"{path}: attribute ids must run 1, 2, ..., {len(rows)}")
            return [name for _, name in rows]
    return None


def _cub_attribute_labels(path: Path, image_ids: list[int],
                          num_attributes: int | None) -> np.ndarray:
    """N×A float32 in {0, 1}, rows in `image_ids` order, from image_attribute_labels.txt's
    is_present column (all certainty levels). Lines are "image_id attribute_id is_present
    certainty_id time"; extra trailing fields, which some lines of the real file have, are
    ignored."""
    entries = []  # (line number, image id, attribute id, is_present)
    with open(_require_raw(path, "CUB_200_2011.tgz provides it")) as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split(None, 3)
            if not fields:
                continue
            try:
                entries.append((line_number, int(fields[0]), int(fields[1]), int(fields[2])))
            except (IndexError, ValueError):
                raise ValueError(f"{path}, line {line_number}: expected 'image_id attribute_id "
                                 f"is_present certainty_id time', got {line!r}") from None
    entry_line, entry_image, entry_attribute, entry_present = (
        np.array(entries, dtype=np.int64).reshape(-1, 4).T)
    num_attributes = num_attributes or int(entry_attribute.max(initial=0))
    row_of_image = np.full(max(max(image_ids), int(entry_image.max(initial=0))) + 1, -1)
    row_of_image[image_ids] = np.arange(len(image_ids))
    rows = row_of_image[entry_image.clip(min=0)]
    checks = [(~np.isin(entry_present, (0, 1)), "is_present must be 0 or 1"),
              ((entry_image < 1) | (rows < 0), "image id not in images.txt"),
              ((entry_attribute < 1) | (entry_attribute > num_attributes),
               f"attribute id outside 1..{num_attributes}")]
    for bad, problem in checks:
        if bad.any():
            raise ValueError(f"{path}, line {entry_line[bad][0]} (image "
                             f"{entry_image[bad][0]}, attribute {entry_attribute[bad][0]}): "
                             f"{problem}")
    labels = np.zeros((len(image_ids), num_attributes), dtype=np.float32)
    labels[rows, entry_attribute - 1] = entry_present
    return labels


def format_cub(raw_dir: Path) -> FormattedDataset:
    """CUB-200-2011 attributes (docs/protocol.md): 312 attribute columns from the is_present column,
    rows in images.txt order, phase from train_test_split.txt (1 → "train", 0 → "val")."""
    cub_root = find_cub_root(raw_dir)
    images = _read_id_table(cub_root / "images.txt", 2)
    if not images:
        raise ValueError(f"{cub_root / 'images.txt'} lists no images")
    image_ids = [int(image_id) for image_id, _ in images]
    class_names = _cub_attribute_names(cub_root, Path(raw_dir))
    labels = _cub_attribute_labels(cub_root / "attributes" / "image_attribute_labels.txt",
                                   image_ids, len(class_names) if class_names else None)
    split_file = _require_raw(cub_root / "train_test_split.txt", "CUB_200_2011.tgz provides it")
    is_train = {int(image_id): flag for image_id, flag in _read_id_table(split_file, 2)}
    missing = [image_id for image_id in image_ids if image_id not in is_train]
    if missing or set(is_train.values()) - {"0", "1"}:
        raise ValueError(f"{split_file}: every image needs a flag 0 or 1 "
                         f"(first image without one: {missing[:1]})")
    phases = {}
    for phase, flag in (("train", "1"), ("val", "0")):
        rows = [row for row, image_id in enumerate(image_ids) if is_train[image_id] == flag]
        phases[phase] = FormattedPhase([images[row][1] for row in rows], labels[rows])
    return FormattedDataset(class_names, phases)


FORMATTERS = {"pascal": format_pascal, "coco": format_coco, "nuswide": format_nuswide,
              "cub": format_cub}


# ---------------------------------------------------------------------------------------------
# Writing a Cole folder (atomic: a reader never sees a half-written file)
# ---------------------------------------------------------------------------------------------

def write_observed_labels(out_dir: Path, true_labels: dict[str, np.ndarray], num_pos: int,
                          num_neg: int, seed: int) -> dict[str, np.ndarray]:
    """Write formatted_{phase}_labels_obs.npy for each phase from its N×L {0, 1} clean labels,
    one `make_observed_labels` call (a fresh RandomState(seed)) per phase. Returns them."""
    observed = {}
    for phase, labels in true_labels.items():
        observed[phase] = make_observed_labels(labels, num_pos, num_neg, seed)
        atomic.save_npy(cole_file(out_dir, phase, "labels_obs"), observed[phase])
    return observed


def write_cole_folder(out_dir: Path, formatted: FormattedDataset, num_pos: int, num_neg: int,
                      seed: int) -> dict[str, np.ndarray]:
    """Write a formatter's result as a Cole folder (images, labels, observed labels, class names,
    boxes where the source has them). Returns the observed labels per phase."""
    out_dir = Path(out_dir)
    for phase, content in formatted.phases.items():
        atomic.save_npy(cole_file(out_dir, phase, "images"),
                        np.array(content.image_paths, dtype=str))
        atomic.save_npy(cole_file(out_dir, phase, "labels"),
                        content.true_labels.astype(np.float32))
        boxes_file = out_dir / f"formatted_{phase}_boxes.json"
        if content.boxes is not None:
            atomic.save_text(boxes_file, json.dumps(content.boxes))
        elif boxes_file.exists():
            boxes_file.unlink()  # stale boxes from an earlier run would no longer align
    if formatted.class_names is not None:
        atomic.save_text(out_dir / CLASS_NAMES_FILE, "".join(f"{name}\n"
                                                             for name in formatted.class_names))
    return write_observed_labels(
        out_dir, {phase: content.true_labels for phase, content in formatted.phases.items()},
        num_pos, num_neg, seed)
