"""One way to open any slide or image: :func:`open_slide`.

Backends, tried in this order:

1. OpenSlide (SVS, NDPI, MRXS, SCN, Philips/generic tiled TIFF, DICOM, ...) through openslide-python.
2. tifffile's zarr store for TIFF / OME-TIFF that OpenSlide does not open (stripped, SubIFD pyramids, OME).
3. Plain images (PNG, JPEG, small TIFF) through Pillow, as a one-level slide.

Every backend gives the same :class:`Slide`: level geometry, mpp, vendor, associated images, ``read_region`` by level
or by target mpp, and a lazy ``dask.array`` per level that decodes only the chunks that are computed. Regions are
returned as ``(h, w, 3) uint8`` RGB; pixels outside the slide (or transparent in it) are white, the colour of
glass, so tissue detection and stain methods treat them as background.

A :class:`Slide` pickles as its path and options, so dask workers in other processes reopen it themselves.
"""

from __future__ import annotations

import abc
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathgen.errors import PathgenError, require_file

BACKGROUND = 255  # value of glass / outside-the-slide pixels, per channel

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".ome.tif", ".ome.tiff"}


@dataclass(frozen=True)
class SlideInfo:
    """What ``pathgen info`` reports."""

    path: str
    width: int
    height: int
    levels: list[tuple[int, int]]
    downsamples: list[float]
    mpp: tuple[float, float] | None
    mpp_source: str
    objective_power: float | None
    vendor: str
    backend: str
    associated_images: list[str] = field(default_factory=list)
    tile_size: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "levels": [list(x) for x in self.levels],
            "downsamples": self.downsamples,
            "mpp": None if self.mpp is None else list(self.mpp),
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "vendor": self.vendor,
            "backend": self.backend,
            "associated_images": self.associated_images,
            "tile_size": None if self.tile_size is None else list(self.tile_size),
        }


def _composite_rgba(rgba: np.ndarray) -> np.ndarray:
    """RGBA (OpenSlide, not premultiplied) onto white: transparent = outside the scanned area."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + BACKGROUND * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array to ``(h, w, 3) uint8``."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        elif np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.rint(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    c = arr.shape[-1]
    if c == 1:
        return np.repeat(arr, 3, axis=-1)
    if c == 2:  # grey + alpha
        return _composite_rgba(np.concatenate([np.repeat(arr[..., :1], 3, -1), arr[..., 1:]], -1))
    if c == 4:
        return _composite_rgba(arr)
    return np.ascontiguousarray(arr[..., :3])


class _Backend(abc.ABC):
    name = "base"
    vendor = "unknown"
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: tuple[float, float] | None = None
    mpp_source = "none"
    objective_power: float | None = None
    tile_size: tuple[int, int] | None = None

    @abc.abstractmethod
    def read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3) uint8`` RGB of ``level`` at level coordinates ``(x, y)``; outside is white."""

    def associated_names(self) -> list[str]:
        return []

    def associated(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def close(self) -> None:
        pass


class _OpenSlideBackend(_Backend):
    name = "openslide"

    def __init__(self, path: str):
        import openslide

        self._os = openslide.OpenSlide(path)
        props = self._os.properties
        self.vendor = props.get("openslide.vendor", "generic-tiff") or "unknown"
        self.level_dimensions = [tuple(map(int, d)) for d in self._os.level_dimensions]
        self.level_downsamples = [float(d) for d in self._os.level_downsamples]
        try:
            mx, my = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
            if mx > 0 and my > 0:
                self.mpp, self.mpp_source = (mx, my), "openslide"
        except (KeyError, ValueError):
            pass
        try:
            self.objective_power = float(props["openslide.objective-power"])
        except (KeyError, ValueError):
            pass
        try:
            self.tile_size = (int(props["openslide.level[0].tile-width"]), int(props["openslide.level[0].tile-height"]))
        except (KeyError, ValueError):
            pass

    _fast: "_TiffBackend | None" = None

    def enable_tiff_fast_path(self, path: str) -> bool:
        """Decode pixels with tifffile + imagecodecs (about 6× less CPU than OpenSlide's read_region) when the
        file is a plain tiled TIFF pyramid (Aperio, generic TIFF) whose levels tifffile sees exactly as OpenSlide
        does and whose pixels agree on a probe region; OpenSlide stays in charge of metadata."""
        if self.vendor not in ("aperio", "generic-tiff"):
            return False
        try:
            fast = _TiffBackend(path, level_dimensions=self.level_dimensions, verify=False)
        except Exception:  # noqa: BLE001 - no fast path, OpenSlide reads everything
            return False
        if fast.level_dimensions != self.level_dimensions:
            fast.close()
            return False
        def agree(k: int) -> bool:
            # level 0: a central region; coarser levels: the top-left corner, the one place where OpenSlide's
            # level-0 coordinates map back to the level exactly when downsamples are not integers
            lw, lh = self.level_dimensions[k]
            pw, ph = min(256, lw), min(256, lh)
            x, y = ((lw - pw) // 2, (lh - ph) // 2) if k == 0 else (0, 0)
            a = fast.read(x, y, k, pw, ph).astype(np.int16)
            return float(np.abs(a - self.read(x, y, k, pw, ph)).mean()) < 1.0

        try:
            ok = all(agree(k) for k in range(len(self.level_dimensions)))
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            fast.close()
            return False
        self._fast = fast
        return True

    def read(self, x, y, level, w, h):
        if self._fast is not None:
            return self._fast.read(x, y, level, w, h)
        ds = self.level_downsamples[level]
        # OpenSlide takes the top-left corner in level-0 pixels.
        img = self._os.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h))
        return _composite_rgba(np.asarray(img))

    def associated_names(self):
        return sorted(self._os.associated_images.keys())

    def associated(self, name):
        return _to_rgb(np.asarray(self._os.associated_images[name]))

    def close(self):
        if self._fast is not None:
            self._fast.close()
        self._os.close()


