"""Slide-level stain normalisation: fit the source once from tissue sampled across the whole slide, then stream
every tile through the same transform with the tile engine, into a pyramidal TIFF.

Fitting per tile (``per_tile=True``, kept for comparison) lets each tile choose its own stain vectors and
percentiles, so neighbouring tiles of different tissue content get different colours (ANCHORS.md (b)1); the
slide-level fit uses one stain matrix and one set of percentiles for the whole slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathgen.engine import EngineConfig, RunReport, run_slide
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


def normalize_slide(input_path: str | os.PathLike, output: str | os.PathLike, normalizer, *, per_tile: bool = False,
                    level: int = 0, mpp: float | None = None, engine: EngineConfig | None = None,
                    fit_config: SlideFitConfig = SlideFitConfig(), compression: str = "jpeg", quality: int = 90,
                    overwrite: bool = False, slide_mpp: float | None = None, skip_background: bool = True
                    ) -> RunReport:
    """Normalise a whole slide into a pyramidal TIFF (or OME-Zarr) with a fitted-target ``normalizer``.

    The source is fitted once from tissue sampled across the slide (unless ``per_tile``), then every tile is
    transformed with those numbers; an ``engine.overlap`` of None means 0 for the slide-level fit (the transform
    is pointwise, so tiles join exactly) and 32 px of blended halo for per-tile fits. Windows without tissue are filled with the target
    background (``skip_background``). A JSON beside the output records the source and target fits, the settings,
    versions and seed.
    """
    from pathgen.io.records import save_run_config
    from pathgen.io.atomic import check_output
    from pathgen.io.slide import open_slide

    if normalizer.target is None:
        raise PathgenError("the normaliser has no target; call fit_target() first")
    check_output(output, overwrite=overwrite, inputs=(input_path,))
    engine = engine or EngineConfig(tile_size=512, overlap=None, batch_size=4)
    with open_slide(input_path, mpp=slide_mpp) as slide:
        mask = tissue_mask(slide, fit_config.tissue)
        if not mask.mask.any():
            raise PathgenError("no tissue detected", input_path)
        if not per_tile:
            normalizer.source = fit_slide(slide, normalizer, level=level, config=fit_config, mask=mask)
        i0 = normalizer.target.i0 if normalizer.target.i0 is not None else np.array([255.0] * 3)
        overrides = {"skip_background": skip_background,
                     "background": tuple(float(v) for v in np.asarray(i0).reshape(-1)[:3])}
        if not per_tile and engine.overlap is None:
            # one fit for the whole slide makes the transform pointwise: tiles need no halo and no blending
            overrides["overlap"] = 0
        elif engine.overlap is None:
            overrides["overlap"] = 32
        cfg = EngineConfig(**{**engine.__dict__, **overrides})
        report = run_slide(slide, NormalizeTiles(normalizer, per_tile), output, level=None if mpp else level, mpp=mpp,
                           cfg=cfg, tissue=mask, compression=compression, quality=quality, overwrite=overwrite,
                           progress_desc=f"normalize ({normalizer.method})")
    save_run_config(output, {"engine": cfg, "fit": fit_config, "per_tile": per_tile, "level": level, "mpp": mpp,
                             "normalizer": normalizer.to_dict()}, seed=fit_config.seed,
                    extra={"input": str(Path(input_path).resolve()), "windows": report.windows,
                           "processed": report.processed, "skipped": report.skipped})
    return report
