"""`pathgen train` commands: model training (HoVer-Net)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def hovernet(
    data: Path = typer.Option(..., "--data", help="Training tiles (images/, instances/, classes/) or a dataset "
                                                  "the metrics module reads."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder (best checkpoint, logs, resume state)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation tiles (default: hold out "
                                                           "--val-fraction of --data)."),
    epochs: int = typer.Option(50, "--epochs", help="Epochs of the all-layers phase (published: 50)."),
    frozen_epochs: Optional[int] = typer.Option(
        None, "--frozen-epochs",
        help="Epochs of the frozen-encoder phase (published: 50; default: --epochs with --pretrained, else 0)."),
    preset: str = typer.Option("small", "--preset", help="tiny | small | resnet50 (the published encoder)."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained",
                                              help="Local encoder weights (.safetensors or torch state dict)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Patches per step."),
    patch_size: int = typer.Option(256, "--patch-size", help="Training patch side in pixels (multiple of 8)."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch",
                                                  help="Steps per epoch (default: one pass over the tiles)."),
    lr: float = typer.Option(1e-4, "--lr", help="Initial Adam learning rate of each phase."),
    lr_step: Optional[int] = typer.Option(None, "--lr-step", help="Epochs of a phase before the learning rate "
                                                                   "drops 10x (default: half the phase)."),
    val_every: int = typer.Option(2, "--val-every", help="Validate every N epochs (and after the last)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Hold-out share when --val is not given."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="µm/px of the training tiles, stored with the model "
                                                            "(default: the dataset's, else 0.5)."),
    augment: str = typer.Option("standard", "--augment",
                                help="standard (flips, rotations, colour jitter) | strong (adds stain and blur "
                                     "jitter) | real (strong plus haematoxylin sheets over the tissue and pale "
                                     "nuclei; for generated tiles meant for real slides) | real-stroma (real plus "
                                     "fibrous, dermis-like ground) | none."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this HoVer-Net checkpoint (fine-tune; "
                                                             "its architecture replaces --preset)."),
    data_format: str = typer.Option("auto", "--format", help="auto | tiles | hovernet-mat | pannuke | conic."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, split, sampling, augmentation)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda[:N] | auto."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output with its saved settings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an existing run folder."),
) -> None:
    """Train a HoVer-Net nucleus segmentation and typing model."""
    import torch

    from pathgen.progress import QUIET
    from pathgen.segment.data import AUGMENT_PRESETS
    from pathgen.segment.train import TrainConfig, train_hovernet

    if threads is not None:
        torch.set_num_threads(max(1, threads))
    config = TrainConfig(
        preset=preset, epochs=epochs, frozen_epochs=frozen_epochs, batch_size=batch_size, patch_size=patch_size,
        steps_per_epoch=steps_per_epoch, lr=lr, lr_step=lr_step, val_every=val_every, val_fraction=val_fraction,
        seed=seed, pretrained=None if pretrained is None else str(pretrained), mpp=mpp,
        init_from=None if init is None else str(init),
        augment=None if augment == "none" else _augment(augment, AUGMENT_PRESETS), device=device)
    echo = (lambda _m: None) if QUIET else (lambda m: typer.echo(m, err=True))
    result = train_hovernet(data, output, config, val=val, resume=resume, overwrite=overwrite,
                            data_format=data_format, log=echo)
    value = "" if result.criterion == "last_epoch" else f" ({result.criterion} {result.best_value:.4f})"
    typer.echo(f"best checkpoint: epoch {result.best_epoch}{value} -> {output}")


def _augment(name: str, presets: dict):
    from pathgen.errors import PathgenError

    if name not in presets:
        raise PathgenError(f"unknown --augment {name!r} (choose {', '.join(presets)})")
    return presets[name]


def register(app: typer.Typer) -> None:
    """Add the `train` sub-app to the root app."""
    sub = typer.Typer(no_args_is_help=True, help="Train models.")
    sub.command("hovernet")(hovernet)
    app.add_typer(sub, name="train", help="Train models: HoVer-Net, SAASN, NASDM, MaskGen.")
