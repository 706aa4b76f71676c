"""Quality control of a normalised slide against its source: tile-wise SSIM over tissue, and an HTML report.

The structural measure is SAASN's grayscale SSIM (:func:`pathgen.metrics.ssim_gray`: 0.299R + 0.587G + 0.114B,
11×11 Gaussian window, σ = 1.5, C1 = (0.01·L)², C2 = (0.03·L)², mean of the SSIM map), computed per tissue tile
and reported as mean ± std over tiles.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathgen.errors import PathgenError
from pathgen.plots import histogram_svg


@dataclass
class SlideSSIM:
    """Tile-wise grayscale SSIM of two slides over the tissue of the first."""

    ssim: float
    ssim_std: float
    n_tiles: int
    tile: int
    level: int
    tiles: list[dict] = field(default_factory=list)  # {"x", "y" (level-0 px), "ssim"}
    colour_to_target: float | None = None  # sliced W1 (CIELAB) of the processed tissue colours to the target's
    colour_before: float | None = None  # the same for the source as it was: what the processing changed

    def as_dict(self) -> dict:
        out = {"ssim": self.ssim, "ssim_std": self.ssim_std, "n_tiles": self.n_tiles, "tile": self.tile,
               "level": self.level, "per_tile": self.tiles}
        if self.colour_to_target is not None:
            out.update(colour_to_target=self.colour_to_target, colour_before=self.colour_before)
        return out


def slide_pair_ssim(a, b, tile: int = 256, level: int = 0, min_tissue: float = 0.5, max_tiles: int | None = 400,
                    seed: int = 0, target=None) -> SlideSSIM:
    """Grayscale SSIM between two slides of the same size, per tissue tile; with ``target``, also how close the
    processed slide's colours are to the target's (:func:`pathgen.metrics.colour.colour_distance`, on the same
    tiles, tissue decided on ``a``), and how close ``a``'s were before.

    Parameters
    ----------
    a, b : path or Slide
        The source and the processed slide (same level-0 dimensions).
    tile : int
        Tile side in pixels of ``level``.
    min_tissue : float
        Fraction of a tile the tissue mask of ``a`` must cover for it to count.
    max_tiles : int, optional
        Evaluate at most this many tissue tiles, drawn at random (seeded) over the slide; None for all.
    target : path or ndarray, optional
        The target image (``(H, W, 3)`` uint8, or an image file) the slide was normalised to.
    """
    from pathgen.metrics import ColourDistanceConfig, ssim_gray
    from pathgen.metrics.colour import lab_cloud_distance, subsample_points, tissue_lab
    from pathgen.io.slide import open_slide
    from pathgen.stain.slide import candidate_tiles
    from pathgen.engine.tissue import tissue_mask

    sa = open_slide(a) if isinstance(a, (str, os.PathLike)) else a
    sb = open_slide(b) if isinstance(b, (str, os.PathLike)) else b
    if sa.dimensions != sb.dimensions:
        raise PathgenError(f"slides differ in size: {sa.dimensions} vs {sb.dimensions}", sb.path)
    level = min(level, sa.level_count - 1, sb.level_count - 1)
    mask = tissue_mask(sa)
    ds = sa.level_downsamples[level]
    cells = candidate_tiles(mask, tile * ds, min_tissue)
    if not cells:
        raise PathgenError("no tissue tile to compare", sa.path)
    if max_tiles is not None and len(cells) > max_tiles:
        pick = np.sort(np.random.default_rng(seed).permutation(len(cells))[:max_tiles])
        cells = [cells[i] for i in pick]
    lw, lh = sa.level_dimensions[level]
    lbw, lbh = sb.level_dimensions[level]
    colour = ColourDistanceConfig(seed=seed)
    per_tile = colour.max_pixels // len(cells) + 1  # the gathered colours stay under max_pixels, however big
    before: list[np.ndarray] = []
    after: list[np.ndarray] = []
    out = []
    for x, y, _ in cells:
        lx, ly = int(x / ds), int(y / ds)
        w, h = min(tile, lw - lx, lbw - lx), min(tile, lh - ly, lbh - ly)
        if w < 11 or h < 11:
            continue
        ta = sa.read_level_region(lx, ly, level, w, h)
        tb = sb.read_level_region(lx, ly, level, w, h)
        out.append({"x": int(x), "y": int(y), "ssim": float(ssim_gray(ta, tb))})
        if target is not None:
            k = seed + len(out)
            after.append(subsample_points(tissue_lab(tb, ta, colour.luminosity_threshold), per_tile, k))
            before.append(subsample_points(tissue_lab(ta, None, colour.luminosity_threshold), per_tile, k))
    vals = np.array([t["ssim"] for t in out])
    res = SlideSSIM(float(vals.mean()), float(vals.std()), len(out), tile, level, out)
    if target is not None:
        from pathgen.io.image import read_image

        named = isinstance(target, (str, os.PathLike))
        image = read_image(target) if named else np.asarray(target)
        ref = tissue_lab(image, None, colour.luminosity_threshold)
        if not len(ref):
            raise PathgenError("target image has no tissue pixels to compare colours with", target if named else None)
        empty = np.zeros((0, 3))  # no tile read: the distances are nan, as the SSIM mean is
        res.colour_to_target = lab_cloud_distance(np.concatenate([empty, *after]), ref, colour)
        res.colour_before = lab_cloud_distance(np.concatenate([empty, *before]), ref, colour)
    return res


def _png_data_uri(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _swatch(vector) -> str:
    """CSS colour of a unit stain vector at a moderate concentration (Beer–Lambert, I0 = 255)."""
    od = np.asarray(vector, float) * 0.8
    rgb = np.clip(255 * np.exp(-od), 0, 255).astype(int)
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def _stain_rows(fit: dict | None, label: str) -> str:
    vectors = (fit or {}).get("vectors")
    if not vectors:
        return f"<tr><td>{html.escape(label)}</td><td colspan=4>not recorded</td></tr>"
    names = ("H", "E")
    cells = []
    for name, v in zip(names, vectors):
        cells.append(f"<td><span class=sw style='background:{_swatch(v)}'></span>{name} "
                     f"({', '.join(f'{x:.3f}' for x in v)})</td>")
    pct = fit.get("concentration_percentiles")
    i0 = fit.get("i0")
    return (f"<tr><td>{html.escape(label)}</td>{''.join(cells)}<td>{'' if pct is None else ', '.join(f'{p:.3f}' for p in pct)}"
            f"</td><td>{'' if i0 is None else ', '.join(f'{x:.0f}' for x in i0)}</td></tr>")


def build_report(source, normalised, output, tile: int = 256, max_tiles: int | None = 400,
                 overwrite: bool = False, target=None) -> dict:
    """Write an HTML page comparing a source slide and its normalised version.

    The page embeds before/after thumbnails, the stain vectors of source and target (read from the JSON written
    next to the normalised slide, when present), the per-tile SSIM histogram and summary figures; with ``target``
    (the target image), also the colour distance to it before and after. Returns the summary as a dict.
    """
    from pathgen import __version__
    from pathgen.io.atomic import atomic_path, check_output
    from pathgen.io.slide import open_slide

    inputs = (source, normalised) + ((target,) if target is not None else ())
    check_output(output, overwrite=overwrite, inputs=inputs)
    sa, sb = open_slide(source), open_slide(normalised)
    res = slide_pair_ssim(sa, sb, tile=tile, max_tiles=max_tiles, target=target)
    side = Path(str(normalised) + ".json")
    meta = json.loads(side.read_text()) if side.exists() else {}
    norm = meta.get("config", {}).get("normalizer", {}) if meta else {}
    vals = np.array([t["ssim"] for t in res.tiles])
    summary = {"source": str(source), "normalised": str(normalised), **res.as_dict()}
    summary.pop("per_tile")
    thumbs = [_png_data_uri(sa.thumbnail(700)), _png_data_uri(sb.thumbnail(700))]
    hist = histogram_svg(vals, xlabel="grayscale SSIM of a tissue tile (source vs. normalised)",
                         range_=(float(min(vals.min(), 0.9)) if vals.size else 0.0, 1.0))
    method = norm.get("settings", {}).get("method") or norm.get("method") or meta.get("config", {}).get("method", "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>pathgen QC — {html.escape(Path(normalised).name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} .row{{display:flex;gap:16px;flex-wrap:wrap}}
figure{{margin:0}} figcaption{{font-size:13px;color:#555}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}} .sw{{display:inline-block;width:14px;height:14px;
margin-right:6px;vertical-align:middle;border:1px solid #888}} .big{{font-size:22px;font-weight:600}}</style></head><body>
<h1>Stain normalisation QC</h1>
<p>Source <code>{html.escape(str(source))}</code> → normalised <code>{html.escape(str(normalised))}</code>
{f"(method <b>{html.escape(str(method))}</b>)" if method else ""}</p>
<p class=big>Grayscale SSIM {res.ssim:.4f} ± {res.ssim_std:.4f} over {res.n_tiles} tissue tiles of {tile} px</p>
{"" if res.colour_to_target is None else
 f"<p class=big>Colour distance to the target {res.colour_to_target:.2f} (before: {res.colour_before:.2f})</p>"
 "<p>Sliced Wasserstein-1 distance in CIELAB between the tissue colours of the same tiles and those of the target "
 "image (lower = closer; the counterweight to SSIM, which an unchanged slide maximises).</p>"}
<div class=row><figure><img src="{thumbs[0]}"><figcaption>before</figcaption></figure>
<figure><img src="{thumbs[1]}"><figcaption>after</figcaption></figure></div>
<h2>Stain vectors (optical density, unit rows)</h2>
<table><tr><th></th><th>haematoxylin</th><th>eosin</th><th>concentration percentiles</th><th>I0 (RGB)</th></tr>
{_stain_rows(norm.get("source"), "source (slide-level fit)")}
{_stain_rows(norm.get("target"), "target")}</table>
<h2>Per-tile SSIM</h2>{hist}
<p>min {vals.min():.4f} · median {np.median(vals):.4f} · max {vals.max():.4f}. SSIM: SAASN's grayscale SSIM
(0.299R+0.587G+0.114B, 11×11 Gaussian window σ=1.5, C1=(0.01·255)², C2=(0.03·255)²), between each tile of the
source and the same tile of the output; it measures structure kept, not colour matched.</p>
<p style="color:#888;font-size:12px">pathgen {__version__}</p></body></html>"""
    with atomic_path(output, overwrite=overwrite, inputs=(source, normalised)) as tmp:
        tmp.write_text(page)
    return summary
