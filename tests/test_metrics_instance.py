"""Instance metrics: hand-computed golden maps, edge cases, and agreement with the slow per-instance definitions."""

import math

import numpy as np
import pytest

import pathgen.metrics.instance as instance_mod
from pathgen.errors import PathgenError
from pathgen.metrics import aji, aji_plus, dice1, dice2, instance_scores, pairwise_overlap, pq, remap_label

from _slow_reference import random_touching_maps, slow_aji, slow_dice1, slow_dice2, slow_pq

EPS = 1e-6

# Golden map A. true: t1 (6 px), t2 (4 px), t3 (2 px); pred: p5 (4 px), p7 (6 px), p9 (1 px).
TRUE_A = np.array([
    [1, 1, 1, 0, 2, 2],
    [1, 1, 1, 0, 2, 2],
    [0, 0, 0, 0, 0, 0],
    [3, 3, 0, 0, 0, 0],
])
PRED_A = np.array([
    [5, 5, 0, 0, 7, 7],
    [5, 5, 0, 0, 7, 7],
    [0, 0, 0, 0, 7, 7],
    [0, 0, 0, 0, 0, 9],
])

# Golden map B: one large prediction p4 (13 px) covers both true nuclei (6 px each); p6 is one pixel of t2.
TRUE_B = np.array([
    [1, 1, 1, 0, 2, 2, 2],
    [1, 1, 1, 0, 2, 2, 2],
])
PRED_B = np.array([
    [4, 4, 4, 4, 4, 4, 6],
    [4, 4, 4, 4, 4, 4, 4],
])


def test_golden_map_a():
    # Overlaps: t1∩p5 = 4 (union 6+4-4 = 6, IoU 2/3), t2∩p7 = 4 (union 4+6-4 = 6, IoU 2/3); t3, p9 overlap nothing.
    s = instance_scores(TRUE_A, PRED_A)
    # DICE1: binary intersection 8, |T| = 12, |P| = 11 -> 16/23.
    assert s["dice1"] == pytest.approx(16 / 23, abs=1e-15)
    # DICE2: two overlapping pairs, 2 * (4 + 4) / ((6 + 4) + (4 + 6)) = 0.8.
    assert s["dice2"] == pytest.approx(0.8, abs=1e-15)
    # AJI: pairs (t1,p5), (t2,p7): inter 8, union 6 + 6; + unpaired t3 (2) + never-chosen p9 (1) -> 8/15.
    assert s["aji"] == pytest.approx(8 / 15, abs=1e-15)
    assert s["aji_plus"] == pytest.approx(8 / 15, abs=1e-15)
    # PQ: TP 2, FP 1 (p9), FN 1 (t3): DQ = 2 / 3; SQ = (2/3 + 2/3) / (2 + 1e-6).
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["dq"] == pytest.approx(2 / 3, abs=1e-15)
    assert s["sq"] == pytest.approx((4 / 3) / (2 + EPS), abs=1e-15)
    assert s["pq"] == pytest.approx((2 / 3) * (4 / 3) / (2 + EPS), abs=1e-15)
    r = pq(TRUE_A, PRED_A)
    assert sorted(zip(r.matched_true.tolist(), r.matched_pred.tolist())) == [(1, 5), (2, 7)]


