"""SAASN commands: `pathgen train saasn` and `pathgen eval stain`.

The `train` and `eval` groups belong to other modules; this one adds its commands to them through
:func:`add_train_command` and :func:`add_eval_command`. :func:`register` does that on the root app: it reuses the
`train` / `eval` sub-apps already registered there and creates them if they are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _site_list(values: Optional[List[str]]) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(p for p in (s.strip() for s in v.split(",")) if p)
    return out


def train_saasn_command(
    source: Optional[List[str]] = typer.Option(
        None, "--source", "-s", help="A source site: folder of tiles or a slide. Repeat (or comma-separate) "
                                     "for several sites; they are pooled into X."),
    target: Optional[List[str]] = typer.Option(
        None, "--target", "-t", help="The target site: folder of tiles or a slide (repeat to pool several)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder (generators, resume state, losses.csv, "
                                                            "samples/)."),
    preset: str = typer.Option("small", "--preset",
                               help="tiny | small | small-colour | small-od | small-od-sn | small-od-pixel | paper "
                                    "(architecture and defaults)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Total epochs (default: the preset's; paper "
                                                                "100, decay over the second half)."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch",
                                                  help="Steps per epoch (default: one pass over the larger "
                                                       "domain's tiles)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Crops per domain per step."),
    balance: str = typer.Option("pooled", "--balance", help="pooled (sites by size) | sites (equal shares)."),
    adversarial: str = typer.Option("lsgan", "--adversarial", help="lsgan | bce."),
    alpha: float = typer.Option(10.0, "--alpha", help="L1 cycle weight."),
    beta: float = typer.Option(10.0, "--beta", help="Structural (grayscale SSIM) cycle weight."),
    gamma: float = typer.Option(10.0, "--gamma", help="Input-vs-output grayscale SSIM weight."),
    delta: float = typer.Option(0.1, "--delta", help="Identity weight."),
    no_boundary_control: bool = typer.Option(False, "--no-boundary-control",
                                             help="Drop the D_X boundary-control term."),
    ablation: bool = typer.Option(False, "--cyclegan", help="The ablation: CycleGAN objective (SAASN's SSIM "
                                                            "terms and boundary control off)."),
    attention: Optional[str] = typer.Option(None, "--attention", help="sdpa | matmul | none."),
    cycle_warmup: Optional[int] = typer.Option(None, "--cycle-warmup",
                                               help="Steps over which the L1 cycle weight rises from 0 to --alpha "
                                                    "(default: the preset's; 200 for small-colour and the "
                                                    "small-od presets, else 0)."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Read slides at this resolution (µm/px)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, sampling, buffers)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output with its saved settings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an existing run folder."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after",
                                             help="Stop after N epochs of this call (resume later)."),
) -> None:
    """Train SAASN: many-to-one self-attentive adversarial stain normalisation on unpaired sites."""
    from pathgen.errors import PathgenError
    from pathgen.saasn.data import DataConfig
    from pathgen.saasn.losses import LossConfig
    from pathgen.saasn.networks import preset as arch_preset
    from pathgen.saasn.train import train_preset, train_saasn

    data = model = losses = tcfg = None
    if not resume:
        sources, targets = _site_list(source), _site_list(target)
        if not sources:
            raise PathgenError("give at least one --source site (or --resume)")
        if not targets:
            raise PathgenError("give a --target site (or --resume)")
        data = DataConfig(sources, targets, balance=balance, mpp=mpp)
        model = arch_preset(preset)
        if attention is not None:
            model.attention = attention
            model.__post_init__()
        if ablation:
            losses = LossConfig.cyclegan(adversarial)
            losses.alpha, losses.delta = alpha, delta
        else:
            losses = LossConfig(adversarial, alpha, beta, gamma, delta, boundary_control=not no_boundary_control)
        tcfg = train_preset(preset)
        tcfg.seed, tcfg.device, tcfg.threads = seed, device, threads
        if steps_per_epoch is not None:
            tcfg.steps_per_epoch = steps_per_epoch
        if batch_size is not None:
            tcfg.batch_size = batch_size
        if cycle_warmup is not None:
            tcfg.cycle_warmup_steps = cycle_warmup
        tcfg.__post_init__()
    result = train_saasn(output, data, model, losses, tcfg, resume=resume, overwrite=overwrite, epochs=epochs,
                         stop_after=stop_after)
    means = ", ".join(f"{k} {v:.4f}" for k, v in result.last_epoch_means.items())
    typer.echo(f"trained {result.epochs_done} epochs ({result.steps_done} steps, {result.seconds:.0f} s) -> "
               f"{output}" + (f"\nlast epoch: {means}" if means else ""))


def _named_sites(values: Optional[List[str]]) -> dict[str, str]:
    sites: dict[str, str] = {}
    for v in _site_list(values):
        name, sep, path = v.partition("=")
        if not sep:
            name, path = Path(v.rstrip("/")).name or v, v
        sites[name] = path
    return sites


def eval_stain_command(
    source: Optional[List[str]] = typer.Option(
        None, "--source", "-s", help="Test tiles of a source site: NAME=FOLDER or FOLDER (named after the folder). "
                                     "Repeat for several sites."),
    target: Path = typer.Option(..., "--target", "-t", help="Test tiles of the target domain (folder)."),
    saasn: Optional[Path] = typer.Option(None, "--saasn", help="SAASN run or model folder."),
    ablation: Optional[Path] = typer.Option(None, "--ablation", help="CycleGAN-ablation run folder."),
    methods: str = typer.Option("identity,saasn,saasn-map,cyclegan,cyclegan-map,macenko,vahadane", "--methods",
                                help="Comma-separated methods (those needing a missing checkpoint are skipped); "
                                     "saasn-map / cyclegan-map: the model in stain-map mode."),
    strength: Optional[float] = typer.Option(None, "--strength", help="Stain-map strength of the -map rows in [0, 1] "
                                                                       "(default: the model's stored one, else 1)."),
    no_reverse: bool = typer.Option(False, "--no-reverse", help="Skip the Y → X direction."),
    fit_target: Optional[Path] = typer.Option(
        None, "--fit-target", help="Tiles the classical methods fit the target stain to (e.g. the target's "
                                   "training tiles; default: the --target test tiles themselves, an oracle the "
                                   "learnt methods do not get)."),
    fit_source: Optional[List[str]] = typer.Option(
        None, "--fit-source", help="Tiles pooled as the classical methods' target for Y → X (NAME=FOLDER or FOLDER, "
                                   "repeat; default: the --source test tiles)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the report as JSON."),
    save_dir: Optional[Path] = typer.Option(None, "--save-images", help="Write every normalised tile here."),
    device: str = typer.Option("cpu", "--device", help="auto | cpu | cuda[:N]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the classical normalisers' pixel sampling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
) -> None:
    """Compare stain normalisers: grayscale SSIM to the source (mean ± std) and colour distance to the target."""
    from pathgen.io.records import to_jsonable, versions
    from pathgen.errors import PathgenError
    from pathgen.io.atomic import atomic_path, check_output
    from pathgen.saasn.evaluate import evaluate_stain, format_table

    sites = _named_sites(source)
    if not sites:
        raise PathgenError("give at least one --source site")
    if output is not None:
        check_output(output, overwrite=overwrite)
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    report = evaluate_stain(sites, target, saasn=saasn, ablation=ablation, methods=chosen,
                            reverse=not no_reverse, device=device, seed=seed, save_dir=save_dir, strength=strength,
                            fit_target=fit_target, fit_sources=_named_sites(fit_source) or None)
    typer.echo(format_table(report))
    if output is not None:
        import json

        with atomic_path(output, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(to_jsonable({**report, "versions": versions()}), indent=2) + "\n")


def add_train_command(train_app: typer.Typer) -> None:
    """Add `saasn` to the `pathgen train` sub-app."""
    train_app.command("saasn")(train_saasn_command)


def add_eval_command(eval_app: typer.Typer) -> None:
    """Add `stain` to the `pathgen eval` sub-app."""
    eval_app.command("stain")(eval_stain_command)


def _sub_app(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    for group in app.registered_groups:
        if group.name == name and group.typer_instance is not None:
            return group.typer_instance
    sub = typer.Typer(no_args_is_help=True, help=help_text)
    app.add_typer(sub, name=name, help=help_text)
    return sub


def register(app: typer.Typer) -> None:
    """Add `train saasn` and `eval stain` to the root app (reusing its `train` / `eval` sub-apps if present)."""
    add_train_command(_sub_app(app, "train", "Train models."))
    add_eval_command(_sub_app(app, "eval", "Score predictions against ground truth, or two image sets."))
