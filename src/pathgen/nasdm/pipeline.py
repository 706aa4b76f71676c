"""``NASDMPipeline``: nuclei masks in, H&E tiles out (diffusers-style call, pathgen schedulers and guidance).

    pipe = NASDMPipeline.from_pretrained("sample_data/models/nasdm_small", scheduler="dpm")
    images = pipe(masks, guidance=1.5, steps=25, seed=0).images      # (N, H, W, 3) uint8

``masks`` is a list of ``(instances, classes)`` pairs (or a ready (N, 8, H, W) conditioning array). Masks of the
model's training size are denoised directly; larger masks are synthesised as one region: overlapping windows of
the training size, each conditioned on its crop of the one large mask, fused at every denoising step
(:func:`pathgen.diffusion.sampling.windowed_model`), so there are no seams. Guidance follows
:mod:`pathgen.diffusion.guidance` (``s = 0`` unconditional, ``1`` conditional, ``> 1`` stronger).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from pathgen.io.checkpoint import load_state_into, read_config
from pathgen.diffusion.guidance import guided_denoiser
from pathgen.diffusion.sampling import generators_for, sample_loop, seed_for, to_uint8_images, windowed_model
from pathgen.diffusion.schedulers import NoiseSchedule, make_scheduler, scheduler_name
from pathgen.errors import PathgenError
from pathgen.nasdm.conditioning import COND_CHANNELS, conditioning_batch
from pathgen.nasdm.unet import NASDMConfig, NASDMUNet

FORMAT = "pathgen-nasdm"


@dataclass
class NASDMOutput:
    """``images``: (N, H, W, 3) uint8 RGB, one per mask."""

    images: np.ndarray


def load_nasdm(path: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[NASDMUNet, NoiseSchedule, dict]:
    """Load a NASDM checkpoint (run folder, checkpoint folder or weights file) in eval mode.

    Returns
    -------
    (unet, schedule, config dict)
    """
    data = read_config(path, FORMAT)
    cfg = NASDMConfig.from_dict(data["model"])
    unet = NASDMUNet(cfg)
    load_state_into(unet, path)
    return unet.to(device).eval(), NoiseSchedule.from_dict(data["schedule"]), data


class NASDMPipeline:
    """Sample H&E tiles conditioned on nuclei masks.

    Parameters
    ----------
    unet : NASDMUNet
    scheduler : diffusers scheduler or str
        A scheduler from :func:`pathgen.diffusion.schedulers.make_scheduler`, or its name (``ddpm``, ``ddim``,
        ``dpm``) built for ``schedule``.
    schedule : NoiseSchedule, optional
        The model's training schedule (default NASDM's).
    overlap : int, optional
        Window overlap in pixels for masks larger than the training size (default a quarter window).
    max_batch : int
        Windows (× samples × guidance passes) per forward call.
    """

    def __init__(self, unet: NASDMUNet, scheduler="ddpm", schedule: NoiseSchedule | None = None,
                 overlap: int | None = None, max_batch: int = 16):
        self.unet = unet
        self.schedule = schedule or NoiseSchedule()
        self.scheduler = make_scheduler(scheduler, schedule=self.schedule) if isinstance(scheduler, str) else scheduler
        self.window = unet.config.image_size
        self.overlap = self.window // 4 if overlap is None else int(overlap)
        if not 0 <= self.overlap < self.window:
            raise PathgenError(f"overlap must be in 0..{self.window - 1}, got {self.overlap}")
        self.max_batch = max_batch

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, scheduler: str = "ddpm", device: str | torch.device = "cpu",
                        **kw) -> "NASDMPipeline":
        unet, schedule, _ = load_nasdm(path, device)
        return cls(unet, scheduler, schedule, **kw)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def scheduler_name(self) -> str:
        return scheduler_name(self.scheduler)

    def set_scheduler(self, name: str) -> None:
        """Swap the sampler (``ddpm``, ``ddim``, ``dpm``) keeping the model's schedule."""
        self.scheduler = make_scheduler(name, schedule=self.schedule)

    def conditioning(self, masks) -> np.ndarray:
        """(N, 8, H, W) float32 conditions from ``[(instances, classes), ...]`` or a ready array."""
        if isinstance(masks, np.ndarray) or torch.is_tensor(masks):
            cond = np.asarray(masks.cpu() if torch.is_tensor(masks) else masks, dtype=np.float32)
            if cond.ndim != 4 or cond.shape[1] != COND_CHANNELS:
                raise PathgenError(f"conditioning must be (N, {COND_CHANNELS}, H, W), got {cond.shape}")
            return cond
        return conditioning_batch(masks)

    def check_size(self, height: int, width: int) -> None:
        """Masks at least the window on both sides are windowed; smaller ones need sides divisible by the
        U-Net's down-sampling factor (and no side above the window)."""
        f = self.unet.config.downsample_factor
        if height >= self.window and width >= self.window:
            return
        if height <= self.window and width <= self.window and height % f == 0 and width % f == 0:
            return
        raise PathgenError(f"mask {height}x{width} cannot be synthesised by a {self.window} px model: use masks "
                           f"of at least {self.window} px on both sides, or smaller ones with sides divisible by {f}")

    @torch.inference_mode()
    def __call__(self, masks, guidance: float = 1.5, steps: int = 50, seed: int = 0,
                 seeds: Sequence[int] | None = None,
                 callback: Callable[[int, int], None] | None = None) -> NASDMOutput:
        """Synthesise one tile per mask.

        Parameters
        ----------
        masks : list of (instances, classes) or (N, 8, H, W) array
            All of one size.
        guidance : float
            Classifier-free guidance scale ``s``.
        steps : int
            Denoising steps of the current scheduler.
        seed : int
            Sample ``i`` uses seed ``seed_for(seed, i)`` unless ``seeds`` is given.
        seeds : sequence of int, optional
            Explicit per-sample seeds (a sample's pixels depend only on its mask and seed).
        callback : callable, optional
            ``callback(step, steps)`` after each step.
        """
        cond_np = self.conditioning(masks)
        n, _, h, w = cond_np.shape
        self.check_size(h, w)
        seeds = [seed_for(seed, i) for i in range(n)] if seeds is None else [int(s) for s in seeds]
        if len(seeds) != n:
            raise PathgenError(f"{len(seeds)} seeds for {n} masks")
        self.unet.eval()
        device = self.device
        cond = torch.from_numpy(cond_np).to(device)
        model = windowed_model(self.unet, self.window, self.overlap, self.max_batch)
        denoise = guided_denoiser(model, cond, guidance, eps_channels=3)
        x = sample_loop(denoise, self.scheduler, (3, h, w), steps, generators_for(seeds), device=device,
                        callback=callback)
        return NASDMOutput(to_uint8_images(x))
