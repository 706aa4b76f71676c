"""Instance-segmentation scores: DICE1, DICE2, AJI, AJI+, DQ / SQ / PQ.

The values equal HoVer-Net's ``metrics/stats_utils.py`` definitions (``get_dice_1``, ``get_fast_dice_2``,
``get_fast_aji``, ``get_fast_aji_plus``, ``get_fast_pq``), computed from one pass over the pixels: both label maps
are renumbered 1..n, and the intersection of every overlapping (true, pred) pair comes from counting the paired
labels of the pixels where both maps are foreground. No mask is built per instance.

Conventions that the reference leaves open, stated once:

* Instance ids need not be contiguous (the reference needs ``remap_label`` first; here any non-negative integers
  work, 0 is background). Ordering ties (AJI's argmax) are broken towards the smaller id, as the reference does
  after ``remap_label``.
* A ratio 0/0 is undefined and returned as NaN (the reference divides by zero there); nothing else is NaN.
  This happens only when neither map has an instance (for DICE2: when no pair overlaps and both maps are empty).
  Aggregates in :mod:`pathgen.metrics.report` skip NaN and report how many images were skipped.
* SQ keeps the reference's ``ΣIoU / (TP + 1e-6)``; AJI and AJI+ rank candidate pairs by
  ``inter / (union + 1e-6)`` as the reference does, which breaks exact IoU ties towards the larger union.
* The unique (Hungarian) pairing of AJI+ and of PQ below IoU 0.5 is solved per connected group of overlapping
  instances; this has the same optimum as solving the full matrix. Where several assignments are exactly
  optimal, the one chosen may differ from scipy's choice on the full matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pathgen.errors import PathgenError
from pathgen.nucleus_types import as_label_map

# The reference's smoothing constant in SQ, in the AJI ranking, and (CoNIC) in DQ.
REFERENCE_EPS = 1.0e-6
# Above this many (n_true + 1) * (n_pred + 1) cells the pair table is always built by sorting (memory bound).
_DENSE_TABLE_LIMIT = 1 << 24


@dataclass(frozen=True)
class Overlap:
    """Areas of every instance and intersections of every overlapping (true, pred) pair.

    Attributes
    ----------
    true_ids, pred_ids : ndarray of int64, shape (n_true,), (n_pred,)
        The instance labels present, ascending (0 excluded).
    true_area, pred_area : ndarray of int64
        Pixel count of each instance, aligned with ``true_ids`` / ``pred_ids``.
    pair_true, pair_pred : ndarray of int64, shape (n_pairs,)
        Indices into ``true_ids`` / ``pred_ids`` of each pair with a non-empty intersection.
    pair_inter : ndarray of int64, shape (n_pairs,)
        Intersection in pixels of each pair.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def pair_union(self) -> np.ndarray:
        """Union in pixels of each pair, int64."""
        return self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.pair_inter

    @property
    def pair_iou(self) -> np.ndarray:
        """Exact IoU of each pair, float64 (> 0 for every stored pair)."""
        return self.pair_inter / self.pair_union


@dataclass(frozen=True)
class PQResult:
    """Panoptic quality of one image (or pooled counts).

    ``dq = tp / (tp + fp/2 + fn/2)``, ``sq = sum_iou / (tp + 1e-6)``, ``pq = dq * sq``; ``matched_true`` and
    ``matched_pred`` are the labels of the matched instances, pairwise aligned.
    """

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int
    sum_iou: float
    matched_true: np.ndarray | None = None
    matched_pred: np.ndarray | None = None


