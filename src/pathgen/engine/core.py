"""The tile engine: run a function over batches of overlapping tiles and stitch the results without seams.

Geometry (:class:`TileGrid`): the output plane is cut into *cores* of ``tile × tile`` pixels; each window read for
processing is its core grown by ``overlap`` pixels on every side (the halo). Along each axis the windows' weights
form an exact partition of unity: 1 inside a core, and across each core border a ramp of width ``2·overlap``
(cosine² or linear) rising in one window exactly as it falls in its neighbour. The stitched value is therefore
``Σ wᵢ·fᵢ`` with ``Σ wᵢ = 1`` everywhere: identity in gives the input back exactly (after rounding), and smooth
functions stay smooth across borders. ``blend="none"`` uses hard 0/1 weights (each pixel from its own core; for
labels). ``blend="max"`` keeps the maximum over every window that covers a pixel (whole windows, halo included):
for label outputs where each window paints only the objects it owns, e.g. nuclei whose centroid lies in its core,
so an object cut by a core border is still drawn whole, once.

Streaming: windows are processed in raster order; a window row finalises the output rows above its lower ramp, so
only ``2·overlap`` rows (vertical carry) and one window's ``2·overlap`` columns (horizontal carry) are ever held as
floats, plus the finished rows waiting for the writer. Tasks run on a thread pool by default, on a local cluster of
processes with ``workers=N``, or on an existing dask.distributed scheduler; at most a few batches per worker are
in flight, so memory is bounded by tiles in flight, not by the slide. Without a halo (overlap 0: convert, stain
transforms) nothing needs blending, and :func:`iter_core_tiles` hands tiles to the pyramid writer one by one, so not
even a full-width row is held.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from pathgen.errors import PathgenError

TileFn = Callable[[np.ndarray], np.ndarray]
BLENDS = ("cosine", "linear", "none", "max")


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda[:N]`` is checked to exist."""
    device = (device or "auto").lower()
    if device == "cpu":
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PathgenError(f"device {device!r}: no CUDA GPU is available (use cpu or auto)", param="device")
        idx = int(device.split(":", 1)[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise PathgenError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible",
                               param="device")
        return device
    raise PathgenError(f"unknown device {device!r} (use auto, cpu or cuda[:N])", param="device")


def ramp(n: int, kind: str) -> np.ndarray:
    """Rising weights over ``n`` pixels with ``r[t] + r[n-1-t] = 1`` exactly (partition of unity)."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    if kind == "cosine":
        return np.sin(0.5 * np.pi * t) ** 2
    if kind == "linear":
        return t
    raise PathgenError(f"unknown blend {kind!r} (choose {', '.join(BLENDS)})")


@dataclass(frozen=True)
class TileGrid:
    """Cores of ``tile`` pixels with ``overlap`` halo on each side over a ``width × height`` output plane."""

    width: int
    height: int
    tile: int = 512
    overlap: int = 32

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0:
            raise PathgenError(f"empty output plane {self.width}x{self.height}")
        if self.tile <= 0:
            raise PathgenError(f"tile size must be positive, got {self.tile}")
        if self.overlap < 0 or 2 * self.overlap > self.tile:
            raise PathgenError(f"overlap must be in 0..tile/2 ({self.tile // 2}), got {self.overlap}")

    @property
    def window(self) -> int:
        return self.tile + 2 * self.overlap

    @property
    def nx(self) -> int:
        return math.ceil(self.width / self.tile)

    @property
    def ny(self) -> int:
        return math.ceil(self.height / self.tile)

    def __len__(self) -> int:
        return self.nx * self.ny

    def origin(self, tx: int, ty: int) -> tuple[int, int]:
        """Top-left of window (tx, ty) in output pixels (may be negative: the halo reaches outside)."""
        return tx * self.tile - self.overlap, ty * self.tile - self.overlap

    def weights_1d(self, index: int, count: int, blend: str) -> np.ndarray:
        """Weights along one axis for window ``index`` of ``count`` (length ``window``)."""
        o, s = self.overlap, self.tile
        w = np.zeros(self.window, np.float64)
        if blend == "max":
            return np.ones(self.window, np.float64)
        if blend == "none" or o == 0:
            w[o:o + s] = 1.0
            return w
        r = ramp(2 * o, blend)
        w[2 * o:s] = 1.0
        w[:2 * o] = r if index > 0 else 1.0
        w[s:s + 2 * o] = r[::-1] if index < count - 1 else 1.0
        return w


@dataclass
class EngineConfig:
    """How tiles are cut, batched, blended and scheduled (saved with outputs)."""

    tile_size: int = 512
    overlap: int | None = None  # None: the method's halo (pathgen.engine.job.engine_geometry); 32 for bare runs
    batch_size: int = 8
    blend: str = "cosine"
    workers: int | None = None  # None: threads in this process; N: a local cluster of N processes
    threads: int | None = None  # threads for the default pool (default: CPU count)
    scheduler: str | None = None  # address of an existing dask.distributed scheduler
    device: str = "auto"
    skip_background: bool = True
    background: float | tuple[float, ...] = 255.0  # fill of skipped windows: one value or one per channel
    in_flight_per_worker: int = 2


# ---------------------------------------------------------------------------------------------------------------
# Sources: where windows come from


class ArraySource:
    """Windows of an in-memory ``(h, w, c)`` array (image files, tests); outside pixels repeat the edge."""

    def __init__(self, array: np.ndarray, pad_mode: str = "reflect"):
        self.array = array if array.ndim == 3 else array[..., None]
        self.pad_mode = pad_mode

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape[0], self.array.shape[1]

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return _read_padded(self.array, x, y, w, h, self.pad_mode)


def _read_padded(arr, x, y, w, h, mode):
    H, W = arr.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    block = np.asarray(arr[y0:y1, x0:x1])
    pads = ((y0 - y, y + h - y1), (x0 - x, x + w - x1), (0, 0))
    if any(p for pair in pads for p in pair):
        # reflect needs at least 2 pixels; tiny images fall back to edge
        m = mode if min(block.shape[0], block.shape[1]) > 1 and all(
            p[0] < s and p[1] < s for p, s in zip(pads[:2], block.shape[:2])) else "edge"
        block = np.pad(block, pads, mode=m)
    return block


class SlideSource:
    """Windows of a slide at a pyramid level or at a target mpp; the halo outside the slide reflects the edge so
    convolutional models see tissue-like context rather than a hard white border."""

    def __init__(self, slide, level: int | None = 0, mpp: float | None = None):
        self.slide = slide
        self.level = level
        self.mpp = mpp
        if mpp is not None:
            self.width, self.height = slide.dimensions_at_mpp(mpp)
        else:
            self.width, self.height = slide.level_dimensions[level or 0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def out_mpp(self) -> tuple[float, float] | None:
        if self.mpp is not None:
            return (self.mpp, self.mpp * self.slide.mpp[1] / self.slide.mpp[0])
        return self.slide.level_mpp(self.level or 0)

    @property
    def level0_per_px(self) -> tuple[float, float]:
        w0, h0 = self.slide.dimensions
        return w0 / self.width, h0 / self.height

    def _read_inside(self, x, y, w, h):
        if self.mpp is None:
            return self.slide.read_level_region(x, y, self.level or 0, w, h)
        fx, fy = self.level0_per_px
        return self.slide.read_region_mpp((int(round(x * fx)), int(round(y * fy))), self.mpp, (w, h))

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
        inside = self._read_inside(x0, y0, x1 - x0, y1 - y0)
        if (x0, y0, x1, y1) == (x, y, x + w, y + h):
            return inside
        return _read_padded(inside, x - x0, y - y0, w, h, "reflect")


# ---------------------------------------------------------------------------------------------------------------
# Execution


class _Executor:
    """A thread pool, a local process cluster, or a remote dask scheduler behind one ``submit``."""

    def __init__(self, cfg: EngineConfig):
        self.client = None
        self.pool = None
        self.cluster = None
        if cfg.scheduler:
            from distributed import Client

            try:
                self.client = Client(cfg.scheduler, timeout="10s")
            except OSError as exc:
                raise PathgenError(f"cannot reach dask scheduler {cfg.scheduler} ({exc})") from exc
            self.slots = max(1, sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values()))
        elif cfg.workers:
            from distributed import Client, LocalCluster

            device = cfg.device or "auto"
            if device.startswith("cuda"):
                try:
                    from dask_cuda import LocalCUDACluster  # one worker per GPU

                    self.cluster = LocalCUDACluster()
                except ImportError:
                    raise PathgenError("several GPU workers need the 'gpu' extra (pip install pathgen[gpu])") \
                        from None
            else:
                self.cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=40)
            self.client = Client(self.cluster)
            self.slots = cfg.workers
        else:
            n = cfg.threads or os.cpu_count() or 1
            self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="pathgen-tile")
            self.slots = n

    def submit(self, fn, *args) -> Future:
        if self.client is not None:
            return self.client.submit(fn, *args, pure=False)
        return self.pool.submit(fn, *args)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _run_batch(source, fn, windows: list[tuple[int, int]], wsize: int, skip: list[bool], background: float,
               out_channels: int | None) -> np.ndarray | list:
    """Read the batch's windows, call ``fn`` once on the stacked tissue windows, fill the others."""
    todo = [i for i, s in enumerate(skip) if not s]
    results: list = [None] * len(windows)
    records: list = [None] * len(windows)
    if todo and fn is identity:  # nothing to compute: hand the windows on as read, without stacking a batch
        for i in todo:
            results[i] = source.read(windows[i][0], windows[i][1], wsize, wsize)
        return results, records
    if todo:
        batch = np.stack([source.read(windows[i][0], windows[i][1], wsize, wsize) for i in todo])
        out = fn(batch, [windows[i] for i in todo]) if getattr(fn, "wants_origins", False) else fn(batch)
        if isinstance(out, tuple):  # (arrays, one record per tile): side outputs such as polygons
            out, recs = out
            for k, i in enumerate(todo):
                records[i] = recs[k]
        out = np.asarray(out)
        if out.ndim == 3:
            out = out[..., None]
        if out.shape[:3] != (len(todo), wsize, wsize):
            raise PathgenError(f"tile function returned shape {out.shape}, expected ({len(todo)}, {wsize}, {wsize}, C)")
        for k, i in enumerate(todo):
            results[i] = out[k]
    return results, records


class Stitcher:
    """Accumulates weighted windows in raster order and yields finished output rows (see module docstring)."""

    def __init__(self, grid: TileGrid, channels: int, dtype, blend: str, background: float):
        self.g, self.c, self.dtype, self.blend, self.bg = grid, channels, np.dtype(dtype), blend, background
        self.acc_dtype = np.float64 if (self.dtype.kind in "iu" and self.dtype.itemsize > 2) else np.float32
        if blend == "max":  # no arithmetic: combine in the output type
            self.acc_dtype = self.dtype
        self.combine = np.maximum if blend == "max" else np.add
        self.bg = np.broadcast_to(np.asarray(background, np.float64), (channels,)).astype(self.acc_dtype)
        o = grid.overlap
        self.wy = [grid.weights_1d(i, grid.ny, blend) for i in range(grid.ny)]
        self.wx = [grid.weights_1d(i, grid.nx, blend) for i in range(grid.nx)]
        self.vcarry = np.zeros((2 * o, grid.width, channels), self.acc_dtype)
        info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self.lo, self.hi = (info.min, info.max) if info else (None, None)

    def _finish(self, block: np.ndarray) -> np.ndarray:
        if block.dtype == self.dtype:
            return block
        if self.dtype.kind in "iu":
            return np.clip(np.rint(block), self.lo, self.hi).astype(self.dtype)
        return block.astype(self.dtype)

    def row(self, ty: int, tiles: Sequence[np.ndarray | None]) -> np.ndarray:
        """Blend window row ``ty`` (``tiles[tx]``, None = background) and return the output rows it finishes."""
        g, o, s, c = self.g, self.g.overlap, self.g.tile, self.c
        last = ty == g.ny - 1
        keep = s + 2 * o if last else s  # window rows finished by this row (the rest waits for the next row)
        y_top = ty * s - o
        out = np.empty((keep, g.width, c), self.dtype)
        wy = self.wy[ty].astype(self.acc_dtype)
        hcarry = np.zeros((s + 2 * o, 2 * o, c), self.acc_dtype)
        for tx in range(g.nx):
            t = tiles[tx]
            if o == 0:
                # no halo: every pixel comes from its own core; copy without float arithmetic
                self._copy_core(out, t, tx * s)
                continue
            if self.blend == "max":
                blk = np.zeros((g.window, g.window, c), self.acc_dtype) if t is None else t.astype(self.acc_dtype)
                if t is not None and t.shape[-1] != c:
                    raise PathgenError(f"tile function returned {t.shape[-1]} channels, expected {c}")
            else:
                blk = self._weighted(t, wy, self.wx[tx].astype(self.acc_dtype))
            if o:
                blk[:, :2 * o] = self.combine(blk[:, :2 * o], hcarry)
                hcarry = blk[:, s:s + 2 * o].copy()
            self._emit(out, blk[:, :s], tx * s - o, last)
        if o:
            self._emit(out, hcarry, g.nx * s - o, last)
        y0, y1 = max(y_top, 0), min(g.height, y_top + keep)
        return out[y0 - y_top:y1 - y_top]

    def _weighted(self, t, wy, wx):
        c = self.c
        w2 = wy[:, None, None] * wx[None, :, None]
        if t is None:
            return w2 * self.bg[None, None, :]
        if t.shape[-1] != c:
            raise PathgenError(f"tile function returned {t.shape[-1]} channels, expected {c}")
        return t.astype(self.acc_dtype) * w2

    def core_tile(self, t: np.ndarray | None, th: int, tw: int) -> np.ndarray:
        """The ``th × tw`` core of a window without halo, in the output type (background where ``t`` is None)."""
        if t is None:
            return np.broadcast_to(self._finish(self.bg), (th, tw, self.c)).copy()
        if t.shape[-1] != self.c:
            raise PathgenError(f"tile function returned {t.shape[-1]} channels, expected {self.c}")
        return self._finish(t[:th, :tw] if t.dtype == self.dtype else t[:th, :tw].astype(self.acc_dtype))

    def _copy_core(self, out: np.ndarray, t: np.ndarray | None, x0: int) -> None:
        b = min(x0 + self.g.tile, self.g.width)
        if t is not None and t.shape[-1] != self.c:
            raise PathgenError(f"tile function returned {t.shape[-1]} channels, expected {self.c}")
        if t is None:
            out[:, x0:b] = self._finish(self.bg)
        elif t.dtype == self.dtype:
            out[:, x0:b] = t[:out.shape[0], :b - x0]
        else:
            out[:, x0:b] = self._finish(t[:out.shape[0], :b - x0].astype(self.acc_dtype))

    def _emit(self, out: np.ndarray, cols: np.ndarray, x0: int, last: bool) -> None:
        """Columns ``[x0, x0 + cols.shape[1])`` are horizontally complete: add the vertical carry to their top
        ramp, keep their bottom ramp as the next carry, and write the finished rows."""
        o, s = self.g.overlap, self.g.tile
        a, b = max(x0, 0), min(x0 + cols.shape[1], self.g.width)
        if b <= a:
            return
        blk = cols[:, a - x0:b - x0]
        if o:
            blk[:2 * o] = self.combine(blk[:2 * o], self.vcarry[:, a:b])
            if not last:
                self.vcarry[:, a:b] = blk[s:s + 2 * o]
        out[:, a:b] = self._finish(blk[:out.shape[0]])


@dataclass
class RunReport:
    """What a run did: window counts and where the output went."""

    windows: int = 0
    processed: int = 0
    skipped: int = 0
    output: str | None = None
    shape: tuple[int, int, int] | None = None
    mpp: tuple[float, float] | None = None
    records: list = field(default_factory=list)  # side outputs of the tile function, in raster order
    extra: dict = field(default_factory=dict)


def _grid_for(source, cfg: EngineConfig) -> TileGrid:
    h, w = source.shape
    if cfg.blend not in BLENDS:
        raise PathgenError(f"unknown blend {cfg.blend!r} (choose {', '.join(BLENDS)})")
    return TileGrid(w, h, cfg.tile_size, 32 if cfg.overlap is None else cfg.overlap)


def _iter_window_results(source, fn: TileFn, grid: TileGrid, out_channels: int, cfg: EngineConfig, tissue,
                         report: RunReport, progress_desc: str, quiet: bool | None,
                         record_sink: Callable[[object], None] | None, first_row: int = 0,
                         row_done: Callable[[int], None] | None = None) -> Iterator[tuple[int, int, object]]:
    """``(ty, tx, result)`` for every window of rows ``first_row..`` in raster order (``result`` None for skipped
    background), computed in batches on the executor with a bounded number in flight. ``row_done(ty)`` is called
    once every window of row ``ty`` has been computed (its records sunk), before the row is handed on."""
    from pathgen.progress import progress_bar

    report.windows = len(grid)
    scale = getattr(source, "level0_per_px", (1.0, 1.0))

    def skip_of(tx, ty) -> bool:
        if tissue is None or not cfg.skip_background:
            return False
        x0, y0 = tx * grid.tile, ty * grid.tile
        return not tissue.covers(x0 * scale[0], y0 * scale[1], (x0 + grid.tile) * scale[0],
                                 (y0 + grid.tile) * scale[1])

    # batches within one window row, in raster order
    bs = max(1, cfg.batch_size)
    batches = [(ty, list(range(start, min(start + bs, grid.nx))))
               for ty in range(first_row, grid.ny) for start in range(0, grid.nx, bs)]
    ex = _Executor(cfg)
    max_in_flight = max(2, ex.slots * cfg.in_flight_per_worker)
    try:
        with progress_bar(len(grid), progress_desc, unit="tiles", quiet=quiet) as bar:
            bar.advance(first_row * grid.nx)  # a resumed job: these windows were done by an earlier run
            futures: deque = deque()
            nxt = 0
            while nxt < len(batches) or futures:
                while nxt < len(batches) and len(futures) < max_in_flight:
                    ty, txs = batches[nxt]
                    skip = [skip_of(tx, ty) for tx in txs]
                    wins = [grid.origin(tx, ty) for tx in txs]
                    fut = ex.submit(_run_batch, source, fn, wins, grid.window, skip, cfg.background, out_channels)
                    futures.append((ty, txs, skip, fut))
                    nxt += 1
                ty, txs, skip, fut = futures.popleft()
                results, records = fut.result()
                report.processed += sum(1 for s in skip if not s)
                report.skipped += sum(skip)
                for tx, r, rec in zip(txs, results, records):
                    if rec is not None:
                        (record_sink or report.records.append)(rec)
                    if tx == grid.nx - 1 and row_done is not None:
                        row_done(ty)
                    yield ty, tx, r
                bar.advance(len(txs))
    finally:
        ex.close()


def iter_stitched_rows(source, fn: TileFn, out_channels: int, out_dtype=np.uint8, cfg: EngineConfig = EngineConfig(),
                       tissue=None, report: RunReport | None = None, progress_desc: str = "tiles",
                       quiet: bool | None = None, record_sink: Callable[[object], None] | None = None,
                       start_y: int = 0, row_done: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Run ``fn`` over every window of ``source`` and yield stitched output rows, top to bottom.

    Parameters
    ----------
    source : ArraySource or SlideSource
        Anything with ``shape -> (h, w)`` and ``read(x, y, w, h) -> (h, w, c)`` in output pixels.
    fn : callable
        ``fn(batch)`` with ``batch`` of shape ``(n, win, win, c_in)`` uint8 returning ``(n, win, win, out_channels)``
        (any numeric dtype; values are rounded and clipped to ``out_dtype``). ``win = tile_size + 2·overlap``.
        With ``fn.wants_origins = True`` it is called as ``fn(batch, origins)`` with each window's top-left in
        output pixels; it may return ``(arrays, records)`` with one side record per tile (e.g. polygons).
    record_sink : callable, optional
        Receives each non-None record in raster order; without it records are kept in ``report.records``.
    start_y : int
        First output row wanted (a resumed job): the windows are computed from the first window row that
        reaches it (one row earlier when blending needs that row's lower ramp), and rows above are dropped.
    row_done : callable, optional
        Called with each window row's index once all its windows are computed.
    tissue : TissueMask, optional
        With ``cfg.skip_background``, windows whose core has no tissue are not processed: they are filled with
        ``cfg.background``.
    """
    grid = _grid_for(source, cfg)
    report = report if report is not None else RunReport()
    stitcher = Stitcher(grid, out_channels, out_dtype, cfg.blend, cfg.background)
    first = first_window_row(grid, start_y)
    row_tiles: list = [None] * grid.nx
    for ty, tx, r in _iter_window_results(source, fn, grid, out_channels, cfg, tissue, report, progress_desc, quiet,
                                          record_sink, first, row_done):
        row_tiles[tx] = r
        if tx == grid.nx - 1:
            rows = stitcher.row(ty, row_tiles)
            top = max(ty * grid.tile - grid.overlap, 0)  # output row of rows[0]
            if top + rows.shape[0] > start_y:
                yield rows[max(start_y - top, 0):]
            row_tiles = [None] * grid.nx


def first_window_row(grid: TileGrid, start_y: int) -> int:
    """The first window row to compute so that stitched output from row ``start_y`` on is exact: the row whose
    output reaches ``start_y``, or the one before it when its lower ramp (the vertical carry) blends into it."""
    if start_y <= 0:
        return 0
    o, s = grid.overlap, grid.tile
    if o == 0:
        return min(start_y // s, grid.ny - 1)
    r = min((start_y + o) // s, grid.ny - 1)
    return max(r - 1, 0)


def iter_core_tiles(source, fn: TileFn, out_channels: int, out_dtype=np.uint8, cfg: EngineConfig = EngineConfig(),
                    tissue=None, report: RunReport | None = None, progress_desc: str = "tiles",
                    quiet: bool | None = None, record_sink: Callable[[object], None] | None = None,
                    start_row: int = 0, row_done: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Like :func:`iter_stitched_rows` for grids without overlap: yields each output tile ``(th, tw, c)`` (clipped
    at the right and bottom edges) in raster order, so that nothing as wide as the slide is ever held. A resumed
    job starts at tile row ``start_row``."""
    grid = _grid_for(source, cfg)
    if grid.overlap:
        raise PathgenError("iter_core_tiles needs overlap 0 (blending needs whole rows)")
    report = report if report is not None else RunReport()
    stitcher = Stitcher(grid, out_channels, out_dtype, cfg.blend, cfg.background)
    for ty, tx, r in _iter_window_results(source, fn, grid, out_channels, cfg, tissue, report, progress_desc, quiet,
                                          record_sink, start_row, row_done):
        th, tw = min(grid.tile, grid.height - ty * grid.tile), min(grid.tile, grid.width - tx * grid.tile)
        yield stitcher.core_tile(r, th, tw)


def process_array(image: np.ndarray, fn: TileFn, out_channels: int | None = None, out_dtype=None,
                  cfg: EngineConfig = EngineConfig(), tissue=None) -> np.ndarray:
    """Run ``fn`` over an in-memory image with the same tiling and blending as slides; returns the stitched
    ``(h, w, out_channels)`` array (for image files and tests)."""
    image = np.asarray(image)
    src = ArraySource(image)
    c = out_channels or src.array.shape[2]
    dt = np.dtype(out_dtype or image.dtype)
    rows = list(iter_stitched_rows(src, fn, c, dt, cfg, tissue=tissue, quiet=True))
    return np.concatenate(rows, axis=0)


def identity(batch: np.ndarray) -> np.ndarray:
    """The identity tile function (used by ``pathgen convert`` and the engine's tests)."""
    return batch

