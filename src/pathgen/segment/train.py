"""HoVer-Net training: two phases as published, validation-based model selection, resumable runs.

Schedule (Graham et al. 2019; public HoVer-Net ``opt.py``): phase 1 trains the decoders with the encoder frozen,
phase 2 trains all layers; each phase starts a fresh Adam (betas 0.9, 0.999) at lr 1e-4 and divides it by 10
half-way (the published 25 of 50 epochs). Phase 1 only makes sense from pretrained encoder weights, so by default
it is skipped when none are given.

Validation runs every ``val_every`` epochs (and after the last) on a validation set -- ``val`` if given, else a
seeded hold-out of the training tiles -- never on a test set. The checkpoint kept in the run folder is the best
on validation PQ when :mod:`pathgen.metrics` provides it, else on validation loss. After the last epoch the
post-processing thresholds are chosen on the same validation set (:func:`tune_postprocess`) and stored with the
kept checkpoint, so inference uses them by default.

Run folder layout::

    RUN/model.safetensors, RUN/config.json   best checkpoint (load with pathgen.segment.checkpoint.load_model)
    RUN/last/                                 last epoch's weights, optimizer state and train_state.json
    RUN/loss_log.csv, RUN/loss_plot.png      one row per epoch; plot of the losses and validation PQ
    RUN/train.json                            training settings, data, versions and command line
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pathgen.errors import PathgenError
from pathgen.io.atomic import write_text
from pathgen.io.checkpoint import WEIGHTS_NAME, load_optimizer, load_tensors, optimizer_tensors, save_tensors
from pathgen.segment.checkpoint import load_model, read_checkpoint_config, save_checkpoint
from pathgen.segment.data import (AugmentConfig, NucleiSample, Subset, count_types, open_nuclei_dataset,
                                  random_patch)
from pathgen.segment.hovernet import DOWNSAMPLE, HoVerNet, build_model, preset_config
from pathgen.segment.infer import HoVerNetMaps, forward_padded, nuclei_from_maps, predict_maps
from pathgen.segment.losses import hovernet_loss
from pathgen.segment.postprocess import PostProcessConfig, instances_from_maps
from pathgen.segment.targets import make_targets

LOG_COLUMNS = ("epoch", "phase", "lr", "train_loss", "np_ce", "np_dice", "hv_mse", "hv_msge", "tp_ce", "tp_dice",
               "val_loss", "val_pq", "val_aji", "val_dice", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a HoVer-Net training run.

    Attributes
    ----------
    preset : str
        Architecture: ``tiny``, ``small`` or ``resnet50`` (see :data:`pathgen.segment.hovernet.PRESETS`).
    epochs : int
        Epochs of the all-layers phase (published: 50).
    frozen_epochs : int or None
        Epochs of the frozen-encoder phase (published: 50); None = ``epochs`` when ``pretrained`` is given,
        else 0.
    batch_size : int
        Patches per step.
    patch_size : int
        Side of the square training patches (pixels, multiple of 8, at most the tile size).
    steps_per_epoch : int or None
        None = one pass over the training tiles (ceil(n / batch_size) steps).
    lr : float
        Initial Adam learning rate of each phase (published: 1e-4).
    lr_decay : float
        Factor applied after ``lr_step`` epochs of a phase (published: 0.1).
    lr_step : int or None
        Epochs of a phase before the decay; None = half the phase (published: 25 of 50).
    val_every : int
        Validate every this many epochs (published: 2) and after the last epoch.
    val_fraction : float
        Share of the training tiles held out for validation when no validation set is given.
    seed : int
        Seeds weights, hold-out split, patch sampling and augmentation.
    pretrained : str or None
        Local file with encoder weights (safetensors or torch state dict).
    init_from : str or None
        A HoVer-Net checkpoint whose weights (and architecture; ``preset`` is then ignored) start the run, to
        fine-tune a trained model.
    mpp : float or None
        Microns per pixel of the training images, stored with the model; None = the dataset's (its
        ``dataset.json``), else 0.5.
    hv_min_size : int
        Instances smaller than this (pixels) get no HV target (reference: 30).
    augment : AugmentConfig or None
        Augmentations; None disables them.
    device : str
        ``cpu``, ``cuda[:N]`` or ``auto``.
    tune_postprocess : bool
        After training, choose the post-processing thresholds (:data:`POSTPROCESS_GRID`) that maximise the
        validation PQ of the kept checkpoint and store them with it (needs :mod:`pathgen.metrics`).
    """

    preset: str = "small"
    epochs: int = 50
    frozen_epochs: int | None = None
    batch_size: int = 8
    patch_size: int = 256
    steps_per_epoch: int | None = None
    lr: float = 1e-4
    lr_decay: float = 0.1
    lr_step: int | None = None
    val_every: int = 2
    val_fraction: float = 0.1
    seed: int = 0
    pretrained: str | None = None
    init_from: str | None = None
    mpp: float | None = None
    hv_min_size: int = 30
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    device: str = "cpu"
    tune_postprocess: bool = True

    def __post_init__(self):
        if self.epochs < 0 or (self.frozen_epochs is not None and self.frozen_epochs < 0):
            raise PathgenError("epochs must be >= 0")
        if self.batch_size < 1:
            raise PathgenError("batch size must be >= 1")
        if self.patch_size < DOWNSAMPLE or self.patch_size % DOWNSAMPLE:
            raise PathgenError(f"patch size must be a positive multiple of {DOWNSAMPLE}, got {self.patch_size}")
        if self.val_every < 1:
            raise PathgenError("val_every must be >= 1")
        if not 0 <= self.val_fraction < 1:
            raise PathgenError("val_fraction must be in [0, 1)")
        if self.lr <= 0:
            raise PathgenError("learning rate must be positive")

    def phases(self) -> list[tuple[str, int]]:
        """(name, epochs) of the two phases: ``frozen`` then ``all``."""
        frozen = self.frozen_epochs
        if frozen is None:
            frozen = self.epochs if self.pretrained else 0
        return [("frozen", frozen), ("all", self.epochs)]

    def lr_at(self, epoch_in_phase: int, phase_epochs: int) -> float:
        """Learning rate of 0-based epoch ``epoch_in_phase`` of a phase lasting ``phase_epochs``."""
        step = self.lr_step if self.lr_step is not None else max(1, phase_epochs // 2)
        return self.lr * (self.lr_decay ** (epoch_in_phase // step))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        if data.get("augment") is not None:
            data["augment"] = AugmentConfig(**data["augment"])
        return cls(**data)


@dataclass
class TrainResult:
    """Outcome of :func:`train_hovernet`.

    Attributes
    ----------
    run : Path of the run folder
    best_epoch : epoch of the kept checkpoint (0 if none was validated)
    criterion : ``val_pq`` or ``val_loss``
    best_value : value of the criterion at ``best_epoch``
    history : list of dict, one per epoch (the loss log's rows)
    """

    run: Path
    best_epoch: int
    criterion: str
    best_value: float
    history: list[dict]


# --------------------------------------------------------------------------------------------------- metrics


def _instance_scores_function():
    """``instance_scores(true, pred) -> dict`` (with ``pq``, ``aji``, ``dice1``) from pathgen.metrics, or None
    while that module is unavailable."""
    try:
        import pathgen.metrics as m
    except ImportError:
        return None
    fn = getattr(m, "instance_scores", None)
    if fn is None:
        try:
            from pathgen.metrics.instance import instance_scores as fn
        except ImportError:
            return None
    return fn


def segmentation_scores(true: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> dict[str, float] | None:
    """Mean per-tile PQ, AJI and Dice (DICE1) of predicted against true instance maps; None without
    :mod:`pathgen.metrics`.

    Tiles where both maps are empty are skipped (the scores are undefined there).
    """
    fn = _instance_scores_function()
    if fn is None:
        return None
    rows = [fn(t, p) for t, p in zip(true, pred) if t.any() or p.any()]
    nan = float("nan")

    def mean(key):
        vals = [float(r[key]) for r in rows if math.isfinite(float(r[key]))]
        return float(np.mean(vals)) if vals else nan

    return {"pq": mean("pq"), "aji": mean("aji"), "dice": mean("dice1")}


# --------------------------------------------------------------------------------------------------- batches


def make_batch(samples: Sequence[NucleiSample], with_types: bool, hv_min_size: int = 30
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stack samples of equal size into network input (N, 3, H, W) float 0..255 and target tensors."""
    images, nps, hvs, tps = [], [], [], []
    for s in samples:
        t = make_targets(s.instances, s.classes if with_types else None, min_size=hv_min_size)
        images.append(s.image)
        nps.append(t["np"])
        hvs.append(t["hv"])
        if with_types:
            tps.append(t["tp"])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    targets = {"np": torch.from_numpy(np.stack(nps)).long(), "hv": torch.from_numpy(np.stack(hvs))}
    if with_types:
        targets["tp"] = torch.from_numpy(np.stack(tps)).long()
    return x, targets


def train_step(model: HoVerNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """One optimisation step; returns the total loss and its parts."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = model(images)
    loss, parts = hovernet_loss(out, targets)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), parts


def make_optimizer(model: HoVerNet, lr: float) -> torch.optim.Adam:
    """Adam over the trainable parameters (betas 0.9, 0.999 as published)."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999))


def evaluate(model: HoVerNet, dataset: Sequence[NucleiSample], device, with_types: bool,
             hv_min_size: int = 30, batch_size: int = 4) -> dict[str, float]:
    """Validation loss (whole tiles) and, with :mod:`pathgen.metrics`, mean PQ / AJI / Dice after
    post-processing."""
    model.eval()
    losses, true, pred = [], [], []
    by_shape: dict[tuple, list[int]] = {}
    for i in range(len(dataset)):
        by_shape.setdefault(dataset[i].instances.shape, []).append(i)
    with torch.inference_mode():
        for idx in by_shape.values():
            for start in range(0, len(idx), batch_size):
                samples = [dataset[i] for i in idx[start:start + batch_size]]
                x, targets = make_batch(samples, with_types, hv_min_size)
                x = x.to(device)
                targets = {k: v.to(device) for k, v in targets.items()}
                out = forward_padded(model, x)
                loss, _ = hovernet_loss(out, targets)
                losses.append((float(loss), len(samples)))
                maps = HoVerNetMaps(torch.softmax(out["np"].float(), 1)[:, 1].cpu().numpy(),
                                    out["hv"].float().cpu().numpy(),
                                    torch.softmax(out["tp"].float(), 1).cpu().numpy() if "tp" in out else None)
                for j, s in enumerate(samples):
                    true.append(s.instances)
                    pred.append(nuclei_from_maps(maps, j).instances)
    total = sum(v * n for v, n in losses) / max(1, sum(n for _, n in losses))
    result = {"val_loss": total}
    scores = segmentation_scores(true, pred)
    if scores is not None:
        result.update({f"val_{k}": v for k, v in scores.items()})
    return result


#: Post-processing settings searched on the validation set after training; includes the reference's
#: (0.5, 0.4, 21), which wins ties.
POSTPROCESS_GRID: dict[str, tuple] = {"np_threshold": (0.5, 0.4, 0.6), "marker_threshold": (0.4, 0.3, 0.5, 0.6),
                                      "sobel_size": (21, 15, 11)}


def tune_postprocess(model: HoVerNet, dataset: Sequence[NucleiSample], device=None,
                     grid: dict[str, tuple] = POSTPROCESS_GRID, batch_size: int = 4
                     ) -> tuple[PostProcessConfig, list[dict]] | None:
    """Grid-search the post-processing settings that maximise mean PQ on ``dataset`` (a validation set).

    The network runs once per tile; only the post-processing is repeated per grid point.

    Returns
    -------
    (best PostProcessConfig, table) or None without :mod:`pathgen.metrics`. ``table`` has one dict per grid
    point: its settings and ``pq`` (mean over tiles with a nucleus on either side). Earlier grid points win ties.
    """
    import itertools

    fn = _instance_scores_function()
    if fn is None or not len(dataset):
        return None
    samples = [dataset[i] for i in range(len(dataset))]
    maps = []
    for s in samples:  # tiles may differ in size: one forward pass each keeps this simple
        maps.append(predict_maps(model, s.image[None], device=device, batch_size=batch_size))
    keys = list(grid)
    table, best, best_pq = [], None, -1.0
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = PostProcessConfig(**dict(zip(keys, values)))
        scores = []
        for s, m in zip(samples, maps):
            pred = instances_from_maps(m.np_prob[0], m.hv[0], cfg)
            if s.instances.any() or pred.any():
                scores.append(float(fn(s.instances, pred)["pq"]))
        pq = float(np.nanmean(scores)) if scores else float("nan")
        table.append({**dict(zip(keys, values)), "pq": pq})
        if math.isfinite(pq) and pq > best_pq:
            best, best_pq = cfg, pq
    return (best or PostProcessConfig()), table


# --------------------------------------------------------------------------------------------------- state


def _save_training_state(run: Path, model: HoVerNet, optimizer, state: dict) -> None:
    last = run / "last"
    save_checkpoint(model, last)
    tensors, groups = optimizer_tensors(optimizer)
    save_tensors(tensors if tensors else {"_empty": torch.zeros(0)}, last / "optimizer.safetensors")
    from pathgen.io.records import write_json_atomic

    write_json_atomic(last / "train_state.json", {**state, "optimizer_param_groups": groups})


def _load_optimizer_state(run: Path, optimizer, groups: list[dict]) -> None:
    load_optimizer(optimizer, load_tensors(run / "last" / "optimizer.safetensors"), groups)


def write_loss_log(history: list[dict], path: Path) -> None:
    """Write the per-epoch history as CSV (atomic)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                        else row[k]) for k in LOG_COLUMNS})
    write_text(path, buf.getvalue())


def plot_loss_log(history: list[dict], path: Path) -> None:
    """Training and validation loss per epoch (left axis) and validation PQ (right axis), as a PNG written
    atomically (:func:`pathgen.plots.training_curves`)."""
    from pathgen.plots import training_curves

    training_curves(history, path, title="HoVer-Net training")


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


# --------------------------------------------------------------------------------------------------- driver


def _open(data, data_format: str = "auto") -> Sequence[NucleiSample]:
    if isinstance(data, (str, os.PathLike)):
        return open_nuclei_dataset(data, data_format)
    return data


def _type_names(dataset, nr_types: int) -> tuple[str, ...]:
    """Names of types 1..nr_types-1 from the dataset's class names, () when it does not name them all."""
    names = tuple(getattr(dataset, "class_names", ()) or ())
    return names[1:nr_types] if len(names) >= nr_types > 1 else ()


def train_hovernet(data, run: str | os.PathLike, config: TrainConfig = TrainConfig(), val=None,
                   resume: bool = False, overwrite: bool = False, data_format: str = "auto",
                   log: Callable[[str], None] | None = None) -> TrainResult:
    """Train HoVer-Net on annotated tiles and keep the best checkpoint on validation.

    Parameters
    ----------
    data : path or sequence of NucleiSample
        Training set (see :func:`pathgen.segment.data.open_nuclei_dataset`).
    run : path
        Run folder (created). An existing, non-empty one needs ``resume`` or ``overwrite``.
    config : TrainConfig
        Ignored on ``resume`` (the run's saved settings are used).
    val : path or sequence of NucleiSample, optional
        Validation set; default: ``config.val_fraction`` of ``data`` held out.
    resume : bool
        Continue the run from its last completed epoch.
    overwrite : bool
        Start afresh in an existing run folder (its previous outputs are replaced).
    data_format : str
        Format of ``data`` and ``val`` when they are paths (see :func:`open_nuclei_dataset`).
    log : callable, optional
        Receives one line per epoch.

    Returns
    -------
    TrainResult
    """
    from pathgen.engine import resolve_device
    from pathgen.progress import progress_bar

    say = log or (lambda _msg: None)
    run = Path(run)
    state_file = run / "last" / "train_state.json"
    saved = None
    if run.exists() and not run.is_dir():
        raise PathgenError("run path exists and is not a folder", run)
    if resume:
        if not state_file.exists():
            raise PathgenError("nothing to resume: no last/train_state.json in the run folder", run)
        saved = json.loads(state_file.read_text())
        config = TrainConfig.from_dict(saved["train_config"])
    elif run.exists() and any(run.iterdir()):
        if not overwrite:
            raise PathgenError("run folder exists and is not empty (use --resume to continue or --overwrite)",
                               run)
        for name in ("last", WEIGHTS_NAME, "config.json", "loss_log.csv", "loss_plot.png", "train.json"):
            target = run / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if not run.parent.exists():
        raise PathgenError("output folder does not exist", run.parent)
    run.mkdir(exist_ok=True)

    train_set = _open(data, data_format)
    if len(train_set) == 0:
        raise PathgenError("training set is empty")
    if val is not None:
        val_set = _open(val, data_format)
        val_source = str(val) if isinstance(val, (str, os.PathLike)) else "given"
    else:
        n_val = int(round(len(train_set) * config.val_fraction))
        if config.val_fraction > 0 and len(train_set) >= 2:
            n_val = min(max(1, n_val), len(train_set) - 1)
        else:
            n_val = 0
        order = np.random.default_rng([config.seed, 7919]).permutation(len(train_set))
        val_set = Subset(train_set, sorted(order[:n_val]))
        train_set = Subset(train_set, sorted(order[n_val:]))
        val_source = f"held out {n_val} of the training tiles (seed {config.seed})"

    val_set = [val_set[i] for i in range(len(val_set))]  # validated many times: read once
    nr_types = count_types(train_set)
    with_types = nr_types > 0
    if with_types and any(s.classes is None for s in val_set):
        raise PathgenError("training tiles have classes but validation tiles do not")
    device = torch.device(resolve_device(config.device))

    if saved is not None:
        model = load_model(run / "last", device=device)
        if model.config.nr_types != nr_types:
            raise PathgenError(f"the run was trained with {model.config.nr_types} type channels, the data "
                               f"needs {nr_types}", run)
    else:
        torch.manual_seed(config.seed)
        if config.init_from:
            model = load_model(config.init_from, device=device)
            model.postprocess = None  # chosen again for the new weights
            mcfg = model.config
            if mcfg.nr_types != nr_types:
                raise PathgenError(f"the checkpoint has {mcfg.nr_types} type channels, the data needs {nr_types}",
                                   config.init_from)
        else:
            mpp = config.mpp or getattr(train_set, "mpp", None) or 0.5
            mcfg = preset_config(config.preset, nr_types=nr_types, mpp=mpp,
                                 type_names=_type_names(train_set, nr_types))
            model = build_model(mcfg, config.pretrained).to(device)
        from pathgen.io.records import versions, write_json_atomic

        write_json_atomic(run / "train.json", {
            "train_config": config.to_dict(), "model": mcfg.to_dict(),
            "data": str(data) if isinstance(data, (str, os.PathLike)) else "given",
            "train_tiles": len(train_set), "validation": val_source, "val_tiles": len(val_set),
            "versions": versions(), "command": sys.argv})

    phases = config.phases()
    total_epochs = sum(n for _, n in phases)
    steps = config.steps_per_epoch or max(1, math.ceil(len(train_set) / config.batch_size))
    history: list[dict] = list(saved["history"]) if saved else []
    best = dict(saved["best"]) if saved else {"epoch": 0, "criterion": None, "value": None}
    done = int(saved["epoch"]) if saved else 0
    if done >= total_epochs:
        say(f"run already complete ({done} epochs)")

    optimizer, opt_phase = None, None
    first_epoch = done + 1
    with progress_bar(max(0, total_epochs - done) * steps, "training", unit="steps") as bar:
        epoch = 0
        for phase, n_epochs in phases:
            for ep in range(n_epochs):
                epoch += 1
                if epoch < first_epoch:
                    continue
                model.set_encoder_trainable(phase != "frozen")
                lr = config.lr_at(ep, n_epochs)
                if opt_phase != phase:
                    optimizer = make_optimizer(model, lr)
                    if saved is not None and epoch == first_epoch and saved.get("phase") == phase:
                        _load_optimizer_state(run, optimizer, saved["optimizer_param_groups"])
                    opt_phase = phase
                for g in optimizer.param_groups:
                    g["lr"] = lr
                t0 = time.perf_counter()
                rng = np.random.default_rng([config.seed, epoch])
                order = np.concatenate([rng.permutation(len(train_set))
                                        for _ in range(math.ceil(steps * config.batch_size / len(train_set)))])
                sums: dict[str, float] = {}
                total = 0.0
                for step in range(steps):
                    idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                    patches = [random_patch(train_set[int(i)], config.patch_size, rng, config.augment)
                               for i in idx]
                    x, targets = make_batch(patches, with_types, config.hv_min_size)
                    loss, parts = train_step(model, optimizer, x.to(device),
                                             {k: v.to(device) for k, v in targets.items()})
                    if not math.isfinite(loss):
                        raise PathgenError(f"training diverged (loss {loss}) at epoch {epoch}; "
                                           "try a lower learning rate", run)
                    total += loss
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + v
                    bar.advance(1)
                row = {"epoch": epoch, "phase": phase, "lr": lr, "train_loss": total / steps,
                       **{k: v / steps for k, v in sums.items()}}
                if len(val_set) and (epoch % config.val_every == 0 or epoch == total_epochs):
                    row.update(evaluate(model, val_set, device, with_types, config.hv_min_size))
                    criterion = "val_pq" if _finite(row.get("val_pq")) else "val_loss"
                    value = row[criterion]
                    better = (best["value"] is None or best["criterion"] != criterion
                              or (value > best["value"] if criterion == "val_pq" else value < best["value"]))
                    if better:
                        best = {"epoch": epoch, "criterion": criterion, "value": value}
                        save_checkpoint(model, run, extra={"training": {
                            "best_epoch": epoch, "criterion": criterion, "value": value,
                            "validation": val_source, "train_config": config.to_dict(),
                            "scores": {k: row.get(k) for k in ("val_loss", "val_pq", "val_aji", "val_dice")}}})
                row["seconds"] = round(time.perf_counter() - t0, 2)
                history.append(row)
                _save_training_state(run, model, optimizer, {
                    "epoch": epoch, "phase": phase, "best": best, "history": history,
                    "train_config": config.to_dict()})
                write_loss_log(history, run / "loss_log.csv")
                plot_loss_log(history, run / "loss_plot.png")
                msg = f"epoch {epoch}/{total_epochs} [{phase}] lr {lr:.1e} loss {row['train_loss']:.4f}"
                if "val_loss" in row:
                    msg += f" | val loss {row['val_loss']:.4f}"
                    if _finite(row.get("val_pq")):
                        msg += f" PQ {row['val_pq']:.3f} AJI {row['val_aji']:.3f} Dice {row['val_dice']:.3f}"
                say(msg + f" | {row['seconds']:.1f} s")

    if best["epoch"] == 0 and not (run / WEIGHTS_NAME).exists():
        # No validation set: keep the final weights (recorded as such).
        save_checkpoint(model, run, extra={"training": {"best_epoch": total_epochs, "criterion": "last_epoch",
                                                        "validation": val_source,
                                                        "train_config": config.to_dict()}})
        best = {"epoch": total_epochs, "criterion": "last_epoch", "value": float("nan")}
    if config.tune_postprocess and len(val_set) and (run / WEIGHTS_NAME).exists():
        desc = read_checkpoint_config(run)
        if "postprocess" not in desc:  # done once per run (a --resume of a complete run does it if missing)
            kept = load_model(run, device=device)
            tuned = tune_postprocess(kept, val_set, device)
            if tuned is not None:
                kept.postprocess, table = tuned
                chosen = max(table, key=lambda r: r["pq"] if _finite(r["pq"]) else -1.0)
                reference = table[0]
                training = dict(desc.get("training", {}))
                training["postprocess_tuning"] = {
                    "criterion": "mean validation PQ", "grid": POSTPROCESS_GRID, "chosen": chosen,
                    "reference_settings": reference, "table": table}
                save_checkpoint(kept, run, extra={"training": training})
                say(f"post-processing tuned on validation: PQ {reference['pq']:.4f} with the reference settings, "
                    f"{chosen['pq']:.4f} with np_threshold {kept.postprocess.np_threshold}, marker_threshold "
                    f"{kept.postprocess.marker_threshold}, sobel_size {kept.postprocess.sobel_size}")
    return TrainResult(run, int(best["epoch"]), str(best["criterion"]),
                       float(best["value"]) if best["value"] is not None else float("nan"), history)


def checkpoint_summary(run: str | os.PathLike) -> dict:
    """The ``training`` record of a run's kept checkpoint."""
    return read_checkpoint_config(run).get("training", {})
