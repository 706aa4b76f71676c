"""Dataset-level evaluation behind ``pathgen eval`` and ``pathgen qc``: read, pair, score, aggregate, write.

Means over images skip undefined (NaN) per-image values and report how many were skipped in ``n_undefined``.
JSON output writes NaN and infinity as ``null``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from pathgen.errors import PathgenError
from pathgen.io.atomic import atomic_path
from pathgen.nucleus_types import NUCLEUS_TYPES, PANNUKE_TYPES
from pathgen.io.image import read_array
from pathgen.io.labels import LabelSample, image_pairs, load_label_pairs, read_tissue_types
from pathgen.metrics.instance import instance_scores
from pathgen.metrics.typed import (centroids_and_types, detection_scores, mpq_pannuke, mpq_plus_conic,
                                   to_pannuke_channels)

INSTANCE_KEYS = ("dice1", "dice2", "aji", "aji_plus", "dq", "sq", "pq")
Mode = Literal["hovernet", "pannuke", "conic"]


def clean_for_json(obj):
    """Python scalars only; NaN / inf become None."""
    if isinstance(obj, dict):
        return {str(k): clean_for_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_for_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_for_json(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data: dict, overwrite: bool = False, inputs: tuple = ()) -> None:
    """Write ``data`` as JSON atomically (refusing an existing file unless ``overwrite``)."""
    with atomic_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        tmp.write_text(json.dumps(clean_for_json(data), indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict], overwrite: bool = False, inputs: tuple = ()) -> None:
    """Write rows (dicts) as CSV atomically; columns in first-seen order, NaN as an empty cell."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in clean_for_json(row).items()})
    with atomic_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        tmp.write_text(buf.getvalue())


def nan_summary(values: Sequence[float]) -> tuple[float, int]:
    """(mean over the defined values, number of NaN values); mean is NaN if none is defined."""
    arr = np.asarray(values, np.float64)
    defined = arr[~np.isnan(arr)]
    return (float(defined.mean()) if defined.size else float("nan")), int(arr.size - defined.size)


def _type_name(type_id: int, table) -> str:
    for t in table:
        if t.id == type_id:
            return t.name
    return str(type_id)


def _require_classes(samples: list[tuple[str, LabelSample, LabelSample]]) -> None:
    for name, t, p in samples:
        for side, s in (("ground truth", t), ("prediction", p)):
            if s.classes is None:
                raise PathgenError(f"class scores need class information, but the {side} of image {name!r} has "
                                   "none (use CoNIC (H, W, 2), PanNuke channels, .mat with inst_type, or GeoJSON)",
                                   s.source, param="classes")


