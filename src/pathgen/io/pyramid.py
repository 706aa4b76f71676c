"""Streaming pyramid writers: generic pyramidal TIFF (OpenSlide, QuPath, tiffslide) and OME-Zarr (NGFF).

Input is level 0 as tiles in raster order (:func:`write_pyramid_tiles`) or as full-width row blocks
(:func:`write_pyramid`). Every coarser level is built tile by tile: each tile's 2×2 reduction (area mean for images,
nearest for labels) is parked, LZ4-compressed, in a temporary file beside the output, because a TIFF must hold
level k entirely before level k+1 begins; level k+1's tiles are put together from those pieces afterwards. Tiles
are reduced and JPEG-encoded on a thread pool. Memory is the tiles in flight, whatever the slide size.

TIFF layout (see ANCHORS.md §6): BigTIFF; square tiles (512 by default); every level in the main IFD chain, the
coarser ones marked reduced-resolution (NewSubfileType = 1) because OpenSlide ignores SubIFDs; levels ×2 down to
one tile; JPEG for RGB, Deflate for labels and masks; ``XResolution = 10⁴/mpp`` per centimetre plus an
``MPP = …`` description for readers that only parse descriptions; a small stripped thumbnail last.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
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
    """Collect rows and hand them on in blocks of ``rows`` (the last block may be shorter)."""

    def __init__(self, rows: int, width: int, channels: int, dtype, total: int, emit: Callable[[np.ndarray], None]):
        self.rows, self.total, self.emit = rows, total, emit
        self.width, self.channels, self.dtype = width, channels, dtype
        self.buf: np.ndarray | None = None
        self.fill = 0
        self.done = 0

    def push(self, block: np.ndarray) -> None:
        if self.fill == 0 and (block.shape[0] == self.rows or self.done + block.shape[0] == self.total) \
                and block.shape[0] <= self.rows:
            self.emit(block)  # already a whole block: pass it on without copying
            self.done += block.shape[0]
            return
        if self.buf is None:
            self.buf = np.empty((self.rows, self.width, self.channels), self.dtype)
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


def _rows_to_tiles(tile_rows: Iterable[np.ndarray], spec: "PyramidSpec", path, start_row: int = 0,
                   on_band: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Full-width row blocks (any heights) → level-0 tiles in raster order, clipped at the right/bottom edge.

    ``start_row`` (a multiple of the tile size) is the first row the blocks hold (a resumed job);
    ``on_band(k)`` is called when band ``k`` (tile row ``k``) is complete, before its tiles are handed on.
    """
    h, w, c = spec.shape
    t = spec.tile_size
    bands: list[np.ndarray] = []
    buf = _RowBuffer(t, w, c, spec.dtype, h, bands.append)
    buf.done = start_row
    band_index = start_row // t
    for rows in tile_rows:
        rows = np.asarray(rows)
        if rows.ndim == 2:
            rows = rows[..., None]
        if rows.shape[1:] != (w, c):
            raise PathgenError(f"tile row of shape {rows.shape} does not match image width/channels ({w}, {c})", path)
        if buf.done + buf.fill + rows.shape[0] > h:
            raise PathgenError(f"received more than the {h} rows of the image", path)
        buf.push(rows.astype(spec.dtype, copy=False))
        while bands:
            band = bands.pop(0)
            if on_band is not None:
                on_band(band_index)
            band_index += 1
            for x in range(0, w, t):
                yield band[:, x:x + t]
    if buf.done < h:
        raise PathgenError(f"the row stream ended after {buf.done + buf.fill} of {h} rows", path)


class _PieceStore:
    """Halved tiles waiting for their level, parked LZ4-compressed in one temporary file: a TIFF must hold level k
    entirely before level k+1 begins, and keeping the pieces off the heap keeps memory flat as slides grow."""

    def __init__(self, path: Path):
        self._f = open(path, "w+b")
        self._fd = self._f.fileno()
        self._end = 0
        self._index: dict = {}
        self._lock = threading.Lock()

    def put(self, key, arr: np.ndarray) -> bytes:
        """Park ``arr`` under ``key``; returns its LZ4 encoding (what a job journal stores)."""
        import imagecodecs

        arr = np.ascontiguousarray(arr)
        data = imagecodecs.lz4_encode(arr, header=True)
        self.put_encoded(key, data, arr.shape, arr.dtype)
        return data

    def put_encoded(self, key, data: bytes, shape, dtype) -> None:
        with self._lock:
            off = self._end
            self._end += len(data)
            self._index[key] = (off, len(data), tuple(shape), np.dtype(dtype))
        os.pwrite(self._fd, data, off)

    def take(self, key) -> np.ndarray | None:
        """The piece stored under ``key`` (read once, then forgotten), or None where the grid has none."""
        import imagecodecs

        entry = self._index.pop(key, None)
        if entry is None:
            return None
        off, n, shape, dtype = entry
        raw = imagecodecs.lz4_decode(os.pread(self._fd, n, off), header=True)
        return np.frombuffer(raw, dtype).reshape(shape)

    def close(self) -> None:
        self._f.close()


