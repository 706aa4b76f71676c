"""Slide-level stain normalisation: fit the source once from tissue sampled across the whole slide, then stream
every tile through the same transform with the tile engine, into a pyramidal TIFF.

Fitting per tile (``per_tile=True``, kept for comparison) lets each tile choose its own stain vectors and
percentiles, so neighbouring tiles of different tissue content get different colours (ANCHORS.md (b)1); the
slide-level fit uses one stain matrix and one set of percentiles for the whole slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from pathgen.engine import EngineConfig
from pathgen.engine.job import JobReport, SlideContext, TileMethod, run_slide_job
from pathgen.errors import PathgenError
from pathgen.engine.tissue import TissueConfig, TissueMask, tissue_mask


@dataclass
class SlideFitConfig:
    """How tissue is sampled across a slide for the source fit."""

    n_tiles: int = 64  # tissue tiles read at the processing level, spread over the slide
    tile: int = 256
    min_tissue: float = 0.25  # fraction of a candidate tile covered by the tissue mask
    seed: int = 0
    tissue: TissueConfig = field(default_factory=TissueConfig)


def candidate_tiles(mask: TissueMask, level0_tile: float, min_tissue: float) -> list[tuple[float, float, float]]:
    """Level-0 top-left corners and tissue fractions of every ``level0_tile``-sized cell with enough tissue."""
    dx, dy = mask.downsample
    h, w = mask.mask.shape
    cw, ch = max(level0_tile / dx, 1.0), max(level0_tile / dy, 1.0)
    out = []
    for j in range(int(np.ceil(h / ch))):
        for i in range(int(np.ceil(w / cw))):
            cell = mask.mask[int(j * ch):int(np.ceil((j + 1) * ch)), int(i * cw):int(np.ceil((i + 1) * cw))]
            frac = float(cell.mean()) if cell.size else 0.0
            if frac >= min_tissue:
                out.append((i * cw * dx, j * ch * dy, frac))
    return out


def sample_slide_tiles(slide, mask: TissueMask, level: int = 0, config: SlideFitConfig = SlideFitConfig()
                       ) -> list[np.ndarray]:
    """Read up to ``config.n_tiles`` tissue tiles of ``config.tile`` pixels at ``level``, chosen at random (seeded)
    among all cells with tissue so the sample covers the whole slide, not one region.

    Returns
    -------
    list of ndarray, each ``(tile, tile, 3)`` uint8
    """
    ds = slide.level_downsamples[level]
    cells = candidate_tiles(mask, config.tile * ds, config.min_tissue)
    if not cells:
        return []
    rng = np.random.default_rng(config.seed)
    pick = rng.permutation(len(cells))[:config.n_tiles]
    pick.sort()  # read in raster order: friendlier to the slide's tile cache
    w, h = slide.level_dimensions[level]
    tiles = []
    for k in pick:
        x, y, _ = cells[k]
        lx, ly = min(int(x / ds), max(w - config.tile, 0)), min(int(y / ds), max(h - config.tile, 0))
        tiles.append(slide.read_level_region(lx, ly, level, min(config.tile, w), min(config.tile, h)))
    return tiles


def fit_slide(slide_or_path, normalizer, level: int = 0, config: SlideFitConfig = SlideFitConfig(),
              mask: TissueMask | None = None):
    """Fit stain statistics (vectors, percentiles, I0) once for a whole slide; the normaliser is not changed.

    I0 is estimated from the glass of the slide overview together with the sampled tiles.

    Raises
    ------
    PathgenError
        The slide has no tissue.
    """
    from pathgen.io.slide import open_slide

    slide = open_slide(slide_or_path) if isinstance(slide_or_path, (str, os.PathLike)) else slide_or_path
    mask = mask if mask is not None else tissue_mask(slide, config.tissue)
    if not mask.mask.any():
        raise PathgenError("no tissue detected, nothing to fit stains on", slide.path)
    tiles = sample_slide_tiles(slide, mask, level, config)
    if not tiles:
        raise PathgenError("no tile has enough tissue to fit stains on", slide.path)
    tissue_px = np.concatenate([t.reshape(-1, 3) for t in tiles])
    thumb = slide.thumbnail(1024).reshape(-1, 3)
    rng = np.random.default_rng(config.seed)
    if tissue_px.shape[0] > normalizer.max_fit_pixels:
        tissue_px = tissue_px[rng.choice(tissue_px.shape[0], normalizer.max_fit_pixels, replace=False)]
    fit = normalizer.fit_pixels(tissue_px, all_rgb=np.concatenate([tissue_px, thumb]))
    if not fit.has_tissue:
        raise PathgenError(f"no stained tissue to fit ({fit.params.get('no_tissue_reason', 'too few pixels')})",
                           slide.path)
    return fit


class NormalizeTiles:
    """Tile function for the engine: the fitted normaliser applied to a batch (picklable for process workers)."""

    def __init__(self, normalizer, per_tile: bool = False):
        self.normalizer = normalizer
        self.per_tile = per_tile

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.normalizer.transform(batch, per_tile=self.per_tile)


#: Blended halo of per-tile fits (each tile's own colours fade into its neighbour's across 2 × 32 px).
PER_TILE_HALO = 32


def normalize_slide(input_path: str | os.PathLike, output: str | os.PathLike, normalizer, *, per_tile: bool = False,
                    level: int = 0, mpp: float | None = None, engine: EngineConfig | None = None,
                    fit_config: SlideFitConfig = SlideFitConfig(), compression: str = "jpeg", quality: int = 90,
                    overwrite: bool = False, slide_mpp: float | None = None, skip_background: bool = True,
                    resume: bool = True) -> JobReport:
    """Normalise a whole slide into a pyramidal TIFF (or OME-Zarr) with a fitted-target ``normalizer``.

    The source is fitted once from tissue sampled across the slide (unless ``per_tile``), then every tile is
    transformed with those numbers: the transform is pointwise, so tiles need no halo; per-tile fits blend a halo
    of 32 px (an ``engine.overlap`` given by the user wins). Windows without tissue are filled with the target
    background (``skip_background``). The run goes through :func:`pathgen.engine.job.run_slide_job` (resumable);
    a JSON beside the output records the source and target fits, the settings, versions and seed.
    """
    if normalizer.target is None:
        raise PathgenError("the normaliser has no target; call fit_target() first")

    def prepare(ctx: SlideContext) -> TileMethod:
        mask = ctx.tissue
        if not mask.mask.any():
            raise PathgenError("no tissue detected", input_path)
        if not per_tile:
            normalizer.source = fit_slide(ctx.slide, normalizer, level=level, config=fit_config, mask=mask)
        i0 = normalizer.target.i0 if normalizer.target.i0 is not None else np.array([255.0] * 3)
        return TileMethod(name=normalizer.method, fn=NormalizeTiles(normalizer, per_tile),
                          halo=PER_TILE_HALO if per_tile else 0,
                          background=tuple(float(v) for v in np.asarray(i0).reshape(-1)[:3]),
                          skip_background=skip_background, compression=compression,
                          config={"normalizer": normalizer.to_dict(), "fit": fit_config, "per_tile": per_tile})

    return run_slide_job(input_path, output, prepare, engine or EngineConfig(overlap=None, batch_size=4),
                         level=None if mpp else level, mpp=mpp, slide_mpp=slide_mpp, overwrite=overwrite,
                         resume=resume, quality=quality, tissue_config=fit_config.tissue, seed=fit_config.seed,
                         progress_desc=f"normalize ({normalizer.method})")