def evaluate_instances(true_path: str | os.PathLike, pred_path: str | os.PathLike, classes: bool = False,
                       mode: Mode = "hovernet", tissue_path: str | os.PathLike | None = None,
                       iou_threshold: float = 0.5, radius: float = 12.0) -> dict:
    """Instance (and, with ``classes``, typed) scores of predictions against ground truth.

    Parameters
    ----------
    true_path, pred_path : files or folders (see :mod:`pathgen.io.labels`)
    classes : bool
        Also score classes: detection / classification F1 (HoVer-Net type mode) in every mode, plus PanNuke
        ``mpq`` / ``bpq`` in mode "pannuke" or CoNIC ``mpq_plus`` in mode "conic".
    mode : {"hovernet", "pannuke", "conic"}
        "conic" scores per-image PQ with CoNIC's convention (1e-6 in DQ); the others with HoVer-Net's.
    tissue_path : optional
        Tissue types for mode "pannuke" (``types.npy`` or a name,tissue CSV).
    iou_threshold, radius : float
        PQ matching threshold; centroid pairing radius in pixels.

    Returns
    -------
    dict
        Means over images of ``dice1, dice2, aji, aji_plus, dq, sq, pq``; ``n_images``; ``n_undefined``;
        ``per_image`` rows; with classes also ``detection``, ``per_class`` and ``mpq``/``bpq`` or ``mpq_plus``.
    """
    if mode not in ("hovernet", "pannuke", "conic"):
        raise PathgenError(f"unknown mode {mode!r} (use hovernet, pannuke or conic)")
    if tissue_path is not None and mode != "pannuke":
        raise PathgenError("tissue types apply to the PanNuke mode only", tissue_path, param="tissue")
    pairs = load_label_pairs(true_path, pred_path)
    convention = "conic" if mode == "conic" else "hovernet"
    rows = []
    for name, t, p in pairs:
        scores = instance_scores(t.instances, p.instances, iou_threshold, convention)
        rows.append({"name": name, **scores})
    result: dict = {
        "mode": mode,
        "true": os.fspath(true_path),
        "pred": os.fspath(pred_path),
        "iou_threshold": iou_threshold,
        "n_images": len(rows),
    }
    undefined = {}
    for key in INSTANCE_KEYS:
        result[key], undefined[key] = nan_summary([r[key] for r in rows])
    result["n_undefined"] = undefined
    if classes:
        _require_classes(pairs)
        table = PANNUKE_TYPES if mode == "pannuke" else NUCLEUS_TYPES
        tc, tt, pc, pt = [], [], [], []
        for _, t, p in pairs:
            _, c, ty = centroids_and_types(t.instances, t.classes)
            tc.append(c)
            tt.append(ty)
            _, c, ty = centroids_and_types(p.instances, p.classes)
            pc.append(c)
            pt.append(ty)
        det = detection_scores(tc, tt, pc, pt, radius=radius)
        result["detection"] = {
            "f1": det.f1_detection, "accuracy": det.accuracy, "tp": det.tp, "fp": det.fp, "fn": det.fn,
            "radius": det.radius,
            "f1_per_type": {_type_name(k, table): v for k, v in det.f1_per_type.items()},
        }
        if mode == "pannuke":
            def channels(s: LabelSample) -> np.ndarray:
                return s.channels if s.channels is not None else to_pannuke_channels(s.instances, s.classes)

            tissue = read_tissue_types(tissue_path, [n for n, _, _ in pairs]) if tissue_path else None
            pn = mpq_pannuke([channels(t) for _, t, _ in pairs], [channels(p) for _, _, p in pairs], tissue,
                             iou_threshold=iou_threshold)
            result["mpq"] = pn.mpq
            result["bpq"] = pn.bpq
            result["per_class"] = pn.per_class_pq
            result["per_tissue"] = pn.per_tissue
            for row, m, b, cls_row in zip(rows, pn.per_image_mpq, pn.per_image_bpq, pn.per_image_class_pq):
                row["mpq"] = m
                row["bpq"] = b
                for cname, v in zip(pn.class_names, cls_row):
                    row[f"pq_{cname}"] = v
        elif mode == "conic":
            cn = mpq_plus_conic([np.stack([t.instances, t.classes], -1) for _, t, _ in pairs],
                                [np.stack([p.instances, p.classes], -1) for _, _, p in pairs],
                                iou_threshold=iou_threshold)
            result["mpq_plus"] = cn.mpq_plus
            result["per_class"] = {k: {"pq": v.pq, "dq": v.dq, "sq": v.sq, "tp": v.tp, "fp": v.fp, "fn": v.fn,
                                       "sum_iou": v.sum_iou} for k, v in cn.per_class.items()}
    result["per_image"] = rows
    return result


def _class_maps(path: Path) -> list[tuple[str, np.ndarray]]:
    from pathgen.io.labels import read_label_array, read_label_samples

    if path.suffix.lower() in (".mat", ".geojson", ".json"):
        sample = read_label_samples(path)[0]
        if sample.classes is None:
            raise PathgenError("file holds no class map", path)
        return [(sample.name, sample.classes)]
    arr = read_label_array(path)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return [(path.stem, arr)]
    if arr.ndim == 3:
        return [(f"{path.stem}[{i}]", a) for i, a in enumerate(arr)]
    raise PathgenError(f"expected an (H, W) class map or an (N, H, W) stack, got shape {arr.shape}", path)


