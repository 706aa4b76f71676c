"""`pathgen synth` and `pathgen synthesize` commands, and the NASDM / MaskGen `pathgen train` commands.

``register(app)`` adds the ``synth`` group (``images``, ``masks``) and the ``synthesize`` group (``dataset``);
``add_train_commands(train_app)`` adds ``nasdm`` and ``maskgen`` to the ``train`` group owned by
:mod:`pathgen.cli.train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _progress_steps(total: int, desc: str):
    from pathgen.progress import progress_bar

    return progress_bar(total, desc, unit="steps")


# ---------------------------------------------------------------------------------------------------------------
# pathgen train nasdm / maskgen


def train_nasdm_cmd(
    data: Path = typer.Option(..., "--data", help="Tile dataset folder (images/, instances/, classes/)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder (resumed if it holds a saved state)."),
    preset: str = typer.Option("small", help="Architecture preset: small, paper or tiny."),
    image_size: Optional[int] = typer.Option(None, help="Crop / window size in pixels (overrides the preset)."),
    channels: Optional[int] = typer.Option(None, help="Width of the first U-Net level (overrides the preset)."),
    steps: int = typer.Option(2000, help="Steps of the main phase (no condition dropout)."),
    lr: float = typer.Option(1e-4, help="Learning rate of the main phase."),
    finetune_steps: int = typer.Option(500, help="Steps of the fine-tune phase (with condition dropout)."),
    finetune_lr: float = typer.Option(2e-5, help="Learning rate of the fine-tune phase."),
    cond_drop: float = typer.Option(0.2, help="Condition dropout in the fine-tune phase (for guidance)."),
    batch_size: int = typer.Option(8, help="Crops per step."),
    warmup: int = typer.Option(200, help="Linear warm-up steps."),
    ema: float = typer.Option(0.999, help="EMA decay."),
    timesteps: int = typer.Option(1000, help="Diffusion steps T of the training schedule."),
    seed: int = typer.Option(0, help="Seed (initial weights, crops, noise)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    save_every: int = typer.Option(250, help="Steps between checkpoints."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (resumably) after this much wall time."),
) -> None:
    """Train NASDM (mask-conditioned H&E diffusion) on a tile dataset."""
    from pathgen.nasdm.train import NASDMTrainConfig, train_nasdm

    cfg = NASDMTrainConfig(preset=preset, image_size=image_size, model_channels=channels, steps=steps, lr=lr,
                           finetune_steps=finetune_steps, finetune_lr=finetune_lr, cond_drop=cond_drop,
                           batch_size=batch_size, warmup_steps=warmup, ema_decay=ema, num_train_timesteps=timesteps,
                           seed=seed, device=device, threads=threads, save_every=save_every)
    total = cfg.loop_config().total_steps
    with _progress_steps(total, "training NASDM") as bar:
        done = [None]

        def progress(step, target, loss):
            if done[0] is None:
                bar.advance(step - 1)
            done[0] = step
            bar.advance(1)

        summary = train_nasdm(data, output, cfg, max_seconds=None if max_minutes is None else 60.0 * max_minutes,
                              progress=progress)
    _report_training(summary)


def train_maskgen_cmd(
    data: Path = typer.Option(..., "--data", help="Tile dataset folder (instances/, classes/; images/ unused)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder (resumed if it holds a saved state)."),
    preset: str = typer.Option("small", help="Architecture preset: small, paper or tiny."),
    image_size: Optional[int] = typer.Option(None, help="Mask size in pixels (overrides the preset)."),
    channels: Optional[int] = typer.Option(None, help="Width of the first U-Net level (overrides the preset)."),
    steps: int = typer.Option(2000, help="Training steps."),
    lr: float = typer.Option(1e-4, help="Learning rate."),
    cond_drop: float = typer.Option(0.1, help="Presence-vector dropout (enables guidance)."),
    batch_size: int = typer.Option(8, help="Crops per step."),
    warmup: int = typer.Option(200, help="Linear warm-up steps."),
    ema: float = typer.Option(0.999, help="EMA decay."),
    timesteps: int = typer.Option(1000, help="Diffusion steps T of the training schedule."),
    seed: int = typer.Option(0, help="Seed (initial weights, crops, noise)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    save_every: int = typer.Option(250, help="Steps between checkpoints."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (resumably) after this much wall time."),
) -> None:
    """Train MaskGen (instance-aware nuclei-mask diffusion) on a tile dataset's masks."""
    from pathgen.maskgen.train import MaskGenTrainConfig, train_maskgen

    cfg = MaskGenTrainConfig(preset=preset, image_size=image_size, model_channels=channels, steps=steps, lr=lr,
                             cond_drop=cond_drop, batch_size=batch_size, warmup_steps=warmup, ema_decay=ema,
                             num_train_timesteps=timesteps, seed=seed, device=device, threads=threads,
                             save_every=save_every)
    with _progress_steps(cfg.steps, "training MaskGen") as bar:
        done = [None]

        def progress(step, target, loss):
            if done[0] is None:
                bar.advance(step - 1)
            done[0] = step
            bar.advance(1)

        summary = train_maskgen(data, output, cfg, max_seconds=None if max_minutes is None else 60.0 * max_minutes,
                                progress=progress)
    _report_training(summary)


def _report_training(summary) -> None:
    state = "finished" if summary.finished else "stopped (resume with the same command)"
    loss = "" if summary.last_loss is None else f", last loss {summary.last_loss:.4f}"
    typer.echo(f"{summary.run}: step {summary.step}/{summary.total_steps} {state}{loss}")


