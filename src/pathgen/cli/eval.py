"""`pathgen eval` commands: instance / typed nuclei scores, semantic Dice / IoU, FID / KID."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

eval_app = typer.Typer(no_args_is_help=True, help="Score predictions against ground truth, or two image sets.")


class Mode(str, Enum):
    hovernet = "hovernet"
    pannuke = "pannuke"
    conic = "conic"


class Average(str, Enum):
    per_image = "per-image"
    pooled = "pooled"


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
    return str(value)


def _with_record(result: dict) -> dict:
    # Library versions, so a number can be traced to what produced it.
    from pathgen.io.records import versions

    return {**result, "versions": versions()}


def _check_outputs(inputs: tuple, overwrite: bool, *outputs: Optional[Path]) -> None:
    # Refuse bad outputs before any work starts.
    from pathgen.io.atomic import check_output

    for out in outputs:
        if out is not None:
            check_output(out, overwrite=overwrite, inputs=inputs)


@eval_app.command("instances")
def instances(
    true: Path = typer.Option(..., "--true", help="Ground truth: a label file or a folder of them."),
    pred: Path = typer.Option(..., "--pred", help="Predictions: a label file or a folder (paired by name)."),
    classes: bool = typer.Option(False, "--classes", help="Also score nucleus classes."),
    mode: Mode = typer.Option(Mode.hovernet, "--mode",
                              help="hovernet: HoVer-Net stats; pannuke: + mPQ/bPQ; conic: CoNIC PQ + mPQ+."),
    tissue: Optional[Path] = typer.Option(None, "--tissue",
                                          help="Tissue types for --mode pannuke (types.npy or name,tissue CSV)."),
    iou_threshold: float = typer.Option(0.5, "--iou-threshold", help="PQ match: IoU strictly above this."),
    radius: float = typer.Option(12.0, "--radius", help="Centroid pairing radius in pixels (--classes)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write all results as JSON here."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-image scores as CSV here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """DICE1, DICE2, AJI, AJI+, DQ/SQ/PQ per image and their means; with --classes also typed scores."""
    from pathgen.metrics.report import INSTANCE_KEYS, evaluate_instances

    _check_outputs((true, pred), overwrite, json_out, csv_out)
    result = evaluate_instances(true, pred, classes=classes, mode=mode.value, tissue_path=tissue,
                                iou_threshold=iou_threshold, radius=radius)
    typer.echo(f"{result['n_images']} images ({mode.value})")
    typer.echo("  ".join(f"{k} {_fmt(result[k])}" for k in INSTANCE_KEYS))
    for key in ("mpq", "bpq", "mpq_plus"):
        if key in result:
            typer.echo(f"{key} {_fmt(result[key])}")
    if "detection" in result:
        det = result["detection"]
        types = "  ".join(f"F1_{k} {_fmt(v)}" for k, v in det["f1_per_type"].items())
        typer.echo(f"F1_detection {_fmt(det['f1'])}  accuracy {_fmt(det['accuracy'])}  {types}".rstrip())
    _write_outputs(result, json_out, csv_out, overwrite, (true, pred))


def _write_outputs(result: dict, json_out: Optional[Path], csv_out: Optional[Path], overwrite: bool,
                   inputs: tuple) -> None:
    """The result as JSON (with its run record) and its per-image rows as CSV, where asked."""
    from pathgen.metrics.report import write_csv, write_json

    if json_out is not None:
        write_json(json_out, _with_record(result), overwrite=overwrite, inputs=inputs)
        typer.echo(f"wrote {json_out}")
    if csv_out is not None:
        write_csv(csv_out, result["per_image"], overwrite=overwrite, inputs=inputs)
        typer.echo(f"wrote {csv_out}")


@eval_app.command("semantic")
def semantic(
    true: Path = typer.Option(..., "--true", help="Ground-truth class map file or folder."),
    pred: Path = typer.Option(..., "--pred", help="Predicted class map file or folder (paired by name)."),
    n_classes: Optional[int] = typer.Option(None, "--n-classes",
                                            help="Classes including background (default: max value + 1)."),
    include_background: bool = typer.Option(False, "--include-background", help="Score class 0 too."),
    eps: float = typer.Option(0.0, "--eps", help="Smoothing; > 0 makes a class absent on both sides score 1."),
    average: Average = typer.Option(Average.per_image, "--average",
                                    help="per-image: classes then images (NASDM); pooled: counts over images."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON here."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-image scores as CSV here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Dice and IoU per class and mean, for semantic class maps."""
    from pathgen.metrics.report import evaluate_semantic

    _check_outputs((true, pred), overwrite, json_out, csv_out)
    result = evaluate_semantic(true, pred, n_classes=n_classes, include_background=include_background, eps=eps,
                               average=average.value.replace("-", "_"))
    bg = "with" if include_background else "without"
    typer.echo(f"{result['n_images']} maps, classes {result['classes']} ({bg} background, {average.value})")
    typer.echo(f"dice {_fmt(result['dice'])}  iou {_fmt(result['iou'])}")
    _write_outputs(result, json_out, csv_out, overwrite, (true, pred))


@eval_app.command("fid")
def fid(
    dir_a: Path = typer.Argument(..., help="First image folder (e.g. real)."),
    dir_b: Path = typer.Argument(..., help="Second image folder (e.g. generated)."),
    weights: Path = typer.Option(..., "--weights",
                                 help="FID Inception weights: pt_inception-2015-12-05-*.pth or .safetensors."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results and their record as JSON here."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", help="Images per KID subset (capped at N)."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", help="Number of KID subsets."),
    seed: int = typer.Option(0, "--seed", help="Seed of the KID subset draws."),
    device: str = typer.Option("cpu", "--device", help="torch device for the network."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """FID and KID between two image folders, with Inception-v3 pool3 features from a local weights file."""
    from pathgen.metrics.fid import InceptionExtractor, compare_image_sets
    from pathgen.metrics.report import write_json

    _check_outputs((dir_a, dir_b, weights), overwrite, json_out)
    extractor = InceptionExtractor.from_weights(weights, device=device)
    result = compare_image_sets(dir_a, dir_b, extractor, batch_size=batch_size, kid_subset_size=kid_subset_size,
                                kid_subsets=kid_subsets, seed=seed)
    typer.echo(f"{result['n_images_a']} vs {result['n_images_b']} images")
    typer.echo(f"fid {result['fid']:.4f}  kid {result['kid']:.6f} ± {result['kid_std']:.6f} "
               f"({result['kid_subsets']} subsets of {result['kid_subset_size']})")
    if json_out is not None:
        write_json(json_out, _with_record(result), overwrite=overwrite, inputs=(dir_a, dir_b, weights))
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(eval_app, name="eval", help="Evaluation: instance / typed nuclei scores, Dice / IoU, FID / KID.")
