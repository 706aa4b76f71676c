"""Training targets of HoVer-Net: nuclear pixels (NP), horizontal/vertical distance maps (HV), types (TP).

The HV maps follow the public reference (vqdang/hover_net ``gen_instance_hv_map``): per instance, the centre of
mass is rounded half up to a pixel; each pixel gets its column (row) offset from it; negative offsets are
divided by the instance's largest negative offset and positive ones by its largest positive offset, so each
instance spans [-1, 1] in both maps; instances under ``min_size`` pixels get no HV target. The reference counts
coordinates from 1 inside its crop, which places the zero line one pixel left of (above) the rounded centre;
``origin_offset=1`` reproduces that, ``origin_offset=0`` puts zero on the centre itself.

Everything is computed for all instances at once with ``bincount`` and ``ufunc.at``, no per-instance loop.
"""

from __future__ import annotations

import numpy as np

from pathgen.errors import PathgenError


def _check_instances(instances: np.ndarray) -> np.ndarray:
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise PathgenError(f"instance map must be 2-D (H, W), got shape {inst.shape}")
    if not np.issubdtype(inst.dtype, np.integer):
        if np.issubdtype(inst.dtype, np.floating) and np.all(np.mod(inst, 1) == 0):
            inst = inst.astype(np.int64)
        else:
            raise PathgenError(f"instance map must hold integer labels, got {inst.dtype}")
    if inst.size and inst.min() < 0:
        raise PathgenError("instance map has negative labels")
    return inst


def hv_maps(instances: np.ndarray, min_size: int = 30, origin_offset: int = 1) -> np.ndarray:
    """Horizontal and vertical distance maps of every instance, normalised to [-1, 1] per instance.

    Parameters
    ----------
    instances : (H, W) integer ndarray
        Instance labels, 0 = background. Labels need not be contiguous; a label may cover several pieces.
    min_size : int
        Instances with fewer pixels get zeros (the reference drops objects under 30 px).
    origin_offset : int
        Added to every offset before normalising; 1 reproduces the reference, 0 measures from the rounded
        centre of mass.

    Returns
    -------
    (2, H, W) float32 ndarray
        Channel 0: horizontal (column) distance, negative left of the centre; channel 1: vertical (row)
        distance, negative above it. Zero on background.
    """
    inst = _check_instances(instances)
    h, w = inst.shape
    out = np.zeros((2, h, w), np.float32)
    if not inst.any():
        return out
    ids, compact = np.unique(inst.ravel(), return_inverse=True)
    compact = compact.reshape(h, w)
    counts = np.bincount(compact.ravel(), minlength=len(ids))
    keep = (ids > 0) & (counts >= min_size)
    mask = keep[compact]
    if not mask.any():
        return out
    lab = compact[mask]
    rows, cols = np.nonzero(mask)
    n = len(ids)
    for channel, coord in ((0, cols), (1, rows)):
        total = np.bincount(lab, weights=coord, minlength=n)
        centre = np.floor(total / np.maximum(counts, 1) + 0.5)  # round half up, as int(x + 0.5)
        offset = (coord + origin_offset - centre[lab]).astype(np.float64)
        low = np.zeros(n)
        high = np.zeros(n)
        np.minimum.at(low, lab, offset)
        np.maximum.at(high, lab, offset)
        value = np.where(offset < 0, offset / np.where(low < 0, -low, 1.0)[lab],
                         offset / np.where(high > 0, high, 1.0)[lab])
        out[channel][mask] = value.astype(np.float32)
    return out


def np_target(instances: np.ndarray) -> np.ndarray:
    """Nuclear-pixel target: (H, W) uint8, 1 inside any instance."""
    return (_check_instances(instances) > 0).astype(np.uint8)


def tp_target(instances: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Type target: (H, W) uint8 class per pixel, forced to 0 (background) outside instances.

    Parameters
    ----------
    instances : (H, W) integer ndarray
    classes : (H, W) integer ndarray
        Class per pixel (0 = background, 1.. = nucleus types).
    """
    inst = _check_instances(instances)
    cls = np.asarray(classes)
    if cls.shape != inst.shape:
        raise PathgenError(f"class map shape {cls.shape} differs from instance map shape {inst.shape}")
    if cls.size and (cls.min() < 0 or cls.max() > 255):
        raise PathgenError("class labels must lie in 0..255")
    return np.where(inst > 0, cls, 0).astype(np.uint8)


def class_map_from_types(instances: np.ndarray, instance_types: dict[int, int] | np.ndarray) -> np.ndarray:
    """Per-pixel class map from a type per instance.

    Parameters
    ----------
    instances : (H, W) integer ndarray
    instance_types : dict {label: type} or 1-D array indexed by label (index 0 ignored)

    Returns
    -------
    (H, W) uint8 ndarray
    """
    inst = _check_instances(instances)
    top = int(inst.max()) if inst.size else 0
    lut = np.zeros(top + 1, np.uint8)
    if isinstance(instance_types, dict):
        for label, t in instance_types.items():
            if 0 < int(label) <= top:
                lut[int(label)] = int(t)
    else:
        arr = np.asarray(instance_types).astype(np.int64)
        m = min(len(arr), top + 1)
        lut[:m] = arr[:m]
    lut[0] = 0
    return lut[inst]


def make_targets(instances: np.ndarray, classes: np.ndarray | None = None, min_size: int = 30,
                 origin_offset: int = 1) -> dict[str, np.ndarray]:
    """All targets of one tile: ``np`` (H, W) uint8, ``hv`` (2, H, W) float32, and ``tp`` (H, W) uint8 when
    ``classes`` is given."""
    out = {"np": np_target(instances), "hv": hv_maps(instances, min_size=min_size, origin_offset=origin_offset)}
    if classes is not None:
        out["tp"] = tp_target(instances, classes)
    return out
