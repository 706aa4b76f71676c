"""The one slide-job path: every method that turns a slide into a slide (stain normalisation, SAASN, nuclei
segmentation, generated regions) runs through :func:`run_slide_job`.

A method provides one thing, a ``prepare(context) -> TileMethod`` callable: given the opened slide, its tissue
mask and the engine options (device already resolved), it loads its model, fits what it fits on the slide, and
returns its tile function together with what the engine must know (the halo it needs, output channels and type,
how windows combine, the fill of skipped background, its own section of the run record). The job does the rest,
the same way for every method:

1. refuse a bad output before any work; open the slide; compute the tissue mask once;
2. turn the user's engine options and the method's needs into the engine's geometry (:func:`engine_geometry`:
   the user's ``overlap`` wins, else the method's halo; the user's ``threads`` win, else the method's default);
3. stream the tile function over the slide into a pyramidal TIFF (or OME-Zarr), resumably: a job killed at any
   point (``kill -9`` included) continues with the same command from its last finished band of tiles and ends
   with a pyramid identical to an uninterrupted run's (:mod:`pathgen.io.journal`); ``resume=False`` starts over;
4. write the run record beside the output, with the same ``config.engine`` section for every method.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from pathgen.engine.core import (EngineConfig, RunReport, SlideSource, TileFn, iter_core_tiles, iter_stitched_rows,
                                 resolve_device)
from pathgen.engine.tissue import TissueConfig, TissueMask, tissue_mask
from pathgen.errors import PathgenError


class RowFilter(Protocol):
    """A stateful transform of the stitched level-0 rows (e.g. renumbering instance ids in raster order).

    Its state must be checkpointable for resumable jobs: :meth:`state` returns, as JSON, what changed since its
    previous call; :meth:`restore` replays those deltas, in order, before a resumed job streams on.
    """

    def __call__(self, rows: Iterator[np.ndarray]) -> Iterator[np.ndarray]: ...

    def state(self) -> Any: ...

    def restore(self, states: list) -> None: ...


@dataclass
class TileMethod:
    """A method's part of a slide job.

    Attributes
    ----------
    name : str
        Method name (progress bar, run record).
    fn : callable
        The tile function: ``(n, win, win, c_in)`` uint8 → ``(n, win, win, out_channels)`` (see
        :func:`pathgen.engine.core.iter_stitched_rows`); may take origins and return side records.
    halo : int
        Pixels of context each window needs on every side (0 for pointwise transforms).
    out_channels, out_dtype
        The output image.
    blend : {"cosine", "linear", "none", "max"}
        How overlapping windows combine (``max`` for labels whose windows paint the objects they own).
    background : float or tuple
        Fill of windows skipped for holding no tissue.
    skip_background : bool
        Whether windows without tissue may be skipped at all.
    compression, downsample, description
        Pyramid settings (default: JPEG and mean for 8-bit RGB/grey, Deflate and nearest for labels).
    config : dict
        The method's settings and fits, added to the run record's ``config`` beside ``method`` and ``engine``; part
        of the job's identity, so a job resumes only with the same method settings.
    default_threads : int, optional
        Threads of the local pool when the user gives none (1 for torch models, which use every core inside a
        forward pass).
    rows : RowFilter, optional
        Applied to the stitched rows before they are written.
    written_dtype : optional
        Type of the rows the filter hands on, when it differs from ``out_dtype``.
    keep_records : bool
        The tile function returns side records (one list per window): they are kept in the job's work folder,
        window row by window row, and handed to ``finish``.
    """

    name: str
    fn: TileFn
    halo: int = 0
    out_channels: int = 3
    out_dtype: Any = np.uint8
    blend: str = "cosine"
    background: float | tuple = 255.0
    skip_background: bool = True
    compression: str | None = None
    downsample: str | None = None
    description: str | None = None
    config: dict = field(default_factory=dict)
    default_threads: int | None = None
    rows: RowFilter | None = None
    written_dtype: Any = None
    keep_records: bool = False


@dataclass
class SlideContext:
    """What ``prepare`` gets: the opened slide, the source the engine reads, the tissue mask and the engine
    options (device resolved)."""

    slide: Any
    source: SlideSource
    engine: EngineConfig
    level: int | None
    mpp: float | None
    tissue_config: TissueConfig
    _tissue: TissueMask | None = None

    @property
    def tissue(self) -> TissueMask:
        """The slide's tissue mask (computed once, on first use)."""
        if self._tissue is None:
            self._tissue = tissue_mask(self.slide, self.tissue_config)
        return self._tissue


@dataclass
class JobReport(RunReport):
    """What a slide job did: window counts, output, the run record, and how much an earlier run had finished."""

    resumed_bands: int = 0
    bands: int = 0
    record: dict = field(default_factory=dict)
    engine: EngineConfig | None = None


