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
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathgen.engine import ArraySource, EngineConfig, SlideSource, iter_stitched_rows
from pathgen.errors import PathgenError

LOCAL_BITS = 4096  # nuclei per window
TYPE_BITS = 8  # types 0..7


@dataclass
class SegmentConfig:
    """Tiling and post-processing of a segmentation run (saved with the outputs)."""

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 4
    device: str = "cpu"
    workers: int | None = None
    scheduler: str | None = None
    threads: int | None = None
    skip_background: bool = True
    min_area: int | None = None  # override the checkpoint's post-processing minimum nucleus area (px)
    min_haematoxylin: float | None = None  # override the checkpoint's stain check (0 = off)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.min_haematoxylin is not None and not 0.0 <= self.min_haematoxylin < 1.0:
            raise PathgenError(f"--min-haematoxylin must lie in [0, 1), got {self.min_haematoxylin}")


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
                geom = affinity.affine_transform(polys[label], [self.scale[0], 0, 0, self.scale[1],
                                                                x0 * self.scale[0], y0 * self.scale[1]])
                recs.append({"code": int(codes[label]), "cx": (x0 + cx[i]) * self.scale[0],
                             "cy": (y0 + cy[i]) * self.scale[1], "area": int(area[i]), "type": int(types[i]),
                             "prob": float(nuc.type_probs[i]) if len(nuc.type_probs) == n else 1.0,
                             "geometry": geom})
            records.append(recs)
        return out, records


