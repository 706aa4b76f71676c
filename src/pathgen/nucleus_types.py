"""Nucleus class tables and instance-map conventions shared by metrics, annotation I/O and the models.

``NUCLEUS_TYPES`` follows the Lizard / CoNIC order (class 0 is background). ``PANNUKE_TYPES`` follows the
channel order of PanNuke's ``masks.npy`` (channel ``c`` holds class ``c + 1``; channel 5 is background). The
display colours are pathgen's own choice for overlays and QuPath exports; no dataset defines them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathgen.errors import PathgenError


@dataclass(frozen=True)
class NucleusType:
    """One nucleus class: integer id used in class maps, display name, display colour (R, G, B in 0..255)."""

    id: int
    name: str
    color: tuple[int, int, int]


NUCLEUS_TYPES: tuple[NucleusType, ...] = (
    NucleusType(0, "background", (0, 0, 0)),
    NucleusType(1, "neutrophil", (255, 165, 0)),
    NucleusType(2, "epithelial", (220, 20, 60)),
    NucleusType(3, "lymphocyte", (34, 139, 34)),
    NucleusType(4, "plasma", (0, 191, 255)),
    NucleusType(5, "eosinophil", (255, 0, 255)),
    NucleusType(6, "connective", (65, 105, 225)),
)

PANNUKE_TYPES: tuple[NucleusType, ...] = (
    NucleusType(0, "background", (0, 0, 0)),
    NucleusType(1, "neoplastic", (220, 20, 60)),
    NucleusType(2, "inflammatory", (34, 139, 34)),
    NucleusType(3, "connective", (65, 105, 225)),
    NucleusType(4, "dead", (255, 215, 0)),
    NucleusType(5, "epithelial", (255, 140, 0)),
)


def class_names(table: tuple[NucleusType, ...] = NUCLEUS_TYPES) -> dict[int, str]:
    """Map class id to name for ``table``."""
    return {t.id: t.name for t in table}


def class_id(name: str, table: tuple[NucleusType, ...] = NUCLEUS_TYPES) -> int:
    """Class id for a name (case-insensitive); ``PathgenError`` listing the known names otherwise."""
    key = name.strip().lower()
    for t in table:
        if t.name == key:
            return t.id
    known = ", ".join(t.name for t in table)
    raise PathgenError(f"unknown nucleus class {name!r} (known: {known})")


def as_label_map(labels: np.ndarray, name: str) -> np.ndarray:
    """``labels`` as an integer label map (bool → uint8, integral floats → int64); PathgenError otherwise."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if arr.size and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise PathgenError(f"{name} label map has non-integer values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise PathgenError(f"{name} label map must be integer, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise PathgenError(f"{name} label map has negative labels")
    return arr


def centroids_and_types(instances: np.ndarray, classes: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid and type of every instance.

    Parameters
    ----------
    instances : ndarray of int, shape (H, W)
    classes : ndarray of int, shape (H, W), optional
        Per-pixel class map; an instance's type is its most frequent non-zero class (ties: smaller class id;
        0 when it has no classified pixel). Without it every type is 0.

    Returns
    -------
    ids : ndarray of int64, shape (K,)
    centroids : ndarray of float64, shape (K, 2)
        Mean (row, col) of each instance's pixels, in pixels.
    types : ndarray of int64, shape (K,)
    """
    inst = as_label_map(instances, "instance")
    ids, inverse = np.unique(inst, return_inverse=True)
    inverse = inverse.ravel()
    offset = 1 if ids.size and ids[0] == 0 else 0
    k = ids.size - offset
    rows, cols = np.indices(inst.shape).reshape(2, -1)
    area = np.bincount(inverse, minlength=ids.size)[offset:]
    with np.errstate(invalid="ignore", divide="ignore"):
        cr = np.bincount(inverse, weights=rows, minlength=ids.size)[offset:] / area
        cc = np.bincount(inverse, weights=cols, minlength=ids.size)[offset:] / area
    types = np.zeros(k, np.int64)
    if classes is not None and k:
        cls = as_label_map(classes, "class")
        if cls.shape != inst.shape:
            raise PathgenError(f"instance and class maps differ in shape: {inst.shape} vs {cls.shape}")
        flat_cls = cls.ravel().astype(np.int64)
        fg = (inverse >= offset) & (flat_cls > 0)
        n_cls = int(flat_cls.max()) + 1
        table = np.bincount((inverse[fg] - offset) * n_cls + flat_cls[fg], minlength=k * n_cls).reshape(k, n_cls)
        types = np.where(table.max(axis=1) > 0, table.argmax(axis=1), 0)
    return ids[offset:].astype(np.int64), np.stack([cr, cc], axis=1) if k else np.zeros((0, 2)), types


def pannuke_binarize(channels: np.ndarray, n_classes: int = 5) -> np.ndarray:
    """Merge PanNuke class channels into one instance map, numbered as PanNuke's ``binarize``.

    Instances get consecutive ids in channel order, then ascending old id within a channel; where channels
    overlap the later channel wins (an instance hidden completely leaves a gap in the ids).

    Parameters
    ----------
    channels : ndarray of int, shape (H, W, C), C >= n_classes
        Per-class instance maps (PanNuke ``masks.npy`` layout; extra channels such as background are ignored).

    Returns
    -------
    ndarray of int32, shape (H, W)
    """
    arr = np.asarray(channels)
    if arr.ndim != 3 or arr.shape[-1] < n_classes:
        raise PathgenError(f"PanNuke masks must be (H, W, >= {n_classes}), got shape {arr.shape}")
    out = np.zeros(arr.shape[:2], np.int32)
    offset = 0
    for c in range(n_classes):
        ch = as_label_map(arr[..., c], "PanNuke channel")
        ids, inverse = np.unique(ch, return_inverse=True)
        inverse = inverse.reshape(ch.shape)
        has_zero = bool(ids.size) and ids[0] == 0
        nonzero = ch > 0
        rank = inverse + (0 if has_zero else 1)  # 1..k for the non-zero labels
        out[nonzero] = offset + rank[nonzero]
        offset += ids.size - (1 if has_zero else 0)
    return out
