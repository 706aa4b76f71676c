"""Colour-distribution distance: how close the colours of one set of images are to another's.

Structure scores (grayscale SSIM to the source) reward a normaliser that changes nothing; this score is their
counterweight. :func:`colour_distance` is the sliced Wasserstein-1 distance, in CIELAB units, between the tissue
pixels of the processed images and those of a reference set (the target domain). Tissue is ``L < 100 ·
luminosity_threshold``; for processed images it is decided on their *source* images, so that a method cannot
shrink the compared set. 64 random unit directions (seeded), each 1-D distance from 512 quantiles. Lower is closer;
0 for identical distributions.

Used by `pathgen eval stain` (:mod:`pathgen.saasn.evaluate`) and the slide QC report (:mod:`pathgen.pipelines.qc`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathgen.errors import PathgenError


@dataclass
class ColourDistanceConfig:
    """Settings of :func:`colour_distance` (saved with reports)."""

    projections: int = 64
    quantiles: int = 512
    max_pixels: int = 200_000
    luminosity_threshold: float = 0.8
    seed: int = 0


def tissue_lab(image: np.ndarray, mask_source: np.ndarray | None = None, luminosity_threshold: float = 0.8
               ) -> np.ndarray:
    """CIELAB colours ``(n, 3)`` float64 of the tissue pixels of ``image``.

    Tissue is ``L < 100 · luminosity_threshold`` in ``mask_source`` (default: ``image`` itself).
    """
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(image))
    ref = lab if mask_source is None else rgb2lab(np.asarray(mask_source))
    return lab[ref[..., 0] < 100.0 * luminosity_threshold].reshape(-1, 3)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = 64, quantiles: int = 512,
                       seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two point clouds ``(n, d)`` and ``(m, d)``.

    Each of ``projections`` random unit directions (seeded) projects both clouds to 1-D, where W1 is the mean
    absolute difference of ``quantiles`` evenly spaced quantiles; the result is the mean over directions, in the
    points' units. 0 for identical distributions; ``nan`` if either cloud is empty.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise PathgenError(f"point clouds must be (n, d) with the same d, got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(projections, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    q = (np.arange(quantiles) + 0.5) / quantiles
    qa = np.quantile(a @ dirs.T, q, axis=0)
    qb = np.quantile(b @ dirs.T, q, axis=0)
    return float(np.abs(qa - qb).mean())


def subsample_points(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` rows of ``points``, drawn without replacement (seeded); all of them when there are fewer."""
    if len(points) <= n:
        return points
    return points[np.random.default_rng(seed).choice(len(points), n, replace=False)]


def lab_cloud_distance(out_px: np.ndarray, ref_px: np.ndarray,
                       cfg: ColourDistanceConfig = ColourDistanceConfig()) -> float:
    """:func:`colour_distance` of two clouds of CIELAB tissue colours ``(n, 3)`` already gathered (e.g. streamed
    tile by tile from a slide): each is cut to ``cfg.max_pixels`` (seeded) before the sliced W1."""
    out_px = subsample_points(np.asarray(out_px), cfg.max_pixels, cfg.seed)
    ref_px = subsample_points(np.asarray(ref_px), cfg.max_pixels, cfg.seed + 1)
    return sliced_wasserstein(out_px, ref_px, cfg.projections, cfg.quantiles, cfg.seed)


def colour_distance(outputs: list[np.ndarray], sources: list[np.ndarray], reference: list[np.ndarray],
                    cfg: ColourDistanceConfig = ColourDistanceConfig()) -> float:
    """Sliced W1 in CIELAB between the outputs' tissue colours and the reference tiles' tissue colours.

    Parameters
    ----------
    outputs, sources : lists of ``(H, W, 3)`` uint8, paired
        Processed images and the images they were made from (the tissue mask comes from the sources).
    reference : list of ``(H, W, 3)`` uint8
        The reference domain's images (their own tissue mask).
    cfg : ColourDistanceConfig

    Returns
    -------
    float
        Distance in CIELAB units (ΔE-like); ``nan`` when either side has no tissue pixel.
    """
    out_px = np.concatenate([tissue_lab(o, s, cfg.luminosity_threshold) for o, s in zip(outputs, sources)])
    ref_px = np.concatenate([tissue_lab(r, None, cfg.luminosity_threshold) for r in reference])
    return lab_cloud_distance(out_px, ref_px, cfg)
