"""Streaming pyramid writers: generic pyramidal TIFF (OpenSlide, QuPath, tiffslide) and OME-Zarr (NGFF).

Input is a stream of full-width *tile rows* of level 0, top to bottom. Every coarser level is built from that
stream as it passes (2×2 area mean for images, nearest for labels) and parked in a compressed temporary zarr beside
the output, because a TIFF must hold level 0 entirely before level 1 begins. Memory is a few tile rows per level,
whatever the slide size.

TIFF layout (see ANCHORS.md §6): BigTIFF; square tiles (512 by default); every level in the main IFD chain, the
coarser ones marked reduced-resolution (NewSubfileType = 1) because OpenSlide ignores SubIFDs; levels ×2 down to
one tile; JPEG for RGB, Deflate for labels and masks; ``XResolution = 10⁴/mpp`` per centimetre plus an
``MPP = …`` description for readers that only parse descriptions; a small stripped thumbnail last.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from pathgen import __version__
from pathgen.errors import PathgenError
from pathgen.io.atomic import atomic_dir, atomic_path

RGB_CODECS = ("jpeg", "zlib", "lzw", "zstd", "webp", "none")


def downsample2(block: np.ndarray, mode: str) -> np.ndarray:
    """Halve a ``(h, w, c)`` block: ``mode="mean"`` is a 2×2 box mean (rounded), ``"nearest"`` keeps the
    top-left sample (labels must never be averaged). Odd edges repeat their last row/column."""
    if mode == "nearest":
        return np.ascontiguousarray(block[::2, ::2])
    if block.dtype == np.uint8 and block.ndim == 3 and block.shape[2] in (1, 3):
        # Pillow's C box reduction: ~10× faster than numpy here, same rounding, partial edge boxes averaged
        from PIL import Image

        img = Image.fromarray(block[..., 0] if block.shape[2] == 1 else block)
        out = np.asarray(img.reduce(2))
        return out[..., None] if out.ndim == 2 else out
    h, w = block.shape[:2]
    if h % 2 or w % 2:
        block = np.pad(block, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    b = block.astype(np.uint16 if block.dtype.itemsize == 1 else np.uint32 if block.dtype.itemsize == 2
                     else np.float64)
    s = b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]
    if np.issubdtype(block.dtype, np.integer):
        return ((s + 2) // 4).astype(block.dtype)
    return (s / 4).astype(block.dtype)


def level_shapes(height: int, width: int, tile_size: int, min_size: int | None = None) -> list[tuple[int, int]]:
    """(h, w) of every pyramid level: halving (rounding up) until the level fits in one tile."""
    min_size = tile_size if min_size is None else min_size
    shapes = [(height, width)]
    while max(shapes[-1]) > min_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


class _RowBuffer:
    """Collect rows of one level and hand them on in blocks of ``rows`` (the last block may be shorter)."""

    def __init__(self, rows: int, width: int, channels: int, dtype, total: int, emit: Callable[[np.ndarray], None]):
        self.rows, self.total, self.emit = rows, total, emit
        self.buf = np.empty((rows, width, channels), dtype)
        self.fill = 0
        self.done = 0

    def push(self, block: np.ndarray) -> None:
        if self.fill == 0 and (block.shape[0] == self.rows or self.done + block.shape[0] == self.total) \
                and block.shape[0] <= self.rows:
            self.emit(block)  # already a whole block: pass it on without copying
            self.done += block.shape[0]
            return
        i = 0
        while i < block.shape[0]:
            take = min(self.rows - self.fill, block.shape[0] - i)
            self.buf[self.fill:self.fill + take] = block[i:i + take]
            self.fill += take
            i += take
            if self.fill == self.rows or self.done + self.fill == self.total:
                self.emit(self.buf[:self.fill].copy())
                self.done += self.fill
                self.fill = 0


class _Cascade:
    """Feeds level-0 tile rows through the pyramid: each level's completed rows go to its sink and, halved, to the
    next level's buffer. Even-height blocks keep the 2×2 pairs aligned across block boundaries."""

    def __init__(self, shapes, channels, dtype, tile_size, mode, sinks: list[Callable[[int, np.ndarray], None]]):
        self.shapes, self.mode = shapes, mode
        self.buffers: list[_RowBuffer] = []
        for k, (h, w) in enumerate(shapes):
            self.buffers.append(_RowBuffer(tile_size, w, channels, dtype, h, self._emitter(k, sinks[k])))

    def _emitter(self, k, sink):
        def emit(block):
            sink(k, block)
            if k + 1 < len(self.shapes):
                self.buffers[k + 1].push(downsample2(block, self.mode))

        return emit

    def push(self, rows: np.ndarray) -> None:
        self.buffers[0].push(rows)

    def check_complete(self) -> None:
        for k, b in enumerate(self.buffers):
            if b.done != self.shapes[k][0]:
                raise PathgenError(f"pyramid level {k} received {b.done} of {self.shapes[k][0]} rows")