class _RecordSpool:
    """Per-nucleus records appended to a JSON-lines file as tiles finish (polygons as GeoJSON geometry), read back
    once at the end: memory holds one tile's records, not the slide's."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = open(path, "w")

    def extend(self, records: list[dict]) -> None:
        from shapely.geometry import mapping

        for r in records:
            self._fh.write(json.dumps({**r, "geometry": mapping(r["geometry"])}) + "\n")

    def close(self) -> None:
        self._fh.close()

    def read(self):
        with open(self.path) as fh:
            for line in fh:
                yield json.loads(line)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _renumber_rows(rows, lut: dict[int, int], types: dict[int, int]):
    """Map encoded ids to 1..n in raster order of first appearance; yields int32 rows."""
    for block in rows:
        flat = block[..., 0]
        u, inv = np.unique(flat, return_inverse=True)
        mapped = np.empty(len(u), np.int64)
        for j, code in enumerate(u.tolist()):
            if code == 0:
                mapped[j] = 0
                continue
            if code not in lut:
                lut[code] = len(lut) + 1
                types[lut[code]] = code % TYPE_BITS
            mapped[j] = lut[code]
        yield mapped[inv].reshape(flat.shape).astype(np.int32)


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
            tissue=None) -> dict:
    """Segment and type the nuclei of a slide or image into ``output_dir`` (see the module docstring).

    The slide is read at the model's mpp (resampled when the slide's differs). Returns the summary written to
    ``segment.json``.
    """
    import tifffile

    from pathgen.io.records import save_run_config
    from pathgen.io.atomic import atomic_path
    from pathgen.io.checkpoint import checkpoint_sha256
    from pathgen.io.pyramid import write_pyramid
    from pathgen.nucleus_types import NUCLEUS_TYPES
    from pathgen.segment.checkpoint import read_checkpoint_config
    from pathgen.io.slide import open_slide
    from pathgen.engine.tissue import tissue_mask

    out = Path(output_dir)
    names = ("instances.tif", "classes.tif", "nuclei.geojson", "nuclei.csv")
    if out.exists() and not out.is_dir():
        raise PathgenError("output must be a folder", out)
    if out.exists() and not overwrite and any((out / n).exists() for n in names):
        raise PathgenError("output folder already holds segmentation results (use --overwrite)", out)
    if not out.parent.exists():
        raise PathgenError("output folder's parent does not exist", out.parent)
    model_mpp = float(read_checkpoint_config(checkpoint)["model"].get("mpp", 0.5))
    created = not out.exists()
    out.mkdir(exist_ok=True)
    spool_path = out / ".nuclei.spool.jsonl"
    done = False
    try:
        slide = open_slide(input_path, mpp=slide_mpp)
        with slide:
            if slide.mpp is None:
                raise PathgenError(f"slide has no pixel size (mpp); the model works at {model_mpp} µm/px — "
                                   "pass --mpp", input_path)
            close = abs(slide.mpp[0] - model_mpp) / model_mpp < 0.05
            source = SlideSource(slide, level=0) if close else SlideSource(slide, level=None, mpp=model_mpp)
            if tissue is None and config.skip_background and slide.level_count > 1:
                tissue = tissue_mask(slide)
            cfg = EngineConfig(tile_size=config.tile_size, overlap=config.overlap, batch_size=config.batch_size,
                               blend="max", workers=config.workers, scheduler=config.scheduler, threads=config.threads,
                               device=config.device, skip_background=config.skip_background, background=0)
            from pathgen.engine import RunReport, TileGrid

            grid = TileGrid(source.width, source.height, config.tile_size, config.overlap)
            if len(grid) >= 2 ** 31 // (LOCAL_BITS * TYPE_BITS):
                raise PathgenError(f"too many tiles ({len(grid)}) for the id encoding; use a larger --tile-size",
                                   input_path)
            stain, stain_check = _stain_reference(slide, tissue, checkpoint, config)
            fn = SegmentTiles(str(checkpoint), config.tile_size, config.overlap, grid.nx, config.device,
                              source.level0_per_px, config.min_area, stain, config.min_haematoxylin)
            spool = _RecordSpool(spool_path)
            lut: dict[int, int] = {}
            types: dict[int, int] = {}
            report = RunReport()
            rows = iter_stitched_rows(source, fn, 1, np.int64, cfg, tissue=tissue, progress_desc="segment",
                                      record_sink=spool.extend, report=report)
            out_mpp = source.out_mpp
            write_pyramid(out / "instances.tif", _renumber_rows(rows, lut, types), (source.height, source.width, 1),
                          dtype=np.int32, compression="zlib", mpp=out_mpp, overwrite=True, inputs=(input_path,),
                          downsample="nearest")
        # class pyramid from the instance pyramid just written (no second pass over the slide)
        type_lut = np.zeros(len(lut) + 1, np.uint8)
        for k, t in types.items():
            type_lut[k] = t
        with tifffile.TiffFile(out / "instances.tif") as tif:
            page = tif.pages[0]
            store = page.aszarr()
            import zarr

            arr = zarr.open(store, mode="r")
            h, w = page.shape[:2]
            step = 512
            blocks = (type_lut[np.asarray(arr[y:y + step])] for y in range(0, h, step))
            write_pyramid(out / "classes.tif", blocks, (h, w), dtype=np.uint8, compression="zlib", mpp=out_mpp,
                          overwrite=True, downsample="nearest")
        # GeoJSON and CSV, with the renumbered ids, streamed from the spool (a slide holds hundreds of thousands of
        # nuclei: their polygons never sit in memory together)
        table = {t.id: t for t in NUCLEUS_TYPES}
        area_um2 = float(out_mpp[0] * out_mpp[1]) if out_mpp else None
        spool.close()
        with atomic_path(out / "nuclei.csv", overwrite=True) as tmp_csv, \
                atomic_path(out / "nuclei.geojson", overwrite=True) as tmp_gj:
            with open(tmp_csv, "w", newline="") as fh, open(tmp_gj, "w") as gj:
                wr = csv.writer(fh)
                wr.writerow(["id", "centroid_x", "centroid_y", "area_px", "area_um2", "type", "type_name",
                             "probability"])
                gj.write('{"type": "FeatureCollection", "features": [')
                first = True
                for r in spool.read():
                    nid = lut.get(r["code"])
                    if nid is None:  # a nucleus the stitching dropped (owned elsewhere / cut away)
                        continue
                    name = table[r["type"]].name if r["type"] in table and r["type"] else ""
                    wr.writerow([nid, f"{r['cx']:.2f}", f"{r['cy']:.2f}", r["area"],
                                 "" if area_um2 is None else f"{r['area'] * area_um2:.2f}", r["type"], name,
                                 f"{r['prob']:.4f}"])
                    props = {"objectType": "detection", "id": nid, "type": r["type"], "probability": r["prob"]}
                    if r["type"] in table and r["type"]:
                        props["classification"] = {"name": table[r["type"]].name, "color": list(table[r["type"]].color)}
                    feature = {"type": "Feature", "id": f"nucleus-{nid}", "geometry": r["geometry"],
                               "properties": props}
                    gj.write(("" if first else ",") + "\n" + json.dumps(feature))
                    first = False
                gj.write("\n]}\n")
        spool.remove()
        counts = {table[t].name if t in table and t else "unclassified": 0 for t in set(types.values())}
        for t in types.values():
            counts[table[t].name if t in table and t else "unclassified"] += 1
        summary = {"input": str(Path(input_path).resolve()), "nuclei": len(lut), "per_type": counts,
                   "mpp": None if out_mpp is None else list(out_mpp), "shape": [int(source.height), int(source.width)],
                   "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256(checkpoint),
                   "windows": report.windows, "processed": report.processed, "skipped": report.skipped,
                   "stain_check": stain_check, "outputs": list(names)}
        save_run_config(out, config, extra=summary, json_path=out / "segment.json")
        done = True
    finally:
        spool_path.unlink(missing_ok=True)  # the spool never outlives the run, failed or not
        if created and not done and not any(out.iterdir()):
            out.rmdir()  # a failed run leaves no empty folder behind (one it did not create stays)
    return summary


def segment_array(image: np.ndarray, checkpoint: str | os.PathLike, config: SegmentConfig = SegmentConfig()
                  ) -> tuple[np.ndarray, dict[int, int], list[dict]]:
    """Segment an in-memory RGB image with the same tiling as slides.

    Returns
    -------
    instances : (H, W) int32, 1..n in raster order of first appearance
    types : dict id → type
    records : per-nucleus dicts (centroid, area, type, probability, polygon) with the new ids under ``"id"``
    """
    image = np.asarray(image)
    src = ArraySource(image)
    from pathgen.engine import TileGrid

    grid = TileGrid(image.shape[1], image.shape[0], config.tile_size, config.overlap)
    from pathgen.segment.infer import fit_haematoxylin_reference

    stain = fit_haematoxylin_reference(image) if _min_haematoxylin(checkpoint, config) > 0 else None
    fn = SegmentTiles(str(checkpoint), config.tile_size, config.overlap, grid.nx, config.device,
                      (1.0, 1.0), config.min_area, stain, config.min_haematoxylin)
    cfg = EngineConfig(tile_size=config.tile_size, overlap=config.overlap, batch_size=config.batch_size,
                       blend="max", threads=config.threads or 1, background=0, skip_background=False)
    records: list[dict] = []
    lut: dict[int, int] = {}
    types: dict[int, int] = {}
    rows = iter_stitched_rows(src, fn, 1, np.int64, cfg, quiet=True, record_sink=records.extend)
    inst = np.concatenate(list(_renumber_rows(rows, lut, types)))
    kept = []
    for r in records:
        if r["code"] in lut:
            kept.append({**r, "id": lut[r["code"]]})
    return inst, types, kept