def test_golden_map_b_aji_reuses_a_prediction():
    # t1∩p4 = 6, union 6+13-6 = 13 (IoU 6/13); t2∩p4 = 5, union 14 (IoU 5/14); t2∩p6 = 1, union 6 (IoU 1/6).
    # AJI: t1 -> p4, t2 -> p4 (5/14 > 1/6): inter 6+5, union 13+14, p6 never chosen adds 1 -> 11/28.
    assert aji(TRUE_B, PRED_B) == pytest.approx(11 / 28, abs=1e-15)
    # AJI+: unique pairing maximising total IoU is {t1-p4, t2-p6} (6/13 + 1/6 > 5/14): (6+1) / (13+6) = 7/19.
    assert aji_plus(TRUE_B, PRED_B) == pytest.approx(7 / 19, abs=1e-15)
    # DICE1: |T| = 12, |P| = 14, every true pixel is covered (6 + 5 + 1) -> 24/26.
    # DICE2: 2 (6 + 5 + 1) / ((6+13) + (6+13) + (6+1)) = 24/45.
    assert dice1(TRUE_B, PRED_B) == pytest.approx(24 / 26, abs=1e-15)
    assert dice2(TRUE_B, PRED_B) == pytest.approx(24 / 45, abs=1e-15)
    # PQ at 0.5: no IoU > 0.5 -> TP 0, FP 2, FN 2, all zero.
    r = pq(TRUE_B, PRED_B)
    assert (r.tp, r.fp, r.fn, r.dq, r.sq, r.pq) == (0, 2, 2, 0.0, 0.0, 0.0)
    # PQ at 0.4 (< 0.5: Hungarian first): pairs {t1-p4, t2-p6}; only 6/13 > 0.4 survives.
    r = pq(TRUE_B, PRED_B, iou_threshold=0.4)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert r.dq == pytest.approx(0.5, abs=1e-15)
    assert r.sq == pytest.approx((6 / 13) / (1 + EPS), abs=1e-15)
    assert r.pq == pytest.approx(0.5 * (6 / 13) / (1 + EPS), abs=1e-15)


def test_aji_tie_break_follows_reference_ranking():
    # t1 = cols 0-5 (6 px). p2 = col 0 (inter 1, union 6, IoU 1/6); p3 = cols 4-11 (inter 2, union 12, IoU 1/6).
    # Exact IoUs tie; the reference ranks by inter/(union + 1e-6), so p3 (larger union) wins:
    # AJI = 2 / (12 + 1 for the unchosen p2) = 2/13 (an exact-IoU argmax would give 1/14).
    true = np.zeros((1, 16), int)
    true[0, 0:6] = 1
    pred = np.zeros((1, 16), int)
    pred[0, 0] = 2
    pred[0, 4:12] = 3
    assert aji(true, pred) == pytest.approx(2 / 13, abs=1e-15)
    assert aji_plus(true, pred) == pytest.approx(2 / 13, abs=1e-15)


def test_both_empty_is_undefined_not_an_error():
    empty = np.zeros((5, 5), np.int32)
    s = instance_scores(empty, empty)
    for key in ("dice1", "dice2", "aji", "aji_plus", "dq", "sq", "pq"):
        assert math.isnan(s[key]), key
    assert (s["tp"], s["fp"], s["fn"]) == (0, 0, 0)
    # CoNIC's convention adds 1e-6 to both denominators: 0, not NaN.
    r = pq(empty, empty, convention="conic")
    assert (r.dq, r.sq, r.pq) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("side", ["true", "pred"])
def test_one_side_empty_scores_zero(side):
    empty = np.zeros((4, 4), int)
    nuclei = np.zeros((4, 4), int)
    nuclei[1, 1:4] = 3  # one 3-px nucleus
    true, pred = (empty, nuclei) if side == "true" else (nuclei, empty)
    s = instance_scores(true, pred)
    # DICE1 = 0 / 3; DICE2: no pair overlaps -> 0; AJI union = 3 -> 0; PQ: one FP or FN -> DQ = 0 / 0.5 = 0.
    for key in ("dice1", "dice2", "aji", "aji_plus", "dq", "sq", "pq"):
        assert s[key] == 0.0, key
    assert (s["fp"], s["fn"]) == ((1, 0) if side == "true" else (0, 1))


