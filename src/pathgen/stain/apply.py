"""Stain normalisation of image files (PNG, JPEG, TIFF): reading, writing, folders and globs.

Whole-slide inputs are recognised here (:func:`is_slide`) and handled by the slide engine
(:mod:`pathgen.stain.slide`); everything in this module works on ordinary image files held in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pathgen.errors import PathgenError, require_file
from pathgen.io.image import image_format, is_slide, list_images, read_image, write_image
from pathgen.stain.matrix import StainFit
from pathgen.stain.normalize import StainNormalizer

def tiles_of(shape: tuple[int, int], tile_size: int) -> list[tuple[slice, slice]]:
    """Row-major grid of (rows, cols) slices covering an (H, W) image; edge tiles are smaller."""
    if tile_size < 16:
        raise PathgenError(f"tile size must be at least 16 pixels, got {tile_size}")
    h, w = shape
    return [(slice(y, min(y + tile_size, h)), slice(x, min(x + tile_size, w)))
            for y in range(0, h, tile_size) for x in range(0, w, tile_size)]


def normalize_image(image: np.ndarray, normalizer: StainNormalizer, per_tile: bool = False,
                    tile_size: int = 512) -> tuple[np.ndarray, StainFit | None]:
    """Normalise one in-memory image.

    Parameters
    ----------
    image : ndarray, (H, W, 3) uint8
    normalizer : StainNormalizer
        With a target fitted.
    per_tile : bool
        False: fit the source once on the whole image (image-level, like slide-level for slides). True: fit
        every ``tile_size`` tile on its own (shows per-tile drift).
    tile_size : int
        Tile edge for per-tile mode.

    Returns
    -------
    out : ndarray, (H, W, 3) uint8 (new array)
    source : StainFit or None
        The image's source fit (None in per-tile mode).
    """
    if not per_tile:
        source = normalizer.fit_images(image)
        return normalizer.transform(image, source=source), source
    out = np.empty_like(image)
    for rows, cols in tiles_of(image.shape[:2], tile_size):
        out[rows, cols] = normalizer.transform(np.ascontiguousarray(image[rows, cols]), per_tile=True)
    return out, None


def normalize_image_file(input_path: str | os.PathLike, output_path: str | os.PathLike,
                         normalizer: StainNormalizer, per_tile: bool = False, tile_size: int = 512,
                         overwrite: bool = False) -> StainFit | None:
    """Normalise an image file into ``output_path`` (format from its suffix), written atomically.

    Returns the source fit (None in per-tile mode). The input file is only read.
    """
    from pathgen.io.atomic import check_output

    fmt = image_format(output_path)
    check_output(output_path, overwrite=overwrite, inputs=(input_path,))
    rgb, alpha = read_image(input_path, with_alpha=True)
    out, source = normalize_image(rgb, normalizer, per_tile=per_tile, tile_size=tile_size)
    write_image(output_path, out, alpha, fmt=fmt, overwrite=overwrite, inputs=(input_path,))
    return source


def fit_paths(paths: list[str | os.PathLike], normalizer: StainNormalizer) -> StainFit:
    """Stain statistics pooled over image files and folders of images (one domain)."""
    files: list[Path] = []
    for spec in paths:
        p = Path(spec)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise PathgenError("folder holds no PNG/JPEG/TIFF images", p)
            files.extend(found)
        else:
            require_file(p)
            if is_slide(p):
                if len(paths) != 1:
                    raise PathgenError("a slide can only be fitted on its own, not pooled with other inputs", p)
                from pathgen.stain.slide import fit_slide  # slide-level sampling lives with the slide engine

                return fit_slide(p, normalizer)
            image_format(p)
            files.append(p)
    return normalizer.fit_images(read_image(f) for f in files)
