"""Procedural H&E: annotated tiles and whole synthetic slides rendered through Beer–Lambert optics.

Tissue (:mod:`pathgen.data.tissue`) is a site-independent map of stain densities plus nuclei instance and
class labels; a site (:mod:`pathgen.data.stains`) turns densities into RGB with ``I = I0·exp(−(C·s)·V)``. So the
same tissue can be re-rendered at any site: ``render_rgb(tile.concentrations, "C")``.

Classes (Lizard order): 0 background, 1 neutrophil, 2 epithelial, 3 lymphocyte, 4 plasma, 5 eosinophil,
6 connective.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pathgen.data import noise
from pathgen.data.stains import SITES, SiteStain, get_site, image_od, render_rgb, stain_od
from pathgen.data.tissue import CLASS_NAMES, TissueParams, TissuePlane, clean_instances
from pathgen.errors import PathgenError

__all__ = ["CLASS_NAMES", "SITES", "SiteStain", "SynthTile", "TissueParams", "aperio_description", "dataset_pairs",
           "image_od", "render_rgb", "render_slide_row", "render_tile", "slide_plane", "slide_rows", "stain_od",
           "tile_origin", "tile_seed", "write_synthetic_slide", "write_tile_dataset"]


@dataclasses.dataclass
class SynthTile:
    """One rendered tile.

    Attributes
    ----------
    image : ndarray (H, W, 3) uint8
        RGB, exactly ``render_rgb(concentrations, site)``.
    instances : ndarray (H, W) int32
        Nucleus ids 1..N (each one 4-connected component), 0 background.
    classes : ndarray (H, W) uint8
        Class of each pixel's nucleus (0..6), constant over each instance.
    concentrations : ndarray (H, W, 3) float32
        Site-independent stain densities (haematoxylin, eosin, residual).
    site : SiteStain
    seed : int
    mpp : float
        µm per pixel.
    origin : (int, int)
        Pixel position of the tile's top-left corner in the seed's procedural plane.
    """

    image: np.ndarray
    instances: np.ndarray
    classes: np.ndarray
    concentrations: np.ndarray
    site: SiteStain
    seed: int = 0
    mpp: float = 0.5
    origin: tuple[int, int] = (0, 0)


def _check_size(size: int, what: str = "size") -> int:
    if int(size) != size or size < 1:
        raise PathgenError(f"{what} must be a positive integer, got {size}")
    return int(size)


def render_tile(size: int = 256, seed: int = 0, site: str | SiteStain = "A", mpp: float = 0.5,
                params: TissueParams | None = None) -> SynthTile:
    """Render a ``size × size`` tile of procedural colon tissue with nuclei labels.

    Parameters
    ----------
    size : int
        Tile side in pixels.
    seed : int
        Determines the tissue (the same seed gives identical arrays; the site only changes colours).
    site : str or SiteStain
        A ``SITES`` name ("A".."E") or a stain definition.
    mpp : float
        µm per pixel; the tissue is defined in µm, so 0.25 shows the same tissue at twice the resolution.
    params : TissueParams, optional
        Tissue knobs (layout, densities).

    Returns
    -------
    SynthTile
    """
    size = _check_size(size)
    if not mpp > 0:
        raise PathgenError(f"mpp must be positive, got {mpp}")
    s = get_site(site)
    plane = TissuePlane(seed, mpp, params)
    oy, ox = tile_origin(plane, size)
    conc, raw, classes_of = plane.render(oy, ox, size, size, labels=True)
    instances, classes = clean_instances(raw, classes_of)
    return SynthTile(render_rgb(conc, s), instances, classes, conc, s, int(seed), float(mpp), (oy, ox))


def tile_origin(plane: TissuePlane, size: int, tries: int = 64) -> tuple[int, int]:
    """Where a tile of the plane is cut: the first of a seeded sequence of positions whose centre is tissue.

    Tiles therefore always show tissue; some still reach a tissue edge and show blank glass there. Returns the
    ``(y, x)`` pixel origin (the last candidate if none of ``tries`` hits tissue).
    """
    extent = 200_000  # px: far apart positions sample independent stretches of the plane
    u = noise.hash_uniform(plane.seed, 999, np.arange(tries), np.arange(2)[:, None])  # (2, tries)
    oy = (u[0] * extent).astype(np.int64)
    ox = (u[1] * extent).astype(np.int64)
    centre_y = (oy + size / 2) * plane.mpp
    centre_x = (ox + size / 2) * plane.mpp
    ok = np.flatnonzero(plane.tissue_field(centre_y, centre_x) > plane.threshold + 0.01)
    k = int(ok[0]) if len(ok) else tries - 1
    return int(oy[k]), int(ox[k])


def tile_seed(seed: int, index: int) -> int:
    """Seed of tile ``index`` of a dataset generated with ``seed`` (independent streams, 32-bit)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1, np.uint32)[0])


