"""SAASN training loop (METHODS.md §2.3–2.4): unpaired batches, generator step then discriminator step.

Per step: draw a batch of source crops (any site of X) and of target crops; update both generators on
:func:`pathgen.saasn.losses.generator_loss` with the discriminators frozen; pass the new fakes through the replay
buffers; update both discriminators on :func:`pathgen.saasn.losses.discriminator_losses`. Adam (lr 2e-4,
betas (0.5, 0.999)) for the generators and for the discriminators; the learning rate is constant for the first
``decay_start`` epochs (half the run by default) and then falls linearly, reaching ``lr / (n + 1)`` in the last of
the ``n`` decay epochs.

Run folder ``RUN``::

    run.json                   configurations, data, versions, command line
    config.json + generator.safetensors + generator_y2x.safetensors   latest generators (inference checkpoint)
    state/training.*           everything needed to resume exactly (see :mod:`pathgen.saasn.checkpoint`)
    losses.csv                 one row per step: every loss term, learning rate, wall time, cycle weight
    samples/epoch_NNN.png      fixed preview crops through both generators in eval mode, after each epoch

``resume=True`` restarts after the last completed epoch with the same networks, optimiser moments, buffers and
random streams, so an interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from pathgen.errors import PathgenError
from pathgen.io.atomic import atomic_path, write_csv
from pathgen.saasn.buffer import ReplayBuffer
from pathgen.saasn.checkpoint import (load_training_state, read_training_meta, save_generators,
                                      save_training_state)
from pathgen.saasn.data import DataConfig, UnpairedData, to_tensor, to_uint8
from pathgen.saasn.losses import LossConfig, discriminator_losses, generator_loss
from pathgen.saasn.networks import SAASN, SAASNConfig, count_parameters, preset

LOSS_COLUMNS = ("epoch", "step", "lr", "loss_g", "adv_g", "cycle", "scycle", "dssim", "identity", "loss_dx",
                "loss_dy", "boundary", "seconds", "alpha")


@dataclass
class TrainConfig:
    """Optimisation settings (saved with the run).

    Attributes
    ----------
    epochs : int
    decay_start : int, optional
        Epoch (0-based) from which the learning rate decays linearly; default ``epochs // 2``.
    steps_per_epoch : int, optional
        Default: enough steps to draw as many crops as the larger domain has tiles.
    batch_size : int
        Crops per domain per step (16 in the text).
    lr, beta1, beta2 : float
        Adam settings of both optimisers.
    pool_size : int
        Replay buffer capacity (50).
    seed : int
        Seeds initialisation, sampling and the buffers.
    device : str
        "auto", "cpu" or "cuda[:N]".
    threads : int, optional
        torch CPU threads (default: torch's choice).
    preview : int
        Crops per domain in the per-epoch sample grid.
    cycle_warmup_steps : int
        pathgen extension, 0 (off) in the text's recipe: the L1 cycle weight α rises linearly from 0 to its value
        over the first this many steps (:func:`cycle_weight`). A generator that starts as the identity map (the
        ``colour_transform`` head) sits at an exact zero of the L1 cycle loss, whose slope there does not vanish:
        at the identity its gradient on the colour head is 50-100× the adversarial one (measured, see
        ``benchmarks/RESULTS.md``), and with Adam, whose step is normalised by that gradient, the adversarial term
        cannot move the generators off the identity. The warm-up lets the adversarial term start the recolouring;
        from then on the text's α holds.
    """

    epochs: int = 100
    decay_start: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int = 16
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    pool_size: int = 50
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    preview: int = 4
    cycle_warmup_steps: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise PathgenError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise PathgenError(f"batch size must be >= 1, got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise PathgenError(f"steps per epoch must be >= 1, got {self.steps_per_epoch}")
        if self.lr <= 0:
            raise PathgenError(f"learning rate must be positive, got {self.lr}")
        if self.cycle_warmup_steps < 0:
            raise PathgenError(f"cycle warm-up steps must be >= 0, got {self.cycle_warmup_steps}")

    @property
    def decay_epoch(self) -> int:
        return self.epochs // 2 if self.decay_start is None else int(self.decay_start)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: Training settings that go with the architecture presets of :data:`pathgen.saasn.networks.PRESETS`.
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, preview=2),
    "small": TrainConfig(epochs=20, batch_size=4, preview=4),
    # the colour-transform generators start at the identity: the L1 cycle weight is warmed up (TrainConfig)
    "small-colour": TrainConfig(epochs=20, batch_size=4, preview=4, cycle_warmup_steps=200),
    "small-od": TrainConfig(epochs=20, batch_size=4, preview=4, cycle_warmup_steps=200),
    "small-od-sn": TrainConfig(epochs=20, batch_size=4, preview=4, cycle_warmup_steps=200),
    "small-od-pixel": TrainConfig(epochs=20, batch_size=4, preview=4, cycle_warmup_steps=200),
    "small-od-stain": TrainConfig(epochs=20, batch_size=4, preview=4, cycle_warmup_steps=200),
    "paper": TrainConfig(epochs=100, batch_size=16, preview=4),
}


def train_preset(name: str) -> TrainConfig:
    try:
        return TrainConfig(**asdict(TRAIN_PRESETS[name]))
    except KeyError:
        raise PathgenError(f"unknown preset {name!r} (choose {', '.join(TRAIN_PRESETS)})") from None


def cycle_weight(alpha: float, step: int, warmup_steps: int) -> float:
    """The L1 cycle weight at 0-based global ``step``: ``alpha · min(1, step / warmup_steps)`` (``alpha`` when
    there is no warm-up)."""
    if warmup_steps <= 0:
        return float(alpha)
    return float(alpha) * min(1.0, step / warmup_steps)


def lr_factor(epoch: int, epochs: int, decay_start: int) -> float:
    """Learning-rate multiplier of 0-based ``epoch``: 1 before ``decay_start``, then linear towards 0."""
    if epoch < decay_start:
        return 1.0
    return 1.0 - (epoch - decay_start + 1) / (epochs - decay_start + 1)


@dataclass
class TrainResult:
    """What a training run did."""

    output: str
    epochs_done: int
    steps_done: int
    seconds: float
    last_epoch_means: dict[str, float] = field(default_factory=dict)


def _set_requires_grad(modules, flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def sample_grid(model: SAASN, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Preview image: rows ``x | G_x2y(x) | G_y2x(G_x2y(x))`` then ``y | G_y2x(y) | G_x2y(G_y2x(y))``.

    Runs the generators in eval mode (as inference does) and restores their mode. Returns (H, W, 3) uint8.
    """
    modes = [g.training for g in model.generators()]
    for g in model.generators():
        g.eval()
    with torch.no_grad():
        fy = model.g_x2y(x)
        fx = model.g_y2x(y)
        rows_x = [x, fy, model.g_y2x(fy)]
        rows_y = [y, fx, model.g_x2y(fx)]
    for g, m in zip(model.generators(), modes):
        g.train(m)
    blocks = []
    for triple in (rows_x, rows_y):
        imgs = [to_uint8(t) for t in triple]  # each (n, S, S, 3)
        blocks.append(np.concatenate([np.concatenate(list(im), axis=0) for im in imgs], axis=1))
    return np.concatenate(blocks, axis=0)


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, overwrite=True) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _prepare_csv(path: Path, keep_before_epoch: int) -> None:
    """Keep the header and the rows of epochs before ``keep_before_epoch`` (1-based epochs in the file)."""
    rows = []
    if path.exists() and keep_before_epoch > 0:
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= keep_before_epoch]
    write_csv(path, rows, LOSS_COLUMNS)


