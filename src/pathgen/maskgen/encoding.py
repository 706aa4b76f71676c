"""Instance-aware mask encoding for MaskGen: what the mask diffusion model generates, and how it is decoded.

The published MaskGen diffuses the 7-channel one-hot class map only, so touching nuclei of one type come out as
one blob and NASDM's edge channel — computed from that class map — cannot separate them (METHODS.md §4.2). pathgen
adds one channel that carries instance identity:

* channels 0–6: one-hot class map (background + 6 Lizard types), scaled to {−1, +1};
* channel 7: each nucleus's **normalised interior distance** — the Euclidean distance of a pixel to the nearest
  pixel *outside its own nucleus* (background or another nucleus), divided by the nucleus's maximum, so it is
  1 at every nucleus's centre, small along every boundary including the contact line between two touching
  nuclei, and 0 on background; scaled to [−1, 1].

Decoding (:func:`decode_mask`): class per pixel by argmax; nucleus seeds are the 4-connected regions where the
distance exceeds ``marker_threshold`` (0.5); a marker-based watershed on the negated distance, restricted to
foreground, grows one instance per seed, so two touching nuclei of the same type — two peaks separated by a
valley — get two ids. Foreground left without a seed becomes its own instance; each instance takes the majority
type of its pixels; instances below ``min_size`` pixels are dropped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pathgen.errors import PathgenError
from pathgen.nucleus_types import NUCLEUS_TYPES, class_id
from pathgen.nasdm.conditioning import NUM_CLASSES, one_hot_classes

MASK_CHANNELS = NUM_CLASSES + 1


def interior_distance(instances: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1]: per-nucleus normalised distance to the nucleus's own boundary (0 on background).

    Parameters
    ----------
    instances : (H, W) integer ndarray
        Instance labels, 0 = background.
    """
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise PathgenError(f"instance map must be 2-D (H, W), got shape {inst.shape}")
    out = np.zeros(inst.shape, np.float32)
    for label, sl in enumerate(ndi.find_objects(inst.astype(np.int64)), start=1):
        if sl is None:
            continue
        mine = np.pad(inst[sl] == label, 1)  # zero border: the box edge counts as outside the nucleus
        d = ndi.distance_transform_edt(mine)[1:-1, 1:-1]
        peak = d.max()
        if peak > 0:
            region = inst[sl] == label
            out[sl][region] = (d[region] / peak).astype(np.float32)
    return out


def encode_mask(instances: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(8, H, W) float32 in [−1, 1]: one-hot classes (7) and the interior distance (1), see the module docstring."""
    inst, cls = np.asarray(instances), np.asarray(classes)
    if inst.shape != cls.shape:
        raise PathgenError(f"instance map {inst.shape} and class map {cls.shape} differ in shape")
    one_hot = one_hot_classes(cls) * 2.0 - 1.0
    dist = interior_distance(inst)[None] * 2.0 - 1.0
    return np.concatenate([one_hot, dist], axis=0).astype(np.float32)


def decode_mask(encoded: np.ndarray, marker_threshold: float = 0.5, min_size: int = 4,
                min_marker: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Turn a generated (8, H, W) array back into an instance map and a consistent class map.

    Parameters
    ----------
    encoded : (8, H, W) float ndarray
        Channels as produced by :func:`encode_mask` (any real values; the distance is clipped to [0, 1]).
    marker_threshold : float
        Normalised distance above which a pixel seeds a nucleus.
    min_size : int
        Instances smaller than this (pixels) are removed.
    min_marker : int
        Seeds smaller than this (pixels) are ignored.

    Returns
    -------
    instances : (H, W) int32
        Labels 1..n, each one 4-connected region, 0 background.
    classes : (H, W) uint8
        One type per instance (its pixels' majority type), 0 on background.
    """
    from skimage.segmentation import watershed

    x = np.asarray(encoded, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != MASK_CHANNELS:
        raise PathgenError(f"encoded mask must be ({MASK_CHANNELS}, H, W), got {x.shape}")
    cls = np.argmax(x[:NUM_CLASSES], axis=0).astype(np.uint8)
    fg = cls != 0
    dist = np.clip((x[NUM_CLASSES] + 1.0) / 2.0, 0.0, 1.0)
    four = ndi.generate_binary_structure(2, 1)
    markers, n_markers = ndi.label(fg & (dist > marker_threshold), structure=four)
    if n_markers:
        sizes = np.bincount(markers.ravel(), minlength=n_markers + 1)
        small = sizes < min_marker
        small[0] = False
        markers[small[markers]] = 0
    labels = watershed(-dist, markers, mask=fg, connectivity=1) if markers.any() else np.zeros(cls.shape, np.int64)
    rest, n_rest = ndi.label(fg & (labels == 0), structure=four)
    if n_rest:
        labels = np.where(rest > 0, rest + labels.max(), labels)
    return _finish_instances(labels, cls, min_size)


def _finish_instances(labels: np.ndarray, cls: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep 4-connected pieces ≥ min_size, relabel 1..n in raster order of first pixel, majority type each."""
    four = ndi.generate_binary_structure(2, 1)
    out = np.zeros(labels.shape, np.int32)
    types: list[int] = []
    pieces = []
    for label, sl in enumerate(ndi.find_objects(labels.astype(np.int64)), start=1):
        if sl is None:
            continue
        comp, n = ndi.label(labels[sl] == label, structure=four)
        for k in range(1, n + 1):
            region = comp == k
            if region.sum() < min_size:
                continue
            ys, xs = np.nonzero(region)
            first = (ys[0] + sl[0].start) * labels.shape[1] + xs[0] + sl[1].start
            pieces.append((first, sl, region))
    for new_id, (_, sl, region) in enumerate(sorted(pieces, key=lambda p: p[0]), start=1):
        votes = np.bincount(cls[sl][region], minlength=NUM_CLASSES)
        votes[0] = 0
        out[sl][region] = new_id
        types.append(int(np.argmax(votes)) if votes.any() else 0)
    lut = np.concatenate([[0], np.asarray(types, np.int64)]).astype(np.uint8)
    return out, lut[out]


def presence_vector(classes: np.ndarray) -> np.ndarray:
    """(7,) float32 multi-hot: element ``c`` is 1 iff class ``c`` occurs; background (element 0) always 1."""
    c = np.asarray(classes)
    v = np.zeros(NUM_CLASSES, np.float32)
    present = np.unique(c)
    v[present[(present >= 0) & (present < NUM_CLASSES)].astype(np.int64)] = 1.0
    v[0] = 1.0
    return v


def parse_types(types: str | list[str] | tuple[str, ...]) -> np.ndarray:
    """Presence vector from type names (``"epithelial,lymphocyte"`` or a list; case-insensitive)."""
    names = [t.strip() for t in types.split(",")] if isinstance(types, str) else [str(t).strip() for t in types]
    names = [n for n in names if n]
    if not names:
        raise PathgenError("no nucleus types given (e.g. --types epithelial,lymphocyte)")
    v = np.zeros(NUM_CLASSES, np.float32)
    v[0] = 1.0
    for n in names:
        cid = class_id(n)
        v[cid] = 1.0
    return v


def presence_names(vector: np.ndarray) -> list[str]:
    """Type names present in a presence vector (background omitted)."""
    return [NUCLEUS_TYPES[c].name for c in range(1, NUM_CLASSES) if vector[c] > 0.5]