def _resolve_sites(sites) -> list[str]:
    if sites is None:
        return list(SITES)
    if isinstance(sites, str):
        sites = [p.strip() for p in sites.split(",") if p.strip()]
    sites = list(sites)
    if not sites:
        raise PathgenError("no sites given")
    for name in sites:
        get_site(name)
    return [str(n) for n in sites]


def varied_params(base: TissueParams, tile_seed: int, ground_max: tuple[float, float] | None = None,
                  clefts_max: float = 0.0) -> TissueParams:
    """``base`` with the per-tile density and clefts that :func:`write_tile_dataset` draws for a tile seed:
    ``ground_h``, ``ground_e`` log-uniform in ``[1, ground_max]``, ``stroma_clefts`` uniform in ``[0, clefts_max]``."""
    u = np.random.default_rng([int(tile_seed), 7]).uniform(0.0, 1.0, 3)
    if ground_max is not None:
        base = dataclasses.replace(base, ground_h=float(ground_max[0] ** u[0]), ground_e=float(ground_max[1] ** u[1]))
    if clefts_max > 0:
        base = dataclasses.replace(base, stroma_clefts=float(clefts_max * u[2]))
    return base


def write_tile_dataset(out_dir: str | os.PathLike, n: int, seed: int = 0, size: int = 256,
                       sites: Sequence[str] | str | None = None, overwrite: bool = False, mpp: float = 0.5,
                       params: TissueParams | None = None,
                       ground_max: tuple[float, float] | None = None, clefts_max: float = 0.0) -> list[str]:
    """Write an annotated dataset of ``n`` procedural tiles, atomically.

    Layout: ``images/NAME.png`` (RGB), ``instances/NAME.tif`` (int32, zlib), ``classes/NAME.png`` (uint8, 0..6),
    paired by NAME = ``s{seed}_{i:05d}_{site}``, plus ``dataset.json`` (seed, sites, size, mpp, class names, each
    tile's name/seed/site, stain definitions, library versions). Sites cycle over ``sites`` (default all).

    ``ground_max = (h, e)`` gives every tile its own density of stroma and cytoplasm: the ``ground_h`` and
    ``ground_e`` multipliers of :class:`TissueParams` are drawn log-uniformly from ``[1, h]`` and ``[1, e]``
    (from the tile's seed, so the tissue layout is unchanged) and recorded with the tile. ``clefts_max > 0``
    likewise draws each tile's ``stroma_clefts`` uniformly from ``[0, clefts_max]``.

    Returns
    -------
    list of str
        The names, in index order.
    """
    import tifffile
    from PIL import Image

    from pathgen.io.records import to_jsonable, versions, write_json_atomic
    from pathgen.io.atomic import atomic_dir
    from pathgen.progress import progress_bar

    n = _check_size(n, "n")
    size = _check_size(size)
    site_names = _resolve_sites(sites)
    base = params or TissueParams()
    if ground_max is not None:
        ground_max = tuple(float(g) for g in ground_max)
        if len(ground_max) != 2 or not all(np.isfinite(g) and g >= 1.0 for g in ground_max):
            raise PathgenError(f"ground_max must be two factors >= 1 (haematoxylin, eosin), got {ground_max}")
    if not 0.0 <= clefts_max <= 1.0:
        raise PathgenError(f"clefts_max must lie in 0..1, got {clefts_max}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PathgenError("output path exists and is not a folder", out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder made beforehand is fine to fill
    names: list[str] = []
    tiles = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for sub in ("images", "instances", "classes"):
            (tmp / sub).mkdir()
        with progress_bar(n, "synthesising tiles", unit="tiles") as bar:
            for i in range(n):
                site = site_names[i % len(site_names)]
                ts = tile_seed(seed, i)
                tile_params = varied_params(base, ts, ground_max, clefts_max)
                t = render_tile(size, ts, site, mpp, tile_params)
                name = f"s{seed}_{i:05d}_{site}"
                Image.fromarray(t.image).save(tmp / "images" / f"{name}.png", format="PNG")
                tifffile.imwrite(tmp / "instances" / f"{name}.tif", t.instances, compression="zlib")
                Image.fromarray(t.classes).save(tmp / "classes" / f"{name}.png", format="PNG")
                names.append(name)
                entry = {"name": name, "seed": ts, "site": site, "instances": int(t.instances.max()),
                         "class_counts": _class_counts(t.instances, t.classes)}
                if ground_max is not None:
                    entry["ground"] = [tile_params.ground_h, tile_params.ground_e]
                if clefts_max > 0:
                    entry["stroma_clefts"] = tile_params.stroma_clefts
                tiles.append(entry)
                bar.advance(1)
        write_json_atomic(tmp / "dataset.json", {
            "generator": "pathgen.data.synth.write_tile_dataset",
            "seed": int(seed), "n": n, "size": size, "mpp": float(mpp), "sites": site_names,
            "classes": {str(i): c for i, c in enumerate(CLASS_NAMES)},
            "layout": {"images": "images/{name}.png", "instances": "instances/{name}.tif",
                       "classes": "classes/{name}.png"},
            "tissue_params": to_jsonable(base),
            "ground_max": list(ground_max) if ground_max is not None else None,
            "clefts_max": float(clefts_max),
            "site_stains": {name: _site_json(get_site(name)) for name in site_names},
            "tiles": tiles,
            "versions": versions(),
        })
    return names


def _class_counts(instances: np.ndarray, classes: np.ndarray) -> dict[str, int]:
    """Number of instances of each class, keyed by class name."""
    ids, first = np.unique(instances.ravel(), return_index=True)
    cls = classes.ravel()[first[ids > 0]]
    counts = np.bincount(cls, minlength=len(CLASS_NAMES))
    return {CLASS_NAMES[k]: int(counts[k]) for k in range(1, len(CLASS_NAMES))}


def _site_json(s: SiteStain) -> dict:
    return {"stain_matrix": s.stain_matrix.round(6).tolist(), "i0": list(s.i0),
            "concentration_scale": list(s.concentration_scale), "description": s.description}


# ---- whole slides ----------------------------------------------------------------------------------------------


def aperio_description(width: int, height: int, tile_size: int, quality: int, mpp: float) -> str:
    """An Aperio-style ImageDescription, so OpenSlide's Aperio reader takes the file (vendor "aperio")."""
    mag = 10.0 / mpp
    mag_txt = f"{mag:.0f}" if abs(mag - round(mag)) < 0.05 else f"{mag:.2f}"
    return (f"Aperio Image Library v12.0.15 \n{width}x{height} [0,0 {width}x{height}] ({tile_size}x{tile_size}) "
            f"JPEG/RGB Q={quality}|AppMag = {mag_txt}|MPP = {mpp:.4f}")


def slide_plane(width: int, height: int, seed: int = 0, mpp: float = 0.5, tissue_fraction: float = 0.45,
                samples: int = 256) -> TissuePlane:
    """The tissue plane of a synthetic slide: a few large tissue pieces with blank glass between and around.

    The threshold on the tissue field is the ``1 - tissue_fraction`` quantile of the field over the slide,
    sampled on a ``samples``-point grid along the longer side (cheap), so about that share of the slide holds
    tissue.
    """
    if not 0.0 < tissue_fraction <= 1.0:
        raise PathgenError(f"tissue fraction must be in (0, 1], got {tissue_fraction}")
    h_um, w_um = height * mpp, width * mpp
    base = TissueParams(tissue_scale_um=max(h_um, w_um) / 2.5, extent_um=(h_um, w_um))
    probe = TissuePlane(seed, mpp, dataclasses.replace(base, tissue_threshold=0.5))
    step = max(h_um, w_um) / samples
    ys = np.arange(step / 2, h_um, step)
    xs = np.arange(step / 2, w_um, step)
    field = probe.tissue_field(ys[:, None], xs[None, :])
    thr = float(np.quantile(field, 1.0 - tissue_fraction)) if tissue_fraction < 1.0 else -np.inf
    if not np.isfinite(thr):
        thr = float(field.min()) - 1.0
    return TissuePlane(seed, mpp, dataclasses.replace(base, tissue_threshold=thr))


def _tile_is_blank(plane: TissuePlane, y0: int, x0: int, h: int, w: int) -> bool:
    """True if no tissue can reach the pixel window.

    The tissue field is sampled every 2 µm over the window grown by the farthest any object or filter reaches
    (20 µm); between samples it can rise by at most its Lipschitz bound times half the sample diagonal. Tissue
    (and every object, which only exists where the field is above the threshold) needs the field within 0.002
    of the threshold, so a window whose samples all stay below ``threshold - 0.003 - slack`` renders as blank
    glass exactly.
    """
    m = plane.mpp
    margin_um = 20.0
    ya, yb = y0 * m - margin_um, (y0 + h) * m + margin_um
    xa, xb = x0 * m - margin_um, (x0 + w) * m + margin_um
    quick = plane.tissue_field(np.linspace(ya, yb, 9)[:, None], np.linspace(xa, xb, 9)[None, :])
    if quick.max() > plane.threshold:
        return False
    step = 2.0
    ys = np.arange(ya, yb + step, step)
    xs = np.arange(xa, xb + step, step)
    f = plane.tissue_field(ys[:, None], xs[None, :])
    slack = plane.tissue_field_lipschitz() * step * math.sqrt(0.5)
    return bool(f.max() + slack < plane.threshold - 0.003)


def render_slide_row(plane: TissuePlane, site: SiteStain, y0: int, width: int, height: int,
                     tile_size: int) -> np.ndarray:
    """Render the tile row starting at pixel row ``y0``: ``(min(tile_size, height - y0), width, 3)`` uint8, one
    ``tile_size²`` window at a time; blank-glass tiles are filled without rendering."""
    blank = np.asarray(np.rint(np.asarray(site.i0)), np.uint8)
    h = min(tile_size, height - y0)
    row = np.empty((h, width, 3), np.uint8)
    for x0 in range(0, width, tile_size):
        w = min(tile_size, width - x0)
        if _tile_is_blank(plane, y0, x0, h, w):
            row[:, x0:x0 + w] = blank
        else:
            conc, _, _ = plane.render(y0, x0, h, w, labels=False)
            row[:, x0:x0 + w] = render_rgb(conc, site)
    return row


def slide_rows(plane: TissuePlane, site: SiteStain, width: int, height: int, tile_size: int,
               progress=None) -> Iterator[np.ndarray]:
    """Yield the slide top to bottom as ``(rows, width, 3)`` uint8 blocks of ``tile_size`` rows (the last may be
    shorter); see :func:`render_slide_row`."""
    per_row = math.ceil(width / tile_size)
    for y0 in range(0, height, tile_size):
        yield render_slide_row(plane, site, y0, width, height, tile_size)
        if progress is not None:
            progress.advance(per_row)


_WORKER_PLANES: dict[tuple, TissuePlane] = {}


def _worker_row(args) -> np.ndarray:
    """Process-pool task: one tile row (the plane is built once per worker process and reused)."""
    key, site, y0, width, height, tile_size = args
    if key not in _WORKER_PLANES:
        _WORKER_PLANES.clear()
        _WORKER_PLANES[key] = slide_plane(*key)
    return render_slide_row(_WORKER_PLANES[key], site, y0, width, height, tile_size)


def _parallel_slide_rows(key: tuple, site: SiteStain, width: int, height: int, tile_size: int, workers: int,
                         progress=None) -> Iterator[np.ndarray]:
    """Like :func:`slide_rows` with rows rendered by ``workers`` processes; at most ``workers + 1`` rows are in
    flight, so memory stays bounded whatever the slide height."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    per_row = math.ceil(width / tile_size)
    starts = iter(range(0, height, tile_size))
    import multiprocessing

    # Not "fork": the writer may already run threads in this process.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        pending: deque = deque()
        for y0 in starts:
            pending.append(pool.submit(_worker_row, (key, site, y0, width, height, tile_size)))
            if len(pending) > workers:
                break
        while pending:
            row = pending.popleft().result()
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(pool.submit(_worker_row, (key, site, nxt, width, height, tile_size)))
            yield row
            if progress is not None:
                progress.advance(per_row)


def write_synthetic_slide(path: str | os.PathLike, width: int, height: int, seed: int = 0,
                          site: str | SiteStain = "A", tile_size: int = 512, mpp: float = 0.5,
                          tissue_fraction: float = 0.45, fmt: str = "svs", quality: int = 90,
                          overwrite: bool = False, workers: int = 1) -> Path:
    """Write a multi-level synthetic H&E slide of any size, tile row by tile row, without holding it in memory.

    Parameters
    ----------
    path : path
        Output file (written atomically by :func:`pathgen.io.pyramid.write_pyramid`).
    width, height : int
        Level-0 size in pixels.
    seed : int
    site : str or SiteStain
    tile_size : int
        TIFF tile side and rendering window (a multiple of 16).
    mpp : float
        µm per pixel, written into the resolution tags and description.
    tissue_fraction : float
        Approximate share of the slide covered by tissue (large blobs, blank glass between and at the margins).
    fmt : {"svs", "tiff"}
        "svs" writes an Aperio-style description so OpenSlide reports vendor "aperio"; "tiff" a generic
        pyramidal TIFF.
    quality : int
        JPEG quality.
    workers : int
        Processes rendering tile rows in parallel (1: in this process). Rows still reach the writer in order
        and at most ``workers + 1`` are held at once.

    Returns
    -------
    Path of the written slide. The pixels do not depend on ``workers`` or ``tile_size``.
    """
    from pathgen.io.pyramid import write_pyramid
    from pathgen.progress import progress_bar

    width = _check_size(width, "width")
    height = _check_size(height, "height")
    tile_size = _check_size(tile_size, "tile size")
    if not mpp > 0:
        raise PathgenError(f"mpp must be positive, got {mpp}")
    if fmt not in ("svs", "tiff"):
        raise PathgenError(f"unknown slide format {fmt!r} (choose svs or tiff)")
    workers = _check_size(workers, "workers")
    s = get_site(site)
    key = (width, height, int(seed), float(mpp), float(tissue_fraction))
    plane = slide_plane(*key)  # validates the tissue fraction before any output is opened
    description = aperio_description(width, height, tile_size, quality, mpp) if fmt == "svs" else None
    n_tiles = math.ceil(width / tile_size) * math.ceil(height / tile_size)
    with progress_bar(n_tiles, "synthesising slide", unit="tiles") as bar:
        if workers > 1:
            rows = _parallel_slide_rows(key, s, width, height, tile_size, workers, bar)
        else:
            rows = slide_rows(plane, s, width, height, tile_size, bar)
        return write_pyramid(path, rows, shape=(height, width, 3), dtype=np.uint8, tile_size=tile_size,
                             mpp=(mpp, mpp), compression="jpeg", quality=quality, description=description,
                             overwrite=overwrite)


def dataset_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path, Path]]:
    """``(image, instances, classes)`` paths of a dataset written by :func:`write_tile_dataset`, by name."""
    root = Path(folder)
    meta = root / "dataset.json"
    if not meta.is_file():
        raise PathgenError("not a pathgen tile dataset (no dataset.json)", root)
    names = [t["name"] for t in json.loads(meta.read_text())["tiles"]]
    out = []
    for name in names:
        trio = (root / "images" / f"{name}.png", root / "instances" / f"{name}.tif", root / "classes" / f"{name}.png")
        for p in trio:
            if not p.is_file():
                raise PathgenError("missing file of a dataset pair", p)
        out.append(trio)
    return out
