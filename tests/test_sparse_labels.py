"""sparse_labels.py: the CSR split files, the long-CSV reader, the sparse training label store."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from largeloss.data import sparse_labels
from largeloss.data.sparse_labels import (SparseLabels, check_sparse_labels, load_sparse_labels,
                                          read_class_names, read_long_csv, save_sparse_labels)
from largeloss.methods.label_stores import ObservedLabelStore, SparseLabelStore

# 4 images × 5 classes; image "c" has no label at all.
OBSERVED = np.array([[1, 0, -1, 0, 0],
                     [0, 0, 0, 1, 1],
                     [0, 0, 0, 0, 0],
                     [-1, 1, 0, 0, -1]], dtype=np.int8)
IMAGES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
CLASSES = ["cat", "dog", "sea", "sky", "tree"]


def example() -> SparseLabels:
    return SparseLabels.from_dense(OBSERVED, IMAGES, CLASSES)


# ---------------------------------------------------------------- the CSR form and its file

def test_from_dense_gives_the_documented_arrays():
    labels = example()
    np.testing.assert_array_equal(labels.indptr, [0, 2, 4, 4, 7])
    np.testing.assert_array_equal(labels.indices, [0, 2, 3, 4, 0, 1, 4])
    np.testing.assert_array_equal(labels.values, [1, -1, 1, 1, -1, 1, -1])
    assert (labels.indptr.dtype, labels.indices.dtype, labels.values.dtype) == (
        np.int64, np.int32, np.int8)
    assert (labels.num_images, labels.num_classes, labels.num_labelled) == (4, 5, 7)
    np.testing.assert_array_equal(labels.entry_rows(), [0, 0, 1, 1, 3, 3, 3])
    positives, negatives = labels.labelled_per_class()
    np.testing.assert_array_equal(positives, [1, 1, 0, 1, 1])
    np.testing.assert_array_equal(negatives, [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(labels.to_dense(), OBSERVED)


def test_save_and_load_round_trip_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out" / "train_labels.npz"
    save_sparse_labels(path, example())
    assert sorted(p.name for p in path.parent.iterdir()) == ["train_labels.npz"]
    loaded = load_sparse_labels(path)
    np.testing.assert_array_equal(loaded.to_dense(), OBSERVED)
    assert loaded.image_ids.tolist() == IMAGES and loaded.class_names.tolist() == CLASSES


def test_load_casts_other_integer_dtypes_to_the_canonical_ones(tmp_path):
    labels = example()
    path = tmp_path / "labels.npz"
    np.savez(path, indptr=labels.indptr.astype(np.int32), indices=labels.indices.astype(np.int64),
             values=labels.values.astype(np.int64), image_ids=labels.image_ids,
             class_names=labels.class_names)
    loaded = load_sparse_labels(path)
    assert (loaded.indptr.dtype, loaded.indices.dtype, loaded.values.dtype) == (
        np.int64, np.int32, np.int8)


def broken(**changes) -> SparseLabels:
    """The example with some arrays replaced."""
    labels = example()
    arrays = {key: getattr(labels, key) for key in
              ("indptr", "indices", "values", "image_ids", "class_names")}
    arrays.update({key: np.asarray(value) for key, value in changes.items()})
    return SparseLabels(**arrays)


@pytest.mark.parametrize("changes,message", [
    ({"indptr": [0, 2, 4, 7]}, "indptr has 4 entries, expected N\\+1 = 5"),
    ({"indptr": [1, 2, 4, 4, 7]}, "indptr must run from 0 to nnz = 7"),
    ({"indptr": [0, 3, 2, 4, 7]}, "indptr decreases at image 1"),
    ({"indices": [0, 2, 3, 4, 0, 1, 5]}, "class index 5 \\(entry 6\\) outside \\[0, 5\\)"),
    ({"values": [1, -1, 1, 0, -1, 1, -1]}, "value 0 \\(entry 3\\) is not \\+1 or -1"),
    ({"indices": [2, 0, 3, 4, 0, 1, 4]}, "image 0 \\('a.jpg'\\) lists its classes out of order"),
    ({"indices": [0, 2, 3, 4, 0, 4, 4]}, "image 3 \\('d.jpg'\\) lists its classes out of order "
                                         "or twice"),
    ({"values": [1, -1, 1]}, "7 indices but 3 values"),
    ({"image_ids": ["a.jpg", "b.jpg", "a.jpg", "d.jpg"]}, "image_ids holds 'a.jpg' more than once"),
    ({"class_names": [1, 2, 3, 4, 5]}, "class_names has dtype int64, expected unicode strings"),
    ({"values": [1.0, -1, 1, 1, -1, 1, -1]}, "values has dtype float64, expected integers"),
])
@pytest.mark.parametrize("chunk", [None, 1, 2, 3], ids=lambda chunk: f"chunk{chunk or ''}")
def test_malformed_csr_is_refused_naming_the_file(tmp_path, monkeypatch, changes, message, chunk):
    """The same error whatever the chunk size of the entry checks (CHECK_CHUNK; 1–3 put chunk
    boundaries inside and between images)."""
    if chunk:
        monkeypatch.setattr(sparse_labels, "CHECK_CHUNK", chunk)
    path = tmp_path / "bad_labels.npz"
    with pytest.raises(ValueError, match=f"bad_labels.npz: {message}"):
        save_sparse_labels(path, broken(**changes))
    assert not list(tmp_path.iterdir())  # nothing written
    labels = broken(**changes)  # the same checks when a file made elsewhere is loaded
    np.savez(path, **{key: getattr(labels, key) for key in
                      ("indptr", "indices", "values", "image_ids", "class_names")})
    with pytest.raises(ValueError, match=f"bad_labels.npz: {message}"):
        load_sparse_labels(path)


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 24])
def test_well_formed_labels_pass_the_check_in_any_chunk_size(monkeypatch, chunk):
    monkeypatch.setattr(sparse_labels, "CHECK_CHUNK", chunk)
    check_sparse_labels(example(), "example")
    rng = np.random.default_rng(chunk)
    observed = rng.choice([-1, 0, 0, 1], size=(9, 6)) * (rng.random((9, 1)) < 0.7)  # empty rows
    check_sparse_labels(SparseLabels.from_dense(observed, [f"{i}" for i in range(9)],
                                                list("abcdef")), "random")


def test_rows_may_be_empty_and_check_accepts_them():
    check_sparse_labels(SparseLabels.from_dense(np.zeros((3, 2)), ["x", "y", "z"], ["p", "q"]),
                        "empty")


def test_load_refuses_missing_arrays_pickles_and_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing .*nothing.npz"):
        load_sparse_labels(tmp_path / "nothing.npz")
    labels = example()
    np.savez(tmp_path / "partial.npz", indptr=labels.indptr, indices=labels.indices)
    with pytest.raises(ValueError, match=r"partial.npz: missing array\(s\) \['values', "
                                         r"'image_ids', 'class_names'\]"):
        load_sparse_labels(tmp_path / "partial.npz")
    np.savez(tmp_path / "pickled.npz", indptr=labels.indptr, indices=labels.indices,
             values=labels.values, image_ids=np.array(IMAGES, dtype=object),
             class_names=labels.class_names)
    with pytest.raises(ValueError, match="pickled.npz could not be read as plain numpy arrays"):
        load_sparse_labels(tmp_path / "pickled.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz could not be read as an .npz file"):
        load_sparse_labels(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", labels.indptr)
    with pytest.raises(ValueError, match="single.npy is a single .npy array"):
        load_sparse_labels(tmp_path / "single.npy")


# ---------------------------------------------------------------- the long CSV

def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_long_csv_reads_entries_in_any_order(tmp_path):
    path = write(tmp_path / "train.csv",
                 "Label,image,class,note\n"           # any column order and case, extra column
                 "1,b.jpg,sky,\n"
                 "-1,a.jpg,sea,x\n"
                 "\n"                                 # blank lines are skipped
                 "1,a.jpg,cat,\n"
                 "+1,b.jpg,tree,\n"
                 "-1.0,d.jpg,tree,\n"
                 "1,d.jpg,dog,\n"
                 "-1,d.jpg,cat,\n")
    labels = read_long_csv(path, CLASSES)
    assert labels.image_ids.tolist() == ["b.jpg", "a.jpg", "d.jpg"]  # first appearance
    expected = OBSERVED[[1, 0, 3]]
    np.testing.assert_array_equal(labels.to_dense(), expected)
    check_sparse_labels(labels, str(path))


def test_read_class_names(tmp_path):
    assert read_class_names(write(tmp_path / "c.txt", "cat\n dog \n\nsea\n")) == ["cat", "dog",
                                                                                  "sea"]
    with pytest.raises(ValueError, match=r"d.txt, line 3: duplicate class 'cat' \(first on line 1"):
        read_class_names(write(tmp_path / "d.txt", "cat\ndog\ncat\n"))


@pytest.mark.parametrize("text,message", [
    ("", "is empty; expected a header line 'image,class,label'"),
    ("image,class\na.jpg,cat\n", "line 1: missing column 'label'"),
    ("image,label\na.jpg,1\n", "line 1: missing column 'class'"),
    ("image,class,label\n", "has a header but no labelled entry"),
    ("image,class,label\na.jpg,cat,1\nb.jpg,dog\n", "line 3: 2 cell\\(s\\), a column is missing"),
    ("image,class,label\na.jpg,cat,1\nb.jpg,lion,1\n", "line 3: unknown class 'lion'"),
    ("image,class,label\na.jpg,cat,0\n", "line 2: label '0' is not 1 or -1"),
    ("image,class,label\na.jpg,cat,yes\n", "line 2: label 'yes' is not 1 or -1"),
    ("image,class,label\na.jpg,cat,\n", "line 2: label '' is not 1 or -1"),
    ("image,class,label\n,cat,1\n", "line 2: empty image name"),
    ("image,class,label\na.jpg,cat,1\nb.jpg,dog,1\na.jpg,sea,1\na.jpg,cat,-1\nb.jpg,dog,1\n",
     "line 5: duplicate entry for image 'a.jpg', class 'cat' \\(first on line 2\\)"),
])
def test_long_csv_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "labels.csv", text)
    with pytest.raises(ValueError, match=f"labels.csv(, | ){message}"):
        read_long_csv(path, CLASSES)


# ---------------------------------------------------------------- the training label store

def test_store_rows_hand_made():
    store = SparseLabelStore.from_labels(example())
    rows = store.rows(torch.tensor([3, 2, 0]))
    assert rows.dtype == torch.int8 and rows.shape == (3, 5) and rows.is_contiguous()
    np.testing.assert_array_equal(rows.numpy(), OBSERVED[[3, 2, 0]])
    assert store.rows(torch.zeros(0, dtype=torch.long)).shape == (0, 5)
    assert store.num_unobserved == 20 - 7 and store.num_labelled == 7
    assert store.labelled_values().tolist() == example().values.tolist()


def test_store_relabels_count_once():
    store = SparseLabelStore.from_labels(example())
    relabel = torch.zeros(3, 5, dtype=torch.bool)
    relabel[0, [1, 3]] = True   # image 0: class 1 unobserved → +1; class 3 unobserved → +1
    relabel[1, 0] = True        # image 0 again (twice in the batch): class 0 is already +1
    relabel[2, 2] = True        # image 2, class 2
    store.apply_relabel(torch.tensor([0, 0, 2]), relabel)
    assert store.num_relabeled == 3
    again = torch.zeros(2, 5, dtype=torch.bool)
    again[0, [1, 3]] = True     # already relabelled
    again[1, 3] = True          # image 1, class 3: a given positive
    store.apply_relabel(torch.tensor([0, 1]), again)
    assert store.num_relabeled == 3 and store.num_unobserved == 20 - 7 - 3
    expected = OBSERVED.copy()
    expected[0, [1, 3]] = 1
    expected[2, 2] = 1
    np.testing.assert_array_equal(store.to_dense().numpy(), expected)
    negative = torch.zeros(1, 5, dtype=torch.bool)
    negative[0, 4] = True       # image 3, class 4 is an observed negative: it becomes +1
    store.apply_relabel(torch.tensor([3]), negative)
    assert store.num_relabeled == 4 and store.num_unobserved == 20 - 7 - 3
    assert store.rows(torch.tensor([3]))[0, 4] == 1
    assert store.labelled_values().tolist() == example().values.tolist()  # relabels not included


@pytest.mark.parametrize("merge_size", [1, 5, 1 << 18])
def test_store_matches_the_dense_store_over_many_relabel_steps(merge_size):
    rng = np.random.RandomState(merge_size)
    observed = rng.choice([-1, 0, 0, 0, 0, 1], size=(40, 11)).astype(np.int8)
    observed[[3, 17]] = 0
    sparse = SparseLabelStore.from_labels(
        SparseLabels.from_dense(observed, [str(i) for i in range(40)],
                                [str(c) for c in range(11)]), merge_size=merge_size)
    dense = ObservedLabelStore(observed)
    for _ in range(30):
        sample_ids = torch.as_tensor(rng.permutation(40)[:8])  # distinct, as the dense store needs
        assert torch.equal(sparse.rows(sample_ids), dense.rows(sample_ids))
        relabel = torch.as_tensor(rng.rand(8, 11) < 0.08) & (dense.rows(sample_ids) == 0)
        sparse.apply_relabel(sample_ids, relabel)
        dense.apply_relabel(sample_ids, relabel)
        assert sparse.num_relabeled == dense.num_relabeled
    assert torch.equal(sparse.to_dense(), dense.observed)
    assert sparse.num_unobserved == int((dense.observed == 0).sum())


def test_store_state_dict_round_trip_with_weights_only_load():
    store = SparseLabelStore.from_labels(example(), merge_size=2)
    for image, column in [(0, 1), (2, 4), (1, 0)]:
        relabel = torch.zeros(1, 5, dtype=torch.bool)
        relabel[0, column] = True
        store.apply_relabel(torch.tensor([image]), relabel)
    buffer = io.BytesIO()
    torch.save(store.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["relabeled"].tolist() == [0 * 5 + 1, 1 * 5 + 0, 2 * 5 + 4]
    fresh = SparseLabelStore.from_labels(example())
    fresh.load_state_dict(state)
    assert fresh.num_relabeled == 3 and fresh.num_unobserved == store.num_unobserved
    assert torch.equal(fresh.to_dense(), store.to_dense())


def test_store_load_state_dict_refuses_other_labels():
    state = SparseLabelStore.from_labels(example()).state_dict()
    with pytest.raises(ValueError, match="labels are 4×5, this store's 3×5"):
        SparseLabelStore.from_labels(SparseLabels.from_dense(
            OBSERVED[:3], IMAGES[:3], CLASSES)).load_state_dict(state)
    other = OBSERVED.copy()
    other[2, 2] = 1
    with pytest.raises(ValueError, match="made with 7 labelled entries, this store has 8"):
        SparseLabelStore.from_labels(SparseLabels.from_dense(other, IMAGES, CLASSES)
                                     ).load_state_dict(state)
    state["relabeled"] = torch.tensor([7, 3])
    with pytest.raises(ValueError, match="not sorted, unique keys"):
        SparseLabelStore.from_labels(example()).load_state_dict(state)


def test_store_memory_grows_with_the_labels_not_with_n_times_l():
    num_images, num_classes, per_image = 2000, 100_000, 3   # dense int8: 200 MB
    first = np.random.RandomState(0).randint(0, num_classes - per_image, size=num_images)
    classes = first[:, None] + np.arange(per_image)   # distinct and ascending within each image
    labels = SparseLabels(np.arange(0, num_images * per_image + 1, per_image, dtype=np.int64),
                          classes.ravel().astype(np.int32),
                          np.ones(num_images * per_image, dtype=np.int8),
                          np.array([str(i) for i in range(num_images)]),
                          np.array([str(c) for c in range(num_classes)]))
    store = SparseLabelStore.from_labels(labels)
    held = sum(t.numel() * t.element_size() for t in (store.indptr, store.indices, store.values))
    assert held == 8 * (num_images + 1) + 5 * num_images * per_image   # 38 kB
    rows = store.rows(torch.tensor([5, 1999]))
    assert rows.shape == (2, num_classes) and rows.sum() == 2 * per_image
    assert store.num_unobserved == num_images * num_classes - num_images * per_image
