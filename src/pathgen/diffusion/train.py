"""A generic, resumable training loop for diffusion models.

AdamW with linear warm-up, phases with their own learning rate and options (NASDM: lr 1e-4 without condition
dropout, then a fine-tune at 2e-5 with dropout 0.2), gradient-norm clipping, an exponential moving average of the
weights (with the usual warm-up ``decay_n = min(decay, (1 + n)/(10 + n))`` so short runs are not dominated by the
initial weights), a CSV loss log and checkpoints as safetensors + JSON.

Determinism and resuming: the data and noise of step ``k`` come from generators seeded by ``(seed, k)``, not
from a running RNG stream, so a run stopped after any saved step and resumed gives the same weights as an
uninterrupted one (on the same device and thread count). A run folder holds::

    RUN/model.safetensors, RUN/config.json   EMA weights + description (what sampling loads)
    RUN/state/                               raw weights, EMA, optimiser state, RNG state, train_state.json
    RUN/loss_log.csv                         step, phase, lr, loss terms, gradient norm, seconds
    RUN/train.json                           settings, data description, versions, command line
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pathgen.io.checkpoint import load_optimizer, load_tensors, optimizer_tensors, save_model, save_tensors
from pathgen.diffusion.sampling import seed_for
from pathgen.errors import PathgenError
from pathgen.io.atomic import write_csv

LOG_COLUMNS = ("step", "phase", "lr", "loss", "mse", "vlb", "grad_norm", "seconds")


@dataclass(frozen=True)
class TrainPhase:
    """A stretch of training with its own learning rate and options.

    Attributes
    ----------
    name : str
    steps : int
        Optimiser steps in this phase.
    lr : float
        Peak learning rate (the first phase is warmed up linearly to it).
    options : dict
        Passed to the loss function, e.g. ``{"cond_drop": 0.2}``.
    """

    name: str
    steps: int
    lr: float
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainLoopConfig:
    """Optimiser, EMA, logging and checkpointing settings.

    Attributes
    ----------
    phases : tuple of TrainPhase
    batch_size : int
    weight_decay : float
        AdamW weight decay (0 in NASDM).
    warmup_steps : int
        Linear warm-up from ``lr/warmup_steps`` to ``lr`` at the start of the first phase (200 in NASDM).
    ema_decay : float
        0.999 (NASDM text; the reference code's default is 0.9999).
    grad_clip : float
        Maximum global gradient norm (0 disables clipping).
    log_every, save_every : int
        Steps between loss-log rows and between checkpoints (a checkpoint is also written at the end).
    seed : int
    device : str
        ``auto``, ``cpu`` or ``cuda[:N]``.
    threads : int, optional
        ``torch.set_num_threads`` for CPU training.
    """

    phases: tuple[TrainPhase, ...] = (TrainPhase("main", 1000, 1e-4),)
    batch_size: int = 8
    weight_decay: float = 0.0
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    log_every: int = 25
    save_every: int = 500
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self):
        if not self.phases or any(p.steps < 0 for p in self.phases):
            raise PathgenError("training needs at least one phase with a non-negative step count")
        if self.batch_size < 1:
            raise PathgenError(f"batch size must be positive, got {self.batch_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise PathgenError(f"EMA decay must be in [0, 1), got {self.ema_decay}")

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def phase_at(self, step: int) -> TrainPhase:
        """The phase that optimiser step ``step`` (0-based) belongs to."""
        end = 0
        for p in self.phases:
            end += p.steps
            if step < end:
                return p
        return self.phases[-1]

    def lr_at(self, step: int) -> float:
        phase = self.phase_at(step)
        if phase is self.phases[0] and self.warmup_steps > 0:
            return phase.lr * min(1.0, (step + 1) / self.warmup_steps)
        return phase.lr

    def to_dict(self) -> dict:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        return d


@dataclass
class TrainSummary:
    """What a call to :func:`train_loop` did."""

    run: Path
    step: int
    total_steps: int
    resumed_from: int
    seconds: float
    last_loss: float | None
    stopped_early: bool

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def effective_decay(self) -> float:
        n = self.updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.effective_decay()
        src = model.state_dict()
        for name, value in self.model.state_dict().items():
            new = src[name]
            if value.dtype.is_floating_point:
                value.mul_(d).add_(new.detach(), alpha=1.0 - d)
            else:
                value.copy_(new)
        self.updates += 1


def _read_log(path: Path, upto_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= upto_step]
    return rows


def _write_log(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows, LOG_COLUMNS)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def train_loop(model: torch.nn.Module, make_batch: Callable[[int, np.random.Generator, int], dict],
               compute_loss: Callable[..., dict], run: str | os.PathLike, config: TrainLoopConfig,
               describe: Callable[[], dict], max_seconds: float | None = None, stop_after: int | None = None,
               progress: Callable[[int, int, float], None] | None = None) -> TrainSummary:
    """Train ``model`` (resuming from ``run/state`` when present) and keep ``run`` checkpointed.

    Parameters
    ----------
    model : nn.Module
        Freshly built; its weights are replaced by the saved ones when resuming.
    make_batch : callable
        ``make_batch(step, rng, batch_size) -> dict`` of CPU tensors; ``rng`` is a numpy Generator seeded by
        ``(seed, step)``.
    compute_loss : callable
        ``compute_loss(model, batch, generator, phase) -> dict`` with ``loss`` (scalar tensor) and optionally
        ``mse``/``vlb`` (tensors, logged as means); ``generator`` is a CPU torch Generator seeded by
        ``(seed, step)`` for noise, timesteps and condition dropout.
    run : path
        Run folder (created).
    config : TrainLoopConfig
    describe : callable
        ``describe() -> dict(fmt=..., model=..., schedule=..., extra=...)`` for :func:`save_model`.
    max_seconds : float, optional
        Wall-time budget for this call; the loop saves and returns when it is spent (resume later).
    stop_after : int, optional
        Stop after this global step (saving first); for staged runs and tests.
    progress : callable, optional
        ``progress(step, total, loss)`` after each step.
    """
    from pathgen.io.records import to_jsonable, versions, write_json_atomic
    from pathgen.engine import resolve_device

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    state_dir = run / "state"
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = torch.device(resolve_device(config.device))
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr_at(0), weight_decay=config.weight_decay)
    ema = EMA(model, config.ema_decay)
    step = 0
    acc: dict[str, list[float]] = {}  # loss terms since the last log row (saved, so resumed logs match)
    state_file = state_dir / "train_state.json"
    if state_file.is_file():
        saved = json.loads(state_file.read_text())
        desc = describe()
        if saved.get("model") != to_jsonable(desc["model"]):
            raise PathgenError("run folder holds a different architecture; use a new run folder", run)
        model.load_state_dict(load_tensors(state_dir / "model.safetensors", device))
        ema.model.load_state_dict(load_tensors(state_dir / "ema.safetensors", device))
        ema.updates = int(saved["ema_updates"])
        load_optimizer(opt, load_tensors(state_dir / "optimizer.safetensors", device), saved["optimizer_groups"])
        rng = load_tensors(state_dir / "rng.safetensors")
        torch.set_rng_state(rng["torch_cpu"])
        step = int(saved["step"])
        acc = {k: list(v) for k, v in saved.get("log_accumulator", {}).items()}
    resumed_from = step
    log_path = run / "loss_log.csv"
    rows = _read_log(log_path, step)
    _write_log(log_path, rows)
    write_json_atomic(run / "train.json", {"loop": config.to_dict(), **to_jsonable(describe().get("extra", {})),
                                           "versions": versions(), "command": sys.argv,
                                           "resumed_from_step": resumed_from})

    def save() -> None:
        state_dir.mkdir(exist_ok=True)
        save_tensors(model.state_dict(), state_dir / "model.safetensors")
        save_tensors(ema.model.state_dict(), state_dir / "ema.safetensors")
        tensors, groups = optimizer_tensors(opt)
        save_tensors(tensors or {"_empty": torch.zeros(0)}, state_dir / "optimizer.safetensors")
        save_tensors({"torch_cpu": torch.get_rng_state()}, state_dir / "rng.safetensors")
        desc = describe()
        write_json_atomic(state_file, {"step": step, "total_steps": config.total_steps, "ema_updates": ema.updates,
                                       "optimizer_groups": groups, "model": to_jsonable(desc["model"]),
                                       "loop": config.to_dict(), "log_accumulator": acc})
        save_model(run, ema.model.state_dict(), desc["fmt"], desc["model"],
                   {**desc.get("extra", {}), "training": {"step": step, "total_steps": config.total_steps,
                                                          "ema_decay": config.ema_decay,
                                                          "phase": config.phase_at(max(0, step - 1)).name}},
                   header={"schedule": desc["schedule"]})
        _write_log(log_path, rows)

    t0 = time.monotonic()
    last_loss = None
    bad = 0
    target = config.total_steps if stop_after is None else min(config.total_steps, int(stop_after))
    stopped_early = False
    while step < target:
        if max_seconds is not None and time.monotonic() - t0 > max_seconds:
            stopped_early = True
            break
        phase = config.phase_at(step)
        lr = config.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        s = seed_for(config.seed, step)
        batch = make_batch(step, np.random.default_rng(s), config.batch_size)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        gen = torch.Generator(device="cpu")
        gen.manual_seed(s)
        out = compute_loss(model, batch, gen, phase)
        loss = out["loss"]
        if not torch.isfinite(loss):
            bad += 1
            opt.zero_grad(set_to_none=True)
            if bad >= 10:
                raise PathgenError(f"training diverged: non-finite loss for 10 steps in a row at step {step}", run)
            step += 1
            continue
        bad = 0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip and config.grad_clip > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
        else:
            gnorm = float(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in model.parameters()
                                         if p.grad is not None)))
        opt.step()
        ema.update(model)
        step += 1
        last_loss = float(loss.detach())
        for k in ("loss", "mse", "vlb"):
            if k in out:
                acc.setdefault(k, []).append(float(out[k].detach().float().mean()))
        acc.setdefault("grad_norm", []).append(gnorm)
        if step % max(1, config.log_every) == 0 or step == config.total_steps:
            rows.append({"step": step, "phase": phase.name, "lr": _fmt(lr),
                         **{k: _fmt(float(np.mean(v))) for k, v in acc.items()},
                         "seconds": _fmt(round(time.monotonic() - t0, 2))})
            acc = {}
            with open(log_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore",
                               lineterminator="\n").writerow(rows[-1])
        if step % max(1, config.save_every) == 0:
            save()
        if progress is not None:
            progress(step, target, last_loss)
    if step > resumed_from or not (run / "model.safetensors").is_file():
        save()
    return TrainSummary(run, step, config.total_steps, resumed_from, time.monotonic() - t0, last_loss,
                        stopped_early)