def _label_index(flat: np.ndarray):
    """Index the labels of a flat array: (ids, areas, to_dense) where ``to_dense(mask)`` gives the labels of the
    pixels selected by ``mask`` renumbered 1..n in ascending id order (0 stays 0)."""
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), lambda mask: np.zeros(0, np.int64)
    top = int(flat.max())
    if top <= max(4 * flat.size, 1 << 20):
        values = flat if flat.dtype.kind == "i" or flat.dtype.itemsize < 8 else flat.astype(np.intp)
        counts = np.bincount(values, minlength=top + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.zeros(top + 1, np.int32 if ids.size < 2**31 - 1 else np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids.astype(np.int64), counts[ids].astype(np.int64), lambda mask: lut[values[mask]]
    # Sparse huge labels: sort once.
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.ravel().astype(np.int64)
    if uniq[0] == 0:
        return uniq[1:].astype(np.int64), counts[1:].astype(np.int64), lambda mask: inverse[mask]
    return uniq.astype(np.int64), counts.astype(np.int64), lambda mask: inverse[mask] + 1


def pairwise_overlap(true: np.ndarray, pred: np.ndarray) -> Overlap:
    """Areas and pairwise intersections of two instance label maps, from one pass over the pixels.

    Parameters
    ----------
    true, pred : ndarray of int, shape (H, W) (any shape, equal)
        Instance label maps; 0 is background, any other value an instance id.

    Returns
    -------
    Overlap
    """
    t = as_label_map(true, "true")
    p = as_label_map(pred, "pred")
    if t.shape != p.shape:
        raise PathgenError(f"true and pred maps differ in shape: {t.shape} vs {p.shape}")
    t_flat, p_flat = t.ravel(), p.ravel()
    t_ids, t_area, t_dense = _label_index(t_flat)
    p_ids, p_area, p_dense = _label_index(p_flat)
    n_t, n_p = t_ids.size, p_ids.size
    both = (t_flat > 0) & (p_flat > 0)
    key = t_dense(both).astype(np.int64) * (n_p + 1) + p_dense(both)
    cells_total = (n_t + 1) * (n_p + 1)
    # A dense count beats sorting only while the table is not much larger than the number of overlap pixels.
    if cells_total <= min(_DENSE_TABLE_LIMIT, max(4 * key.size, 1 << 16)):
        table = np.bincount(key, minlength=(n_t + 1) * (n_p + 1))
        cells = np.flatnonzero(table)
        inter = table[cells]
    else:
        cells, inter = np.unique(key, return_counts=True)
    return Overlap(
        true_ids=t_ids, pred_ids=p_ids, true_area=t_area, pred_area=p_area,
        pair_true=(cells // (n_p + 1) - 1).astype(np.int64),
        pair_pred=(cells % (n_p + 1) - 1).astype(np.int64),
        pair_inter=inter.astype(np.int64),
    )


def remap_label(labels: np.ndarray) -> np.ndarray:
    """Renumber instance ids to 1..n in ascending order of the old ids (0 stays background).

    Parameters
    ----------
    labels : ndarray of int, any shape

    Returns
    -------
    ndarray of int32, same shape
    """
    arr = as_label_map(labels, "input")
    flat = arr.ravel()
    _, _, to_dense = _label_index(flat)
    return np.asarray(to_dense(np.ones(flat.size, bool))).reshape(arr.shape).astype(np.int32)


def _unique_matching(pair_true: np.ndarray, pair_pred: np.ndarray, weight: np.ndarray,
                     n_true: int, n_pred: int) -> np.ndarray:
    """Maximum-total-weight one-to-one matching over the given pairs; returns indices of the chosen pairs.

    Solved independently on each connected group of the bipartite overlap graph (same optimum as one
    assignment on the full matrix, much smaller problems).
    """
    n_pairs = pair_true.size
    if n_pairs == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(n_pairs), (pair_true, n_true + pair_pred)),
                       shape=(n_true + n_pred, n_true + n_pred))
    _, component = connected_components(graph, directed=False)
    pair_comp = component[pair_true]
    order = np.argsort(pair_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
    chosen = []
    for group in np.split(order, bounds):
        if group.size == 1:
            chosen.append(group)
            continue
        rows, r_inv = np.unique(pair_true[group], return_inverse=True)
        cols, c_inv = np.unique(pair_pred[group], return_inverse=True)
        w = np.zeros((rows.size, cols.size))
        index = np.full((rows.size, cols.size), -1, np.int64)
        w[r_inv, c_inv] = weight[group]
        index[r_inv, c_inv] = group
        r, c = linear_sum_assignment(w, maximize=True)
        picked = index[r, c]
        chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))


