"""Stain normalisation of image files (PNG, JPEG, TIFF): reading, writing, folders and globs.

Whole-slide inputs are recognised here (:func:`is_slide`) and handled by the slide engine
(:mod:`pathgen.stain.slide`); everything in this module works on ordinary image files held in memory.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from pathgen.errors import PathgenError, require_file
from pathgen.stain.matrix import StainFit
from pathgen.stain.normalize import StainNormalizer

IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
#: Always whole-slide formats. A .tif/.tiff is a slide when it has more than one page or pyramid level.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".dcm")
JPEG_QUALITY = 95


def is_slide(path: str | os.PathLike) -> bool:
    """True for whole-slide files: a slide suffix, or a TIFF with more than one page or pyramid level."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix in (".tif", ".tiff") and p.is_file():
        import tifffile

        try:
            with tifffile.TiffFile(p) as tif:
                return len(tif.pages) > 1 or any(len(s.levels) > 1 for s in tif.series)
        except (tifffile.TiffFileError, OSError, ValueError):
            return False  # not a readable TIFF: read_image reports it
    return False


def image_format(path: str | os.PathLike) -> str:
    """"png", "jpeg" or "tiff" from the file suffix; a PathgenError for anything else."""
    fmt = IMAGE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise PathgenError("not a PNG, JPEG or TIFF file name (.png .jpg .jpeg .tif .tiff)", path)
    return fmt


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (not slides) directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_FORMATS and not is_slide(p))


def expand_inputs(spec: str) -> list[Path]:
    """Input files named by a path, a folder (its images and slides), or a glob pattern; sorted."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(q for q in p.iterdir()
                       if q.is_file() and (q.suffix.lower() in IMAGE_FORMATS or q.suffix.lower() in SLIDE_SUFFIXES))
        if not files:
            raise PathgenError("folder holds no images or slides", p)
        return files
    if p.exists():
        return [Path(require_file(p))]
    if glob.has_magic(spec):
        files = sorted(Path(f) for f in glob.glob(spec) if Path(f).is_file())
        if not files:
            raise PathgenError("no files match this pattern", spec)
        return files
    raise PathgenError("no such file or folder", spec)


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an RGB(A) 8-bit image file.

    Returns
    -------
    rgb : ndarray, (H, W, 3) uint8
    alpha : ndarray, (H, W) uint8, or None
    """
    p = require_file(path)
    fmt = image_format(p)
    try:
        if fmt == "tiff":
            import tifffile

            arr = tifffile.imread(p, key=0)
        else:
            from PIL import Image

            with Image.open(p) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("CMYK", "YCbCr"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
    except PathgenError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "cannot read"
        raise PathgenError(f"cannot read image ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                           p) from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (separate-plane) TIFF
    if arr.dtype != np.uint8:
        raise PathgenError(f"only 8-bit images are supported, this one is {arr.dtype}", p)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise PathgenError(f"not an RGB image (array shape {arr.shape})", p)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PathgenError("image has no pixels", p)
    rgb = np.ascontiguousarray(arr[..., :3])
    alpha = np.ascontiguousarray(arr[..., 3]) if arr.shape[-1] == 4 else None
    return rgb, alpha


def write_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None,
                fmt: str | None = None) -> None:
    """Write (H, W, 3) uint8 RGB (+ optional alpha) as PNG, JPEG (quality 95, alpha dropped) or TIFF (deflate)."""
    fmt = fmt or image_format(path)
    arr = rgb if alpha is None or fmt == "jpeg" else np.concatenate([rgb, alpha[..., None]], axis=-1)
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(path, arr, photometric="rgb", compression="zlib",
                         extrasamples=("unassalpha",) if arr.shape[-1] == 4 else None)
        return
    from PIL import Image

    im = Image.fromarray(arr)
    if fmt == "jpeg":
        im.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        im.save(path, format="PNG")


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
    from pathgen.io.atomic import atomic_path, check_output

    fmt = image_format(output_path)
    check_output(output_path, overwrite=overwrite, inputs=(input_path,))
    rgb, alpha = read_image(input_path)
    out, source = normalize_image(rgb, normalizer, per_tile=per_tile, tile_size=tile_size)
    with atomic_path(output_path, overwrite=overwrite, inputs=(input_path,)) as tmp:
        write_image(tmp, out, alpha, fmt=fmt)
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
    return normalizer.fit_images(read_image(f)[0] for f in files)
