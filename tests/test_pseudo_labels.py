"""Pseudo-label folders (largeloss/data/pseudo_labels.py, docs/pseudo_labels.md): writing, reading,
the one-line checks, the batch accessors per flip policy, and how methods receive them."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from largeloss.data.loading import DevicePreprocess
from largeloss.data.pseudo_labels import (PseudoLabels, class_names_sha256, load_pseudo_labels,
                                          random_view_flips, save_pseudo_labels)
from largeloss.engine import train
from largeloss.methods import losses
from largeloss.methods import registry as methods
from largeloss.utils.distributed import SINGLE_PROCESS
from largeloss.utils.errors import InputError

CLASS_NAMES = ("cat", "dog", "sea")
IDS = ["a.jpg", "sub/b.png", "c.jpg", "d.jpg"]


def folder_arrays(num_rows: int = 4, flips: int = 2, views: int = 5):
    """labels (N, F, L) and scores (N, F, V, L) whose values say where they are: label
    (row + f + class) mod 3 − 1; score (100·row + 10·f + view)/1000 + class/10000."""
    row, flip, view, cls = np.meshgrid(np.arange(num_rows), np.arange(flips), np.arange(views),
                                       np.arange(len(CLASS_NAMES)), indexing="ij")
    scores = (100 * row + 10 * flip + view) / 1000 + cls / 10000
    labels = ((row[:, :, 0] + flip[:, :, 0] + cls[:, :, 0]) % 3 - 1)
    return labels.astype(np.int8), scores.astype(np.float16)


@pytest.fixture
def folder(tmp_path):
    labels, scores = folder_arrays()
    return save_pseudo_labels(tmp_path / "x.pl", IDS, CLASS_NAMES, {"kind": "test", "grid": 2},
                              labels=labels, scores=scores)


def test_saved_folder_holds_the_documented_format(folder):
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["num_classes"] == 3
    assert meta["class_names_sha256"] == class_names_sha256(CLASS_NAMES)
    assert (meta["flips"], meta["views"], meta["kind"]) == (2, 5, "test")
    assert np.load(folder / "labels.npy").dtype == np.int8
    assert np.load(folder / "scores.npy").shape == (4, 2, 5, 3)
    assert np.load(folder / "image_ids.npy").tolist() == IDS
    assert not list(folder.glob(".*tmp"))  # atomic writes leave no temporary file


def test_rows_are_selected_by_id_from_a_larger_file(folder):
    """The training split is a subset in another order: rows follow the ids."""
    pseudo = load_pseudo_labels(folder, ["c.jpg", "a.jpg"], CLASS_NAMES)
    assert pseudo.file_rows.tolist() == [2, 0]
    labels, scores = pseudo.rows(torch.tensor([0, 1]))
    expected_labels, expected_scores = folder_arrays()
    assert labels.dtype == torch.int8 and scores.dtype == torch.float32
    assert labels.tolist() == expected_labels[[2, 0], 0].tolist()
    assert torch.allclose(scores, torch.from_numpy(expected_scores[[2, 0], 0, 0]).float())


def test_rows_return_the_flip_variant_of_each_row(folder):
    """Policy match-train: f = flipped[i]; view 0 (the whole image)."""
    pseudo = load_pseudo_labels(folder, IDS, CLASS_NAMES)
    labels, scores = pseudo.rows(torch.tensor([1, 3, 3]), torch.tensor([True, False, True]))
    expected_labels, expected_scores = folder_arrays()
    assert labels.tolist() == [expected_labels[1, 1].tolist(), expected_labels[3, 0].tolist(),
                               expected_labels[3, 1].tolist()]
    assert scores[:, 0].tolist() == pytest.approx([0.110, 0.300, 0.310], abs=1e-3)


def test_views_follow_each_views_own_flip(folder):
    """Policy per-view: view r of row i from variant view_flips[i, r]; None: f = 0 everywhere."""
    pseudo = load_pseudo_labels(folder, IDS, CLASS_NAMES)
    flips = torch.tensor([[False, True, False, True, True]])
    scores = pseudo.views(torch.tensor([2]), flips)
    assert scores.shape == (1, 5, 3)
    assert scores[0, :, 0].tolist() == pytest.approx([0.200, 0.211, 0.202, 0.213, 0.214], abs=1e-3)
    assert scores[0, :, 0].tolist() != pseudo.views(torch.tensor([2]))[0, :, 0].tolist()
    assert pseudo.views(torch.tensor([2]))[0, :, 0].tolist() == pytest.approx(
        [0.200, 0.201, 0.202, 0.203, 0.204], abs=1e-3)


def test_a_single_variant_file_ignores_the_flips(tmp_path):
    labels, _ = folder_arrays(flips=1)
    path = save_pseudo_labels(tmp_path / "one.pl", IDS, CLASS_NAMES, {}, labels=labels)
    pseudo = load_pseudo_labels(path, IDS, CLASS_NAMES)
    assert pseudo.num_flips == 1 and pseudo.num_views == 0
    flipped_labels, scores = pseudo.rows(torch.arange(4), torch.ones(4, dtype=torch.bool))
    assert scores is None and flipped_labels.tolist() == labels[:, 0].tolist()
    with pytest.raises(ValueError, match="no scores.npy"):
        pseudo.views(torch.arange(4))


def test_arrays_are_memory_mapped_on_the_cpu(folder):
    pseudo = load_pseudo_labels(folder, IDS, CLASS_NAMES)
    assert pseudo.to("cpu") is pseudo
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs Linux's /proc/self/maps")
    address = pseudo.scores.data_ptr()
    mapped = [line for line in maps.read_text().splitlines() if line.endswith("scores.npy")]
    spans = [[int(part, 16) for part in line.split()[0].split("-")] for line in mapped]
    assert any(start <= address < end for start, end in spans)


def test_random_view_flips_are_independent_fair_bits():
    flips = random_view_flips(4000, 17, "cpu", torch.Generator().manual_seed(0))
    assert flips.shape == (4000, 17) and flips.dtype == torch.bool
    assert abs(flips.float().mean().item() - 0.5) < 0.01
    assert abs(torch.corrcoef(flips.float().T[:2])[0, 1].item()) < 0.05


# --- validation: one line naming the file and the first offending row --------------------------

def rewrite(folder, name, array):
    np.save(folder / name, array, allow_pickle=False)


def edit_meta(folder, **changes):
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))


BROKEN = {
    "missing id": (lambda f: None, ["a.jpg", "zz.jpg"], r"image_ids.npy: training image 'zz.jpg' "
                                                        r"\(training row 1\) is missing, 1 of 2"),
    "duplicate id": (lambda f: rewrite(f, "image_ids.npy", np.array(["a", "b", "a", "c"])), ["a"],
                     r"id 'a' appears twice \(rows 0 and 2\)"),
    "class count": (lambda f: edit_meta(f, num_classes=4), IDS, r"num_classes 4, the dataset has 3"),
    "class names": (lambda f: edit_meta(f, class_names_sha256="0" * 64), IDS,
                    r"class_names_sha256 differs"),
    "label value": (lambda f: rewrite(f, "labels.npy", np.pad(
        folder_arrays()[0][:3], ((0, 1), (0, 0), (0, 0)), constant_values=2)), IDS,
                    r"labels.npy: row 3 holds 2; pseudo-labels are -1, 0 or \+1"),
    "label dtype": (lambda f: rewrite(f, "labels.npy", folder_arrays()[0].astype(np.int64)), IDS,
                    r"labels.npy: expected int8 with 3 dimensions, got int64"),
    "score range": (lambda f: rewrite(f, "scores.npy", folder_arrays()[1] * 10), IDS,
                    r"scores.npy: row 1 holds 1.00?\d*; scores are cosine"),
    "score nan": (lambda f: rewrite(f, "scores.npy", np.full((4, 2, 5, 3), np.nan, np.float16)),
                  IDS, r"scores.npy: row 0 holds nan"),
    "flip count": (lambda f: rewrite(f, "labels.npy", np.zeros((4, 3, 3), np.int8)), IDS,
                   r"labels.npy: 3 flip variants, expected 1 or 2"),
    "view count": (lambda f: edit_meta(f, views=17), IDS, r"scores.npy: 5 views, meta.json says 17"),
    "row count": (lambda f: rewrite(f, "labels.npy", np.zeros((3, 2, 3), np.int8)), IDS,
                  r"labels.npy: 3 rows, image_ids.npy has 4"),
    "no meta": (lambda f: (f / "meta.json").unlink(), IDS, r"meta.json is missing"),
    "no arrays": (lambda f: [(f / n).unlink() for n in ("labels.npy", "scores.npy")], IDS,
                  r"holds neither labels.npy nor scores.npy"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_folder_is_refused_in_one_line(folder, case):
    breaking, ids, message = BROKEN[case]
    breaking(folder)
    with pytest.raises(InputError, match=message) as error:
        load_pseudo_labels(folder, ids, CLASS_NAMES)
    assert "\n" not in str(error.value)


def test_a_missing_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(InputError, match="no such folder .*make_pseudo_labels.py"):
        load_pseudo_labels(tmp_path / "nothing.pl", IDS, CLASS_NAMES)


def test_save_refuses_values_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="row 0 holds 5"):
        save_pseudo_labels(tmp_path / "bad.pl", IDS, CLASS_NAMES, {},
                           labels=np.full((4, 1, 3), 5))
    assert not (tmp_path / "bad.pl" / "meta.json").exists()


# --- how methods receive them ------------------------------------------------------------------

class ToyPseudoLabelMethod(methods.Method):
    """A test method: AN's loss, recording the pseudo-labels and flips it is given."""
    name = "toy_pl"
    needs_pseudo_labels = True
    needs_flips = True

    def __init__(self, observed, true_labels=None, *, device="cpu", pseudo_labels: PseudoLabels):
        super().__init__(observed, true_labels, device=device)
        self.pseudo_labels = pseudo_labels
        self.seen = []

    def loss(self, logits, sample_ids, epoch, flipped=None):
        labels, _ = self.pseudo_labels.rows(sample_ids, flipped)
        self.seen.append((sample_ids.clone(), None if flipped is None else flipped.clone(), labels))
        return losses.an_loss(logits, self.labels.rows(sample_ids))