def add_train_commands(train_app: typer.Typer) -> None:
    """Add ``nasdm`` and ``maskgen`` to the ``pathgen train`` group."""
    train_app.command("nasdm")(train_nasdm_cmd)
    train_app.command("maskgen")(train_maskgen_cmd)


# ---------------------------------------------------------------------------------------------------------------
# pathgen synth images / masks


def synth_images_cmd(
    masks: Path = typer.Option(..., "--masks", help="Folder with instances/ and classes/ (paired by name)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="NASDM run or checkpoint folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (images/, instances/, classes/)."),
    guidance: float = typer.Option(1.5, help="Guidance scale s: 0 unconditional, 1 conditional, >1 stronger."),
    steps: int = typer.Option(50, help="Denoising steps."),
    scheduler: str = typer.Option("ddpm", help="Sampler: ddpm (ancestral, learned variance), ddim or dpm "
                                               "(DPM-Solver++)."),
    seed: int = typer.Option(0, help="Job seed (sample i uses a seed derived from (seed, i))."),
    batch_size: int = typer.Option(8, help="Masks per batch."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output folder holding another job."),
) -> None:
    """Render H&E tiles for existing nuclei masks with NASDM (resumable)."""
    from pathgen.pipelines.synthesize import synthesize_dataset

    res = synthesize_dataset(output, n=None, nasdm_checkpoint=checkpoint, masks_dir=masks, guidance=guidance,
                             steps=steps, scheduler=scheduler, seed=seed, batch_size=batch_size, device=device,
                             overwrite=overwrite)
    typer.echo(f"{output}: {res.done} tiles ({res.generated} new)")


def synth_masks_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="MaskGen run or checkpoint folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (instances/, classes/)."),
    n: int = typer.Option(..., "-n", help="Number of masks."),
    types: Optional[str] = typer.Option(None, "--types", help="Nucleus types to include, e.g. "
                                        "epithelial,lymphocyte (default: drawn from the training data)."),
    guidance: float = typer.Option(1.0, help="Guidance scale on the presence vector."),
    steps: int = typer.Option(50, help="Denoising steps."),
    scheduler: str = typer.Option("ddpm", help="Sampler: ddpm (ancestral, learned variance), ddim or dpm "
                                               "(DPM-Solver++)."),
    seed: int = typer.Option(0, help="Job seed."),
    batch_size: int = typer.Option(8, help="Masks per batch."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output folder holding another job."),
) -> None:
    """Generate instance-aware nuclei masks with MaskGen (resumable)."""
    from pathgen.pipelines.synthesize import synthesize_masks

    res = synthesize_masks(output, n, checkpoint, types=types, guidance=guidance, steps=steps, scheduler=scheduler,
                           seed=seed, batch_size=batch_size, device=device, overwrite=overwrite)
    typer.echo(f"{output}: {res.done} masks ({res.generated} new)")


def synthesize_dataset_cmd(
    n: Optional[int] = typer.Option(None, "-n", help="Number of samples (default: every mask in --masks)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (images/, instances/, classes/)."),
    nasdm: Path = typer.Option(..., "--nasdm", help="NASDM run or checkpoint folder."),
    maskgen: Optional[Path] = typer.Option(None, "--maskgen", help="MaskGen run: generate the masks."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of existing masks to render."),
    types: Optional[str] = typer.Option(None, "--types", help="With --maskgen: nucleus types to include."),
    size: Optional[int] = typer.Option(None, "--size", help="With --maskgen: side of the generated masks and tiles "
                                                           "in pixels (default: MaskGen's training size; larger "
                                                           "regions are fused from overlapping windows)."),
    guidance: float = typer.Option(1.5, help="NASDM guidance scale s."),
    steps: int = typer.Option(50, help="Denoising steps (both models)."),
    scheduler: str = typer.Option("ddpm", help="Sampler: ddpm (ancestral, learned variance), ddim or dpm "
                                               "(DPM-Solver++)."),
    seed: int = typer.Option(0, help="Job seed (sample i uses seeds derived from (seed, i))."),
    batch_size: int = typer.Option(8, help="Samples per batch."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output folder holding another job."),
) -> None:
    """Synthesise an annotated dataset: masks (generated or given) → H&E tiles, with a manifest. Resumable."""
    from pathgen.pipelines.synthesize import synthesize_dataset

    res = synthesize_dataset(output, n=n, nasdm_checkpoint=nasdm, maskgen_checkpoint=maskgen, masks_dir=masks,
                             types=types, guidance=guidance, steps=steps, scheduler=scheduler, seed=seed,
                             batch_size=batch_size, device=device, mask_size=size, overwrite=overwrite)
    typer.echo(f"{output}: {res.done} samples ({res.generated} new, {res.done - res.generated} already done)")


def register(app: typer.Typer) -> None:
    """Add the ``synth`` and ``synthesize`` groups to the root app."""
    synth = typer.Typer(no_args_is_help=True)
    synth.command("images")(synth_images_cmd)
    synth.command("masks")(synth_masks_cmd)
    app.add_typer(synth, name="synth", help="Synthesise H&E tiles from masks (NASDM) or masks (MaskGen).")
    job = typer.Typer(no_args_is_help=True)
    job.command("dataset")(synthesize_dataset_cmd)
    app.add_typer(job, name="synthesize", help="Batch synthesis of annotated datasets (resumable, with manifest).")
