"""PanNuke mPQ/bPQ, CoNIC mPQ+ and centroid-paired detection F1 on hand-made data."""

import math

import numpy as np
import pytest

from pathgen.errors import PathgenError
from pathgen.metrics import (centroids_and_types, detection_scores, mpq_pannuke, mpq_plus_conic, pair_centroids,
                             pannuke_binarize, to_pannuke_channels)
from pathgen.nucleus_types import NUCLEUS_TYPES, class_id

S = 1 / (1 + 1e-6)  # SQ of one perfect match


def _pannuke(h=8, w=8):
    return np.zeros((h, w, 6), np.int32)


def test_mpq_pannuke_golden():
    # Image 0 (tissue A): neoplastic (ch 0) nucleus predicted exactly; an inflammatory (ch 1) false positive
    # where the GT has no inflammatory nucleus (skipped); a connective (ch 2) nucleus missed.
    t0, p0 = _pannuke(), _pannuke()
    t0[0:2, 0:2, 0] = 1
    p0[0:2, 0:2, 0] = 4
    p0[5:7, 5:7, 1] = 2
    t0[4:6, 0:2, 2] = 3
    # Image 1 (tissue B): no GT nucleus at all, one predicted -> every PQ skipped.
    t1, p1 = _pannuke(), _pannuke()
    p1[3:5, 3:5, 0] = 1
    # Image 2 (tissue B): neoplastic nucleus predicted exactly.
    t2, p2 = _pannuke(), _pannuke()
    t2[2:5, 2:5, 0] = 7
    p2[2:5, 2:5, 0] = 7
    res = mpq_pannuke(np.stack([t0, t1, t2]), np.stack([p0, p1, p2]), tissue=["A", "B", "B"])
    # Per image: mPQ_0 = mean(S, 0) = S/2; mPQ_1 = NaN; mPQ_2 = S.
    np.testing.assert_allclose(res.per_image_mpq, [S / 2, np.nan, S], atol=1e-15)
    # bPQ_0: binary GT {neo, conn}, pred {neo, inflam FP}: TP 1, FP 1, FN 1 -> DQ 0.5, SQ S -> S/2.
    np.testing.assert_allclose(res.per_image_bpq, [S / 2, np.nan, S], atol=1e-15)
    # Tissue A: S/2; tissue B: nanmean(NaN, S) = S. mPQ = bPQ = (S/2 + S) / 2.
    assert res.per_tissue["A"]["mpq"] == pytest.approx(S / 2, abs=1e-15)
    assert res.per_tissue["B"]["mpq"] == pytest.approx(S, abs=1e-15)
    assert res.mpq == pytest.approx(0.75 * S, abs=1e-15)
    assert res.bpq == pytest.approx(0.75 * S, abs=1e-15)
    # Per class: nanmean over images -> neoplastic S, connective 0, the others never in the GT -> NaN.
    assert res.per_class_pq["neoplastic"] == pytest.approx(S, abs=1e-15)
    assert res.per_class_pq["connective"] == 0.0
    assert math.isnan(res.per_class_pq["inflammatory"])
    assert math.isnan(res.per_class_pq["dead"]) and math.isnan(res.per_class_pq["epithelial"])


def test_mpq_pannuke_without_tissue_is_mean_over_images():
    t, p = _pannuke(), _pannuke()
    t[0:2, 0:2, 3] = 1
    p[0:2, 0:3, 3] = 1  # IoU 4/6 -> PQ = 1 * (2/3) / (1 + 1e-6)
    res = mpq_pannuke(t, p)
    assert res.mpq == pytest.approx((2 / 3) * S, abs=1e-15)
    assert list(res.per_tissue) == ["all"]


def test_pannuke_binarize_numbering_and_overlap():
    x = np.zeros((3, 4, 6), np.int32)
    x[0, 0:2, 0] = 5       # channel 0, id 5 -> 1
    x[1, 0:2, 0] = 9       # channel 0, id 9 -> 2
    x[0, 1:3, 2] = 1       # channel 2 overlaps id 5 at (0,1) and wins there -> 3
    x[2, 3, 4] = 2         # channel 4 -> 4
    expected = np.array([[1, 3, 3, 0], [2, 2, 0, 0], [0, 0, 0, 4]])
    np.testing.assert_array_equal(pannuke_binarize(x), expected)


