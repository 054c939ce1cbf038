"""metrics.py on partial labels: masked AP, its two conventions, the class groups G1–G5."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from largeloss.data.sparse_labels import SparseLabels
from largeloss.engine.metrics import (class_groups, format_masked_map, grouped_map, masked_average_precisions,
                                      masked_map_summary, sparse_masked_average_precisions)

# Four classes, five images. known = False marks an unlabelled entry (its target is ignored).
SCORES = np.array([[0.9, 0.3, 0.6, 0.5],
                   [0.8, 0.2, 0.4, 0.5],
                   [0.7, 0.1, 0.3, 0.2],
                   [0.1, 0.9, 0.2, 0.9],
                   [0.95, 0.5, 0.1, 0.1]], dtype=np.float32)
TARGETS = np.array([[1, 0, 1, 1],
                    [0, 0, 1, 0],
                    [1, 0, 0, 1],
                    [0, 1, 0, 0],
                    [1, 0, 0, 0]])
KNOWN = np.array([[1, 1, 1, 1],
                  [1, 1, 1, 1],
                  [1, 1, 0, 1],
                  [1, 0, 0, 0],   # class 1's only positive is unlabelled
                  [0, 1, 0, 0]], dtype=bool)  # a top-scored positive of class 0, unlabelled
# By hand, over the labelled entries only:
# class 0: ranked 0.9 (+), 0.8 (−), 0.7 (+), 0.1 (−): AP = (1/1 + 2/3) / 2 = 5/6
# class 1: no labelled positive: not measurable
# class 2: only labelled positives (rows 0, 1): not measurable (scikit-learn would say 1.0)
# class 3: 0.5 (+), 0.5 (−) tied, then 0.2 (+): thresholds 0.5 (P = 1/2, R = 1/2) and 0.2
#          (P = 2/3, R = 1): AP = 1/2 · 1/2 + 1/2 · 2/3 = 7/12
EXPECTED_APS = np.array([5 / 6, 0.0, 0.0, 7 / 12])
EXPECTED_MEASURABLE = np.array([True, False, False, True])


def observed_of(targets: np.ndarray, known: np.ndarray) -> np.ndarray:
    """N×L {-1, 0, +1} from targets and the known mask."""
    return np.where(known, np.where(targets == 1, 1, -1), 0).astype(np.int8)


def test_masked_aps_hand_computed():
    aps, measurable = masked_average_precisions(SCORES, TARGETS, KNOWN)
    np.testing.assert_allclose(aps, EXPECTED_APS, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(measurable, EXPECTED_MEASURABLE)


def test_sparse_masked_aps_hand_computed():
    labels = SparseLabels.from_dense(observed_of(TARGETS, KNOWN), list("abcde"), list("wxyz"))
    aps, measurable = sparse_masked_average_precisions(SCORES, labels.indptr, labels.indices,
                                                       labels.values)
    np.testing.assert_allclose(aps, EXPECTED_APS, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(measurable, EXPECTED_MEASURABLE)


def test_summary_names_both_conventions_and_their_class_counts():
    summary = masked_map_summary(EXPECTED_APS, EXPECTED_MEASURABLE)
    assert summary["num_classes"] == 4 and summary["num_measured"] == 2
    assert summary["map_all_classes"] == pytest.approx(100 * (5 / 6 + 7 / 12) / 4)   # 35.42
    assert summary["map_measured"] == pytest.approx(100 * (5 / 6 + 7 / 12) / 2)      # 70.83
    line = format_masked_map(summary)
    assert "35.42 over all 4 classes" in line and "70.83 over 2 measurable classes (CSL)" in line


def test_summary_ignores_aps_of_unmeasurable_classes():
    """Whatever AP an unmeasurable class carries, the all-classes mean counts it as 0."""
    summary = masked_map_summary(np.array([0.5, 1.0]), np.array([True, False]))
    assert summary["map_all_classes"] == pytest.approx(25.0)
    assert summary["map_measured"] == pytest.approx(50.0)
    assert np.isnan(masked_map_summary(np.zeros(2), np.zeros(2, dtype=bool))["map_measured"])


@pytest.mark.parametrize("seed", range(4))
def test_masked_aps_equal_sklearn_on_the_labelled_subset(seed):
    rng = np.random.RandomState(seed)
    num_images, num_classes = 60, 12
    scores = rng.randint(0, 8, size=(num_images, num_classes)) / 8  # many ties
    scores[:, :4] = rng.rand(num_images, 4)                          # and some without
    targets = (rng.rand(num_images, num_classes) < 0.3).astype(np.uint8)
    known = rng.rand(num_images, num_classes) < 0.4
    known[:, 5] = False                                              # nothing labelled
    targets[:, 6] = 1                                                # positives only
    aps, measurable = masked_average_precisions(scores, targets, known)
    labels = SparseLabels.from_dense(observed_of(targets, known),
                                     [str(i) for i in range(num_images)],
                                     [str(c) for c in range(num_classes)])
    sparse_aps, sparse_measurable = sparse_masked_average_precisions(
        scores, labels.indptr, labels.indices, labels.values)
    np.testing.assert_array_equal(sparse_aps, aps)
    np.testing.assert_array_equal(sparse_measurable, measurable)
    assert not measurable[5] and not measurable[6]
    for column in range(num_classes):
        class_targets = targets[known[:, column], column]
        if measurable[column]:
            expected = average_precision_score(class_targets,
                                               scores[known[:, column], column].astype(np.float32))
            assert aps[column] == pytest.approx(expected, abs=1e-12)
        else:
            assert aps[column] == 0
            assert class_targets.min(initial=1) == class_targets.max(initial=1)


def test_fully_known_masked_aps_equal_sklearn_per_class():
    rng = np.random.RandomState(7)
    scores, targets = rng.rand(30, 5), (rng.rand(30, 5) < 0.4).astype(np.uint8)
    aps, measurable = masked_average_precisions(scores, targets)
    assert measurable.all()
    expected = [average_precision_score(targets[:, c], scores[:, c].astype(np.float32))
                for c in range(5)]
    np.testing.assert_allclose(aps, expected, rtol=0, atol=1e-12)


def test_masked_aps_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        masked_average_precisions(SCORES, TARGETS[:, :3])
    with pytest.raises(ValueError, match="5 rows but indptr describes 4 images"):
        sparse_masked_average_precisions(SCORES, np.array([0, 1, 2, 3, 4]), np.zeros(4, int),
                                         np.ones(4, np.int8))


# ---------------------------------------------------------------- G1–G5

def test_class_groups_sort_by_label_count_ascending_ties_by_index():
    counts = np.array([5, 1, 3, 3, 0, 9, 2, 7, 4, 6])
    groups = class_groups(counts, num_groups=5)
    assert [group.tolist() for group in groups] == [[4, 1], [6, 2], [3, 8], [0, 9], [7, 5]]


def test_class_groups_uneven_sizes_follow_array_split():
    groups = class_groups(np.arange(7)[::-1], num_groups=5)  # class 6 has the fewest labels
    assert [len(group) for group in groups] == [2, 2, 1, 1, 1]
    assert [group.tolist() for group in groups] == [[6, 5], [4, 3], [2], [1], [0]]
    assert sorted(np.concatenate(groups).tolist()) == list(range(7))


def test_class_groups_refuse_more_groups_than_classes():
    with pytest.raises(ValueError, match="num_groups"):
        class_groups(np.ones(3), num_groups=5)


def test_grouped_map_hand_computed():
    aps = np.array([0.2, 0.4, 0.0, 0.8, 0.6, 1.0])
    measurable = np.array([True, True, False, True, True, True])
    groups = class_groups(np.array([10, 20, 30, 40, 50, 60]), num_groups=3)
    result = grouped_map(aps, measurable, groups)
    assert list(result) == ["G1", "G2", "G3", "overall"]
    assert result["G1"]["map_all_classes"] == pytest.approx(30.0)
    assert result["G2"]["map_all_classes"] == pytest.approx(40.0)   # (0 + 0.8) / 2
    assert result["G2"]["map_measured"] == pytest.approx(80.0)      # class 2 left out
    assert (result["G2"]["num_classes"], result["G2"]["num_measured"]) == (2, 1)
    assert result["G3"]["map_measured"] == pytest.approx(80.0)
    assert result["overall"]["map_all_classes"] == pytest.approx(100 * 3.0 / 6)
    assert result["overall"]["map_measured"] == pytest.approx(100 * 3.0 / 5)