def _pad_to(tile: np.ndarray, size: int) -> np.ndarray:
    """Pad a clipped edge tile to ``size × size`` by repeating its last row/column (no ringing against black)."""
    ph, pw = size - tile.shape[0], size - tile.shape[1]
    if ph or pw:
        return np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return tile


def _ordered_map(pool: ThreadPoolExecutor, fn, args_iter: Iterable[tuple], depth: int) -> Iterator:
    """``fn(*args)`` for every item on ``pool``, results in input order, at most ``depth`` in flight."""
    pending: deque[Future] = deque()
    try:
        for args in args_iter:
            pending.append(pool.submit(fn, *args))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


class _TilePyramid:
    """Builds every level tile by tile. Each level-k tile is finished (padded, and JPEG-encoded when the output is
    JPEG) on a thread pool; its 2× reduction goes to the piece store, from which the tiles of level k+1 are put
    together once level k is complete. Memory is the tiles in flight, whatever the slide size."""

    def __init__(self, spec: "PyramidSpec", scratch: Path, workers: int | None, finish: Callable[[np.ndarray], object],
                 journal=None):
        self.spec = spec
        self.journal = journal  # a pathgen.io.journal.JobJournal: level-0 bands are stored as they finish
        self.band_states: dict[int, object] = {}
        self._bands: dict[int, dict] = {}
        self._band_lock = threading.Lock()
        self.t = spec.tile_size
        self.shapes = level_shapes(spec.shape[0], spec.shape[1], spec.tile_size)
        self.grids = [(math.ceil(h / self.t), math.ceil(w / self.t)) for h, w in self.shapes]
        self.store = _PieceStore(scratch / "pieces.bin")
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pathgen-pyramid")
        self.finish = finish
        self.last: np.ndarray | None = None  # the coarsest level (one tile), for the thumbnail

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    def _expected(self, k: int, ty: int, tx: int) -> tuple[int, int]:
        h, w = self.shapes[k]
        return min(self.t, h - ty * self.t), min(self.t, w - tx * self.t)

    def _assemble(self, k: int, ty: int, tx: int) -> np.ndarray:
        eh, ew = self._expected(k, ty, tx)
        out = np.empty((eh, ew, self.spec.shape[2]), self.spec.dtype)
        half = self.t // 2
        for dy in (0, 1):
            for dx in (0, 1):
                piece = self.store.take((k, 2 * ty + dy, 2 * tx + dx))
                if piece is not None:
                    out[dy * half:dy * half + piece.shape[0], dx * half:dx * half + piece.shape[1]] = piece
        return out

    def _work(self, k: int, ty: int, tx: int, tile: np.ndarray | None):
        """Finish one tile of level ``k``; park its reduction. Returns the finished tile, and for level 0 under a
        journal ``(finished, reduction entry)`` where the entry is ``(description, LZ4 bytes)``."""
        if tile is None:
            tile = self._assemble(k, ty, tx)
        else:
            eh, ew = self._expected(k, ty, tx)
            tile = np.asarray(tile)
            if tile.ndim == 2:
                tile = tile[..., None]
            if tile.shape[0] < eh or tile.shape[1] < ew or tile.shape[2] != self.spec.shape[2]:
                raise PathgenError(f"tile ({ty}, {tx}) has shape {tile.shape}, expected ({eh}, {ew}, "
                                   f"{self.spec.shape[2]})")
            tile = tile[:eh, :ew].astype(self.spec.dtype, copy=False)
        piece = None
        if k + 1 < len(self.shapes):
            small = downsample2(tile, self.spec.downsample)
            data = self.store.put((k + 1, ty, tx), small)
            piece = ({"shape": list(small.shape), "dtype": small.dtype.str}, data)
        else:
            self.last = tile
            if k == 0 and self.journal is not None:  # a one-level image: the thumbnail needs the tile itself
                from pathgen.io.journal import encode_array

                piece = ({**encode_array(tile)[0], "last": True}, encode_array(tile)[1])
        finished = self.finish(tile)
        if k == 0 and self.journal is not None:
            return finished, piece
        return finished

    def level(self, k: int, tiles: Iterable[np.ndarray] | None = None, path=None) -> Iterator:
        """Finished tiles of level ``k`` in raster order; level 0 from ``tiles``, the others from the store."""
        ny, nx = self.grids[k]
        if k == 0:
            if self.journal is not None:
                return self._journaled_level0(tiles, path)
            args = self._level0_args(tiles, ny * nx, path)
        else:
            args = ((k, ty, tx, None) for ty in range(ny) for tx in range(nx))
        return _ordered_map(self.pool, self._work, args, 2 * self.workers + 2)

    def _journaled_level0(self, tiles, path) -> Iterator:
        """Level 0 under a job journal: the bands a killed run finished come back from the journal (tiles as they
        were written, reductions parked again), the rest is computed, and each band is stored by the worker that
        finishes its last tile (so a band is saved as soon as it is whole, whatever the writer is doing)."""
        from pathgen.io.journal import decode_array

        ny, nx = self.grids[0]
        done = min(self.journal.resumed_bands, ny)
        for band in range(done):
            stored, pieces, _ = self.journal.read_band(band)
            for tx, ((desc, data), piece) in enumerate(zip(stored, pieces)):
                if piece is not None:
                    pdesc, pdata = piece
                    if pdesc.get("last"):
                        self.last = decode_array(pdesc, pdata)
                    else:
                        self.store.put_encoded((1, band, tx), pdata, pdesc["shape"], pdesc["dtype"])
                yield data if desc.get("kind") == "bytes" else decode_array(desc, data)
        args = self._level0_args(tiles, (ny - done) * nx, path, first=done * nx)
        yield from _ordered_map(self.pool, self._work_journaled, args, 2 * self.workers + 2)

    def _work_journaled(self, k: int, ty: int, tx: int, tile: np.ndarray) -> object:
        from pathgen.io.journal import encode_array

        finished, piece = self._work(k, ty, tx, tile)
        entry = ({"kind": "bytes"}, bytes(finished)) if isinstance(finished, (bytes, bytearray)) \
            else encode_array(finished)
        nx = self.grids[0][1]
        with self._band_lock:
            band = self._bands.setdefault(ty, {})
            band[tx] = (entry, piece)
            whole = len(band) == nx
            if whole:
                del self._bands[ty]
                state = self.band_states.pop(ty, None)
        if whole:
            order = [band[i] for i in range(nx)]
            self.journal.write_band(ty, [e for e, _ in order], [pc for _, pc in order], state)
        return finished

    def _level0_args(self, tiles, n: int, path, first: int = 0) -> Iterator[tuple]:
        nx = self.grids[0][1]
        it = iter(tiles)
        for i in range(first, first + n):
            try:
                tile = next(it)
            except StopIteration:
                raise PathgenError(f"the image stream ended after {i} of {first + n} tiles "
                                   f"(shape {self.spec.shape[1]}x{self.spec.shape[0]})", path) from None
            yield 0, i // nx, i % nx, tile
        if next(it, None) is not None:
            raise PathgenError(f"the image stream has more than the {n} tiles of its shape", path)


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
            raise PathgenError("JPEG needs 8-bit grey or RGB; write labels losslessly (zlib)", path,
                               param="compression")
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
                  inputs: tuple = (), maxworkers: int | None = None, journal=None,
                  band_state: Callable[[], object] | None = None) -> Path:
    """Stream a level-0 image, given as full-width row blocks, into a pyramidal TIFF at ``path``, atomically.

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
    maxworkers : int, optional
        Threads that reduce and encode tiles (default: CPU count).
    journal : pathgen.io.journal.JobJournal, optional
        Make the write resumable: finished level-0 bands are stored in the job's work folder, and the bands a
        killed run finished are replayed from it; ``tile_rows`` must then start at row
        ``journal.resumed_bands * tile_size`` (:func:`resume_row`). The file is assembled in the work folder.
    band_state : callable, optional
        With a journal: called as each band is complete; its (JSON-able) result is stored with the band (the
        caller's streaming state, e.g. a renumbering table).

    Returns
    -------
    Path of the written file. Nothing is left at ``path`` if anything fails.
    """
    spec = _make_spec(path, shape, dtype, tile_size, mpp, compression, quality, description, downsample)
    states: dict = {}
    start = resume_row(journal, spec.tile_size, spec.shape[0])
    hook = (lambda k: states.__setitem__(k, band_state())) if (journal is not None and band_state) else None
    return _write_tiff(path, spec, _rows_to_tiles(tile_rows, spec, path, start, hook), overwrite, thumbnail, inputs,
                       maxworkers, journal, states)