def train_saasn(output: str | os.PathLike, data: DataConfig | None = None, model: SAASNConfig | None = None,
                losses: LossConfig | None = None, train: TrainConfig | None = None, resume: bool = False,
                overwrite: bool = False, epochs: int | None = None, stop_after: int | None = None,
                quiet: bool | None = None) -> TrainResult:
    """Train SAASN into the run folder ``output`` (module docstring).

    Parameters
    ----------
    output : path
        Run folder; created. An existing non-empty folder is refused unless ``resume`` or ``overwrite``.
    data, model, losses, train : configurations
        Required for a new run (``model`` defaults to the ``small`` preset, ``losses`` to the text's weights,
        ``train`` to :class:`TrainConfig`'s defaults). With ``resume`` they are read from the run and the ones
        given are ignored, except ``epochs``.
    resume : bool
        Continue after the last completed epoch saved in ``output``.
    overwrite : bool
        Start afresh in an existing run folder (its files are replaced).
    epochs : int, optional
        Total epochs (overrides ``train.epochs``; with ``resume``, extends or shortens the run, which changes
        the learning-rate schedule of the remaining epochs).
    stop_after : int, optional
        Return after this many epochs of this call (a checkpoint is saved; ``resume`` continues the schedule).
    quiet : bool, optional
        No progress bar.

    Returns
    -------
    TrainResult
    """
    from pathgen.io.records import to_jsonable, versions, write_json_atomic
    from pathgen.engine import resolve_device
    from pathgen.progress import progress_bar

    out = Path(output)
    if resume:
        meta = read_training_meta(out)
        data = DataConfig(**meta["data"])
        model = SAASNConfig.from_dict(meta["model"])
        losses = LossConfig.from_dict(meta["losses"])
        train = TrainConfig.from_dict(meta["train"])
    else:
        if data is None:
            raise PathgenError("no training data given")
        model = model or preset("small")
        losses = losses or LossConfig()
        train = train or TrainConfig()
        if out.exists() and not out.is_dir():
            raise PathgenError("run folder path is a file", out)
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise PathgenError("run folder exists and is not empty (use --resume to continue it or --overwrite "
                               "to start again)", out)
        if not out.parent.exists():
            raise PathgenError("output folder does not exist", out.parent)
    if epochs is not None:
        train.epochs = int(epochs)
        train.__post_init__()
    if train.threads:
        torch.set_num_threads(int(train.threads))
    device = torch.device(resolve_device(train.device))

    dataset = UnpairedData(data, model.image_size)
    steps = train.steps_per_epoch or dataset.default_steps_per_epoch(train.batch_size)
    torch.manual_seed(train.seed)
    net = SAASN(model).to(device)
    opt_g = torch.optim.Adam(itertools.chain(*(g.parameters() for g in net.generators())), lr=train.lr,
                             betas=(train.beta1, train.beta2))
    opt_d = torch.optim.Adam(itertools.chain(*(d.parameters() for d in net.discriminators())), lr=train.lr,
                             betas=(train.beta1, train.beta2))
    seeds = np.random.SeedSequence(train.seed).spawn(3)
    rng = np.random.default_rng(seeds[0])
    buffers = {"x": ReplayBuffer(train.pool_size, int(seeds[1].generate_state(1)[0])),
               "y": ReplayBuffer(train.pool_size, int(seeds[2].generate_state(1)[0]))}
    start_epoch = 0
    if resume:
        meta = load_training_state(out, net, opt_g, opt_d, buffers, {"sample": rng}, device=device)
        start_epoch = int(meta["epoch"])
    else:
        out.mkdir(exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
    run_info = {"data": to_jsonable(data), "model": model.to_dict(), "losses": losses.to_dict(),
                "train": to_jsonable(train), "steps_per_epoch": steps,
                "source_sites": {s.name: len(s) for s in dataset.sources},
                "target_sites": {t.name: len(t) for t in dataset.targets},
                "parameters": {"generator": count_parameters(net.g_x2y), "discriminator": count_parameters(net.d_x)}}
    write_json_atomic(out / "run.json", {**run_info, "versions": versions(), "command": sys.argv,
                                         "resumed_at_epoch": start_epoch if resume else None})

    # Fixed preview crops from their own stream: the same in every epoch and after a resume.
    preview_rng = np.random.default_rng(np.random.SeedSequence([train.seed, 1]))
    preview_x = to_tensor(dataset.sample_x(train.preview, preview_rng)[0], device)
    preview_y = to_tensor(dataset.sample_y(train.preview, preview_rng), device)

    csv_path = out / "losses.csv"
    _prepare_csv(csv_path, start_epoch)
    t_start = time.perf_counter()
    means: dict[str, float] = {}
    steps_done = 0
    end_epoch = train.epochs if stop_after is None else min(train.epochs, start_epoch + max(0, int(stop_after)))
    total = max(0, end_epoch - start_epoch) * steps
    with progress_bar(total, "training SAASN", unit="steps", quiet=quiet) as bar, \
            csv_path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOSS_COLUMNS)
        for epoch in range(start_epoch, end_epoch):
            lr = train.lr * lr_factor(epoch, train.epochs, train.decay_epoch)
            for opt in (opt_g, opt_d):
                for group in opt.param_groups:
                    group["lr"] = lr
            net.train()
            sums: dict[str, float] = {}
            for step in range(steps):
                xb, _ = dataset.sample_x(train.batch_size, rng)
                yb = dataset.sample_y(train.batch_size, rng)
                x, y = to_tensor(xb, device), to_tensor(yb, device)

                alpha = cycle_weight(losses.alpha, epoch * steps + step, train.cycle_warmup_steps)
                step_losses = losses if alpha == losses.alpha else replace(losses, alpha=alpha)
                _set_requires_grad(net.discriminators(), False)
                opt_g.zero_grad(set_to_none=True)
                loss_g, terms, outs = generator_loss(net, x, y, step_losses)
                loss_g.backward()
                opt_g.step()

                _set_requires_grad(net.discriminators(), True)
                opt_d.zero_grad(set_to_none=True)
                fake_x = buffers["x"].query(outs.fake_x)
                fake_y = buffers["y"].query(outs.fake_y)
                loss_dx, loss_dy, dterms = discriminator_losses(net, x, y, fake_x, fake_y, losses)
                (loss_dx + loss_dy).backward()
                opt_d.step()

                row = {"epoch": epoch + 1, "step": step + 1, "lr": lr, "loss_g": loss_g.item(),
                       **{k: v.item() for k, v in terms.items()}, "loss_dx": loss_dx.item(),
                       "loss_dy": loss_dy.item(), "boundary": dterms["boundary"].item(),
                       "seconds": round(time.perf_counter() - t_start, 3), "alpha": alpha}
                if not all(math.isfinite(v) for v in row.values()):
                    raise PathgenError(f"training diverged at epoch {epoch + 1} step {step + 1} (a loss is not "
                                       "finite); lower the learning rate or use --adversarial lsgan", out)
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
                for k in LOSS_COLUMNS[3:12]:
                    sums[k] = sums.get(k, 0.0) + row[k]
                steps_done += 1
                bar.advance(1)
                bar.update(description=f"SAASN epoch {epoch + 1}/{train.epochs} G {row['loss_g']:.3f} "
                                       f"D {row['loss_dx'] + row['loss_dy']:.3f}")
            fh.flush()
            means = {k: v / steps for k, v in sums.items()}
            _write_png(out / "samples" / f"epoch_{epoch + 1:03d}.png", sample_grid(net, preview_x, preview_y))
            summary = {"epochs": epoch + 1, "steps_per_epoch": steps, "last_epoch_means": means}
            save_generators(out, net.g_x2y, net.g_y2x, extra={
                "training": summary, "image_size": model.image_size, "mpp": data.mpp,
                "sources": list(data.sources), "targets": list(data.targets), "losses": losses.to_dict()})
            save_training_state(out, net, opt_g, opt_d, buffers, {"sample": rng},
                                {"epoch": epoch + 1, **run_info})
    return TrainResult(str(out), end_epoch, steps_done, time.perf_counter() - t_start, means)
