"""`pathgen normalize`: stain-normalise image files, folders/globs of them, and whole slides."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pathgen.cli.options import NO_RESUME, SCHEDULER, THREADS, WORKERS


def _is_slide(path: str | Path) -> bool:
    """The one place the command decides "is this a whole slide?".

    Slide suffixes (.svs .ndpi .mrxs .scn .bif .vms .vmu .dcm) and pyramidal/multi-page .tif/.tiff files are slides
    (rule in :func:`pathgen.io.image.is_slide`); everything else is an image file.
    """
    from pathgen.io.image import is_slide

    return is_slide(path)


def _slide_output(input_path: Path, out_dir: Path) -> Path:
    return out_dir / f"{input_path.stem}.tif"


def normalize(
    input: str = typer.Argument(..., help="Image file (PNG/JPEG/TIFF), slide, folder, or quoted glob pattern."),
    output: Path = typer.Option(..., "-o", "--output", help="Output file (one input) or folder (several)."),
    method: str = typer.Option("macenko", "--method", "-m", help="macenko | vahadane | reinhard | saasn."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="SAASN run folder for --method saasn "
                                                                         "(default: the shipped small model)."),
    saasn_mode: Optional[str] = typer.Option(None, "--saasn-mode",
                                             help="SAASN: generator (paint every tile) | stain-map (one fitted "
                                                  "optical-density map per slide; default: the model's stored mode)."),
    strength: Optional[float] = typer.Option(None, "--strength", help="SAASN stain-map strength in [0, 1] "
                                                                       "(default: the model's stored one)."),
    target: Optional[str] = typer.Option(None, "--target", "-t",
                                         help="Target: image, folder of images (one domain), slide, or stain JSON "
                                              "from `pathgen stain fit` (default: built-in target)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    per_tile: bool = typer.Option(False, "--per-tile", help="Fit the source on every tile separately "
                                                            "(for comparison; causes seams)."),
    tile_size: int = typer.Option(512, "--tile-size", help="Tile edge in pixels: the slide engine's tiles, and the "
                                                           "tiles of --per-tile fits on image files."),
    percentile: float = typer.Option(99.0, "--percentile", help="Concentration percentile used for scaling."),
    i0: Optional[str] = typer.Option(None, "--i0", help="Background intensity, one value or R,G,B "
                                                        "(default: estimated per image/slide)."),
    no_rescale: bool = typer.Option(False, "--no-rescale", help="Keep source concentrations unscaled "
                                                                "(NASDM Vahadane variant)."),
    brightness: str = typer.Option("none", "--brightness", help="none | rgb_p90 | lab_l_p95."),
    lasso_lambda: float = typer.Option(0.01, "--lasso-lambda", help="L1 weight of the concentration solve."),
    luminosity_threshold: float = typer.Option(0.8, "--luminosity-threshold",
                                               help="Tissue is CIELAB L/100 below this."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the pixel sampling and Vahadane subsampling."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Halo in pixels blended between slide tiles "
                                                                  "(default: 0 with one slide-level fit, whose "
                                                                  "transform is pointwise; 32 with --per-tile)."),
    resume: bool = typer.Option(False, "--resume", help="Batch runs: skip inputs whose output already exists "
                                                        "(outputs are only ever complete files)."),
    no_resume: bool = NO_RESUME,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    threads: Optional[int] = THREADS,
    batch_size: int = typer.Option(4, "--batch-size", help="Slide tiles per call of the transform."),
) -> None:
    """Stain-normalise images or slides to a target; each image/slide gets one source fit."""
    from pathgen.io.records import save_run_config
    from pathgen.errors import PathgenError
    from pathgen.io.atomic import check_output
    from pathgen.progress import progress_bar
    from pathgen.io.image import expand_inputs, image_format
    from pathgen.stain.apply import normalize_image_file
    from pathgen.stain.normalize import StainNormalizer

    saasn = method == "saasn"
    if not saasn:
        normalizer = StainNormalizer(method, percentile=percentile, i0=i0, lasso_lambda=lasso_lambda,
                                     rescale=not no_rescale, brightness=brightness, device=device, seed=seed,
                                     luminosity_threshold=luminosity_threshold)
    elif target is not None:
        raise PathgenError("--method saasn takes no --target: the target domain is the one the model learned")
    if not saasn and (saasn_mode is not None or strength is not None):
        raise PathgenError("--saasn-mode and --strength apply to --method saasn only")
    if tile_size < 16:
        raise PathgenError(f"--tile-size must be at least 16, got {tile_size}")
    from pathgen.cli.options import engine_config

    engine = engine_config(workers, scheduler, device, batch_size, threads, tile_size=tile_size, overlap=overlap)
    inputs = expand_inputs(input)
    single = Path(input).is_file()  # a folder or a glob always writes into an output folder

    # Decide every output and refuse clashes before any work starts.
    jobs: list[tuple[Path, Path, bool]] = []
    skipped: list[Path] = []
    if single:
        slide = _is_slide(inputs[0])
        if not slide:
            image_format(output)
        check_output(output, overwrite=overwrite, inputs=(inputs[0],))
        jobs.append((inputs[0], output, slide))
    else:
        if output.exists() and not output.is_dir():
            raise PathgenError("several inputs need an output folder, this is a file", output)
        if not output.exists():
            if not output.parent.exists():
                raise PathgenError("output folder's parent does not exist", output.parent)
            output.mkdir()
        for src in inputs:
            slide = _is_slide(src)
            dst = _slide_output(src, output) if slide else output / src.name
            if resume and not overwrite and dst.exists():
                skipped.append(dst)
                continue
            check_output(dst, overwrite=overwrite, inputs=(src,))
            jobs.append((src, dst, slide))
        if len({dst for _, dst, _ in jobs}) != len(jobs):
            raise PathgenError("two inputs would write the same output name", output)
        if skipped:
            typer.echo(f"resuming: {len(skipped)} output(s) already done, {len(jobs)} to go")

    if saasn:
        _run_saasn(jobs, checkpoint, engine, overwrite, output, saasn_mode, strength, seed, resume=not no_resume)
        return
    normalizer.fit_target(target)
    sources: dict[str, object] = {}
    with progress_bar(len(jobs), f"normalize ({method})", unit="files") as bar:
        for src, dst, slide in jobs:
            if slide:
                from pathgen.stain.slide import normalize_slide  # slide engine: fits the source once per slide

                normalize_slide(src, dst, normalizer, per_tile=per_tile, overwrite=overwrite, engine=engine,
                                resume=not no_resume)
                result = None if per_tile else normalizer.source
            else:
                result = normalize_image_file(src, dst, normalizer, per_tile=per_tile, tile_size=tile_size,
                                              overwrite=overwrite)
            sources[src.name] = None if result is None else result.to_dict()
            bar.advance(1)

    if not (single and jobs[0][2]):  # a single slide's run record is written by normalize_slide itself
        extra = {"target": normalizer.target.to_dict(), "inputs": [str(j[0]) for j in jobs],
                 "per_tile": per_tile, "tile_size": tile_size, "sources": sources}
        save_run_config(output, normalizer.settings(), seed=seed, extra=extra)
    typer.echo(f"normalised {len(jobs)} file{'s' if len(jobs) != 1 else ''} -> {output}")


def _run_saasn(jobs, checkpoint, engine, overwrite, output, mode=None, strength=None, seed=0, resume=True) -> None:
    """The deep many-to-one normaliser: the SAASN X→Y generator over blended tiles (or its stain map), slides or
    images."""
    from pathgen.errors import PathgenError
    from pathgen.io.image import image_format, read_image, write_image
    from pathgen.io.records import save_run_config
    from pathgen.progress import progress_bar
    from pathgen.saasn.infer import (_normalizer, default_model_path, generator_halo, normalize_image_saasn,
                                     normalize_slide_saasn)
    from pathgen.stain.slide import SlideFitConfig

    ckpt = checkpoint or default_model_path()
    model = _normalizer(ckpt, engine.device, skip_glass=True)
    mode, strength = model.resolve_mode(mode, strength)  # refuse a bad mode or strength before any work
    halo = generator_halo(engine.tile_size, model.multiple) if engine.overlap is None else engine.overlap
    with progress_bar(len(jobs), "normalize (saasn)", unit="files") as bar:
        for src, dst, slide in jobs:
            if slide:
                normalize_slide_saasn(src, dst, model, engine, overwrite=overwrite, mode=mode, strength=strength,
                                      fit_config=SlideFitConfig(seed=seed), resume=resume)
            else:
                rgb, alpha = read_image(src, with_alpha=True)
                try:
                    out = normalize_image_saasn(rgb, model, device=engine.device, tile_size=engine.tile_size,
                                                overlap=halo, batch_size=engine.batch_size, mode=mode,
                                                strength=strength, seed=seed)
                except PathgenError as err:  # name the image (e.g. too little tissue to fit a stain map on)
                    raise PathgenError(err.problem, err.path or src) from err
                write_image(dst, out, alpha, fmt=image_format(dst), overwrite=overwrite, inputs=(src,))
            bar.advance(1)
    if not (len(jobs) == 1 and jobs[0][2]):  # a single slide's record is written by the slide job
        save_run_config(output, {"method": "saasn", "engine": engine, "saasn": {
            "checkpoint": str(ckpt), "halo": halo, "mode": mode, "strength": strength}},
            seed=seed, extra={"inputs": [str(j[0]) for j in jobs]})
    typer.echo(f"normalised {len(jobs)} file{'s' if len(jobs) != 1 else ''} with SAASN -> {output}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("normalize", help="Stain-normalise images or slides (Macenko, Vahadane, Reinhard, SAASN).")(normalize)