def resume_row(journal, tile_size: int, height: int) -> int:
    """First level-0 row a journaled pyramid write still needs (0 without a journal)."""
    if journal is None:
        return 0
    return min(journal.resumed_bands * tile_size, height)


def write_pyramid_tiles(path: str | os.PathLike, tiles: Iterable[np.ndarray], shape: tuple[int, ...],
                        dtype=np.uint8, tile_size: int = 512, mpp: tuple[float, float] | float | None = None,
                        compression: str = "jpeg", quality: int = 90, description: str | None = None,
                        overwrite: bool = False, downsample: str | None = None, thumbnail: int = 512,
                        inputs: tuple = (), maxworkers: int | None = None, journal=None) -> Path:
    """Like :func:`write_pyramid`, with level 0 given as ``tile_size`` tiles in raster order (row by row, left to
    right); edge tiles may be clipped to the image or full-size (the excess is ignored). Nothing wider than a tile
    is ever held, so memory does not grow with the slide. With a ``journal`` the tiles start at tile row
    ``journal.resumed_bands``."""
    spec = _make_spec(path, shape, dtype, tile_size, mpp, compression, quality, description, downsample)
    return _write_tiff(path, spec, tiles, overwrite, thumbnail, inputs, maxworkers, journal, {})


def _jpeg_encoder(spec: PyramidSpec) -> Callable[[np.ndarray], bytes]:
    """Encode a tile exactly as tifffile would for these tags (RGB → YCbCr 4:2:0, as Aperio does)."""
    import imagecodecs

    if spec.shape[2] == 3:
        kw = {"level": spec.quality, "colorspace": "RGB", "outcolorspace": "YCBCR", "subsampling": (2, 2)}
    else:
        kw = {"level": spec.quality}
    t = spec.tile_size

    def encode(tile: np.ndarray) -> bytes:
        tile = np.ascontiguousarray(_pad_to(tile, t))
        return imagecodecs.jpeg_encode(tile if tile.shape[2] == 3 else tile[..., 0], **kw)

    return encode


