"""`pathgen qc` commands: quick image-to-image measures (SSIM, Dice, PSNR) on two files or two folders.

Each command prints one line, or with ``--json`` one JSON object on stdout (keys ``<metric>``,
``<metric>_std``, ``n_pairs``, ``per_pair``, ...); ``--out FILE`` also writes that JSON to a file. New commands
are added to ``qc_app`` the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

qc_app = typer.Typer(no_args_is_help=True, help="Quality control: compare images pairwise.")

A_HELP = "Image file, or folder of images."
B_HELP = "Image file, or folder (paired with A by file name)."


def _emit(result: dict, as_json: bool, out: Optional[Path], overwrite: bool, inputs: tuple, metric: str) -> None:
    from pathgen.metrics.report import clean_for_json, write_json

    if out is not None:
        write_json(out, result, overwrite=overwrite, inputs=inputs)
    if as_json:
        typer.echo(json.dumps(clean_for_json(result), indent=2))
        return
    mean, std = result[metric], result[f"{metric}_std"]
    spread = f" ± {std:.4f}" if result["n_pairs"] > 1 and std == std else ""
    text = "undefined" if mean != mean else ("inf" if mean == float("inf") else f"{mean:.4f}")
    typer.echo(f"{metric} {text}{spread} ({result['n_pairs']} pair{'s' if result['n_pairs'] != 1 else ''})")
    if out is not None:
        typer.echo(f"wrote {out}")


def _run(a: Path, b: Path, metric: str, as_json: bool, out: Optional[Path], overwrite: bool, **options) -> None:
    from pathgen.io.atomic import check_output
    from pathgen.metrics.report import compare_images
    from pathgen.io.image import is_slide

    if out is not None:
        check_output(out, overwrite=overwrite, inputs=(a, b))
    if metric == "ssim" and not options.get("rgb") and a.is_file() and b.is_file() and is_slide(a) and is_slide(b):
        from pathgen.pipelines.qc import slide_pair_ssim

        # slide pairs: tile-wise SSIM over the tissue of A (mean ± std over tiles)
        res = slide_pair_ssim(a, b).as_dict()
        res["n_pairs"] = res["n_tiles"]
        _emit(res, as_json, out, overwrite, (a, b), metric)
        return
    _emit(compare_images(a, b, metric, **options), as_json, out, overwrite, (a, b), metric)


AS_JSON = typer.Option(False, "--json", help="Print the result as JSON.")
OUT = typer.Option(None, "--out", help="Also write the JSON result to this file.")
OVERWRITE_OUT = typer.Option(False, "--overwrite", help="Replace an existing --out file.")


@qc_app.command("ssim")
def ssim(
    a: Path = typer.Argument(..., help=A_HELP),
    b: Path = typer.Argument(..., help=B_HELP),
    rgb: bool = typer.Option(False, "--rgb", help="SSIM per colour channel instead of SAASN's grayscale SSIM."),
    as_json: bool = AS_JSON,
    out: Optional[Path] = OUT,
    overwrite: bool = OVERWRITE_OUT,
) -> None:
    """SSIM (grayscale 0.299R+0.587G+0.114B, 11x11 Gaussian σ 1.5, as SAASN); mean ± std over pairs."""
    _run(a, b, "ssim", as_json, out, overwrite, rgb=rgb)


@qc_app.command("dice")
def dice(
    a: Path = typer.Argument(..., help="Mask file, or folder of masks."),
    b: Path = typer.Argument(..., help="Mask file, or folder (paired with A by file name)."),
    eps: float = typer.Option(0.0, "--eps", help="Smoothing; > 0 makes two empty masks score 1."),
    as_json: bool = AS_JSON,
    out: Optional[Path] = OUT,
    overwrite: bool = OVERWRITE_OUT,
) -> None:
    """Dice of binary masks (any non-zero pixel is foreground); mean ± std over pairs."""
    _run(a, b, "dice", as_json, out, overwrite, eps=eps)


@qc_app.command("psnr")
def psnr(
    a: Path = typer.Argument(..., help=A_HELP),
    b: Path = typer.Argument(..., help=B_HELP),
    as_json: bool = AS_JSON,
    out: Optional[Path] = OUT,
    overwrite: bool = OVERWRITE_OUT,
) -> None:
    """PSNR in dB (images scaled to [0, 1]); identical images give infinity (null in JSON)."""
    _run(a, b, "psnr", as_json, out, overwrite)


@qc_app.command("report")
def report(
    source: Path = typer.Argument(..., help="The source slide (or image)."),
    normalised: Path = typer.Argument(..., help="Its normalised version (same size)."),
    output: Path = typer.Option(..., "-o", "--output", help="HTML page to write."),
    tile: int = typer.Option(256, "--tile", help="Tile side for the per-tile SSIM."),
    max_tiles: int = typer.Option(400, "--max-tiles", help="Most tissue tiles scored (random, seeded)."),
    target: Optional[Path] = typer.Option(None, "--target", help="The target image: also report the colour "
                                                                 "distance to it, before and after."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
) -> None:
    """An HTML page: before/after thumbnails, stain vectors, per-tile SSIM histogram (images embedded)."""
    from pathgen.pipelines.qc import build_report

    s = build_report(source, normalised, output, tile=tile, max_tiles=max_tiles, overwrite=overwrite, target=target)
    colour = (f"; colour distance to the target {s['colour_to_target']:.2f} (before {s['colour_before']:.2f})"
              if target is not None else "")
    typer.echo(f"wrote {output}: SSIM {s['ssim']:.4f} ± {s['ssim_std']:.4f} over {s['n_tiles']} tissue tiles"
               + colour)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(qc_app, name="qc", help="Quality control: SSIM, Dice and PSNR between images.")
