"""SAASN's stain as one linear map of optical density per slide (``--saasn-mode stain-map``).

A generator redraws every tile: it can invent or drop structure (ANCHORS.md: the GAN hallucination users of
StainGAN-style tools report), and its stain may drift between tiles of different content. The stain-map mode keeps
what the generator learned about the target's appearance and nothing else:

1. run the X→Y generator on tissue tiles sampled across the slide (the tiles the classical slide-level fit reads);
2. fit one 3 × 3 matrix ``A`` by least squares so that ``OD_out ≈ OD_in · A`` over their tissue pixels, where
   ``OD = ln(255 / I)`` (:func:`pathgen.stain.optical.rgb_to_od`; Beer–Lambert: a change of stain is a linear
   map of optical density, the model under Macenko and Vahadane; no offset, so glass stays glass);
3. apply ``M = I + s · (A − I)`` to every pixel of the slide, ``s`` the strength (1: the generator's stain, 0: the
   input unchanged).

The result is a pointwise colour function of the input pixel: it cannot create, move or remove structure, the
same input colour gives the same output colour everywhere on the slide, tiles need no overlap, and the slide is
streamed at the speed of a matrix product (the generator only sees the sampled tiles).

Why a strength. The target domain's tissue is darker and more contrasted than most sources, so matching its
colours also changes lightness and contrast, which the structure metric (grayscale SSIM to the source) counts as a
loss; ``s`` trades one against the other (measured in ``benchmarks/RESULTS.md``). The shipped model stores the
strength it was measured with in ``config.json`` (``inference``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathgen.errors import PathgenError
from pathgen.stain.optical import od_to_rgb, rgb_to_od

#: A pixel is tissue when the norm of its optical density exceeds this (Macenko's transparency threshold ``beta``).
TISSUE_OD = 0.15
MODES = ("generator", "stain-map")


def fit_stain_map(sources, outputs, tissue_od: float = TISSUE_OD, max_pixels: int = 2_000_000,
                  seed: int = 0) -> np.ndarray:
    """Least-squares linear map of optical density from ``sources`` to ``outputs``.

    Parameters
    ----------
    sources, outputs : sequences of ndarray, each ``(H, W, 3)`` uint8, paired (same shapes)
        Input tiles and what the generator made of them.
    tissue_od : float
        Only pixels whose source OD norm exceeds this are fitted (glass carries no stain).
    max_pixels : int
        Tissue pixels used at most (a seeded random subset beyond that).
    seed : int

    Returns
    -------
    ndarray, shape (3, 3), float64
        ``A`` with ``OD_out ≈ OD_in @ A`` (row vectors).

    Raises
    ------
    PathgenError
        Fewer than 1000 tissue pixels, or mismatched pairs.
    """
    if len(sources) != len(outputs) or not len(sources):
        raise PathgenError(f"need paired source and output tiles, got {len(sources)} and {len(outputs)}")
    xs, ys = [], []
    for s, o in zip(sources, outputs):
        if np.shape(s) != np.shape(o):
            raise PathgenError(f"source and output tiles differ in shape: {np.shape(s)} vs {np.shape(o)}")
        x, y = rgb_to_od(s).reshape(-1, 3), rgb_to_od(o).reshape(-1, 3)
        keep = np.linalg.norm(x, axis=1) > tissue_od
        xs.append(x[keep])
        ys.append(y[keep])
    x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
    if len(x) < 1000:
        raise PathgenError(f"only {len(x)} tissue pixels to fit a stain map on (need 1000)")
    if len(x) > max_pixels:
        pick = np.random.default_rng(seed).choice(len(x), max_pixels, replace=False)
        x, y = x[pick], y[pick]
    matrix, *_ = np.linalg.lstsq(x, y, rcond=None)
    return matrix


@dataclass
class StainMap:
    """One linear map of optical density, applied pointwise: a picklable tile function
    ``(N, H, W, 3)`` or ``(H, W, 3)`` uint8 → same shape uint8.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3)
        The fitted map ``A`` (:func:`fit_stain_map`).
    strength : float
        ``s`` in ``M = I + s·(A − I)``; 0 leaves the image unchanged, 1 applies the fitted map.
    fit_tiles : int
        Tiles the map was fitted on (for the run record).
    """

    matrix: np.ndarray
    strength: float = 1.0
    fit_tiles: int = 0

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, np.float64).reshape(3, 3)
        self.strength = float(self.strength)
        if not 0.0 <= self.strength <= 1.0:
            raise PathgenError(f"stain-map strength must be in [0, 1], got {self.strength}")
        if not np.isfinite(self.matrix).all():
            raise PathgenError("stain map has non-finite entries")

    @property
    def operator(self) -> np.ndarray:
        """``M = I + s·(A − I)``, shape (3, 3)."""
        return np.eye(3) + self.strength * (self.matrix - np.eye(3))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        arr = np.asarray(batch)
        if arr.shape[-1:] != (3,) or arr.dtype != np.uint8:
            raise PathgenError(f"expected (..., 3) uint8 pixels, got {arr.dtype} {arr.shape}")
        return od_to_rgb(rgb_to_od(arr) @ self.operator.astype(np.float32))

    def to_dict(self) -> dict:
        return {"matrix": self.matrix.round(6).tolist(), "strength": self.strength, "fit_tiles": self.fit_tiles}
