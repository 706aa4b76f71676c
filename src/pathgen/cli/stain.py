"""`pathgen stain` commands: fit and save stain statistics."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

stain_app = typer.Typer(no_args_is_help=True, help="Fit and inspect stain statistics.")


@stain_app.command("fit")
def fit(
    paths: List[str] = typer.Argument(..., help="Image files and/or folders of images, pooled into one domain "
                                                "(or one slide)."),
    output: Path = typer.Option(..., "-o", "--output", help="Stain JSON to write (usable as --target)."),
    method: str = typer.Option("macenko", "--method", "-m", help="macenko | vahadane | reinhard."),
    percentile: float = typer.Option(99.0, "--percentile", help="Concentration percentile recorded for scaling."),
    i0: Optional[str] = typer.Option(None, "--i0", help="Background intensity: one value or R,G,B "
                                                        "(default: estimated from the images)."),
    luminosity_threshold: float = typer.Option(0.8, "--luminosity-threshold",
                                               help="Tissue is CIELAB L/100 below this."),
    brightness: str = typer.Option("none", "--brightness", help="none | rgb_p90 | lab_l_p95."),
    seed: int = typer.Option(0, "--seed", help="Seed of the pixel sampling and Vahadane subsampling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Fit stain vectors, concentration percentiles and I0 on images and save them as JSON."""
    from pathgen.io.atomic import check_output
    from pathgen.stain.apply import fit_paths
    from pathgen.stain.macenko import NoTissueError
    from pathgen.stain.normalize import StainNormalizer

    normalizer = StainNormalizer(method, percentile=percentile, i0=i0, luminosity_threshold=luminosity_threshold,
                                 brightness=brightness, seed=seed)
    check_output(output, overwrite=overwrite, inputs=tuple(paths))
    stain_fit = fit_paths(list(paths), normalizer)
    if not stain_fit.has_tissue:
        raise NoTissueError("no tissue found to fit stains on "
                            f"({stain_fit.params.get('no_tissue_reason', 'no pixels below the threshold')})",
                            paths[0] if len(paths) == 1 else None)
    stain_fit.save(output, overwrite=overwrite)
    typer.echo(_describe(stain_fit, output))


def _describe(fit, output) -> str:
    lines = [f"wrote {output}: method {fit.method}, {fit.tissue_pixels} tissue pixels, "
             f"I0 {', '.join(f'{v:.1f}' for v in fit.i0)}"]
    if fit.matrix is not None:
        for name, vec, p in zip(("H", "E"), fit.matrix.vectors, fit.concentration_percentiles):
            lines.append(f"  {name}: OD vector ({', '.join(f'{v:.4f}' for v in vec)}), "
                         f"p{fit.percentile:g} concentration {p:.4f}")
    if fit.lab_mean is not None:
        lines.append(f"  CIELAB mean ({', '.join(f'{v:.2f}' for v in fit.lab_mean)}), "
                     f"std ({', '.join(f'{v:.2f}' for v in fit.lab_std)})")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(stain_app, name="stain", help="Fit and inspect stain statistics.")