def _pq_from_overlap(ov: Overlap, iou_threshold: float, convention: str) -> PQResult:
    if iou_threshold < 0:
        raise PathgenError(f"iou_threshold must be >= 0, got {iou_threshold}")
    if convention not in ("hovernet", "conic"):
        raise PathgenError(f"unknown PQ convention {convention!r} (use 'hovernet' or 'conic')")
    iou = ov.pair_iou
    if iou_threshold >= 0.5:
        # IoU > 0.5 cannot hold for two disjoint instances against one: such matches are unique.
        sel = np.flatnonzero(iou > iou_threshold)
    else:
        # Reference: maximal unique pairing by total IoU first, then keep pairs above the threshold.
        sel = _unique_matching(ov.pair_true, ov.pair_pred, iou, ov.n_true, ov.n_pred)
        sel = sel[iou[sel] > iou_threshold]
    tp = int(sel.size)
    fp = ov.n_pred - tp
    fn = ov.n_true - tp
    sum_iou = float(iou[sel].sum())
    if convention == "conic":
        dq = tp / (tp + 0.5 * fp + 0.5 * fn + REFERENCE_EPS)
        sq = sum_iou / (tp + REFERENCE_EPS)
        pq_value = dq * sq
    elif tp + fp + fn == 0:
        dq = sq = pq_value = float("nan")
    else:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = sum_iou / (tp + REFERENCE_EPS)
        pq_value = dq * sq
    return PQResult(dq=float(dq), sq=float(sq), pq=float(pq_value), tp=tp, fp=fp, fn=fn, sum_iou=sum_iou,
                    matched_true=ov.true_ids[ov.pair_true[sel]], matched_pred=ov.pred_ids[ov.pair_pred[sel]])


def pq(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5,
       convention: Literal["hovernet", "conic"] = "hovernet") -> PQResult:
    """Detection, segmentation and panoptic quality (Kirillov et al.; HoVer-Net ``get_fast_pq``).

    A (true, pred) pair matches iff IoU > ``iou_threshold`` (strict). For thresholds >= 0.5 matches are unique by
    construction; below 0.5 the maximal-total-IoU unique pairing is found first and then thresholded, as in the
    reference.

    Parameters
    ----------
    true, pred : ndarray of int, shape (H, W)
        Instance label maps, 0 = background.
    iou_threshold : float
        Matching threshold, default 0.5.
    convention : {"hovernet", "conic"}
        "hovernet": ``DQ = TP / (TP + FP/2 + FN/2)``; NaN for DQ, SQ and PQ when neither map has an instance.
        "conic": CoNIC's ``get_pq``, which adds 1e-6 to the DQ denominator too (0 when both maps are empty).
        Both use ``SQ = ΣIoU / (TP + 1e-6)``.

    Returns
    -------
    PQResult
    """
    return _pq_from_overlap(pairwise_overlap(true, pred), iou_threshold, convention)


