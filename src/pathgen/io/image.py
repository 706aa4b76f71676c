"""Image files (PNG, JPEG, TIFF, BMP, WebP, ``.npy``): the one reader and writer every module uses.

The contract:

* :func:`read_image` → ``(H, W, 3)`` uint8 RGB, whatever the file holds (palette, grey, CMYK and YCbCr converted,
  alpha dropped, planar TIFF transposed); ``with_alpha=True`` also returns the alpha plane or None. Anything else
  (16-bit, float, not an image) is a :class:`~pathgen.errors.PathgenError` naming the file.
* :func:`read_labels` → ``(H, W)`` integer label map (palette PNGs give their indices; a grey label image saved
  as RGB is accepted; anything coloured is refused).
* :func:`read_array` → the array as stored, for callers that interpret layouts themselves (label stacks, ``.npy``
  never unpickled).
* :func:`write_image` writes RGB(A) images and label maps atomically (temp file, then rename), format by suffix.

Whole-slide files are recognised by :func:`is_slide` and opened with :func:`pathgen.io.slide.open_slide`.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from pathgen.errors import PathgenError, require_file

IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
#: Every suffix :func:`read_image` opens (the writable formats plus BMP and WebP).
READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
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


def list_images(folder: str | os.PathLike, suffixes: tuple[str, ...] = READ_SUFFIXES) -> list[Path]:
    """Image files (not slides, not hidden) directly inside ``folder``, sorted by name."""
    if not Path(folder).is_dir():
        raise PathgenError("not a folder", folder)
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".") and not is_slide(p))


def expand_inputs(spec: str | os.PathLike) -> list[Path]:
    """Input files named by a path, a folder (its images and slides), or a glob pattern; sorted."""
    spec = os.fspath(spec)
    p = Path(spec)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")
                       and (q.suffix.lower() in IMAGE_FORMATS or q.suffix.lower() in SLIDE_SUFFIXES))
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


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_array(path: str | os.PathLike) -> np.ndarray:
    """An image or array file as stored: ``(H, W)`` or ``(H, W, C)`` (or a stack), dtype as stored.

    TIFF through tifffile (first series), ``.npy`` without pickle, everything else through Pillow (palette images
    keep their indices).
    """
    p = Path(require_file(path))
    ext = p.suffix.lower()
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(p))
        if ext == ".npy":
            return np.load(p, allow_pickle=False)
        from PIL import Image

        with Image.open(p) as im:
            return np.array(im)
    except PathgenError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "cannot read"
        raise PathgenError(f"cannot read image ({_why(exc)})", p) from None


def read_image(path: str | os.PathLike, with_alpha: bool = False):
    """Read an 8-bit image file as RGB.

    Parameters
    ----------
    path : path
        PNG, JPEG, TIFF (first page), BMP or WebP.
    with_alpha : bool
        Also return the alpha plane.

    Returns
    -------
    rgb : ndarray, (H, W, 3) uint8
    alpha : ndarray, (H, W) uint8, or None
        Only with ``with_alpha``.
    """
    p = Path(require_file(path))
    ext = p.suffix.lower()
    if ext not in READ_SUFFIXES:
        raise PathgenError(f"not an image file name ({' '.join(READ_SUFFIXES)})", p)
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(p, key=0))
        else:
            from PIL import Image

            with Image.open(p) as im:
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if (im.mode == "PA" or "transparency" in im.info) else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGB")
                elif im.mode == "LA":
                    im = im.convert("RGBA")
                arr = np.asarray(im)
    except PathgenError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "cannot read"
        raise PathgenError(f"cannot read image ({_why(exc)})", p) from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (separate-plane) TIFF
    if arr.dtype != np.uint8:
        raise PathgenError(f"only 8-bit images are supported, this one is {arr.dtype}", p)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise PathgenError(f"not an RGB image (array shape {arr.shape})", p)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PathgenError("image has no pixels", p)
    rgb = np.ascontiguousarray(arr[..., :3])
    if not with_alpha:
        return rgb
    return rgb, (np.ascontiguousarray(arr[..., 3]) if arr.shape[-1] == 4 else None)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """A label image (instance or class map) as a 2-D integer array.

    PNG palette images give their palette indices; an RGB(A) image is accepted only if its colour channels are
    equal (a grey label image saved as RGB). ``.npy`` and TIFF must hold a 2-D array (or one channel).
    """
    p = Path(path)
    arr = read_array(p)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and p.suffix.lower() not in (".npy",):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise PathgenError("colour image is not a label image (expected one channel of integer labels)", p)
        arr = rgb[..., 0]
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise PathgenError(f"label image must be 2-D, got shape {arr.shape}", p)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise PathgenError(f"label image holds non-integer values ({arr.dtype})", p)
        arr = arr.astype(np.int64)
    return arr


def write_image(path: str | os.PathLike, array: np.ndarray, alpha: np.ndarray | None = None, *,
                overwrite: bool = True, inputs: tuple = (), fmt: str | None = None) -> Path:
    """Write an image atomically (temporary file, then rename), format from the suffix unless ``fmt``.

    Parameters
    ----------
    array : ndarray
        ``(H, W, 3)`` uint8 RGB, ``(H, W)`` uint8 grey, or a 2-D integer label map (PNG: 8 or 16 bit, TIFF: any
        integer type, Deflate).
    alpha : ndarray, (H, W) uint8, optional
        Kept in PNG and TIFF, dropped in JPEG.
    overwrite : bool
        Replace an existing file (default; pass False to refuse).
    inputs : tuple of paths
        Files that must never be overwritten.
    """
    from pathgen.io.atomic import atomic_path

    fmt = fmt or image_format(path)
    arr = np.asarray(array)
    if alpha is not None and fmt != "jpeg":
        arr = np.concatenate([arr, np.asarray(alpha)[..., None]], axis=-1)
    if arr.ndim == 2 and fmt != "tiff" and arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise PathgenError(f"labels {int(arr.min())}..{int(arr.max())} do not fit a PNG; use .tif", path)
        arr = arr.astype(np.uint8 if (not arr.size or arr.max() < 256) else np.uint16)
    with atomic_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        if fmt == "tiff":
            import tifffile

            colour = arr.ndim == 3 and arr.shape[-1] in (3, 4)
            tifffile.imwrite(tmp, arr, photometric="rgb" if colour else "minisblack", compression="zlib",
                             extrasamples=("unassalpha",) if colour and arr.shape[-1] == 4 else None)
        else:
            from PIL import Image

            im = Image.fromarray(arr)
            if fmt == "jpeg":
                im.save(tmp, format="JPEG", quality=JPEG_QUALITY)
            else:
                im.save(tmp, format="PNG")
    return Path(path)
