"""Typed-nucleus scores: PanNuke mPQ / bPQ, CoNIC mPQ+, and HoVer-Net's detection / classification F1.

Definitions follow ANCHORS.md §2:

* **PanNuke** (``PanNuke-metrics/run.py``): per image and class, PQ of the class channel; NaN (skipped) when the
  ground truth has no instance of that class in that image, so false positives of that class there are ignored.
  ``mPQ_i = nanmean`` over classes; per tissue the nanmean over its images; ``mPQ`` = nanmean over tissues.
  ``bPQ`` likewise from the binarised channels (NaN when the image has no ground-truth nucleus). The per-class
  PQ is the nanmean over all images. pathgen treats instance ids as sets, so the binarisation's id gaps and the
  script's slot mix-up in ``class_stats.csv`` do not arise. "No instance" means no non-zero label (the script
  tests ``len(np.unique(x)) == 1``, which also fires for a map covered by a single instance).
* **CoNIC** (``CoNIC/compute_stats.py``): for each class t, per image ``inst * (class == t)`` for both sides,
  PQ matching with IoU > 0.5; TP, FP, FN and ΣIoU are pooled over the dataset, then
  ``PQ_t = ΣIoU/(TP+1e-6) · TP/(TP+FP/2+FN/2+1e-6)`` and ``mPQ+ = mean_t PQ_t``.
* **HoVer-Net type mode** (``compute_stats.py --mode=type``): centroids paired per image with the Hungarian
  algorithm on Euclidean distance, pairs kept when the distance is <= radius (12 px); counts pooled over images.
  ``F1_d = 2TP/(2TP+FP+FN)``; per type t
  ``F1_t = 2(TP_t+TN_t) / (2(TP_t+TN_t) + 2FP_t + 2FN_t + FP_d,t + FN_d,t)``, where TN_t is always 0 because
  only paired nuclei with true or predicted type t enter; accuracy = agreeing types / paired nuclei.
  Unlike the script, an image without nuclei contributes nothing (the script inserts a dummy nucleus of type 0
  at (0, 0), which can pair with a real or another dummy nucleus).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from pathgen.errors import PathgenError
from pathgen.nucleus_types import NUCLEUS_TYPES, PANNUKE_TYPES
from pathgen.metrics.instance import REFERENCE_EPS, _pq_from_overlap, pairwise_overlap
from pathgen.nucleus_types import as_label_map, centroids_and_types, pannuke_binarize


def _nanmean(values) -> float:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmean(arr))


def _stack(maps, name: str, channels_last: int | None = None) -> list[np.ndarray]:
    """Accept an (N, ...) array or a sequence of per-image arrays; return a list of per-image arrays."""
    if isinstance(maps, np.ndarray):
        per_image_ndim = 2 if channels_last is None else 3
        if maps.ndim == per_image_ndim:
            return [maps]
        if maps.ndim == per_image_ndim + 1:
            return list(maps)
        raise PathgenError(f"{name} must have {per_image_ndim} or {per_image_ndim + 1} dimensions, "
                           f"got shape {maps.shape}")
    return [np.asarray(m) for m in maps]


# ---------------------------------------------------------------------------------------------------------------
# PanNuke


def to_pannuke_channels(instances: np.ndarray, classes: np.ndarray, n_classes: int = 5) -> np.ndarray:
    """Split an instance map and a per-pixel class map (1..n_classes) into PanNuke channels.

    Returns
    -------
    ndarray of int32, shape (H, W, n_classes + 1); the last channel is the background mask.
    """
    inst = as_label_map(instances, "instance")
    cls = as_label_map(classes, "class")
    if inst.shape != cls.shape:
        raise PathgenError(f"instance and class maps differ in shape: {inst.shape} vs {cls.shape}")
    out = np.zeros(inst.shape + (n_classes + 1,), np.int32)
    for c in range(n_classes):
        out[..., c] = np.where(cls == c + 1, inst, 0)
    out[..., n_classes] = (inst == 0) | (cls == 0)
    return out


@dataclass(frozen=True)
class PanNukeResult:
    """PanNuke scores. ``per_image_class_pq`` is (N, n_classes) with NaN where the class is absent from GT."""

    mpq: float
    bpq: float
    per_class_pq: dict[str, float]
    per_tissue: dict[str, dict[str, float]]
    per_image_mpq: np.ndarray
    per_image_bpq: np.ndarray
    per_image_class_pq: np.ndarray
    class_names: tuple[str, ...] = field(default=())


def mpq_pannuke(true, pred, tissue: Sequence[str] | None = None, n_classes: int = 5,
                iou_threshold: float = 0.5, class_names: Sequence[str] | None = None) -> PanNukeResult:
    """PanNuke multi-class PQ (mPQ) and binary PQ (bPQ), averaged per image, per tissue, then over tissues.

    Parameters
    ----------
    true, pred : ndarray of int, shape (N, H, W, C) or (H, W, C), or a sequence of (H, W, C) arrays
        PanNuke masks: channel c holds the instances of class c + 1 (C >= n_classes; extra channels ignored).
    tissue : sequence of str, length N, optional
        Tissue type of each image (PanNuke ``types.npy``). Without it all images form one tissue, so the
        scores are plain means over images.
    n_classes : int
        Number of class channels (5 for PanNuke).
    iou_threshold : float
        PQ matching threshold.
    class_names : sequence of str, optional
        Names for the per-class output; PanNuke's names by default.

    Returns
    -------
    PanNukeResult
    """
    true_list = _stack(true, "true PanNuke masks", channels_last=n_classes)
    pred_list = _stack(pred, "pred PanNuke masks", channels_last=n_classes)
    if len(true_list) != len(pred_list):
        raise PathgenError(f"true has {len(true_list)} images, pred has {len(pred_list)}")
    n = len(true_list)
    if tissue is None:
        tissue = ["all"] * n
    tissue = [str(t) for t in tissue]
    if len(tissue) != n:
        raise PathgenError(f"{len(tissue)} tissue labels for {n} images")
    names = tuple(class_names) if class_names is not None else tuple(t.name for t in PANNUKE_TYPES[1:n_classes + 1])
    class_pq = np.full((n, n_classes), np.nan)
    bpq = np.full(n, np.nan)
    for i, (t_img, p_img) in enumerate(zip(true_list, pred_list)):
        if t_img.shape[:2] != p_img.shape[:2] or p_img.ndim != 3 or p_img.shape[-1] < n_classes:
            raise PathgenError(f"image {i}: true and pred shapes differ: {t_img.shape} vs {p_img.shape}")
        t_bin = pannuke_binarize(t_img, n_classes)
        if t_bin.any():
            bpq[i] = _pq_from_overlap(pairwise_overlap(t_bin, pannuke_binarize(p_img, n_classes)),
                                      iou_threshold, "hovernet").pq
        for c in range(n_classes):
            t_c = t_img[..., c]
            if not np.any(t_c):
                continue  # class absent from the ground truth: skipped
            class_pq[i, c] = _pq_from_overlap(pairwise_overlap(t_c, p_img[..., c]), iou_threshold, "hovernet").pq
    per_image_mpq = np.array([_nanmean(row) for row in class_pq]) if n else np.zeros(0)
    per_tissue: dict[str, dict[str, float]] = {}
    for name in sorted(set(tissue)):
        idx = [i for i, t in enumerate(tissue) if t == name]
        per_tissue[name] = {"mpq": _nanmean(per_image_mpq[idx]), "bpq": _nanmean(bpq[idx]), "n_images": len(idx)}
    return PanNukeResult(
        mpq=_nanmean([v["mpq"] for v in per_tissue.values()]),
        bpq=_nanmean([v["bpq"] for v in per_tissue.values()]),
        per_class_pq={names[c]: _nanmean(class_pq[:, c]) for c in range(n_classes)},
        per_tissue=per_tissue,
        per_image_mpq=per_image_mpq,
        per_image_bpq=bpq,
        per_image_class_pq=class_pq,
        class_names=names,
    )


# ---------------------------------------------------------------------------------------------------------------
# CoNIC


@dataclass(frozen=True)
class ClassCounts:
    """Pooled PQ counts of one class."""

    tp: int
    fp: int
    fn: int
    sum_iou: float

    @property
    def dq(self) -> float:
        return self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn + REFERENCE_EPS)

    @property
    def sq(self) -> float:
        return self.sum_iou / (self.tp + REFERENCE_EPS)

    @property
    def pq(self) -> float:
        return self.dq * self.sq


@dataclass(frozen=True)
class ConicResult:
    """CoNIC mPQ+ with per-class pooled counts and the per-image class counts (N, n_classes, 4)."""

    mpq_plus: float
    per_class: dict[str, ClassCounts]
    per_image_counts: np.ndarray


def conic_class_counts(instances_true: np.ndarray, classes_true: np.ndarray, instances_pred: np.ndarray,
                       classes_pred: np.ndarray, n_classes: int = 6, iou_threshold: float = 0.5) -> np.ndarray:
    """Per-class (TP, FP, FN, ΣIoU) of one image, CoNIC's ``get_multi_pq_info``.

    Returns
    -------
    ndarray of float64, shape (n_classes, 4)
    """
    out = np.zeros((n_classes, 4))
    for c in range(1, n_classes + 1):
        t = np.where(classes_true == c, instances_true, 0)
        p = np.where(classes_pred == c, instances_pred, 0)
        r = _pq_from_overlap(pairwise_overlap(t, p), iou_threshold, "conic")
        out[c - 1] = (r.tp, r.fp, r.fn, r.sum_iou)
    return out


def mpq_plus_conic(true, pred, n_classes: int = 6, iou_threshold: float = 0.5,
                   class_names: Sequence[str] | None = None) -> ConicResult:
    """CoNIC multi-class PQ+ (counts pooled over the dataset per class, then the mean over classes).

    A nucleus segmented well but given the wrong class counts as FN in its true class and FP in the predicted one.

    Parameters
    ----------
    true, pred : ndarray of int, shape (N, H, W, 2) or (H, W, 2), or a sequence of (H, W, 2) arrays
        CoNIC layout: ``[..., 0]`` instance ids, ``[..., 1]`` per-pixel class (1..n_classes, 0 background).
    n_classes : int
        6 for Lizard / CoNIC.
    iou_threshold : float
        Matching threshold (0.5).
    class_names : sequence of str, optional
        Lizard names by default.

    Returns
    -------
    ConicResult
    """
    true_list = _stack(true, "true CoNIC array", channels_last=2)
    pred_list = _stack(pred, "pred CoNIC array", channels_last=2)
    if len(true_list) != len(pred_list):
        raise PathgenError(f"true has {len(true_list)} images, pred has {len(pred_list)}")
    names = tuple(class_names) if class_names is not None else tuple(t.name for t in NUCLEUS_TYPES[1:n_classes + 1])
    counts = np.zeros((len(true_list), n_classes, 4))
    for i, (t, p) in enumerate(zip(true_list, pred_list)):
        if t.shape != p.shape or t.ndim != 3 or t.shape[-1] < 2:
            raise PathgenError(f"image {i}: expected matching (H, W, 2) arrays, got {t.shape} and {p.shape}")
        counts[i] = conic_class_counts(t[..., 0], t[..., 1], p[..., 0], p[..., 1], n_classes, iou_threshold)
    total = counts.sum(axis=0)
    per_class = {names[c]: ClassCounts(int(total[c, 0]), int(total[c, 1]), int(total[c, 2]), float(total[c, 3]))
                 for c in range(n_classes)}
    mpq_plus = float(np.mean([v.pq for v in per_class.values()])) if n_classes else float("nan")
    return ConicResult(mpq_plus=mpq_plus, per_class=per_class, per_image_counts=counts)


# ---------------------------------------------------------------------------------------------------------------
# Detection and classification


def pair_centroids(true_xy: np.ndarray, pred_xy: np.ndarray, radius: float = 12.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique pairing of two point sets: Hungarian on Euclidean distance, pairs with distance <= radius kept.

    Returns
    -------
    paired : ndarray of int64, shape (M, 2)
        (true index, pred index) pairs.
    unpaired_true, unpaired_pred : ndarray of int64
    """
    a = np.asarray(true_xy, np.float64).reshape(-1, 2)
    b = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((0, 2), np.int64), np.arange(a.shape[0]), np.arange(b.shape[0])
    dist = cdist(a, b)
    ia, ib = linear_sum_assignment(dist)
    keep = dist[ia, ib] <= radius
    paired = np.stack([ia[keep], ib[keep]], axis=1).astype(np.int64)
    return (paired, np.setdiff1d(np.arange(a.shape[0]), paired[:, 0]),
            np.setdiff1d(np.arange(b.shape[0]), paired[:, 1]))