def _iter_tiles(row_blocks: Iterable[np.ndarray], tile: int) -> Iterator[np.ndarray]:
    """Split full-width row blocks into ``tile × tile`` tiles in raster order (edge tiles padded by repetition,
    which keeps JPEG from ringing against a black border)."""
    for block in row_blocks:
        h, w = block.shape[:2]
        if h < tile:
            block = np.pad(block, ((0, tile - h), (0, 0), (0, 0)), mode="edge")
        for x in range(0, w, tile):
            t = block[:, x:x + tile]
            if t.shape[1] < tile:
                t = np.pad(t, ((0, 0), (0, tile - t.shape[1]), (0, 0)), mode="edge")
            yield t


@dataclass
class PyramidSpec:
    """What a pyramid writer needs to know before the first row arrives."""

    shape: tuple[int, int, int]  # (h, w, c) of level 0
    dtype: np.dtype
    tile_size: int = 512
    mpp: tuple[float, float] | None = None
    compression: str = "jpeg"
    quality: int = 90
    description: str | None = None
    downsample: str = "mean"  # "mean" for images, "nearest" for labels

    def validate(self, path) -> None:
        h, w, c = self.shape
        if h <= 0 or w <= 0:
            raise PathgenError(f"cannot write an empty image ({w}x{h})", path)
        if self.tile_size % 16 or self.tile_size < 16:
            raise PathgenError(f"tile size must be a positive multiple of 16, got {self.tile_size}", path)
        if self.compression not in RGB_CODECS:
            raise PathgenError(f"unknown compression {self.compression!r} (choose {', '.join(RGB_CODECS)})", path)
        if self.compression == "jpeg" and (np.dtype(self.dtype) != np.uint8 or c not in (1, 3)):
            raise PathgenError("JPEG needs 8-bit grey or RGB; use --compression zlib for labels", path)
        if not 1 <= self.quality <= 100:
            raise PathgenError(f"quality must be in 1..100, got {self.quality}", path)


def _tiff_kwargs(spec: PyramidSpec, level_mpp) -> dict:
    c = spec.shape[2]
    kw: dict = {"tile": (spec.tile_size, spec.tile_size), "dtype": spec.dtype, "metadata": None}
    if spec.compression == "jpeg":
        kw["compression"] = "jpeg"
        kw["compressionargs"] = {"level": spec.quality}
        # RGB JPEG: tifffile 2026.3's YCbCr path encodes wrong colours (checked), and RGB JPEG decodes everywhere.
        kw["photometric"] = "rgb" if c == 3 else "minisblack"
    elif spec.compression == "none":
        kw["photometric"] = "rgb" if c == 3 else "minisblack"
    else:
        kw["compression"] = spec.compression
        kw["photometric"] = "rgb" if c == 3 else "minisblack"
        if spec.compression in ("zlib", "lzw", "zstd") and np.issubdtype(spec.dtype, np.integer):
            kw["predictor"] = True
    if level_mpp is not None:
        kw["resolution"] = (1e4 / level_mpp[0], 1e4 / level_mpp[1])
        kw["resolutionunit"] = "CENTIMETER"
    return kw


def _description(spec: PyramidSpec, level: int, shapes) -> str:
    if spec.description and level == 0:
        return spec.description
    h, w = shapes[level]
    parts = [f"pathgen {__version__}", f"{w}x{h}", f"level={level}"]
    if spec.mpp is not None:
        ds = 2 ** level
        parts.append(f"MPP = {spec.mpp[0] * ds:.6f}")
        parts.append(f"AppMag = {10.0 / spec.mpp[0]:g}" if level == 0 else f"downsample = {ds}")
    return "|".join(parts)


