"""Training NASDM: the SDM U-Net on (tile, mask) crops with the hybrid loss, in two phases.

Phase ``main`` trains at ``lr`` without condition dropout; phase ``finetune`` continues at ``finetune_lr`` with
each sample's condition replaced by the null condition with probability ``cond_drop`` (NASDM: 1e-4, then 2e-5
with 0.2; METHODS.md §3.5, §3.7), which teaches the unconditional model that classifier-free guidance needs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pathgen.diffusion.losses import LAMBDA_VLB, DiffusionTerms, hybrid_loss
from pathgen.diffusion.schedulers import linear_schedule_for
from pathgen.diffusion.train import TrainLoopConfig, TrainPhase, TrainSummary, train_loop
from pathgen.errors import PathgenError
from pathgen.nasdm.conditioning import drop_condition
from pathgen.nasdm.dataset import CropSampler, load_tiles
from pathgen.nasdm.pipeline import FORMAT
from pathgen.nasdm.unet import NASDMUNet, preset_config


@dataclass(frozen=True)
class NASDMTrainConfig:
    """Settings of a NASDM training run (saved in the run's ``train.json`` and ``config.json``).

    Attributes
    ----------
    preset : str
        Architecture preset (``small``, ``paper``, ``tiny``; see :data:`pathgen.nasdm.unet.PRESETS`).
    image_size : int, optional
        Crop / window size; overrides the preset's.
    model_channels : int, optional
        Width override.
    steps, lr : int, float
        Phase 1 (no condition dropout).
    finetune_steps, finetune_lr, cond_drop : int, float, float
        Phase 2 with condition dropout (NASDM: 2e-5, 0.2).
    pretrain_cond_drop : float
        Condition dropout in phase 1 (NASDM: 0).
    batch_size, warmup_steps, ema_decay, grad_clip, weight_decay
        Optimiser settings (NASDM: batch 40/GPU, warm-up 200, EMA 0.999 in the text, clipping is pathgen's).
    vlb_weight : float
        λ of the hybrid loss (0.001).
    num_train_timesteps : int
        ``T`` (1000); linear β 1e-4 → 0.02 scaled by 1000/T.
    min_tissue : float
        Minimum tissue fraction of a training crop (0.5).
    seed, device, threads, save_every, log_every
    """

    preset: str = "small"
    image_size: int | None = None
    model_channels: int | None = None
    steps: int = 2000
    lr: float = 1e-4
    finetune_steps: int = 500
    finetune_lr: float = 2e-5
    cond_drop: float = 0.2
    pretrain_cond_drop: float = 0.0
    batch_size: int = 8
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    vlb_weight: float = LAMBDA_VLB
    num_train_timesteps: int = 1000
    min_tissue: float = 0.5
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    save_every: int = 250
    log_every: int = 25

    def model_config(self):
        over = {}
        if self.image_size:
            over["image_size"] = int(self.image_size)
        if self.model_channels:
            over["model_channels"] = int(self.model_channels)
        return preset_config(self.preset, **over)

    def loop_config(self) -> TrainLoopConfig:
        if not 0.0 <= self.cond_drop <= 1.0 or not 0.0 <= self.pretrain_cond_drop <= 1.0:
            raise PathgenError("condition dropout must be in [0, 1]")
        phases = [TrainPhase("main", int(self.steps), float(self.lr), {"cond_drop": float(self.pretrain_cond_drop)})]
        if self.finetune_steps > 0:
            phases.append(TrainPhase("finetune", int(self.finetune_steps), float(self.finetune_lr),
                                     {"cond_drop": float(self.cond_drop)}))
        return TrainLoopConfig(tuple(phases), batch_size=self.batch_size, weight_decay=self.weight_decay,
                               warmup_steps=self.warmup_steps, ema_decay=self.ema_decay, grad_clip=self.grad_clip,
                               log_every=self.log_every, save_every=self.save_every, seed=self.seed,
                               device=self.device, threads=self.threads)


def _dataset_info(data: Path) -> dict:
    info = {"path": str(data)}
    meta = data / "dataset.json"
    if meta.is_file():
        try:
            d = json.loads(meta.read_text())
            info.update({k: d[k] for k in ("generator", "seed", "n", "size", "mpp", "sites") if k in d})
        except (OSError, ValueError):
            pass
    return info


def train_nasdm(data: str | os.PathLike, run: str | os.PathLike, config: NASDMTrainConfig = NASDMTrainConfig(),
                max_seconds: float | None = None, stop_after: int | None = None, progress=None) -> TrainSummary:
    """Train (or resume) a NASDM model on a tile-folder dataset.

    Parameters
    ----------
    data : path
        Folder with ``images/``, ``instances/``, ``classes/`` (e.g. from ``pathgen.data.synth``).
    run : path
        Run folder; an existing run with saved state is resumed.
    config : NASDMTrainConfig
    max_seconds : float, optional
        Wall-time budget of this call (the run stays resumable).
    stop_after : int, optional
        Stop after this global step.

    Returns
    -------
    TrainSummary
    """
    if config.threads:
        torch.set_num_threads(int(config.threads))
    data = Path(data)
    mcfg = config.model_config()
    schedule = linear_schedule_for(config.num_train_timesteps, learned_variance=mcfg.out_channels == 6)
    terms = DiffusionTerms.from_schedule(schedule)
    tiles = load_tiles(data)
    sampler = CropSampler(tiles, mcfg.image_size, min_tissue=config.min_tissue)
    torch.manual_seed(config.seed)
    model = NASDMUNet(mcfg)
    info = _dataset_info(data)
    info.update({"tiles": len(tiles), "crop_origins": len(sampler)})

    def make_batch(step, rng, n):
        return sampler.image_batch(rng, n)

    def compute_loss(net, batch, gen, phase):
        x0, cond = batch["image"], batch["cond"]
        cond = drop_condition(cond, phase.options.get("cond_drop", 0.0), gen)
        t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        xt = terms.q_sample(x0, t, noise)
        return hybrid_loss(terms, net(xt, t, cond), x0, xt, t, noise, config.vlb_weight)

    def describe():
        return {"fmt": FORMAT, "model": mcfg.to_dict(), "schedule": schedule.to_dict(),
                "extra": {"train_config": asdict(config), "data": info, "mpp": info.get("mpp")}}

    return train_loop(model, make_batch, compute_loss, run, config.loop_config(), describe,
                      max_seconds=max_seconds, stop_after=stop_after, progress=progress)
