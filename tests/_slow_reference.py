"""Slow per-instance implementations of the published definitions (ANCHORS.md §2), for agreement tests only.

Each instance gets its own boolean mask and every pair its own intersection, exactly as the definitions are
written; nothing here is shared with pathgen.metrics.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def _ids(labels):
    ids = np.unique(labels)
    return [int(i) for i in ids if i != 0]


def pair_tables(true, pred):
    t_ids, p_ids = _ids(true), _ids(pred)
    inter = np.zeros((len(t_ids), len(p_ids)))
    union = np.zeros((len(t_ids), len(p_ids)))
    t_area = np.array([(true == t).sum() for t in t_ids], float)
    p_area = np.array([(pred == p).sum() for p in p_ids], float)
    for i, t in enumerate(t_ids):
        tm = true == t
        for j, p in enumerate(p_ids):
            pm = pred == p
            n = np.logical_and(tm, pm).sum()
            if n:
                inter[i, j] = n
                union[i, j] = np.logical_or(tm, pm).sum()
    return t_ids, p_ids, inter, union, t_area, p_area


def slow_dice1(true, pred):
    t, p = true > 0, pred > 0
    return 2 * np.logical_and(t, p).sum() / (t.sum() + p.sum())


def slow_dice2(true, pred):
    _, _, inter, _, ta, pa = pair_tables(true, pred)
    num = den = 0.0
    for i in range(inter.shape[0]):
        for j in range(inter.shape[1]):
            if inter[i, j] > 0:
                num += inter[i, j]
                den += ta[i] + pa[j]
    return 2 * num / den


def slow_pq(true, pred, thr=0.5):
    _, _, inter, union, _, _ = pair_tables(true, pred)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if thr >= 0.5:
        rows, cols = np.nonzero(iou > thr)
    else:
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > thr
        rows, cols = rows[keep], cols[keep]
    tp = len(rows)
    fp = iou.shape[1] - tp
    fn = iou.shape[0] - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou[rows, cols].sum() / (tp + 1e-6)
    return dq, sq, dq * sq, tp, fp, fn


def slow_aji(true, pred, plus=False):
    _, _, inter, union, ta, pa = pair_tables(true, pred)
    rank = inter / (union + 1e-6)
    if plus:
        rows, cols = linear_sum_assignment(-rank)
        keep = rank[rows, cols] > 0
        rows, cols = rows[keep], cols[keep]
    else:
        rows = np.arange(inter.shape[0])
        cols = np.argmax(rank, axis=1) if inter.shape[1] else np.zeros(0, int)
        keep = rank[rows, cols] > 0 if inter.shape[1] else np.zeros(0, bool)
        rows, cols = rows[keep], cols[keep]
    total_inter = inter[rows, cols].sum()
    total_union = union[rows, cols].sum()
    total_union += sum(ta[i] for i in range(len(ta)) if i not in set(rows.tolist()))
    total_union += sum(pa[j] for j in range(len(pa)) if j not in set(cols.tolist()))
    return total_inter / total_union


def random_touching_maps(rng, shape=(96, 96), n=25, shift=3, drop=0.1, extra=3):
    """Touching nuclei (discs cut by nearest seed) and a perturbed prediction with misses, merges and extras."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w]

    def render(seeds, radii):
        labels = np.zeros(shape, np.int32)
        if len(seeds) == 0:
            return labels
        d = (rr[None] - seeds[:, 0, None, None]) ** 2 + (cc[None] - seeds[:, 1, None, None]) ** 2
        nearest = d.argmin(0)
        inside = d.min(0) <= radii[nearest] ** 2
        labels[inside] = nearest[inside] + 1
        return labels

    seeds = rng.uniform(0, [h, w], size=(n, 2))
    radii = rng.uniform(4, 9, size=n)
    true = render(seeds, radii)
    keep = rng.random(n) > drop
    p_seeds = np.concatenate([seeds[keep] + rng.normal(0, shift, size=(keep.sum(), 2)),
                              rng.uniform(0, [h, w], size=(extra, 2))])
    p_radii = np.concatenate([radii[keep] * rng.uniform(0.7, 1.3, keep.sum()), rng.uniform(3, 8, extra)])
    pred = render(p_seeds, p_radii)
    # merge two predicted neighbours now and then, and scatter the ids (non-contiguous labels)
    if pred.max() > 2:
        pred[pred == 2] = 1
    ids = np.unique(pred)[1:]
    scatter = np.zeros(pred.max() + 1, np.int64)
    scatter[ids] = rng.choice(10_000, ids.size, replace=False) + 1
    return true, scatter[pred]
