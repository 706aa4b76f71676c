"""`pathgen segment`: HoVer-Net-style nuclei segmentation and typing of images and whole slides."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pathgen.cli.options import DEVICE, NO_RESUME, SCHEDULER, THREADS, WORKERS


def segment(
    input: Path = typer.Argument(..., help="Slide or image (PNG/JPEG/TIFF)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (instances.tif, classes.tif, "
                                                            "nuclei.geojson, nuclei.csv, segment.json)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="HoVer-Net run folder (default: the "
                                                                         "shipped small model)."),
    tile_size: int = typer.Option(512, "--tile-size", help="Core tile size in pixels at the model's mpp."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Halo in pixels; wider than the largest nucleus "
                                                                  "(default 64)."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Override the slide's µm/px."),
    min_area: Optional[int] = typer.Option(None, "--min-area", help="Smallest nucleus kept, pixels."),
    min_haematoxylin: Optional[float] = typer.Option(
        None, "--min-haematoxylin", help="Stain check: drop nuclei whose mean haematoxylin is below this fraction "
                                         "of the slide's 99th percentile (default: the checkpoint's, 0.25; 0 = off)."),
    no_skip: bool = typer.Option(False, "--no-skip", help="Also process tiles without detected tissue."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results in the folder."),
    no_resume: bool = NO_RESUME,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    threads: Optional[int] = THREADS,
    batch_size: int = typer.Option(4, "--batch-size", help="Tiles per forward pass."),
    device: str = DEVICE,
) -> None:
    """Segment and type nuclei; each nucleus is resolved once across tiles."""
    from pathgen.cli.options import engine_config
    from pathgen.io.models import shipped_model
    from pathgen.segment.slide import SegmentConfig, segment as run

    ckpt = checkpoint or shipped_model("hovernet")
    engine = engine_config(workers, scheduler, device, batch_size, threads, tile_size=tile_size, overlap=overlap,
                           skip_background=not no_skip)
    cfg = SegmentConfig(engine=engine, min_area=min_area, min_haematoxylin=min_haematoxylin)
    summary = run(input, output, ckpt, cfg, slide_mpp=mpp, overwrite=overwrite, resume=not no_resume)
    per = ", ".join(f"{k} {v}" for k, v in sorted(summary["per_type"].items()))
    typer.echo(f"{summary['nuclei']} nuclei ({per}) -> {output}")


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