@contextlib.contextmanager
def _output_file(target: Path, overwrite: bool, inputs: tuple, journal) -> Iterator[Path]:
    """Where a pyramid is assembled: a temporary file beside ``target`` (renamed onto it on success, removed on
    failure), or, for a journaled job, a file in the job's work folder (kept on failure, so the job resumes)."""
    if journal is None:
        with atomic_path(target, overwrite=overwrite, inputs=inputs) as tmp:
            yield tmp
        return
    from pathgen.io.atomic import check_output

    check_output(target, overwrite=overwrite, inputs=inputs)
    tmp = journal.path("out" + target.suffix)
    yield tmp
    journal.path("placed").touch()  # the assembled file is whole: a run killed now only has to move it
    os.replace(tmp, target)


def _write_tiff(path, spec: PyramidSpec, tiles: Iterable[np.ndarray], overwrite: bool, thumbnail: int,
                inputs: tuple, maxworkers: int | None, journal=None, band_states: dict | None = None) -> Path:
    import tifffile

    shapes = level_shapes(spec.shape[0], spec.shape[1], spec.tile_size)
    h, w, c = spec.shape
    target = Path(path)
    if spec.description and spec.description.startswith("Aperio"):
        thumbnail = 0  # Aperio readers take the 2nd directory as thumbnail and later stripped ones as label/macro
    # JPEG tiles are encoded on the pyramid's own pool and handed to tifffile as bytes; other codecs go to tifffile
    # as padded arrays (it encodes them, a few at a time)
    pre_encode = spec.compression == "jpeg"
    t = spec.tile_size
    finish = _jpeg_encoder(spec) if pre_encode else (lambda tile: _pad_to(tile, t))
    tile_bytes = t * t * c * spec.dtype.itemsize
    with _output_file(target, overwrite, inputs, journal) as tmp:
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.levels.", dir=tmp.parent))
        pyr = _TilePyramid(spec, scratch, maxworkers, finish, journal)
        if band_states is not None:
            pyr.band_states = band_states
        try:
            with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
                for k, (lh, lw) in enumerate(shapes):
                    lvl_mpp = None if spec.mpp is None else (spec.mpp[0] * w / lw, spec.mpp[1] * h / lh)
                    kw = _tiff_kwargs(spec, lvl_mpp)
                    if not pre_encode:
                        kw.update(maxworkers=pyr.workers, buffersize=tile_bytes * pyr.workers * 2)
                    tif.write(pyr.level(k, tiles if k == 0 else None, path), shape=(lh, lw, c) if c > 1 else (lh, lw),
                              description=_description(spec, k, shapes), subfiletype=0 if k == 0 else 1, **kw)
                if thumbnail and c in (1, 3) and spec.dtype == np.uint8 and len(shapes) > 1 and pyr.last is not None:
                    thumb = _resize_longest(pyr.last, thumbnail)
                    tif.write(thumb if c > 1 else thumb[..., 0], photometric="rgb" if c == 3 else "minisblack",
                              compression="jpeg" if spec.compression == "jpeg" else "zlib",
                              subfiletype=1, description="thumbnail", metadata=None)
        finally:
            pyr.close()
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


