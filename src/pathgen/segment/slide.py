"""Nucleus segmentation of whole slides and images through the tile engine, with nuclei resolved once across tiles.

Each window (core + halo) is segmented whole; a window keeps only the nuclei whose centroid lies in its core and
paints them over its whole extent, and windows are combined by maximum (``blend="max"``). Cores partition the
plane, so every nucleus is owned by exactly one window and drawn whole, whatever the tile size, as long as the halo
is wider than a nucleus (64 px at 0.5 µm/px = 32 µm by default) — no merging pass is needed.

While streaming, a label carries its window, its number in the window and its type
(``(window · 4096 + local) · 8 + type``); the written instance pyramid is renumbered 1..n in raster order of first
appearance and the class pyramid is derived from it. Outputs for ``OUT`` (a folder):

* ``instances.tif`` — int32 instance ids, lossless (Deflate) pyramid, mpp of the model;
* ``classes.tif`` — uint8 type per pixel (0 background, Lizard order), lossless pyramid;
* ``nuclei.geojson`` — FeatureCollection QuPath imports: one polygon per nucleus in level-0 slide pixels, with
  ``classification`` name and colour, ``probability`` and ``id``;
* ``nuclei.csv`` — id, centroid (level-0 px), area (px at the model's mpp and µm²), type, type name, probability;
* ``segment.json`` — the configuration, versions, checkpoint hash, counts and the stain check's reference.

The stain check (``PostProcessConfig.min_haematoxylin``) measures haematoxylin under one Macenko fit of the whole
slide (tissue tiles sampled across it, as slide-level stain normalisation does), never per window, so it cannot
make the result depend on the tiling.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathgen.engine import ArraySource, EngineConfig, TileGrid, iter_stitched_rows, resolve_device
from pathgen.errors import PathgenError
from pathgen.nucleus_types import NUCLEUS_TYPES

LOCAL_BITS = 4096  # nuclei per window
TYPE_BITS = 8  # types 0..7


#: Halo around each window's core when the user gives none: wider than the largest nucleus (32 µm at 0.5 µm/px).
HALO = 64


def _default_engine() -> EngineConfig:
    return EngineConfig(overlap=None, batch_size=4, device="cpu")


@dataclass
class SegmentConfig:
    """Tiling (the engine's options) and post-processing of a segmentation run (saved with the outputs)."""

    engine: EngineConfig = field(default_factory=_default_engine)
    min_area: int | None = None  # override the checkpoint's post-processing minimum nucleus area (px)
    min_haematoxylin: float | None = None  # override the checkpoint's stain check (0 = off)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.min_haematoxylin is not None and not 0.0 <= self.min_haematoxylin < 1.0:
            raise PathgenError(f"the stain check's threshold must lie in [0, 1), got {self.min_haematoxylin}",
                               param="min_haematoxylin")

    @property
    def halo(self) -> int:
        """The halo windows get: the engine's overlap when given, else :data:`HALO`."""
        return HALO if self.engine.overlap is None else int(self.engine.overlap)


def encode_ids(window: int, local: np.ndarray, types: np.ndarray) -> np.ndarray:
    return ((window * LOCAL_BITS + local) * TYPE_BITS + types).astype(np.int64)


class SegmentTiles:
    """Tile function: segment a batch of windows and keep the nuclei each window owns.

    Picklable (the model is loaded lazily in each process from the checkpoint path).
    """

    wants_origins = True

    def __init__(self, checkpoint: str, tile: int, overlap: int, grid_nx: int, device: str = "cpu",
                 level0_per_px: tuple[float, float] = (1.0, 1.0), min_area: int | None = None,
                 stain=None, min_haematoxylin: float | None = None):
        self.checkpoint, self.tile, self.overlap, self.nx = str(checkpoint), tile, overlap, grid_nx
        self.device, self.scale, self.min_area = device, level0_per_px, min_area
        # the slide's stain fit for the stain check; without one the check is off (a per-window fit would make
        # the nuclei depend on the tiling)
        self.stain = stain
        self.min_haematoxylin = 0.0 if stain is None else min_haematoxylin
        self._model = self._postprocess = None
        self._lock = threading.Lock()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_model"] = d["_postprocess"] = d["_lock"] = None
        return d

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _load(self):
        # The engine calls one instance from several threads: load once, and publish the model only after the
        # post-processing settings, so no thread sees a model without them.
        with self._lock:
            if self._model is None:
                from pathgen.segment.checkpoint import load_model, read_checkpoint_config
                from pathgen.segment.postprocess import PostProcessConfig

                model = load_model(self.checkpoint, device=self.device)
                pp = read_checkpoint_config(self.checkpoint).get("postprocess") or {}
                if self.min_area is not None:
                    pp = {**pp, "min_size": int(self.min_area)}
                if self.min_haematoxylin is not None:
                    pp = {**pp, "min_haematoxylin": float(self.min_haematoxylin)}
                self._postprocess = PostProcessConfig(**pp)
                self._model = model
        return self._model

    def __call__(self, batch: np.ndarray, origins: list[tuple[int, int]]):
        from shapely import affinity
        from shapely.geometry import mapping

        from pathgen.io.annotations import instance_polygons
        from pathgen.segment.infer import segment_tile_batch

        model = self._load()
        seg = segment_tile_batch(model, batch, device=self.device, postprocess=self._postprocess, stain=self.stain)
        out = np.zeros(batch.shape[:3] + (1,), np.int64)
        records = []
        o, t = self.overlap, self.tile
        for k, ((x0, y0), nuc) in enumerate(zip(origins, seg.nuclei)):
            inst = nuc.instances
            n = int(inst.max()) if inst.size else 0
            if n == 0:
                records.append([])
                continue
            ids = np.arange(1, n + 1)
            area = np.bincount(inst.ravel(), minlength=n + 1)[1:]
            yy, xx = np.indices(inst.shape)
            cy = np.bincount(inst.ravel(), weights=yy.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
            cx = np.bincount(inst.ravel(), weights=xx.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
            own = (area > 0) & (cx >= o) & (cx < o + t) & (cy >= o) & (cy < o + t)
            if not own.any():
                records.append([])
                continue
            window = (y0 + o) // t * self.nx + (x0 + o) // t + 1  # 1-based so no label is 0
            types = nuc.types.astype(np.int64) if len(nuc.types) == n else np.zeros(n, np.int64)
            codes = np.zeros(n + 1, np.int64)
            codes[1:][own] = encode_ids(window, ids[own], types[own])
            out[k, ..., 0] = codes[inst]
            owned_inst = np.where(own[inst - 1] & (inst > 0), inst, 0)
            polys = instance_polygons(owned_inst)
            recs = []
            for i in np.flatnonzero(own):
                label = int(i + 1)
                geom = mapping(affinity.affine_transform(polys[label], [self.scale[0], 0, 0, self.scale[1],
                                                                        x0 * self.scale[0], y0 * self.scale[1]]))
                recs.append({"code": int(codes[label]), "cx": (x0 + cx[i]) * self.scale[0],
                             "cy": (y0 + cy[i]) * self.scale[1], "area": int(area[i]), "type": int(types[i]),
                             "prob": float(nuc.type_probs[i]) if len(nuc.type_probs) == n else 1.0,
                             "geometry": geom})
            records.append(recs)
        return out, records


class RenumberRows:
    """Row filter of the slide job: encoded ids → 1..n in raster order of first appearance (int32 rows).

    The table only grows, so its state for a resumable job is the codes added since the last call of
    :meth:`state`; :meth:`restore` replays them.
    """

    def __init__(self):
        self.lut: dict[int, int] = {}
        self.types: dict[int, int] = {}
        self._order: list[int] = []
        self._saved = 0

    def _add(self, code: int) -> int:
        self.lut[code] = len(self.lut) + 1
        self.types[self.lut[code]] = code % TYPE_BITS
        self._order.append(code)
        return self.lut[code]

    def __call__(self, rows):
        for block in rows:
            flat = block[..., 0]
            u, inv = np.unique(flat, return_inverse=True)
            mapped = np.empty(len(u), np.int64)
            for j, code in enumerate(u.tolist()):
                mapped[j] = 0 if code == 0 else self.lut[code] if code in self.lut else self._add(code)
            yield mapped[inv].reshape(flat.shape).astype(np.int32)

    def state(self) -> list[int]:
        new, self._saved = self._order[self._saved:], len(self._order)
        return new

    def restore(self, states: list) -> None:
        for delta in states:
            for code in delta or ():
                if code not in self.lut:
                    self._add(int(code))
        self._saved = len(self._order)


def _min_haematoxylin(checkpoint, config: SegmentConfig) -> float:
    """The stain check's threshold of a run: the override, else the checkpoint's, else the default."""
    from pathgen.segment.checkpoint import read_checkpoint_config
    from pathgen.segment.postprocess import PostProcessConfig

    if config.min_haematoxylin is not None:
        return float(config.min_haematoxylin)
    pp = read_checkpoint_config(checkpoint).get("postprocess") or {}
    return float(pp.get("min_haematoxylin", PostProcessConfig.min_haematoxylin))


def _stain_reference(slide, tissue, checkpoint, config: SegmentConfig):
    """One Macenko fit of the whole slide for the stain check, and its record for ``segment.json``.

    Returns ``(fit or None, record)``; the check is off (fit None) when its threshold is 0 or the slide has no
    stained tissue to fit.
    """
    from pathgen.stain import StainNormalizer
    from pathgen.stain.slide import fit_slide

    threshold = _min_haematoxylin(checkpoint, config)
    if threshold <= 0:
        return None, {"min_haematoxylin": 0.0, "status": "off"}
    try:
        fit = fit_slide(slide, StainNormalizer("macenko"), level=0, mask=tissue)
    except PathgenError as exc:
        return None, {"min_haematoxylin": threshold, "status": f"off: {exc.problem}"}
    return fit, {"min_haematoxylin": threshold, "status": "on", "haematoxylin_vector": fit.vectors[0].tolist(),
                 "haematoxylin_p99": float(fit.concentration_percentiles[0]), "i0": fit.i0.tolist()}


def segment(input_path: str | os.PathLike, output_dir: str | os.PathLike, checkpoint: str | os.PathLike,
            config: SegmentConfig = SegmentConfig(), slide_mpp: float | None = None, overwrite: bool = False,
            resume: bool = True) -> dict:
    """Segment and type the nuclei of a slide or image into ``output_dir`` (see the module docstring).

    The slide is read at the model's mpp (resampled when the slide's differs). The run goes through
    :func:`pathgen.engine.job.run_slide_job`: a killed run resumes with the same call. Returns the summary written
    to ``segment.json``.
    """
    from pathgen.engine.job import TileMethod, run_slide_job
    from pathgen.io.checkpoint import checkpoint_sha256
    from pathgen.io.journal import job_folder
    from pathgen.segment.checkpoint import read_checkpoint_config

    out = Path(output_dir)
    names = ("instances.tif", "classes.tif", "nuclei.geojson", "nuclei.csv")
    if out.exists() and not out.is_dir():
        raise PathgenError("output must be a folder", out)
    resuming = job_folder(out / names[0]).is_dir()
    if out.exists() and not overwrite and not resuming and any((out / n).exists() for n in names):
        raise PathgenError("output folder already holds segmentation results", out, param="overwrite")
    if not out.parent.exists():
        raise PathgenError("output folder's parent does not exist", out.parent)
    model_mpp = float(read_checkpoint_config(checkpoint)["model"].get("mpp", 0.5))
    renumber = RenumberRows()
    facts: dict = {}

    def model_resolution(slide) -> float | None:
        if slide.mpp is None:
            raise PathgenError(f"slide has no pixel size (mpp); the model works at {model_mpp} µm/px: give the "
                               "slide's", input_path, param="slide_mpp")
        return None if abs(slide.mpp[0] - model_mpp) / model_mpp < 0.05 else model_mpp

    def prepare(ctx) -> TileMethod:
        source, halo = ctx.source, config.halo
        grid = TileGrid(source.width, source.height, ctx.engine.tile_size, halo)
        if len(grid) >= 2 ** 31 // (LOCAL_BITS * TYPE_BITS):
            raise PathgenError(f"too many tiles ({len(grid)}) for the id encoding; use larger tiles", input_path,
                               param="tile_size")
        stain, stain_check = _stain_reference(ctx.slide, ctx.tissue, checkpoint, config)
        facts.update(stain_check=stain_check, rows=grid.ny)
        fn = SegmentTiles(str(checkpoint), ctx.engine.tile_size, halo, grid.nx, ctx.engine.device,
                          source.level0_per_px, config.min_area, stain, config.min_haematoxylin)
        return TileMethod(name="hovernet", fn=fn, halo=HALO, out_channels=1, out_dtype=np.int64, blend="max",
                          background=0, skip_background=ctx.slide.level_count > 1, compression="zlib",
                          downsample="nearest", rows=renumber, written_dtype=np.int32, keep_records=True,
                          config={"checkpoint": str(checkpoint), "min_area": config.min_area,
                                  "min_haematoxylin": config.min_haematoxylin, "stain_check": stain_check,
                                  **config.extra})

    def finish(report, journal) -> dict:
        out_mpp = report.mpp
        _write_classes(out / "instances.tif", out / "classes.tif", renumber, out_mpp)
        _write_tables(journal.iter_records(facts["rows"]), renumber, out_mpp, out / "nuclei.csv",
                      out / "nuclei.geojson")
        counts: dict[str, int] = {}
        table = {t.id: t for t in NUCLEUS_TYPES}
        for t in renumber.types.values():
            key = table[t].name if t in table and t else "unclassified"
            counts[key] = counts.get(key, 0) + 1
        return {"nuclei": len(renumber.lut), "per_type": counts, "mpp": None if out_mpp is None else list(out_mpp),
                "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256(checkpoint),
                "stain_check": facts["stain_check"], "outputs": list(names)}

    created = not out.exists()
    out.mkdir(exist_ok=True)
    done = False
    try:
        report = run_slide_job(input_path, out / names[0], prepare, config.engine, mpp=model_resolution,
                               slide_mpp=slide_mpp, overwrite=True, resume=resume, record_path=out / "segment.json",
                               finish=finish, progress_desc="segment")
        done = True
    finally:
        if created and not done and not any(out.iterdir()):
            out.rmdir()  # a run that failed before any work leaves no empty folder (one it did not create stays)
    return report.record


def _write_classes(instances: Path, classes: Path, renumber: RenumberRows, mpp) -> None:
    """The class pyramid, from the instance pyramid just written (no second pass over the slide)."""
    import tifffile
    import zarr

    from pathgen.io.pyramid import write_pyramid

    type_lut = np.zeros(len(renumber.lut) + 1, np.uint8)
    for k, t in renumber.types.items():
        type_lut[k] = t
    with tifffile.TiffFile(instances) as tif:
        page = tif.pages[0]
        arr = zarr.open(page.aszarr(), mode="r")
        h, w = page.shape[:2]
        blocks = (type_lut[np.asarray(arr[y:y + 512])] for y in range(0, h, 512))
        write_pyramid(classes, blocks, (h, w), dtype=np.uint8, compression="zlib", mpp=mpp, overwrite=True,
                      downsample="nearest")


def _write_tables(records, renumber: RenumberRows, mpp, csv_path: Path, geojson_path: Path) -> None:
    """``nuclei.csv`` and ``nuclei.geojson`` with the final ids, streamed from the job's records (a slide holds
    hundreds of thousands of nuclei: their polygons never sit in memory together)."""
    from pathgen.io.atomic import atomic_path

    table = {t.id: t for t in NUCLEUS_TYPES}
    area_um2 = float(mpp[0] * mpp[1]) if mpp else None
    with atomic_path(csv_path, overwrite=True) as tmp_csv, atomic_path(geojson_path, overwrite=True) as tmp_gj:
        with open(tmp_csv, "w", newline="") as fh, open(tmp_gj, "w") as gj:
            wr = csv.writer(fh)
            wr.writerow(["id", "centroid_x", "centroid_y", "area_px", "area_um2", "type", "type_name",
                         "probability"])
            gj.write('{"type": "FeatureCollection", "features": [')
            first = True
            for r in records:
                nid = renumber.lut.get(r["code"])
                if nid is None:  # a nucleus the stitching dropped (owned elsewhere / cut away)
                    continue
                name = table[r["type"]].name if r["type"] in table and r["type"] else ""
                wr.writerow([nid, f"{r['cx']:.2f}", f"{r['cy']:.2f}", r["area"],
                             "" if area_um2 is None else f"{r['area'] * area_um2:.2f}", r["type"], name,
                             f"{r['prob']:.4f}"])
                props = {"objectType": "detection", "id": nid, "type": r["type"], "probability": r["prob"]}
                if r["type"] in table and r["type"]:
                    props["classification"] = {"name": table[r["type"]].name, "color": list(table[r["type"]].color)}
                feature = {"type": "Feature", "id": f"nucleus-{nid}", "geometry": r["geometry"], "properties": props}
                gj.write(("" if first else ",") + "\n" + json.dumps(feature))
                first = False
            gj.write("\n]}\n")


def segment_array(image: np.ndarray, checkpoint: str | os.PathLike, config: SegmentConfig = SegmentConfig()
                  ) -> tuple[np.ndarray, dict[int, int], list[dict]]:
    """Segment an in-memory RGB image with the same tiling as slides.

    Returns
    -------
    instances : (H, W) int32, 1..n in raster order of first appearance
    types : dict id → type
    records : per-nucleus dicts (centroid, area, type, probability, polygon as GeoJSON geometry) with the new
        ids under ``"id"``
    """
    from pathgen.segment.infer import fit_haematoxylin_reference

    image = np.asarray(image)
    src = ArraySource(image)
    tile, halo = config.engine.tile_size, config.halo
    grid = TileGrid(image.shape[1], image.shape[0], tile, halo)
    stain = fit_haematoxylin_reference(image) if _min_haematoxylin(checkpoint, config) > 0 else None
    fn = SegmentTiles(str(checkpoint), tile, halo, grid.nx, resolve_device(config.engine.device), (1.0, 1.0),
                      config.min_area, stain, config.min_haematoxylin)
    cfg = dataclasses.replace(config.engine, overlap=halo, blend="max", threads=config.engine.threads or 1,
                              background=0, skip_background=False)
    records: list[dict] = []
    renumber = RenumberRows()
    rows = iter_stitched_rows(src, fn, 1, np.int64, cfg, quiet=True, record_sink=records.extend)
    inst = np.concatenate(list(renumber(rows)))
    kept = [{**r, "id": renumber.lut[r["code"]]} for r in records if r["code"] in renumber.lut]
    return inst, renumber.types, kept