def test_to_pannuke_channels():
    inst = np.array([[1, 1, 0], [2, 0, 3]])
    cls = np.array([[1, 1, 0], [5, 0, 2]])
    ch = to_pannuke_channels(inst, cls)
    assert ch.shape == (2, 3, 6)
    np.testing.assert_array_equal(ch[..., 0], [[1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ch[..., 1], [[0, 0, 0], [0, 0, 3]])
    np.testing.assert_array_equal(ch[..., 4], [[0, 0, 0], [2, 0, 0]])
    np.testing.assert_array_equal(ch[..., 5], [[0, 0, 1], [0, 1, 0]])


def test_mpq_plus_conic_golden():
    epi, lym = class_id("epithelial"), class_id("lymphocyte")
    assert (epi, lym) == (2, 3)
    # Image 0: true nucleus 1 (epithelial) predicted with the right outline but as lymphocyte (pred 7);
    # true nucleus 2 (lymphocyte) predicted exactly (pred 8).
    a = np.zeros((6, 6, 2), np.int32)
    b = np.zeros((6, 6, 2), np.int32)
    a[0:2, 0:2] = (1, epi)
    b[0:2, 0:2] = (7, lym)
    a[3:5, 3:5] = (2, lym)
    b[3:5, 3:5] = (8, lym)
    # Image 1: epithelial 2x2 nucleus; the prediction covers 3 of its pixels plus 1 outside:
    # inter 3, union 4 + 4 - 3 = 5, IoU 3/5.
    c = np.zeros((6, 6, 2), np.int32)
    d = np.zeros((6, 6, 2), np.int32)
    c[0:2, 0:2] = (1, epi)
    d[0, 0:2] = (1, epi)
    d[1, 0] = (1, epi)
    d[2, 0] = (1, epi)
    res = mpq_plus_conic(np.stack([a, c]), np.stack([b, d]))
    e = res.per_class["epithelial"]
    ly = res.per_class["lymphocyte"]
    # Epithelial: image 0 FN 1; image 1 TP 1 (IoU 0.6). Lymphocyte: image 0 TP 1 (IoU 1), FP 1 (pred 7).
    assert (e.tp, e.fp, e.fn) == (1, 0, 1) and e.sum_iou == pytest.approx(0.6, abs=1e-15)
    assert (ly.tp, ly.fp, ly.fn) == (1, 1, 0) and ly.sum_iou == 1.0
    pq_epi = (0.6 / (1 + 1e-6)) * (1 / (1 + 0.5 + 1e-6))
    pq_lym = (1 / (1 + 1e-6)) * (1 / (1 + 0.5 + 1e-6))
    assert e.pq == pytest.approx(pq_epi, abs=1e-15)
    assert ly.pq == pytest.approx(pq_lym, abs=1e-15)
    # The four classes with no nucleus anywhere score 0 (CoNIC's 1e-6), and mPQ+ is the mean over all six.
    assert res.per_class["neutrophil"].pq == 0.0
    assert res.mpq_plus == pytest.approx((pq_epi + pq_lym) / 6, abs=1e-15)
    assert res.per_image_counts.shape == (2, 6, 4)


def test_conic_bad_shapes():
    with pytest.raises(PathgenError):
        mpq_plus_conic(np.zeros((2, 4, 4, 2), int), np.zeros((3, 4, 4, 2), int))


def test_detection_scores_golden():
    # Image 0: pairs t0-p0 (distance 2, types 1/1) and t1-p1 (distance 10, types 2/1);
    # t2 unpaired (its nearest pred is 30 px away), p2 unpaired. Image 1: no GT, one pred (FP).
    true_c = [np.array([[10, 10], [50, 50], [100, 100]], float), np.zeros((0, 2))]
    true_t = [np.array([1, 2, 1]), np.zeros(0, int)]
    pred_c = [np.array([[12, 10], [50, 60], [130, 100]], float), np.array([[5, 5]], float)]
    pred_t = [np.array([1, 1, 2]), np.array([2])]
    res = detection_scores(true_c, true_t, pred_c, pred_t, radius=12)
    # TP 2, FP 2, FN 1 -> F1_d = 4 / 7; accuracy 1 / 2.
    assert (res.tp, res.fp, res.fn) == (2, 2, 1)
    assert res.f1_detection == pytest.approx(4 / 7, abs=1e-15)
    assert res.accuracy == 0.5
    # Type 1: tp 1, fp 1 (true 2 -> pred 1), fn 0, fp_d 0, fn_d 1 -> 2 / (2 + 2 + 1) = 2/5.
    # Type 2: tp 0, fn 1, fp_d 2 -> 0 / (2 + 2) = 0.
    assert res.f1_per_type == pytest.approx({1: 2 / 5, 2: 0.0})


def test_pairing_is_global_hungarian_with_inclusive_radius():
    true = np.array([[0, 0], [0, 10]], float)
    pred = np.array([[0, 5], [0, 16]], float)
    # Minimum total distance pairs t0-p0 (5) and t1-p1 (6) (not t1-p0, its nearest).
    paired, _, _ = pair_centroids(true, pred, radius=12)
    assert sorted(map(tuple, paired.tolist())) == [(0, 0), (1, 1)]
    paired, ut, up = pair_centroids(true, pred, radius=5.0)  # distance exactly 5 is kept, 6 is not
    assert paired.tolist() == [[0, 0]] and ut.tolist() == [1] and up.tolist() == [1]


def test_detection_with_no_nuclei_is_undefined_not_an_error():
    res = detection_scores([np.zeros((0, 2))], [np.zeros(0, int)], [np.zeros((0, 2))], [np.zeros(0, int)])
    assert math.isnan(res.f1_detection) and math.isnan(res.accuracy) and res.f1_per_type == {}


def test_centroids_and_types_majority_vote():
    inst = np.array([
        [1, 1, 0, 0],
        [1, 1, 0, 4],
        [0, 0, 0, 4],
    ])
    cls = np.array([
        [2, 2, 0, 0],
        [3, 2, 0, 0],
        [0, 0, 0, 0],
    ])
    ids, cent, types = centroids_and_types(inst, cls)
    assert ids.tolist() == [1, 4]
    np.testing.assert_allclose(cent, [[0.5, 0.5], [1.5, 3.0]])
    assert types.tolist() == [2, 0]  # nucleus 4 has no classified pixel


def test_class_table():
    assert [t.name for t in NUCLEUS_TYPES] == ["background", "neutrophil", "epithelial", "lymphocyte", "plasma",
                                               "eosinophil", "connective"]
    assert class_id("Connective") == 6
    with pytest.raises(PathgenError, match="known"):
        class_id("tumour")