@pytest.fixture
def toy_method(monkeypatch):
    monkeypatch.setitem(methods.METHODS, ToyPseudoLabelMethod.name, ToyPseudoLabelMethod)
    return ToyPseudoLabelMethod


def test_build_gives_the_pseudo_labels_and_loss_of_batch_the_flips(folder, toy_method):
    pseudo = load_pseudo_labels(folder, IDS, CLASS_NAMES)
    observed = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    method = methods.build("toy_pl", observed, pseudo_labels=pseudo)
    assert method.pseudo_labels is pseudo
    flipped = torch.tensor([True, False])
    method.loss_of_batch(torch.zeros(2, 3), torch.tensor([0, 1]), 1, flipped)
    assert method.seen[0][1].tolist() == [True, False]
    assert method.seen[0][2].tolist() == [folder_arrays()[0][0, 1].tolist(),
                                          folder_arrays()[0][1, 0].tolist()]


def test_a_method_without_flips_is_called_as_before():
    method = methods.build("an", np.array([[1, 0], [0, 1]]))
    output = method.loss_of_batch(torch.zeros(2, 2), torch.tensor([0, 1]), 1,
                                  torch.tensor([True, False]))
    assert output.loss.item() == pytest.approx(np.log(2), abs=1e-6)


def test_a_method_needing_pseudo_labels_is_refused_without_them(toy_method):
    with pytest.raises(InputError, match="method toy_pl trains on vision-language pseudo-labels: "
                                         "pass --pseudo_labels DIR"):
        methods.build("toy_pl", np.array([[1, 0]]))


