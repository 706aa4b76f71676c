"""Semantic-segmentation overlap: Dice and IoU of binary masks and of class maps, per class and mean.

``Dice = 2|X ∩ Y| / (|X| + |Y|)``, ``IoU = |X ∩ Y| / |X ∪ Y|`` (METHODS.md §6.2), X the ground truth and Y the
prediction. With ``eps > 0`` both ratios are smoothed, ``(2|X ∩ Y| + eps) / (|X| + |Y| + eps)`` and
``(|X ∩ Y| + eps) / (|X ∪ Y| + eps)``, so a class absent from both maps scores 1. With ``eps = 0`` (default) such
a class is undefined (NaN) and left out of the means; nothing else is NaN.

Averaging (``average``):

* ``"per_image"`` — NASDM's "first by channel and then by batch": per image, the mean over classes; then the
  mean over images. The per-class values are the means over images of the per-image class scores.
* ``"pooled"`` — intersections and sizes summed over all images per class, then the mean over classes.

Background (class 0) is left out unless ``include_background=True``; the result states which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from pathgen.errors import PathgenError


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def dice_masks(true: np.ndarray, pred: np.ndarray, eps: float = 0.0) -> float:
    """Dice of two binary masks (any non-zero value is foreground).

    Parameters
    ----------
    true, pred : ndarray, same shape
    eps : float
        Smoothing added to numerator and denominator.

    Returns
    -------
    float in [0, 1]; NaN when both masks are empty and ``eps == 0``.
    """
    t = np.asarray(true) != 0
    p = np.asarray(pred) != 0
    if t.shape != p.shape:
        raise PathgenError(f"masks differ in shape: {t.shape} vs {p.shape}")
    inter = int(np.count_nonzero(t & p))
    return float(_ratio(2 * inter + eps, int(t.sum()) + int(p.sum()) + eps))


def iou_masks(true: np.ndarray, pred: np.ndarray, eps: float = 0.0) -> float:
    """IoU (Jaccard) of two binary masks; NaN when both are empty and ``eps == 0``."""
    t = np.asarray(true) != 0
    p = np.asarray(pred) != 0
    if t.shape != p.shape:
        raise PathgenError(f"masks differ in shape: {t.shape} vs {p.shape}")
    return float(_ratio(int(np.count_nonzero(t & p)) + eps, int(np.count_nonzero(t | p)) + eps))


def class_confusion_counts(true: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """Per-class intersection, true size and pred size of two class maps (one bincount pass).

    Returns
    -------
    inter, true_size, pred_size : ndarray of int64, shape (n_classes,)
    """
    t = np.asarray(true)
    p = np.asarray(pred)
    if t.shape != p.shape:
        raise PathgenError(f"class maps differ in shape: {t.shape} vs {p.shape}")
    for name, arr in (("true", t), ("pred", p)):
        if arr.dtype.kind not in "iub":
            raise PathgenError(f"{name} class map must be integer, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise PathgenError(f"{name} class map has values outside 0..{n_classes - 1}")
    joint = np.bincount(t.ravel().astype(np.int64) * n_classes + p.ravel(), minlength=n_classes * n_classes)
    joint = joint.reshape(n_classes, n_classes)
    return np.diag(joint).copy(), joint.sum(axis=1), joint.sum(axis=0)


@dataclass(frozen=True)
class SemanticResult:
    """Dice / IoU of class maps. ``classes`` lists the class ids scored; per-class arrays align with it."""

    dice: float
    iou: float
    per_class_dice: np.ndarray
    per_class_iou: np.ndarray
    per_image_dice: np.ndarray
    per_image_iou: np.ndarray
    classes: tuple[int, ...]
    include_background: bool
    average: str
    eps: float


def semantic_scores(true_maps: Sequence[np.ndarray] | np.ndarray, pred_maps: Sequence[np.ndarray] | np.ndarray,
                    n_classes: int, include_background: bool = False, eps: float = 0.0,
                    average: Literal["per_image", "pooled"] = "per_image") -> SemanticResult:
    """Dice and IoU per class and their mean over a set of class maps.

    Parameters
    ----------
    true_maps, pred_maps : sequence of ndarray of int (H, W), or one (H, W) / (N, H, W) array
        Class maps with values in 0..n_classes-1 (0 = background).
    n_classes : int
        Number of classes including background.
    include_background : bool
        Score class 0 too.
    eps : float
        Smoothing, see the module docstring.
    average : {"per_image", "pooled"}
        See the module docstring.

    Returns
    -------
    SemanticResult
        ``per_image_*`` are (N,) means over classes of each image (NaN for an image where every class is
        undefined).
    """
    if average not in ("per_image", "pooled"):
        raise PathgenError(f"unknown average {average!r} (use 'per_image' or 'pooled')")
    if n_classes < 1:
        raise PathgenError(f"n_classes must be >= 1, got {n_classes}")

    def as_list(x):
        if isinstance(x, np.ndarray):
            return [x] if x.ndim == 2 else list(x)
        return [np.asarray(m) for m in x]

    t_list, p_list = as_list(true_maps), as_list(pred_maps)
    if len(t_list) != len(p_list):
        raise PathgenError(f"{len(t_list)} true maps but {len(p_list)} pred maps")
    first = 0 if include_background else 1
    classes = tuple(range(first, n_classes))
    counts = np.array([np.stack(class_confusion_counts(t, p, n_classes)) for t, p in zip(t_list, p_list)])
    counts = counts.reshape(len(t_list), 3, n_classes)[:, :, first:]
    inter, size_t, size_p = counts[:, 0], counts[:, 1], counts[:, 2]
    img_dice = _ratio(2 * inter + eps, size_t + size_p + eps)  # (N, K)
    img_iou = _ratio(inter + eps, size_t + size_p - inter + eps)

    def nanmean(a, axis):
        a = np.asarray(a, np.float64)
        valid = ~np.isnan(a)
        total = np.where(valid, a, 0.0).sum(axis=axis)
        n = valid.sum(axis=axis)
        return _ratio(total, n)

    per_image_dice = nanmean(img_dice, 1) if img_dice.size else np.full(len(t_list), np.nan)
    per_image_iou = nanmean(img_iou, 1) if img_iou.size else np.full(len(t_list), np.nan)
    if average == "per_image":
        per_class_dice = nanmean(img_dice, 0) if len(t_list) else np.full(len(classes), np.nan)
        per_class_iou = nanmean(img_iou, 0) if len(t_list) else np.full(len(classes), np.nan)
        dice = float(nanmean(per_image_dice, 0)) if len(t_list) else float("nan")
        iou = float(nanmean(per_image_iou, 0)) if len(t_list) else float("nan")
    else:
        s_inter, s_t, s_p = inter.sum(0), size_t.sum(0), size_p.sum(0)
        per_class_dice = _ratio(2 * s_inter + eps, s_t + s_p + eps)
        per_class_iou = _ratio(s_inter + eps, s_t + s_p - s_inter + eps)
        dice = float(nanmean(per_class_dice, 0)) if classes else float("nan")
        iou = float(nanmean(per_class_iou, 0)) if classes else float("nan")
    return SemanticResult(dice=dice, iou=iou, per_class_dice=np.asarray(per_class_dice),
                          per_class_iou=np.asarray(per_class_iou), per_image_dice=np.asarray(per_image_dice),
                          per_image_iou=np.asarray(per_image_iou), classes=classes,
                          include_background=include_background, average=average, eps=float(eps))