def write_pyramid(path: str | os.PathLike, tile_rows: Iterable[np.ndarray], shape: tuple[int, ...],
                  dtype=np.uint8, tile_size: int = 512, mpp: tuple[float, float] | float | None = None,
                  compression: str = "jpeg", quality: int = 90, description: str | None = None,
                  overwrite: bool = False, downsample: str | None = None, thumbnail: int = 512,
                  inputs: tuple = (), maxworkers: int | None = None) -> Path:
    """Stream a level-0 image into a pyramidal TIFF at ``path``, atomically.

    Parameters
    ----------
    tile_rows : iterable of ndarray, each ``(rows, w, c)`` (or ``(rows, w)``)
        Level 0 from top to bottom. Any row counts are accepted; the total must equal ``shape[0]``.
    shape : (h, w) or (h, w, c)
        Level-0 shape in pixels.
    mpp : (x, y) or float, optional
        µm per pixel of level 0, written as resolution tags (px/cm) and in the description.
    compression : {"jpeg", "zlib", "lzw", "zstd", "webp", "none"}
        JPEG for RGB images; a lossless codec (zlib = Deflate) for labels and masks.
    downsample : {"mean", "nearest"}, optional
        How coarser levels are made; default ``"mean"`` for JPEG, ``"nearest"`` for integer images written
        losslessly with more than 8 bits or one channel (labels).
    thumbnail : int
        Longest side of the stripped thumbnail image written after the levels (0 for none).
    inputs : tuple of paths
        Files the output must never overwrite.

    Returns
    -------
    Path of the written file. Nothing is left at ``path`` if anything fails.
    """
    import tifffile

    spec = _make_spec(path, shape, dtype, tile_size, mpp, compression, quality, description, downsample)
    shapes = level_shapes(spec.shape[0], spec.shape[1], spec.tile_size)
    h, w, c = spec.shape
    target = Path(path)
    if spec.description and spec.description.startswith("Aperio"):
        thumbnail = 0  # Aperio readers take the 2nd directory as thumbnail and later stripped ones as label/macro
    with atomic_path(target, overwrite=overwrite, inputs=inputs) as tmp:
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.levels.", dir=tmp.parent))
        try:
            stores = [None] + [_scratch_array(scratch / f"{k}", s, c, spec) for k, s in enumerate(shapes) if k]
            sinks_seen = [0] * len(shapes)

            with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
                def level0_rows() -> Iterator[np.ndarray]:
                    # Pull rows from the caller, pass them down the cascade, hand level-0 blocks to tifffile.
                    pending: list[np.ndarray] = []

                    def sink(k, block):
                        if k == 0:
                            pending.append(block)
                        else:
                            y = sinks_seen[k]
                            stores[k][y:y + block.shape[0]] = block
                        sinks_seen[k] += block.shape[0]

                    cascade = _Cascade(shapes, c, spec.dtype, spec.tile_size, spec.downsample, [sink] * len(shapes))
                    for rows in tile_rows:
                        rows = np.asarray(rows)
                        if rows.ndim == 2:
                            rows = rows[..., None]
                        if rows.shape[1:] != (w, c):
                            raise PathgenError(f"tile row of shape {rows.shape} does not match image width/channels "
                                               f"({w}, {c})", path)
                        cascade.push(rows.astype(spec.dtype, copy=False))
                        while pending:
                            yield pending.pop(0)
                    cascade.check_complete()

                def lvl_mpp(k):
                    return None if spec.mpp is None else (spec.mpp[0] * w / shapes[k][1],
                                                          spec.mpp[1] * h / shapes[k][0])

                tif.write(_iter_tiles(level0_rows(), spec.tile_size), shape=(h, w, c) if c > 1 else (h, w),
                          description=_description(spec, 0, shapes), subfiletype=0, maxworkers=maxworkers,
                          **_tiff_kwargs(spec, lvl_mpp(0)))
                for k in range(1, len(shapes)):
                    lh, lw = shapes[k]
                    arr = stores[k]
                    blocks = (arr[y:y + spec.tile_size] for y in range(0, lh, spec.tile_size))
                    tif.write(_iter_tiles(blocks, spec.tile_size), shape=(lh, lw, c) if c > 1 else (lh, lw),
                              description=_description(spec, k, shapes), subfiletype=1, maxworkers=maxworkers,
                              **_tiff_kwargs(spec, lvl_mpp(k)))
                if thumbnail and c in (1, 3) and spec.dtype == np.uint8:
                    small = np.asarray(stores[-1][:]) if len(shapes) > 1 else None
                    if small is not None:
                        thumb = _resize_longest(small, thumbnail)
                        tif.write(thumb if c > 1 else thumb[..., 0], photometric="rgb" if c == 3 else "minisblack",
                                  compression="jpeg" if spec.compression == "jpeg" else "zlib",
                                  subfiletype=1, description="thumbnail", metadata=None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _make_spec(path, shape, dtype, tile_size, mpp, compression, quality, description, downsample) -> PyramidSpec:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = shape + (1,)
    if mpp is not None and np.isscalar(mpp):
        mpp = (float(mpp), float(mpp))
    dtype = np.dtype(dtype)
    if downsample is None:
        is_label = compression != "jpeg" and (dtype.itemsize > 1 or shape[2] == 1) and np.issubdtype(dtype, np.integer)
        downsample = "nearest" if is_label else "mean"
    spec = PyramidSpec(shape, dtype, int(tile_size), mpp, compression, int(quality), description, downsample)
    spec.validate(path)
    return spec


def _scratch_array(folder: Path, shape, c, spec: PyramidSpec):
    import zarr
    from zarr.codecs import ZstdCodec

    return zarr.create_array(store=str(folder), shape=(shape[0], shape[1], c), dtype=spec.dtype,
                             chunks=(spec.tile_size, spec.tile_size, c), compressors=ZstdCodec(level=1),
                             fill_value=0, overwrite=True, config={"write_empty_chunks": True})


def _resize_longest(img: np.ndarray, longest: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    f = min(1.0, longest / max(h, w))
    if f >= 1.0:
        return np.ascontiguousarray(img)
    pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    out = np.asarray(pil.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX))
    return out[..., None] if out.ndim == 2 else out


def write_ome_zarr(path: str | os.PathLike, tile_rows: Iterable[np.ndarray], shape: tuple[int, ...],
                   dtype=np.uint8, tile_size: int = 512, mpp: tuple[float, float] | float | None = None,
                   overwrite: bool = False, downsample: str | None = None, name: str = "image") -> Path:
    """Stream a level-0 image into an OME-Zarr (NGFF 0.5, zarr v3) multiscale image folder, atomically.

    Axes are ``y, x, c`` is not allowed by NGFF; the arrays are stored ``(c, y, x)`` with chunks
    ``(c, tile, tile)`` and the multiscale metadata carries µm scales when ``mpp`` is known.
    """
    import zarr
    from zarr.codecs import BloscCodec

    spec = _make_spec(path, shape, dtype, tile_size, mpp, "zlib", 90, None,
                      downsample or ("mean" if np.dtype(dtype) == np.uint8 else "nearest"))
    shapes = level_shapes(spec.shape[0], spec.shape[1], spec.tile_size)
    c = spec.shape[2]
    with atomic_dir(path, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arrays = [root.create_array(str(k), shape=(c, s[0], s[1]), chunks=(c, spec.tile_size, spec.tile_size),
                                    dtype=spec.dtype, compressors=BloscCodec(cname="zstd", clevel=3), fill_value=0)
                  for k, s in enumerate(shapes)]
        seen = [0] * len(shapes)

        def sink(k, block):
            y = seen[k]
            arrays[k][:, y:y + block.shape[0], :] = np.moveaxis(block, -1, 0)
            seen[k] += block.shape[0]

        cascade = _Cascade(shapes, c, spec.dtype, spec.tile_size, spec.downsample, [sink] * len(shapes))
        for rows in tile_rows:
            rows = np.asarray(rows)
            cascade.push(rows[..., None] if rows.ndim == 2 else rows)
        cascade.check_complete()
        base = spec.mpp or (1.0, 1.0)
        unit = "micrometer" if spec.mpp else None
        datasets = []
        for k, s in enumerate(shapes):
            sy, sx = base[1] * spec.shape[0] / s[0], base[0] * spec.shape[1] / s[1]
            datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale",
                                                                            "scale": [1.0, sy, sx]}]})
        axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
        if unit:
            axes[1]["unit"] = axes[2]["unit"] = unit
        root.attrs["ome"] = {"version": "0.5", "multiscales": [{"name": name, "axes": axes, "datasets": datasets}]}
    return Path(path)


def iter_row_blocks(array, rows: int) -> Iterator[np.ndarray]:
    """Row blocks of an in-memory or zarr/dask-like ``(h, w[, c])`` array, for small images and tests."""
    h = array.shape[0]
    for y in range(0, h, rows):
        yield np.asarray(array[y:y + rows])


def n_tiles(shape: tuple[int, int], tile_size: int) -> int:
    return math.ceil(shape[0] / tile_size) * math.ceil(shape[1] / tile_size)