def _resize_longest(img: np.ndarray, longest: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    f = min(1.0, longest / max(h, w))
    if f >= 1.0:
        return np.ascontiguousarray(img)
    pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    out = np.asarray(pil.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX))
    return out[..., None] if out.ndim == 2 else out


@contextlib.contextmanager
def _output_dir(target: Path, overwrite: bool, journal) -> Iterator[Path]:
    """Like :func:`_output_file` for folder outputs (OME-Zarr)."""
    if journal is None:
        with atomic_dir(target, overwrite=overwrite) as tmp:
            yield tmp
        return
    if target.exists() and not overwrite:
        raise PathgenError("output exists", target, param="overwrite")
    tmp = journal.path("out.zarr")
    if tmp.exists():
        shutil.rmtree(tmp)  # rebuilt from the stored bands
    tmp.mkdir()
    yield tmp
    journal.path("placed").touch()
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(tmp, target)


def write_ome_zarr(path: str | os.PathLike, tile_rows: Iterable[np.ndarray], shape: tuple[int, ...],
                   dtype=np.uint8, tile_size: int = 512, mpp: tuple[float, float] | float | None = None,
                   overwrite: bool = False, downsample: str | None = None, name: str = "image",
                   tiles: bool = False, journal=None, band_state: Callable[[], object] | None = None) -> Path:
    """Stream a level-0 image into an OME-Zarr (NGFF 0.5, zarr v3) multiscale image folder, atomically.

    ``tile_rows`` are full-width row blocks, or with ``tiles=True`` ``tile_size`` tiles in raster order (as for
    :func:`write_pyramid_tiles`). NGFF does not allow ``y, x, c``; the arrays are stored ``(c, y, x)`` with chunks
    ``(c, tile, tile)`` and the multiscale metadata carries µm scales when ``mpp`` is known. ``journal`` and
    ``band_state`` make the write resumable as for :func:`write_pyramid`.
    """
    import zarr
    from zarr.codecs import BloscCodec

    spec = _make_spec(path, shape, dtype, tile_size, mpp, "zlib", 90, None,
                      downsample or ("mean" if np.dtype(dtype) == np.uint8 else "nearest"))
    shapes = level_shapes(spec.shape[0], spec.shape[1], spec.tile_size)
    c, t = spec.shape[2], spec.tile_size
    states: dict = {}
    start = resume_row(journal, spec.tile_size, spec.shape[0])
    hook = (lambda k: states.__setitem__(k, band_state())) if (journal is not None and band_state) else None
    level0 = tile_rows if tiles else _rows_to_tiles(tile_rows, spec, path, start, hook)
    with _output_dir(Path(path), overwrite, journal) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arrays = [root.create_array(str(k), shape=(c, s[0], s[1]), chunks=(c, t, t),
                                    dtype=spec.dtype, compressors=BloscCodec(cname="zstd", clevel=3), fill_value=0)
                  for k, s in enumerate(shapes)]
        pyr = _TilePyramid(spec, Path(tmp), None, lambda tile: tile, journal)
        pyr.band_states = states
        try:
            for k in range(len(shapes)):
                nx = pyr.grids[k][1]
                for i, tile in enumerate(pyr.level(k, level0 if k == 0 else None, path)):
                    y, x = (i // nx) * t, (i % nx) * t
                    arrays[k][:, y:y + tile.shape[0], x:x + tile.shape[1]] = np.moveaxis(tile, -1, 0)
        finally:
            pyr.close()
            (Path(tmp) / "pieces.bin").unlink(missing_ok=True)
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
