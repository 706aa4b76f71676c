"""Training MaskGen: instance-aware mask diffusion on the masks of a tile dataset, hybrid loss.

Crops follow the NASDM rules (tissue ≥ 50 %, flips/rotations); each crop is encoded by
:func:`pathgen.maskgen.encoding.encode_mask` and conditioned on its own presence vector. With probability
``cond_drop`` the vector is replaced by zeros, so guidance on the types is available at sampling time. The
checkpoint records how often each presence vector occurred in training crops, the default distribution
:mod:`pathgen.pipelines.synthesize` draws from when no types are requested.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pathgen.diffusion.losses import LAMBDA_VLB, DiffusionTerms, hybrid_loss
from pathgen.diffusion.schedulers import linear_schedule_for
from pathgen.diffusion.train import TrainLoopConfig, TrainPhase, TrainSummary, train_loop
from pathgen.maskgen.encoding import encode_mask, presence_vector
from pathgen.maskgen.pipeline import FORMAT
from pathgen.maskgen.unet import MaskGenUNet, preset_config
from pathgen.nasdm.conditioning import drop_condition
from pathgen.nasdm.dataset import CropSampler, load_tiles
from pathgen.nasdm.train import _dataset_info


@dataclass(frozen=True)
class MaskGenTrainConfig:
    """Settings of a MaskGen run (see :class:`pathgen.nasdm.train.NASDMTrainConfig` for shared fields).

    ``cond_drop`` is the presence-vector dropout (pathgen's addition for guidance; MaskDiff has none).
    ``presence_samples`` crops are drawn once to record the presence-vector distribution.
    """

    preset: str = "small"
    image_size: int | None = None
    model_channels: int | None = None
    steps: int = 2000
    lr: float = 1e-4
    cond_drop: float = 0.1
    batch_size: int = 8
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    vlb_weight: float = LAMBDA_VLB
    num_train_timesteps: int = 1000
    min_tissue: float = 0.5
    presence_samples: int = 2000
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
        return TrainLoopConfig((TrainPhase("main", int(self.steps), float(self.lr),
                                           {"cond_drop": float(self.cond_drop)}),),
                               batch_size=self.batch_size, weight_decay=self.weight_decay,
                               warmup_steps=self.warmup_steps, ema_decay=self.ema_decay, grad_clip=self.grad_clip,
                               log_every=self.log_every, save_every=self.save_every, seed=self.seed,
                               device=self.device, threads=self.threads)


def presence_distribution(sampler: CropSampler, samples: int, seed: int) -> list[dict]:
    """How often each presence vector occurs in ``samples`` random crops, most frequent first.

    Returns ``[{"vector": [1, 0, 1, ...], "count": k}, ...]``.
    """
    rng = np.random.default_rng([int(seed), 7])
    counts: dict[tuple, int] = {}
    for crop in sampler.crops(rng, samples):
        key = tuple(int(v) for v in presence_vector(crop.classes))
        counts[key] = counts.get(key, 0) + 1
    return [{"vector": list(k), "count": c} for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def train_maskgen(data: str | os.PathLike, run: str | os.PathLike,
                  config: MaskGenTrainConfig = MaskGenTrainConfig(), max_seconds: float | None = None,
                  stop_after: int | None = None, progress=None) -> TrainSummary:
    """Train (or resume) MaskGen on the masks of a tile-folder dataset; returns the loop's summary."""
    if config.threads:
        torch.set_num_threads(int(config.threads))
    data = Path(data)
    mcfg = config.model_config()
    schedule = linear_schedule_for(config.num_train_timesteps, learned_variance=True)
    terms = DiffusionTerms.from_schedule(schedule)
    tiles = load_tiles(data)
    sampler = CropSampler(tiles, mcfg.image_size, min_tissue=config.min_tissue)
    presence_stats = presence_distribution(sampler, config.presence_samples, config.seed)
    torch.manual_seed(config.seed)
    model = MaskGenUNet(mcfg)
    info = _dataset_info(data)
    info.update({"tiles": len(tiles), "crop_origins": len(sampler)})

    def make_batch(step, rng, n):
        crops = sampler.crops(rng, n)
        x = np.stack([encode_mask(c.instances, c.classes) for c in crops])
        pres = np.stack([presence_vector(c.classes) for c in crops])
        return {"x": torch.from_numpy(x), "presence": torch.from_numpy(pres)}

    def compute_loss(net, batch, gen, phase):
        x0, pres = batch["x"], batch["presence"]
        pres = drop_condition(pres, phase.options.get("cond_drop", 0.0), gen)
        t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        xt = terms.q_sample(x0, t, noise)
        return hybrid_loss(terms, net(xt, t, pres), x0, xt, t, noise, config.vlb_weight)

    def describe():
        return {"fmt": FORMAT, "model": mcfg.to_dict(), "schedule": schedule.to_dict(),
                "extra": {"train_config": asdict(config), "data": info, "mpp": info.get("mpp"),
                          "encoding": "one-hot classes (7) + normalised interior distance (1), in [-1, 1]",
                          "presence_distribution": presence_stats}}

    return train_loop(model, make_batch, compute_loss, run, config.loop_config(), describe,
                      max_seconds=max_seconds, stop_after=stop_after, progress=progress)
