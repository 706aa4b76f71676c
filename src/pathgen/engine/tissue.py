"""Tissue detection on a low-resolution overview of a slide."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathgen.errors import PathgenError


@dataclass(frozen=True)
class TissueConfig:
    """Parameters of :func:`tissue_mask` (saved with outputs).

    ``max_size`` bounds the overview's longer side (pixels); ``min_od`` is the floor under Otsu's threshold on the
    per-pixel maximum optical density, so glass-only slides give an empty mask instead of thresholding noise;
    ``min_area_um2`` removes specks (dust, pen dots) and fills holes of that size; ``closing_um`` bridges gaps.
    """

    max_size: int = 2048
    method: str = "otsu"  # "otsu" on max OD, or "saturation" (Otsu on HSV saturation)
    min_od: float = 0.06
    min_area_um2: float = 5000.0
    closing_um: float = 20.0
    i0: float = 245.0  # brightest value counted as glass when computing OD


@dataclass
class TissueMask:
    """A boolean tissue mask of an overview and the scale that maps it onto level 0.

    ``mask`` has shape ``(h, w)``; one mask pixel covers ``downsample`` level-0 pixels along each axis
    (``(dx, dy)``).
    """

    mask: np.ndarray
    downsample: tuple[float, float]

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def covers(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether any tissue lies in the level-0 box ``[x0, x1) × [y0, y1)``."""
        dx, dy = self.downsample
        h, w = self.mask.shape
        i0, i1 = max(int(np.floor(y0 / dy)), 0), min(int(np.ceil(y1 / dy)), h)
        j0, j1 = max(int(np.floor(x0 / dx)), 0), min(int(np.ceil(x1 / dx)), w)
        return i1 > i0 and j1 > j0 and bool(self.mask[i0:i1, j0:j1].any())

    def to_image(self) -> np.ndarray:
        return (self.mask.astype(np.uint8) * 255)


def tissue_mask_from_rgb(rgb: np.ndarray, um_per_px: float | None = None,
                         config: TissueConfig = TissueConfig()) -> np.ndarray:
    """Tissue mask of an RGB overview.

    Parameters
    ----------
    rgb : ndarray, shape (h, w, 3), uint8
    um_per_px : float, optional
        Pixel size of the overview, to turn ``min_area_um2``/``closing_um`` into pixels; without it 16 µm/px
        (a typical 1.25× overview) is assumed.

    Returns
    -------
    ndarray, shape (h, w), bool
    """
    from skimage import filters, morphology
    from scipy import ndimage as ndi

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise PathgenError(f"tissue detection needs an RGB image, got shape {rgb.shape}")
    if config.method == "otsu":
        od = -np.log(np.clip(rgb.astype(np.float32), 1.0, config.i0) / config.i0)
        score = od.max(axis=2)
        floor = config.min_od
    elif config.method == "saturation":
        from skimage.color import rgb2hsv

        score = rgb2hsv(rgb)[..., 1].astype(np.float32)
        floor = 0.05
    else:
        raise PathgenError(f"unknown tissue method {config.method!r} (choose otsu or saturation)")
    if float(score.max()) <= floor:
        return np.zeros(score.shape, bool)
    try:
        t = float(filters.threshold_otsu(score[score > floor * 0.5])) if (score > floor * 0.5).sum() > 16 else floor
    except ValueError:
        t = floor
    mask = score > max(t, floor)
    upp = um_per_px or 16.0
    r = max(1, int(round(config.closing_um / upp / 2)))
    mask = ndi.binary_closing(mask, structure=morphology.disk(r), border_value=0)
    min_px = max(1, int(round(config.min_area_um2 / (upp * upp))))
    mask = morphology.remove_small_objects(mask, max_size=min_px) if _skimage_new() else \
        morphology.remove_small_objects(mask, min_size=min_px)
    mask = morphology.remove_small_holes(mask, max_size=min_px) if _skimage_new() else \
        morphology.remove_small_holes(mask, area_threshold=min_px)
    return mask


def _skimage_new() -> bool:
    import inspect

    from skimage import morphology

    return "max_size" in inspect.signature(morphology.remove_small_objects).parameters


def tissue_mask(slide, config: TissueConfig = TissueConfig()) -> TissueMask:
    """Tissue mask of a :class:`pathgen.io.slide.Slide` from an overview of at most ``config.max_size`` pixels."""
    thumb = slide.thumbnail(config.max_size)
    w, h = slide.dimensions
    ds = (w / thumb.shape[1], h / thumb.shape[0])
    upp = slide.mpp[0] * ds[0] if slide.mpp else None
    return TissueMask(tissue_mask_from_rgb(thumb, upp, config), ds)