@dataclass(frozen=True)
class DetectionResult:
    """Pooled detection / classification scores (HoVer-Net ``--mode=type``)."""

    f1_detection: float
    accuracy: float
    f1_per_type: dict[int, float]
    tp: int
    fp: int
    fn: int
    radius: float


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def detection_scores(true_centroids, true_types, pred_centroids, pred_types, radius: float = 12.0,
                     type_ids: Sequence[int] | None = None) -> DetectionResult:
    """Detection F1, type accuracy and per-type F1 with centroid pairing, pooled over images.

    Parameters
    ----------
    true_centroids, pred_centroids : sequence of ndarray (K_i, 2), or one ndarray (K, 2) for a single image
        Centroids in pixels (any consistent axis order).
    true_types, pred_types : sequence of ndarray (K_i,), or one ndarray
        Integer type of each centroid.
    radius : float
        Maximum pairing distance in pixels (inclusive), 12 by default.
    type_ids : sequence of int, optional
        Types to score; default: the non-zero types present in the ground truth.

    Returns
    -------
    DetectionResult
        NaN only for a ratio 0/0 (for example accuracy when nothing is paired).
    """
    def as_list(x, ndim):
        if isinstance(x, np.ndarray) and x.ndim == ndim and (ndim == 1 or x.shape[-1] == 2):
            return [x]
        return [np.asarray(v) for v in x]

    tc, tt = as_list(true_centroids, 2), as_list(true_types, 1)
    pc, pt = as_list(pred_centroids, 2), as_list(pred_types, 1)
    if not (len(tc) == len(tt) == len(pc) == len(pt)):
        raise PathgenError("centroid and type lists differ in length")
    paired_t, paired_p, unp_t, unp_p = [], [], [], []
    for a, ta, b, tb in zip(tc, tt, pc, pt):
        ta = np.asarray(ta, np.int64).ravel()
        tb = np.asarray(tb, np.int64).ravel()
        a = np.asarray(a, np.float64).reshape(-1, 2)
        b = np.asarray(b, np.float64).reshape(-1, 2)
        if a.shape[0] != ta.size or b.shape[0] != tb.size:
            raise PathgenError("number of centroids and types differ")
        paired, ua, ub = pair_centroids(a, b, radius)
        paired_t.append(ta[paired[:, 0]])
        paired_p.append(tb[paired[:, 1]])
        unp_t.append(ta[ua])
        unp_p.append(tb[ub])
    paired_t = np.concatenate(paired_t) if paired_t else np.zeros(0, np.int64)
    paired_p = np.concatenate(paired_p) if paired_p else np.zeros(0, np.int64)
    unp_t = np.concatenate(unp_t) if unp_t else np.zeros(0, np.int64)
    unp_p = np.concatenate(unp_p) if unp_p else np.zeros(0, np.int64)
    tp, fp, fn = paired_t.size, unp_p.size, unp_t.size
    f1_d = _ratio(2 * tp, 2 * tp + fp + fn)
    accuracy = _ratio(int((paired_t == paired_p).sum()), tp)
    if type_ids is None:
        all_true = np.concatenate([np.asarray(t, np.int64).ravel() for t in tt]) if tt else np.zeros(0, np.int64)
        type_ids = [int(t) for t in np.unique(all_true) if t != 0]
    f1_type = {}
    for t in type_ids:
        sample = (paired_t == t) | (paired_p == t)
        pt_s, pp_s = paired_t[sample], paired_p[sample]
        tp_t = int(((pt_s == t) & (pp_s == t)).sum())
        fp_t = int(((pt_s != t) & (pp_s == t)).sum())
        fn_t = int(((pt_s == t) & (pp_s != t)).sum())
        fp_d = int((unp_p == t).sum())
        fn_d = int((unp_t == t).sum())
        f1_type[int(t)] = _ratio(2 * tp_t, 2 * tp_t + 2 * fp_t + 2 * fn_t + fp_d + fn_d)
    return DetectionResult(f1_detection=f1_d, accuracy=accuracy, f1_per_type=f1_type, tp=tp, fp=fp, fn=fn,
                           radius=float(radius))


__all__ = [
    "PanNukeResult", "ConicResult", "ClassCounts", "DetectionResult", "mpq_pannuke", "mpq_plus_conic",
    "pannuke_binarize", "to_pannuke_channels", "conic_class_counts", "centroids_and_types", "pair_centroids",
    "detection_scores",
]