def evaluate_semantic(true_path: str | os.PathLike, pred_path: str | os.PathLike, n_classes: int | None = None,
                      include_background: bool = False, eps: float = 0.0,
                      average: Literal["per_image", "pooled"] = "per_image") -> dict:
    """Dice and IoU of class maps (files or folders paired by stem); see :mod:`pathgen.metrics.semantic`.

    ``n_classes`` defaults to the largest class value found plus one (at least 2).
    """
    from pathgen.io.labels import file_pairs
    from pathgen.metrics.semantic import semantic_scores

    names, t_maps, p_maps = [], [], []
    for _, tf, pf in file_pairs(true_path, pred_path):
        tm, pm = _class_maps(Path(tf)), _class_maps(Path(pf))
        if len(tm) != len(pm):
            raise PathgenError(f"{len(tm)} maps in {Path(tf).name} but {len(pm)} here", pf)
        for (name, a), (_, b) in zip(tm, pm):
            if a.shape != b.shape:
                raise PathgenError(f"map {name}: shape {b.shape} differs from the ground truth {a.shape}", pf)
            names.append(name)
            t_maps.append(np.asarray(a).astype(np.int64))
            p_maps.append(np.asarray(b).astype(np.int64))
    if n_classes is None:
        n_classes = max(2, 1 + max(int(max(a.max(), b.max())) if a.size else 0 for a, b in zip(t_maps, p_maps)))
    res = semantic_scores(t_maps, p_maps, n_classes, include_background, eps, average)
    return {
        "true": os.fspath(true_path),
        "pred": os.fspath(pred_path),
        "n_images": len(names),
        "n_classes": n_classes,
        "classes": list(res.classes),
        "include_background": include_background,
        "average": average,
        "eps": eps,
        "dice": res.dice,
        "iou": res.iou,
        "per_class": {str(c): {"dice": d, "iou": i}
                      for c, d, i in zip(res.classes, res.per_class_dice, res.per_class_iou)},
        "per_image": [{"name": n, "dice": d, "iou": i}
                      for n, d, i in zip(names, res.per_image_dice, res.per_image_iou)],
    }


def _foreground(img: np.ndarray) -> np.ndarray:
    return img[..., :3].any(axis=-1) if img.ndim == 3 else img != 0


def compare_images(a: str | os.PathLike, b: str | os.PathLike, metric: Literal["ssim", "dice", "psnr"],
                   rgb: bool = False, eps: float = 0.0) -> dict:
    """One QC measure between two image files, or between two folders paired by stem.

    ``metric``: "ssim" (grayscale as SAASN; RGB with ``rgb=True``), "dice" (binary masks: any non-zero colour
    channel is foreground; ``eps`` smoothing) or "psnr" (dB). Returns ``{metric}`` (mean over pairs),
    ``{metric}_std`` (population std over pairs), ``n_pairs``, ``n_undefined`` and ``per_pair``.
    """
    from pathgen.metrics.image import psnr, ssim_gray, ssim_rgb
    from pathgen.metrics.semantic import dice_masks

    if metric not in ("ssim", "dice", "psnr"):
        raise PathgenError(f"unknown QC metric {metric!r}")
    per_pair = []
    for name, pa, pb in image_pairs(a, b):
        ia, ib = read_array(pa), read_array(pb)
        if metric == "dice":
            fa, fb = _foreground(ia), _foreground(ib)
            if fa.shape != fb.shape:
                raise PathgenError(f"mask shape {fb.shape} differs from {fa.shape}", pb)
            value = dice_masks(fa, fb, eps=eps)
        else:
            if ia.shape != ib.shape:
                raise PathgenError(f"image shape {ib.shape} differs from {ia.shape}", pb)
            if ia.dtype != ib.dtype:
                raise PathgenError(f"image type {ib.dtype} differs from {ia.dtype}", pb)
            if metric == "psnr":
                value = psnr(ia, ib)
            else:
                value = ssim_rgb(ia, ib) if rgb else ssim_gray(ia, ib)
        per_pair.append({"name": name, metric: value})
    values = np.array([r[metric] for r in per_pair], np.float64)
    defined = values[~np.isnan(values)]
    with np.errstate(invalid="ignore"):
        mean = float(defined.mean()) if defined.size else float("nan")
        std = float(defined.std()) if defined.size else float("nan")
    method = {
        "ssim": ("RGB SSIM, mean of per-channel maps" if rgb else
                 "grayscale 0.299R+0.587G+0.114B") + ", 11x11 Gaussian window sigma 1.5, reflect padding, "
                "C1=(0.01L)^2, C2=(0.03L)^2, mean of the SSIM map",
        "dice": "binary Dice of non-zero pixels" + (f", eps {eps}" if eps else ""),
        "psnr": "10 log10(L^2 / MSE), images scaled to [0, 1]",
    }[metric]
    return {metric: mean, f"{metric}_std": std, "n_pairs": len(per_pair), "n_undefined": int(values.size -
            defined.size), "method": method, "a": os.fspath(a), "b": os.fspath(b), "per_pair": per_pair}