def _mpp_from_tiff(page) -> tuple[tuple[float, float] | None, str]:
    """mpp from resolution tags (px per cm / inch / µm) or an Aperio/pathgen-style description."""
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m and float(m.group(1)) > 0:
        v = float(m.group(1))
        return (v, v), "description"
    m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)".*?PhysicalSizeY="([0-9.eE+-]+)"', desc, re.S)
    if m:
        return (float(m.group(1)), float(m.group(2))), "ome"
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        unit = int(tags["ResolutionUnit"].value)
        xr, yr = tags["XResolution"].value, tags.get("YResolution", tags["XResolution"]).value
        xr = xr[0] / xr[1] if isinstance(xr, tuple) else float(xr)
        yr = yr[0] / yr[1] if isinstance(yr, tuple) else float(yr)
        per_um = {3: 1e4, 2: 25400.0}.get(unit)  # 3 = centimetre, 2 = inch
        if per_um and xr > 1 and yr > 1:
            return (per_um / xr, per_um / yr), "resolution-tags"
    return None, "none"


class _TiffBackend(_Backend):
    name = "tifffile"

    def __init__(self, path: str, level_dimensions: list[tuple[int, int]] | None = None, verify: bool = True):
        import tifffile

        self._tif = tifffile.TiffFile(path)
        self._arrays: list | None = None  # zarr views, opened on first need (zarr is slow to import)
        self._zarr_lock = threading.Lock()
        series = self._tif.series[0]
        if level_dimensions is not None and len(series.levels) < len(level_dimensions):
            self._from_pages(level_dimensions, verify)
            return
        self.vendor = "ome-tiff" if self._tif.is_ome else "tiff"
        levels = list(series.levels)
        self._zarr_source = series
        self._axes = series.axes
        dims = []
        for lvl in levels:
            shp = dict(zip(lvl.axes, lvl.shape))
            dims.append((int(shp["X"]), int(shp["Y"])))
        self.level_dimensions = dims
        self.level_downsamples = [dims[0][0] / d[0] for d in dims]
        self.mpp, self.mpp_source = _mpp_from_tiff(series.pages[0] if series.pages else self._tif.pages[0])
        page = self._tif.pages[0]
        if page.is_tiled:
            self.tile_size = (int(page.tilewidth), int(page.tilelength))
        plain = self._axes in ("YXS", "YX") and all(lvl.axes == self._axes for lvl in levels)
        self._setup_direct([lvl.keyframe for lvl in levels] if plain else [], path, verify)

    def _from_pages(self, dims: list[tuple[int, int]], verify: bool) -> None:
        """Levels as the tiled pages of the main IFD chain with the given (w, h), e.g. an Aperio file whose
        description makes tifffile group its pages differently from OpenSlide."""
        pages = [p for p in self._tif.pages if p.is_tiled]
        by_shape = {(int(p.imagewidth), int(p.imagelength)): p for p in reversed(pages)}
        if any(d not in by_shape for d in dims):
            raise ValueError("pages do not match the levels")
        self._zarr_source = [by_shape[d] for d in dims]
        self._axes = "YXS"
        self.level_dimensions = list(dims)
        self.level_downsamples = [dims[0][0] / d[0] for d in dims]
        self.mpp, self.mpp_source = _mpp_from_tiff(self._tif.pages[0])
        self.tile_size = (int(self._tif.pages[0].tilewidth), int(self._tif.pages[0].tilelength))
        self._setup_direct([by_shape[d] for d in dims], self._tif.filehandle.path, verify)

    def _zarr_arrays(self) -> list:
        with self._zarr_lock:
            if self._arrays is None:
                import zarr

                src = self._zarr_source
                if isinstance(src, list):
                    self._arrays = [zarr.open(p.aszarr(), mode="r") for p in src]
                else:
                    z = zarr.open(src.aszarr(), mode="r")
                    self._arrays = [z[str(i)] for i in range(len(src.levels))] if hasattr(z, "keys") else [z]
            return self._arrays

    # Direct tile decoding: zarr 3's per-chunk (async) machinery costs more than decoding a JPEG tile, so plain
    # tiled pages are read by offset (os.pread, thread-safe) and decoded with tifffile's own segment decoder.
    _direct: list = []
    _fd: int | None = None

    def _setup_direct(self, pages: list, path, verify: bool) -> None:
        self._direct = []
        if not pages or not hasattr(os, "pread"):
            return
        for p in pages:
            if not (p.is_tiled and p.planarconfig == 1 and p.imagedepth == 1 and p.tiledepth == 1
                    and len(p.dataoffsets) == math.ceil(p.imagelength / p.tilelength)
                    * math.ceil(p.imagewidth / p.tilewidth)):
                return
        try:
            self._fd = os.open(str(path), os.O_RDONLY)
            self._direct = [(p, p.decode, p.jpegtables) for p in pages]
            # the direct path must agree with tifffile's own reader on a probe tile of every level (unless the
            # caller checks it against another reader itself)
            for k in range(len(pages) if verify else 0):
                lw, lh = self.level_dimensions[k]
                pw, ph = min(64, lw), min(64, lh)
                if not np.array_equal(self._read_direct(k, 0, 0, pw, ph), self._read_zarr(k, 0, 0, pw, ph)):
                    raise ValueError("direct decoding disagrees")
        except Exception:  # noqa: BLE001 - keep the zarr path
            self._direct = []

    def _read_direct(self, level, x0, y0, x1, y1) -> np.ndarray:
        page, decode, tables = self._direct[level]
        tw, th = int(page.tilewidth), int(page.tilelength)
        ntx = math.ceil(page.imagewidth / tw)
        samples = int(page.samplesperpixel)
        if x0 % tw == 0 and y0 % th == 0 and x1 - x0 <= tw and y1 - y0 <= th:
            # the region lies in one tile, from its corner: hand back the decoded tile itself, no copy
            idx = (y0 // th) * ntx + x0 // tw
            count = int(page.databytecounts[idx])
            if count:
                seg = decode(os.pread(self._fd, count, int(page.dataoffsets[idx])), idx, jpegtables=tables)[0]
                return seg.reshape(seg.shape[-3], seg.shape[-2], -1)[:y1 - y0, :x1 - x0]
        out = np.zeros((y1 - y0, x1 - x0, samples), page.dtype)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                idx = ty * ntx + tx
                count = int(page.databytecounts[idx])
                if not count:
                    continue  # empty tile: zeros, as tifffile reads it
                data = os.pread(self._fd, count, int(page.dataoffsets[idx]))
                seg = decode(data, idx, jpegtables=tables)[0]
                seg = seg.reshape(seg.shape[-3], seg.shape[-2], -1)
                ax, ay = tx * tw, ty * th
                sx0, sy0 = max(x0, ax), max(y0, ay)
                sx1, sy1 = min(x1, ax + seg.shape[1]), min(y1, ay + seg.shape[0])
                out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = seg[sy0 - ay:sy1 - ay, sx0 - ax:sx1 - ax]
        return out

    def _read_zarr(self, level, x0, y0, x1, y1) -> np.ndarray:
        idx = []
        for ax in self._axes:
            idx.append(slice(y0, y1) if ax == "Y" else slice(x0, x1) if ax == "X" else slice(None))
        block = np.asarray(self._zarr_arrays()[level][tuple(idx)])
        # Bring to (Y, X, C) whatever the axis order (e.g. OME 'CYX').
        axes = list(self._axes)
        order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
        block = np.transpose(block, order)
        return block.reshape(block.shape[0], block.shape[1], -1)

    def read(self, x, y, level, w, h):
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return np.full((h, w, 3), BACKGROUND, np.uint8)
        if self._direct:
            block = _to_rgb(self._read_direct(level, x0, y0, x1, y1))
        else:
            block = _to_rgb(self._read_zarr(level, x0, y0, x1, y1))
        if (x0, y0, x1, y1) == (x, y, x + w, y + h):
            return block
        out = np.full((h, w, 3), BACKGROUND, np.uint8)
        out[y0 - y:y1 - y, x0 - x:x1 - x] = block
        return out

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tif.close()


class _ImageBackend(_Backend):
    name = "pillow"
    vendor = "image"

    def __init__(self, path: str):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            im.load()
            dpi = im.info.get("dpi")
            arr = np.asarray(im.convert("RGBA") if im.mode in ("P", "LA", "RGBA", "PA") else im.convert("RGB"))
        self._img = _to_rgb(arr)
        h, w = self._img.shape[:2]
        self.level_dimensions = [(w, h)]
        self.level_downsamples = [1.0]
        # Pillow reports 72 dpi for files without resolution; only a physically plausible value (≤ 10 µm/px) is mpp.
        if dpi and dpi[0] and dpi[0] > 2540:
            self.mpp, self.mpp_source = (25400.0 / dpi[0], 25400.0 / dpi[1]), "dpi"

    def read(self, x, y, level, w, h):
        lw, lh = self.level_dimensions[0]
        out = np.full((h, w, 3), BACKGROUND, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._img[y0:y1, x0:x1]
        return out


def _open_backend(path: str) -> _Backend:
    suffix = "".join(Path(path).suffixes[-2:]).lower() if path.lower().endswith((".ome.tif", ".ome.tiff")) \
        else Path(path).suffix.lower()
    errors = []
    if suffix not in IMAGE_SUFFIXES:
        import openslide

        try:
            if openslide.OpenSlide.detect_format(path) is not None:
                osb = _OpenSlideBackend(path)
                osb.enable_tiff_fast_path(path)
                if osb.vendor != "generic-tiff":
                    return osb
                # OpenSlide ignores SubIFD (OME) pyramids; take tifffile's view when it sees more levels.
                try:
                    tb = _TiffBackend(path)
                except Exception:  # noqa: BLE001 - OpenSlide's view stands
                    return osb
                if len(tb.level_dimensions) > len(osb.level_dimensions):
                    osb.close()
                    return tb
                tb.close()
                return osb
        except openslide.OpenSlideError as exc:
            errors.append(f"OpenSlide: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        except Exception as exc:  # noqa: BLE001 - any backend failure means "try the next"
            errors.append(f"OpenSlide: {exc}")
        try:
            import tifffile

            with open(path, "rb") as fh:
                magic = fh.read(4)
            if magic[:2] in (b"II", b"MM"):
                try:
                    backend = _TiffBackend(path)
                    if len(backend.level_dimensions) > 1 or backend.level_dimensions[0][0] * \
                            backend.level_dimensions[0][1] > 0:
                        return backend
                except (tifffile.TiffFileError, ValueError, KeyError, IndexError) as exc:
                    errors.append(f"tifffile: {exc}")
        except OSError as exc:
            raise PathgenError(f"cannot read: {exc.strerror}", path) from exc
    try:
        from PIL import UnidentifiedImageError

        try:
            return _ImageBackend(path)
        except UnidentifiedImageError:
            pass
        except (OSError, SyntaxError, ValueError) as exc:
            errors.append(f"image: {exc}")
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    if errors:
        raise PathgenError(f"corrupt or unreadable slide ({errors[-1]})", path)
    raise PathgenError("unsupported format (not a slide OpenSlide or tifffile can open, nor an image)", path)


class Slide:
    """A whole-slide image or plain image, opened read-only.

    Parameters
    ----------
    path : str or PathLike
        The file to open.
    mpp : float or (float, float), optional
        Microns per pixel at level 0, overriding what the file says (``--mpp``).

    Notes
    -----
    Coordinates: ``location`` is ``(x, y)`` in level-0 pixels (as in OpenSlide); ``size`` is ``(width, height)`` in
    pixels of the level (or of the target mpp) read.
    """

    def __init__(self, path: str | os.PathLike, mpp: float | tuple[float, float] | None = None):
        self.path = require_file(path)
        self._mpp_override = mpp
        self._lock = threading.Lock()
        self._b = _open_backend(self.path)
        if mpp is not None:
            m = (float(mpp), float(mpp)) if np.isscalar(mpp) else (float(mpp[0]), float(mpp[1]))
            if not (m[0] > 0 and m[1] > 0):
                raise PathgenError(f"pixel size must be positive, got {mpp}", self.path, param="mpp")
            self._mpp, self._mpp_source = m, "override"
        else:
            self._mpp, self._mpp_source = self._b.mpp, self._b.mpp_source
        w, h = self._b.level_dimensions[0]
        if w <= 0 or h <= 0:
            raise PathgenError("slide has no pixels", self.path)

    # pickling: reopen from the path in the worker process
    def __getstate__(self):
        return {"path": self.path, "mpp": self._mpp_override}

    def __setstate__(self, state):
        self.__init__(state["path"], mpp=state["mpp"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        w, h = self.dimensions
        return f"Slide({self.path!r}, {w}x{h}, levels={self.level_count}, mpp={self.mpp}, backend={self.backend})"

    def close(self) -> None:
        self._b.close()

    # geometry -------------------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._b.name + ("+tifffile" if getattr(self._b, "_fast", None) is not None else "")

    @property
    def vendor(self) -> str:
        return self._b.vendor

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self._b.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._b.level_dimensions)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return list(self._b.level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        return list(self._b.level_downsamples)

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel (x, y) at level 0, or None when the file does not say and no override was given."""
        return self._mpp

    @property
    def mpp_source(self) -> str:
        return self._mpp_source

    @property
    def objective_power(self) -> float | None:
        if self._b.objective_power:
            return self._b.objective_power
        if self._mpp:  # the usual convention: 0.25 µm/px ≈ 40×, 0.5 ≈ 20×
            return round(10.0 / self._mpp[0], 1)
        return None

    def info(self) -> SlideInfo:
        w, h = self.dimensions
        return SlideInfo(self.path, w, h, self.level_dimensions, self.level_downsamples, self.mpp, self.mpp_source,
                         self.objective_power, self.vendor, self.backend, self.associated_names(), self._b.tile_size)

    def require_mpp(self) -> tuple[float, float]:
        if self._mpp is None:
            raise PathgenError("slide has no pixel size (mpp): give it", self.path, param="mpp")
        return self._mpp

    def level_mpp(self, level: int) -> tuple[float, float] | None:
        if self._mpp is None:
            return None
        ds = self.level_downsamples[level]
        return (self._mpp[0] * ds, self._mpp[1] * ds)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The highest-resolution level is used unless a coarser one is still at least as fine as asked."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    # pixels ---------------------------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size = (w, h)`` pixels of ``level`` whose top-left corner is ``location`` in level-0 pixels.

        Returns
        -------
        ndarray, shape (h, w, 3), uint8
            RGB; outside the slide is white.
        """
        if not 0 <= level < self.level_count:
            raise PathgenError(f"level {level} outside 0..{self.level_count - 1}", self.path)
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise PathgenError(f"region size must be positive, got {w}x{h}", self.path)
        ds = self.level_downsamples[level]
        x, y = int(math.floor(location[0] / ds)), int(math.floor(location[1] / ds))
        lw, lh = self.level_dimensions[level]
        if x >= lw or y >= lh or x + w <= 0 or y + h <= 0:
            raise PathgenError(f"region {w}x{h} at ({location[0]}, {location[1]}) lies outside the slide "
                               f"(level {level} is {lw}x{lh})", self.path)
        return self._read_level(x, y, level, w, h)

    def read_level_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """Like :meth:`read_region` with ``(x, y)`` in the coordinates of ``level`` itself."""
        return self._read_level(int(x), int(y), level, int(w), int(h))

    def _read_level(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        lw, lh = self.level_dimensions[level]
        if x >= lw or y >= lh or x + w <= 0 or y + h <= 0:
            return np.full((h, w, 3), BACKGROUND, np.uint8)
        try:
            return self._b.read(x, y, level, w, h)
        except PathgenError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoding errors of a corrupt/truncated file
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PathgenError(f"corrupt or truncated slide: cannot decode region ({msg})", self.path) from exc

    def read_region_mpp(self, location: tuple[int, int], mpp: float, size: tuple[int, int]) -> np.ndarray:
        """Read ``size = (w, h)`` pixels at ``mpp`` µm/px whose top-left is ``location`` in level-0 pixels.

        The finest level not finer than needed is read and resampled (box filter when shrinking, bicubic when
        enlarging), so a 0.5 µm/px read of a 0.25 µm/px slide decodes level 0 or a ×2 level if there is one.
        """
        base = self.require_mpp()[0]
        factor = mpp / base  # level-0 pixels per output pixel
        level = self.best_level_for_downsample(factor)
        ds = self.level_downsamples[level]
        rel = factor / ds  # level pixels per output pixel
        w, h = int(size[0]), int(size[1])
        if abs(rel - 1.0) < 1e-6:
            return self.read_region(location, level, (w, h))
        lx, ly = location[0] / ds, location[1] / ds
        x0, y0 = int(math.floor(lx)), int(math.floor(ly))
        rw, rh = int(math.ceil(w * rel + (lx - x0))) + 1, int(math.ceil(h * rel + (ly - y0))) + 1
        region = self._read_level(x0, y0, level, rw, rh)
        from PIL import Image

        im = Image.fromarray(region)
        box = (lx - x0, ly - y0, lx - x0 + w * rel, ly - y0 + h * rel)
        resample = Image.Resampling.BOX if rel > 1 else Image.Resampling.BICUBIC
        return np.asarray(im.resize((w, h), resample=resample, box=box))

    def dimensions_at_mpp(self, mpp: float) -> tuple[int, int]:
        base = self.require_mpp()[0]
        w, h = self.dimensions
        f = base / mpp
        return max(1, int(round(w * f))), max(1, int(round(h * f)))

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """An RGB overview whose longer side is at most ``max_size``, from the coarsest adequate level."""
        w, h = self.dimensions
        scale = max(w, h) / max_size
        level = self.best_level_for_downsample(max(scale, 1.0))
        lw, lh = self.level_dimensions[level]
        img = self._read_level(0, 0, level, lw, lh)
        if max(lw, lh) > max_size:
            from PIL import Image

            f = max_size / max(lw, lh)
            img = np.asarray(Image.fromarray(img).resize((max(1, round(lw * f)), max(1, round(lh * f))),
                                                         Image.Resampling.BOX))
        return img

    def to_dask(self, level: int = 0, chunk: int = 512):
        """A lazy ``dask.array`` of shape ``(h, w, 3)`` uint8 for ``level``; chunks are decoded on compute."""
        import dask.array as da

        if self._b.name == "tifffile" and not self._b._direct and self._b._axes == "YXS":
            arr = self._b._zarr_arrays()[level]
            if arr.shape[-1] == 3 and arr.dtype == np.uint8:
                return da.from_zarr(arr, chunks=(chunk, chunk, 3))
        lw, lh = self.level_dimensions[level]
        return da.from_array(_LevelView(self, level, (lh, lw, 3)), chunks=(chunk, chunk, 3), lock=False,
                             asarray=True, fancy=False, name=f"pathgen-slide-{Path(self.path).name}-{level}-"
                             f"{os.path.getmtime(self.path)}-{os.path.getsize(self.path)}")

    # associated images ----------------------------------------------------------------------------------------
    def associated_names(self) -> list[str]:
        return self._b.associated_names()

    def associated_image(self, name: str) -> np.ndarray:
        try:
            return self._b.associated(name)
        except KeyError:
            raise PathgenError(f"no associated image {name!r} (has: {', '.join(self.associated_names()) or 'none'})",
                               self.path) from None


class _LevelView:
    """Array-like view of one level for ``dask.array.from_array``: slicing reads only that region."""

    def __init__(self, slide: Slide, level: int, shape: tuple[int, int, int]):
        self.slide, self.level, self.shape = slide, level, shape
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key):
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        block = self.slide.read_level_region(x0, y0, self.level, max(x1 - x0, 0), max(y1 - y0, 0)) \
            if x1 > x0 and y1 > y0 else np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        return block[(slice(None), slice(None)) + tuple(key[2:])]


def open_slide(path: str | os.PathLike, mpp: float | tuple[float, float] | None = None) -> Slide:
    """Open a slide or image; raises :class:`PathgenError` with a one-line reason when it cannot."""
    return Slide(path, mpp=mpp)
