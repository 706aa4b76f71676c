"""`pathgen info`, `pathgen convert`, `pathgen tissue`: slide inspection and re-encoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pathgen.cli.options import BATCH, NO_RESUME, SCHEDULER, THREADS, WORKERS, engine_config

# Typer option declarations shared by the commands of this module.
OUTPUT = typer.Option(..., "-o", "--output", help="Output path.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output.")
MPP = typer.Option(None, "--mpp", help="Override the slide's µm/px at level 0 (when missing or wrong).")


def info(
    slide: Path = typer.Argument(..., help="Slide or image file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    mpp: Optional[float] = MPP,
) -> None:
    """Show a slide's levels, pixel size, vendor and associated images."""
    from pathgen.io.slide import open_slide

    with open_slide(slide, mpp=mpp) as s:
        d = s.info().as_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{d['path']}[/]  {d['width']}×{d['height']} px  vendor={d['vendor']}  backend={d['backend']}")
    mpp_s = "none (pass --mpp)" if d["mpp"] is None else f"{d['mpp'][0]:.4f} × {d['mpp'][1]:.4f} µm/px " \
        f"({d['mpp_source']})"
    con.print(f"mpp: {mpp_s}   objective: {d['objective_power'] or 'unknown'}")
    t = Table("level", "width", "height", "downsample", "µm/px")
    for i, ((w, h), ds) in enumerate(zip(d["levels"], d["downsamples"])):
        t.add_row(str(i), str(w), str(h), f"{ds:.3f}", "-" if d["mpp"] is None else f"{d['mpp'][0] * ds:.4f}")
    con.print(t)
    if d["associated_images"]:
        con.print("associated images: " + ", ".join(d["associated_images"]))


def convert(
    slide: Path = typer.Argument(..., help="Slide or image to re-encode."),
    output: Path = OUTPUT,
    tile_size: int = typer.Option(512, "--tile-size", help="TIFF tile size (multiple of 16)."),
    quality: int = typer.Option(90, "--quality", help="JPEG quality 1..100."),
    compression: str = typer.Option("jpeg", "--compression", help="jpeg | zlib | zstd | lzw | webp | none."),
    level: int = typer.Option(0, "--level", help="Source level to convert."),
    target_mpp: Optional[float] = typer.Option(None, "--target-mpp", help="Resample to this µm/px instead."),
    mpp: Optional[float] = MPP,
    overwrite: bool = OVERWRITE,
    no_resume: bool = NO_RESUME,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    threads: Optional[int] = THREADS,
    batch_size: int = BATCH,
) -> None:
    """Re-encode any slide into a pyramidal TIFF (or OME-Zarr if OUTPUT ends in .zarr)."""
    from pathgen.engine.job import convert_slide

    cfg = engine_config(workers, scheduler, "cpu", batch_size, threads, tile_size=tile_size, overlap=0,
                        blend="none", skip_background=False)
    rep = convert_slide(slide, output, cfg, level=level, mpp=target_mpp, slide_mpp=mpp, compression=compression,
                        quality=quality, overwrite=overwrite, resume=not no_resume)
    typer.echo(f"wrote {rep.output} ({rep.shape[1]}×{rep.shape[0]}, {rep.windows} tiles)")


def tissue(
    slide: Path = typer.Argument(..., help="Slide or image."),
    output: Path = OUTPUT,
    max_size: int = typer.Option(2048, "--max-size", help="Longest side of the mask in pixels."),
    method: str = typer.Option("otsu", "--method", help="otsu (optical density) | saturation."),
    min_od: float = typer.Option(0.06, "--min-od", help="Floor of the OD threshold (glass is below)."),
    overwrite: bool = OVERWRITE,
    mpp: Optional[float] = MPP,
) -> None:
    """Detect tissue on a low-resolution overview and save the mask as a PNG (white = tissue)."""
    import numpy as np
    from PIL import Image

    from pathgen.errors import PathgenError
    from pathgen.io.atomic import atomic_path
    from pathgen.io.slide import open_slide
    from pathgen.engine.tissue import TissueConfig, tissue_mask

    with open_slide(slide, mpp=mpp) as s:
        tm = tissue_mask(s, TissueConfig(max_size=max_size, method=method, min_od=min_od))
    if not tm.mask.any():
        raise PathgenError("no tissue detected", slide)
    with atomic_path(output, overwrite=overwrite, inputs=(slide,)) as tmp:
        Image.fromarray(tm.to_image()).save(tmp, format="PNG")
    typer.echo(f"wrote {output} ({tm.mask.shape[1]}×{tm.mask.shape[0]}, tissue {100 * tm.fraction:.1f}%, "
               f"1 px = {np.mean(tm.downsample):.1f} level-0 px)")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("convert")(convert)
    app.command("tissue")(tissue)
    app.command("region")(region)


def region(
    slide: Path = typer.Argument(..., help="Slide or image."),
    output: Path = OUTPUT,
    x: int = typer.Option(..., "--x", help="Left edge in level-0 pixels."),
    y: int = typer.Option(..., "--y", help="Top edge in level-0 pixels."),
    width: int = typer.Option(..., "--width", help="Width in pixels of the level read."),
    height: int = typer.Option(..., "--height", help="Height in pixels of the level read."),
    level: int = typer.Option(0, "--level", help="Pyramid level to read."),
    target_mpp: Optional[float] = typer.Option(None, "--target-mpp", help="Read at this µm/px instead of a level."),
    overwrite: bool = OVERWRITE,
    mpp: Optional[float] = MPP,
) -> None:
    """Extract one region of a slide as an image file (PNG, JPEG or TIFF by extension)."""
    from PIL import Image

    from pathgen.io.atomic import atomic_path
    from pathgen.io.slide import open_slide

    with open_slide(slide, mpp=mpp) as s:
        if target_mpp:
            s.read_region((x, y), 0, (1, 1))  # bounds check at level 0
            img = s.read_region_mpp((x, y), target_mpp, (width, height))
        else:
            img = s.read_region((x, y), level, (width, height))
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(output.suffix.lower(),
                                                                                             "PNG")
    with atomic_path(output, overwrite=overwrite, inputs=(slide,)) as tmp:
        Image.fromarray(img).save(tmp, format=fmt)
    typer.echo(f"wrote {output} ({width}×{height})")
