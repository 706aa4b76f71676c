"""Per-site stain definitions and Beer–Lambert rendering for the procedural H&E generator.

A *site* (a lab, a scanner, a staining batch) is modelled by its stain matrix ``V`` — one optical-density (OD)
unit vector per stain, rows haematoxylin, eosin and a residual third absorber — its illumination ``I0`` per RGB
channel and a staining strength per stain. The tissue itself is site-independent: a concentration map ``C``
(stain densities, per pixel and stain) renders at a site as

    OD = (C * s) @ V,        I = I0 * exp(-OD)

with ``s`` the site's concentration scale. Rendering the same ``C`` at two sites gives the same tissue stained and
scanned in two places.

The site vectors are Ruifrok & Johnston's H&E(DAB) vectors (H ≈ (0.65, 0.70, 0.29), E ≈ (0.07, 0.99, 0.11),
DAB ≈ (0.27, 0.57, 0.78), normalised) each rotated by 0–15° towards one RGB axis (angles in each
site's description): rotating H towards red gives a
bluer haematoxylin, towards blue a greyer, purple one; rotating E towards blue gives an orange-red eosin, towards
red a purple-pink one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pathgen.errors import PathgenError

RUIFROK_H = (0.650, 0.704, 0.286)
RUIFROK_E = (0.072, 0.990, 0.105)
RUIFROK_DAB = (0.268, 0.570, 0.776)


@dataclass(frozen=True, eq=False)
class SiteStain:
    """How one site stains and scans tissue.

    Attributes
    ----------
    name : str
    stain_matrix : ndarray, shape (3, 3), float64
        Rows haematoxylin, eosin, residual; each a unit OD vector over (R, G, B) with non-negative entries.
        Normalised on construction; read-only.
    i0 : tuple of 3 floats
        Incident light / blank-glass intensity per RGB channel, in 0..255.
    concentration_scale : tuple of 3 floats
        Staining strength per stain, multiplying the tissue's stain densities.
    description : str
    """

    name: str
    stain_matrix: np.ndarray
    i0: tuple[float, float, float] = (242.0, 240.0, 245.0)
    concentration_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    description: str = field(default="")

    def __post_init__(self):
        m = np.array(self.stain_matrix, dtype=np.float64)
        if m.shape != (3, 3) or not np.all(np.isfinite(m)) or np.any(m < 0):
            raise PathgenError(f"site {self.name!r}: stain_matrix must be 3x3, finite and non-negative")
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise PathgenError(f"site {self.name!r}: a stain vector is zero")
        m = m / norms
        m.setflags(write=False)
        object.__setattr__(self, "stain_matrix", m)
        i0 = tuple(float(v) for v in self.i0)
        if len(i0) != 3 or not all(0 < v <= 255 for v in i0):
            raise PathgenError(f"site {self.name!r}: i0 must be 3 values in (0, 255]")
        scale = tuple(float(v) for v in self.concentration_scale)
        if len(scale) != 3 or not all(v >= 0 for v in scale):
            raise PathgenError(f"site {self.name!r}: concentration_scale must be 3 non-negative values")
        object.__setattr__(self, "i0", i0)
        object.__setattr__(self, "concentration_scale", scale)

    def od_matrix(self) -> np.ndarray:
        """``diag(concentration_scale) @ stain_matrix``: maps tissue densities straight to OD, shape (3, 3)."""
        return np.asarray(self.concentration_scale)[:, None] * self.stain_matrix


def _site(name, h, e, r, i0, scale, description) -> SiteStain:
    return SiteStain(name, np.array([h, e, r]), i0, scale, description)


# Vectors: Ruifrok's rotated as described in the module docstring (rounded to 3 decimals, renormalised).
SITES: dict[str, SiteStain] = {
    "A": _site("A", (0.676, 0.683, 0.277), (0.070, 0.959, 0.276), (0.268, 0.570, 0.776),
               (244.0, 242.0, 246.0), (1.0, 1.0, 1.0),
               "balanced reference: H 2 deg to red, E 10 deg to blue"),
    "B": _site("B", (0.617, 0.668, 0.417), (0.068, 0.931, 0.359), (0.251, 0.640, 0.726),
               (238.0, 233.0, 235.0), (0.9, 1.2, 1.0),
               "eosin-heavy, warm light: purple-grey H 8 deg to blue, red E 15 deg to blue"),
    "C": _site("C", (0.772, 0.589, 0.239), (0.124, 0.987, 0.105), (0.238, 0.507, 0.828),
               (235.0, 238.0, 247.0), (1.25, 0.8, 1.0),
               "haematoxylin-heavy, cool light: blue H 10 deg to red, magenta E 3 deg to red"),
    "D": _site("D", (0.584, 0.632, 0.509), (0.071, 0.975, 0.209), (0.400, 0.543, 0.739),
               (249.0, 247.0, 248.0), (0.65, 0.65, 0.8),
               "pale, faded: grey H 14 deg to blue, pink E 6 deg to blue, bright light"),
    "E": _site("E", (0.794, 0.563, 0.229), (0.069, 0.943, 0.326), (0.232, 0.704, 0.671),
               (228.0, 226.0, 233.0), (1.3, 1.2, 1.2),
               "dark, over-stained: blue H 12 deg to red, red E 13 deg to blue, dim light"),
}


def get_site(site: str | SiteStain) -> SiteStain:
    """Resolve a site name (``SITES`` key) or pass a :class:`SiteStain` through."""
    if isinstance(site, SiteStain):
        return site
    try:
        return SITES[str(site)]
    except KeyError:
        raise PathgenError(f"unknown site {site!r} (choose {', '.join(SITES)})") from None


def stain_od(concentrations: np.ndarray, site: str | SiteStain) -> np.ndarray:
    """Optical density ``(C * s) @ V`` of stain densities ``C`` (…, 3) at ``site``; float32, shape (…, 3)."""
    c = np.asarray(concentrations)
    if c.ndim < 1 or c.shape[-1] != 3:
        raise PathgenError(f"concentrations must have a last axis of 3 stains, got shape {c.shape}")
    return (c.astype(np.float32, copy=False) @ get_site(site).od_matrix().astype(np.float32)).astype(np.float32)


def render_rgb(concentrations: np.ndarray, site: str | SiteStain) -> np.ndarray:
    """Render stain densities to RGB through Beer–Lambert optics.

    Parameters
    ----------
    concentrations : ndarray, shape (H, W, 3)
        Non-negative stain densities (haematoxylin, eosin, residual), any float dtype.
    site : str or SiteStain
        A ``SITES`` name or a stain definition.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
        ``round(I0 * exp(-(C * s) @ V))`` clipped to 0..255.
    """
    s = get_site(site)
    od = stain_od(concentrations, s)
    i0 = np.asarray(s.i0, dtype=np.float32)
    rgb = np.exp(-od, out=od)
    rgb *= i0
    np.rint(rgb, out=rgb)
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)


def image_od(image: np.ndarray, site: str | SiteStain) -> np.ndarray:
    """Optical density ``-log(I / I0)`` of an RGB uint8 image at ``site`` (zero intensities count as 1).

    Returns float32, shape (H, W, 3).
    """
    i0 = np.asarray(get_site(site).i0, dtype=np.float32)
    return -np.log(np.maximum(np.asarray(image, dtype=np.float32), 1.0) / i0)