def test_pseudo_labels_for_a_method_that_ignores_them_are_refused(folder, toy_method):
    pseudo = load_pseudo_labels(folder, IDS, CLASS_NAMES)
    with pytest.raises(InputError, match="method an does not use pseudo-labels .*toy_pl"):
        methods.build("an", np.array([[1, 0, 0]]), pseudo_labels=pseudo)


def test_the_engine_reports_the_flip_it_applied():
    """forward_global_batch's `flipped` is True exactly for the images the preprocess mirrored:
    images whose left half is bright and right half dark; the model returns the mean of the left
    half minus that of the right, negative where the image was flipped."""
    images = torch.zeros((64, 3, 4, 4), dtype=torch.uint8)
    images[..., :2] = 200
    preprocess = DevicePreprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), torch.device("cpu"))

    def left_minus_right(inputs):
        return (inputs[..., :2].mean(dim=(1, 2, 3)) - inputs[..., 2:].mean(dim=(1, 2, 3)))[:, None]

    phase = SimpleNamespace(preprocess=preprocess, forward=left_minus_right, amp="off")
    flips = preprocess.epoch_draws(0, 1, 64)  # the epoch's per-sample draws (issue 21)
    logits, sample_ids, flipped = train.forward_global_batch(phase, images, torch.arange(64), 64,
                                                             flips, torch.device("cpu"),
                                                             SINGLE_PROCESS)
    assert sample_ids.tolist() == list(range(64))
    assert flipped.dtype == torch.bool and 0 < int(flipped.sum()) < 64
    assert torch.equal(flipped, logits[:, 0] < 0)


def test_to_another_device_copies_the_training_rows_in_split_order(folder):
    """Off the CPU the training rows are copied once, in split order (file_rows becomes 0..N−1);
    the meta device stands in for a GPU (shapes and indexing, no values)."""
    pseudo = load_pseudo_labels(folder, ["d.jpg", "a.jpg", "c.jpg"], CLASS_NAMES)
    moved = pseudo.to("meta")
    assert moved.device.type == "meta" and moved.scores.shape == (3, 2, 5, 3)
    assert moved.labels.shape == (3, 2, 3)
    labels, scores = moved.rows(torch.tensor([2, 0], device="meta"),
                                torch.tensor([True, False], device="meta"))
    assert labels.shape == (2, 3) and scores.shape == (2, 3) and scores.dtype == torch.float32
    assert moved.views(torch.tensor([1], device="meta")).shape == (1, 5, 3)