def resolve_engine(options: EngineConfig) -> EngineConfig:
    """The user's engine options, checked, with the device resolved (``auto`` → ``cuda`` or ``cpu``)."""
    for name in ("tile_size", "batch_size"):
        if int(getattr(options, name)) < 1:
            raise PathgenError(f"{name} must be positive, got {getattr(options, name)}", param=name)
    if options.overlap is not None and options.overlap < 0:
        raise PathgenError(f"overlap must not be negative, got {options.overlap}", param="overlap")
    for name in ("threads", "workers"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise PathgenError(f"{name} must be at least 1, got {value}", param=name)
    return dataclasses.replace(options, device=resolve_device(options.device))


def engine_geometry(options: EngineConfig, method: TileMethod) -> EngineConfig:
    """The one place where the user's options and the method's needs become the engine's configuration: the
    user's ``overlap`` and ``threads`` when given, else the method's halo and default thread count; the method's
    blending and background; background skipping only where both allow it."""
    overlap = method.halo if options.overlap is None else int(options.overlap)
    if 2 * overlap > options.tile_size:
        raise PathgenError(f"overlap {overlap} is more than half the tile size {options.tile_size}",
                           param="overlap")
    threads = options.threads if options.threads is not None else method.default_threads
    return dataclasses.replace(options, overlap=overlap, threads=threads, blend=method.blend,
                               background=method.background,
                               skip_background=bool(options.skip_background and method.skip_background))


def _compression(method: TileMethod) -> str:
    if method.compression:
        return method.compression
    dt = np.dtype(method.out_dtype)
    return "jpeg" if (dt == np.uint8 and method.out_channels in (1, 3)) else "zlib"


class _RecordRows:
    """Side records collected window row by window row into the job's work folder."""

    def __init__(self, journal):
        self.journal = journal
        self.pending: list = []

    def add(self, records) -> None:
        self.pending.extend(records if isinstance(records, list) else [records])

    def row_done(self, ty: int) -> None:
        self.journal.write_records(ty, self.pending)
        self.pending = []


def run_slide_job(input_path: str | os.PathLike, output: str | os.PathLike,
                  prepare: Callable[[SlideContext], TileMethod], engine: EngineConfig | None = None, *,
                  level: int | None = 0, mpp: float | Callable[[Any], float | None] | None = None,
                  slide_mpp: float | None = None,
                  overwrite: bool = False, resume: bool = True, quality: int = 90, pyramid_tile: int = 512,
                  tissue_config: TissueConfig | None = None, record_path: str | os.PathLike | None = None,
                  record_extra: dict | None = None, seed: int | None = None,
                  finish: Callable[[JobReport, Any], dict | None] | None = None,
                  progress_desc: str | None = None) -> JobReport:
    """Run a method over a whole slide into a pyramidal TIFF (``.zarr``: OME-Zarr), resumably.

    Parameters
    ----------
    input_path : path
        Anything :func:`pathgen.io.slide.open_slide` opens (the input is never written).
    output : path
        The pyramid to write; refused if it exists, unless ``overwrite``.
    prepare : callable
        ``prepare(context) -> TileMethod`` (module docstring).
    engine : EngineConfig, optional
        The user's engine options; ``overlap=None`` lets the method choose its halo.
    level, mpp : optional
        Process pyramid level ``level``, or the slide resampled to ``mpp`` µm/px when given. ``mpp`` may be a
        callable ``mpp(slide) -> float or None`` deciding from the opened slide (e.g. a model's resolution).
    slide_mpp : float, optional
        Override the slide's own pixel size.
    resume : bool
        Continue an interrupted run of the same job (default) or start over.
    quality : int
        JPEG quality of the output tiles.
    pyramid_tile : int
        Tile size of the output pyramid.
    record_path : path, optional
        Where the run record goes (default ``OUTPUT.json``).
    record_extra : dict, optional
        More JSON-able information for the run record.
    finish : callable, optional
        ``finish(report, journal)``, called once the pyramid is in place and before the work folder is removed
        (e.g. to write outputs derived from it and from the side records); what it returns joins the record.

    Returns
    -------
    JobReport
    """
    from pathgen.io.journal import JobJournal, input_identity, job_folder
    from pathgen.io.pyramid import resume_row, write_ome_zarr, write_pyramid, write_pyramid_tiles
    from pathgen.io.records import save_run_config, to_jsonable, versions
    from pathgen.io.slide import open_slide

    out = Path(output)
    if out.exists() and not overwrite and not job_folder(out).is_dir():
        raise PathgenError("output exists (pass overwrite to replace it)", out, param="overwrite")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise PathgenError("output folder does not exist", out.parent)
    options = resolve_engine(engine or EngineConfig(overlap=None))
    zarr_out = str(out).rstrip("/").endswith(".zarr")
    with open_slide(input_path, mpp=slide_mpp) as slide:
        if callable(mpp):
            mpp = mpp(slide)
        source = SlideSource(slide, level=level if mpp is None else None, mpp=mpp)
        ctx = SlideContext(slide, source, options, level, mpp, tissue_config or TissueConfig())
        method = prepare(ctx)
        cfg = engine_geometry(options, method)
        tissue = ctx.tissue if cfg.skip_background else None
        dtype = np.dtype(method.out_dtype)
        written = np.dtype(method.written_dtype or dtype)
        shape = (source.height, source.width, method.out_channels)
        compression = _compression(method)
        description = {
            "input": input_identity(input_path), "level": level, "mpp": mpp, "slide_mpp": slide_mpp,
            "method": method.name, "method_config": method.config, "engine": dataclasses.asdict(cfg),
            "output": {"shape": shape, "dtype": written.str, "compression": compression, "quality": quality,
                       "pyramid_tile": pyramid_tile, "zarr": zarr_out},
            "versions": {k: v for k, v in versions().items() if k in ("pathgen", "torch", "numpy")},
        }
        journal = JobJournal(out, description, resume=resume)
        try:
            report = JobReport(output=str(out), shape=shape, mpp=source.out_mpp, engine=cfg,
                               resumed_bands=journal.resumed_bands)
            assembled = journal.path("out" + (".zarr" if zarr_out else out.suffix))
            if journal.path("placed").is_file() and assembled.exists():
                os.replace(assembled, out)  # killed between finishing the pyramid and moving it into place
            if journal.path("placed").is_file() and out.exists():
                report.bands = journal.resumed_bands  # a run killed after the pyramid was in place
            else:
                if out.exists() and not overwrite:
                    raise PathgenError("output exists (pass overwrite to replace it)", out, param="overwrite")
                start = resume_row(journal, pyramid_tile, source.height)
                sink = _RecordRows(journal) if method.keep_records else None
                common = dict(tissue=tissue, report=report, progress_desc=progress_desc or method.name,
                              record_sink=sink.add if sink else None, row_done=sink.row_done if sink else None)
                by_tile = cfg.overlap == 0 and cfg.tile_size == pyramid_tile and method.rows is None
                if by_tile:
                    stream = iter_core_tiles(source, method.fn, method.out_channels, dtype, cfg,
                                             start_row=start // pyramid_tile, **common)
                else:
                    stream = iter_stitched_rows(source, method.fn, method.out_channels, dtype, cfg, start_y=start,
                                                **common)
                    if method.rows is not None:
                        method.rows.restore(journal.band_states(journal.resumed_bands))
                        stream = method.rows(stream)
                band_state = method.rows.state if method.rows is not None else None
                if zarr_out:
                    write_ome_zarr(out, stream, shape, dtype=written, tile_size=pyramid_tile, mpp=source.out_mpp,
                                   overwrite=True, downsample=method.downsample, tiles=by_tile, journal=journal,
                                   band_state=band_state)
                elif by_tile:
                    write_pyramid_tiles(out, stream, shape, dtype=dtype, tile_size=pyramid_tile, mpp=source.out_mpp,
                                        compression=compression, quality=quality, overwrite=True,
                                        downsample=method.downsample, inputs=(input_path,),
                                        description=method.description, journal=journal)
                else:
                    write_pyramid(out, stream, shape, dtype=written, tile_size=pyramid_tile, mpp=source.out_mpp,
                                  compression=compression, quality=quality, overwrite=True,
                                  downsample=method.downsample, inputs=(input_path,),
                                  description=method.description, journal=journal, band_state=band_state)
                report.bands = -(-source.height // pyramid_tile)
            extra = finish(report, journal) if finish is not None else None
            record = {"method": method.name, "engine": cfg, "level": level, "mpp": mpp, "slide_mpp": slide_mpp,
                      **method.config}
            info = {"input": str(Path(input_path).resolve()), "output": str(out), "windows": report.windows,
                    "processed": report.processed, "skipped": report.skipped,
                    "resumed_from_band": report.resumed_bands, "bands": report.bands,
                    "shape": list(shape), "out_mpp": None if source.out_mpp is None else list(source.out_mpp),
                    **(record_extra or {}), **(extra or {}), **report.extra}
            save_run_config(out, record, seed=seed, extra=info, json_path=record_path)
            report.record = {"config": to_jsonable(record), **to_jsonable(info)}
        except BaseException:
            journal.close()  # the work folder stays: the same command resumes
            raise
        journal.finish()
    return report


def convert_slide(input_path: str | os.PathLike, output: str | os.PathLike, engine: EngineConfig | None = None, *,
                  level: int = 0, mpp: float | None = None, slide_mpp: float | None = None, compression: str = "jpeg",
                  quality: int = 90, overwrite: bool = False, resume: bool = True) -> JobReport:
    """Re-encode a slide (level ``level``, or resampled to ``mpp``) into a pyramidal TIFF or OME-Zarr whose tiles
    are the engine's tiles: the identity method through the slide-job path (resumable like every slide job)."""
    from pathgen.engine.core import identity

    engine = engine or EngineConfig()

    def prepare(ctx: SlideContext) -> TileMethod:
        return TileMethod(name="convert", fn=identity, halo=0, blend="none", skip_background=False,
                          compression=compression, config={"compression": compression})

    return run_slide_job(input_path, output, prepare, dataclasses.replace(engine, overlap=0, blend="none"),
                         level=None if mpp else level, mpp=mpp, slide_mpp=slide_mpp, overwrite=overwrite,
                         resume=resume, quality=quality, pyramid_tile=engine.tile_size, progress_desc="convert")