def test_single_pixel():
    true = np.zeros((3, 3), int)
    pred = np.zeros((3, 3), int)
    true[1, 1] = 1
    pred[1, 1] = 9
    s = instance_scores(true, pred)
    # IoU 1: TP 1, DQ 1, SQ 1/(1+1e-6); all Dice/AJI 1.
    assert (s["dice1"], s["dice2"], s["aji"], s["aji_plus"], s["dq"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert s["sq"] == pytest.approx(1 / (1 + EPS), abs=1e-15)
    # Neighbouring single pixels: nothing overlaps -> all zero (AJI = 0 / (1 + 1)).
    pred2 = np.zeros((3, 3), int)
    pred2[1, 2] = 4
    s = instance_scores(true, pred2)
    assert (s["dice1"], s["dice2"], s["aji"], s["aji_plus"], s["pq"], s["fp"], s["fn"]) == (0, 0, 0, 0, 0, 1, 1)


def test_labels_need_not_be_contiguous_and_huge_labels_work():
    scattered = np.where(PRED_A > 0, PRED_A * 1_000_003 + 2**40, 0).astype(np.int64)
    assert instance_scores(TRUE_A, scattered) == pytest.approx(instance_scores(TRUE_A, PRED_A), nan_ok=True)
    assert remap_label(scattered).max() == 3
    np.testing.assert_array_equal(remap_label(np.array([[0, 7, 7], [3, 0, 9]])), [[0, 2, 2], [1, 0, 3]])


def test_pairwise_overlap_tables():
    ov = pairwise_overlap(TRUE_A, PRED_A)
    np.testing.assert_array_equal(ov.true_ids, [1, 2, 3])
    np.testing.assert_array_equal(ov.pred_ids, [5, 7, 9])
    np.testing.assert_array_equal(ov.true_area, [6, 4, 2])
    np.testing.assert_array_equal(ov.pred_area, [4, 6, 1])
    pairs = sorted(zip(ov.pair_true.tolist(), ov.pair_pred.tolist(), ov.pair_inter.tolist()))
    assert pairs == [(0, 0, 4), (1, 1, 4)]


def test_sparse_pair_table_path_matches_dense(monkeypatch):
    rng = np.random.default_rng(3)
    true, pred = random_touching_maps(rng)
    dense = instance_scores(true, pred, iou_threshold=0.3)
    monkeypatch.setattr(instance_mod, "_DENSE_TABLE_LIMIT", 0)
    assert instance_scores(true, pred, iou_threshold=0.3) == pytest.approx(dense)


def test_bad_inputs_raise_pathgen_error():
    with pytest.raises(PathgenError, match="differ in shape"):
        pq(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(PathgenError, match="negative"):
        dice1(np.full((2, 2), -1), np.zeros((2, 2), int))
    with pytest.raises(PathgenError, match="non-integer"):
        aji(np.full((2, 2), 0.5), np.zeros((2, 2), int))
    with pytest.raises(PathgenError, match=">= 0"):
        pq(TRUE_A, PRED_A, iou_threshold=-0.1)
    with pytest.raises(PathgenError, match="convention"):
        pq(TRUE_A, PRED_A, convention="coco")


@pytest.mark.parametrize("seed", range(12))
def test_agreement_with_slow_reference_on_random_touching_maps(seed):
    rng = np.random.default_rng(seed)
    true, pred = random_touching_maps(rng, n=20 + seed)
    s = instance_scores(true, pred)
    assert s["dice1"] == pytest.approx(slow_dice1(true, pred), abs=1e-12)
    assert s["dice2"] == pytest.approx(slow_dice2(true, pred), abs=1e-12)
    assert s["aji"] == pytest.approx(slow_aji(true, pred), abs=1e-12)
    assert s["aji_plus"] == pytest.approx(slow_aji(true, pred, plus=True), abs=1e-12)
    for thr in (0.5, 0.75, 0.3, 0.0):
        r = pq(true, pred, iou_threshold=thr)
        dq, sq, pq_ref, tp, fp, fn = slow_pq(true, pred, thr)
        assert (r.tp, r.fp, r.fn) == (tp, fp, fn), thr
        assert (r.dq, r.sq, r.pq) == pytest.approx((dq, sq, pq_ref), abs=1e-12), thr