def _dice1_from_overlap(ov: Overlap) -> float:
    denom = int(ov.true_area.sum() + ov.pred_area.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int(ov.pair_inter.sum()) / denom


def _dice2_from_overlap(ov: Overlap) -> float:
    markup = int(ov.true_area[ov.pair_true].sum() + ov.pred_area[ov.pair_pred].sum())
    if markup == 0:
        return float("nan") if ov.n_true + ov.n_pred == 0 else 0.0
    return 2.0 * int(ov.pair_inter.sum()) / markup


def _ranking_iou(ov: Overlap) -> np.ndarray:
    # The reference ranks pairs by inter / (union + 1e-6); keep it so argmax ties resolve identically.
    return ov.pair_inter / (ov.pair_union + REFERENCE_EPS)


def _aji_total(ov: Overlap, chosen: np.ndarray) -> float:
    inter = int(ov.pair_inter[chosen].sum())
    union = int(ov.pair_union[chosen].sum())
    true_paired = np.zeros(ov.n_true, bool)
    true_paired[ov.pair_true[chosen]] = True
    pred_paired = np.zeros(ov.n_pred, bool)
    pred_paired[ov.pair_pred[chosen]] = True
    union += int(ov.true_area[~true_paired].sum()) + int(ov.pred_area[~pred_paired].sum())
    if union == 0:
        return float("nan")
    return inter / union


def _aji_from_overlap(ov: Overlap) -> float:
    if ov.pair_true.size == 0:
        return _aji_total(ov, np.zeros(0, np.int64))
    rank = _ranking_iou(ov)
    # Per true instance, the pred of highest ranking IoU; ties go to the smaller pred id (np.argmax semantics).
    order = np.lexsort((ov.pair_pred, -rank, ov.pair_true))
    first = np.ones(order.size, bool)
    first[1:] = ov.pair_true[order][1:] != ov.pair_true[order][:-1]
    return _aji_total(ov, order[first])


def _aji_plus_from_overlap(ov: Overlap) -> float:
    chosen = _unique_matching(ov.pair_true, ov.pair_pred, _ranking_iou(ov), ov.n_true, ov.n_pred)
    return _aji_total(ov, chosen)


def dice1(true: np.ndarray, pred: np.ndarray) -> float:
    """DICE1: Dice of the binarised maps, ``2|T ∩ P| / (|T| + |P|)`` (HoVer-Net ``get_dice_1``).

    Parameters
    ----------
    true, pred : ndarray of int, shape (H, W)
        Instance (or binary) label maps; any non-zero pixel is foreground.

    Returns
    -------
    float in [0, 1]; NaN when both maps are empty.
    """
    return _dice1_from_overlap(pairwise_overlap(true, pred))


def dice2(true: np.ndarray, pred: np.ndarray) -> float:
    """DICE2 (ensemble Dice): ``2 Σ|g ∩ p| / Σ(|g| + |p|)`` over every overlapping (g, p) pair
    (HoVer-Net ``get_fast_dice_2``). Instances that overlap nothing do not enter the sums.

    Returns
    -------
    float in [0, 1]; 0 when no pair overlaps, NaN when both maps are empty.
    """
    return _dice2_from_overlap(pairwise_overlap(true, pred))


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index, MoNuSeg / Kumar style (HoVer-Net ``get_fast_aji``).

    Each true instance g takes the prediction p* of highest IoU among those it overlaps (a prediction may be
    taken by several g). ``AJI = Σ|g ∩ p*| / (Σ|g ∪ p*| + Σ_{g unpaired}|g| + Σ_{p never taken}|p|)``.

    Returns
    -------
    float in [0, 1]; NaN when both maps are empty.
    """
    return _aji_from_overlap(pairwise_overlap(true, pred))


def aji_plus(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ (HoVer-Net ``get_fast_aji_plus``): AJI with a unique pairing that maximises the total IoU
    (Hungarian), keeping pairs with IoU > 0; unpaired instances of both maps join the union.

    Returns
    -------
    float in [0, 1]; NaN when both maps are empty.
    """
    return _aji_plus_from_overlap(pairwise_overlap(true, pred))


def instance_scores(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5,
                    convention: Literal["hovernet", "conic"] = "hovernet") -> dict:
    """All instance scores of one image from a single overlap computation.

    Parameters
    ----------
    true, pred : ndarray of int, shape (H, W)
        Instance label maps, 0 = background.
    iou_threshold : float
        PQ matching threshold.
    convention : {"hovernet", "conic"}
        PQ convention, see :func:`pq`.

    Returns
    -------
    dict
        ``dice1, dice2, aji, aji_plus, dq, sq, pq`` (float) and ``tp, fp, fn, n_true, n_pred`` (int),
        ``sum_iou`` (float).
    """
    ov = pairwise_overlap(true, pred)
    result = _pq_from_overlap(ov, iou_threshold, convention)
    return {
        "dice1": _dice1_from_overlap(ov),
        "dice2": _dice2_from_overlap(ov),
        "aji": _aji_from_overlap(ov),
        "aji_plus": _aji_plus_from_overlap(ov),
        "dq": result.dq,
        "sq": result.sq,
        "pq": result.pq,
        "tp": result.tp,
        "fp": result.fp,
        "fn": result.fn,
        "sum_iou": result.sum_iou,
        "n_true": ov.n_true,
        "n_pred": ov.n_pred,
    }
