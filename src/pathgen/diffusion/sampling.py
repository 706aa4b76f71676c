"""The sampling loop: any scheduler, classifier-free guidance, and seam-free sampling of large canvases.

:func:`sample_loop` runs a diffusers scheduler with one denoiser call per step. The denoiser is any callable
``denoise(x_t, t) -> model output``; :func:`pathgen.diffusion.guidance.guided_denoiser` builds one that applies
classifier-free guidance, and :func:`windowed_model` turns a model trained on ``w × w`` tiles into one that
denoises any larger canvas by overlapping windows fused at every step (MultiDiffusion, Bar-Tal et al. 2023):
each window is denoised with its own crop of the spatial condition, the model outputs are blended with smooth
weights that sum to one at every pixel, and the scheduler takes a single step on the whole canvas. All windows
therefore share one noisy canvas at every step and no seam can form.

Randomness: every sample owns a ``torch.Generator`` (CPU) seeded by the caller; its initial noise and the noise
of stochastic schedulers are drawn from it alone, so a sample does not depend on the batch it was drawn in.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from pathgen.diffusion.schedulers import scheduler_input
from pathgen.errors import PathgenError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def seed_for(seed: int, index: int, stream: int = 0) -> int:
    """Seed of sample ``index`` (and independent ``stream`` of it) in a job seeded with ``seed``.

    Derived by hashing ``(seed, index[, stream])`` (numpy ``SeedSequence``), not by advancing an RNG, so sample
    ``index`` gets the same seed whether it is made first, last, alone or after a restart.
    """
    key = [int(seed) & 0xFFFFFFFF, int(index)] + ([int(stream)] if stream else [])
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)


def generators_for(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample."""
    gens = []
    for s in seeds:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def initial_noise(shape: tuple[int, ...], generators: Sequence[torch.Generator], device="cpu",
                  dtype=torch.float32) -> torch.Tensor:
    """(B, *shape) standard normal noise, sample ``i`` from ``generators[i]`` (drawn on CPU, then moved)."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]).to(device, dtype)


def sample_loop(denoise: Denoiser, scheduler, shape: tuple[int, int, int], steps: int,
                generators: Sequence[torch.Generator], device="cpu", dtype=torch.float32,
                callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Run ``steps`` denoising steps from pure noise.

    Parameters
    ----------
    denoise : callable
        ``denoise(x_t (B, C, H, W), t (scalar long tensor)) -> (B, C or 2C, H, W)`` model output; called exactly
        once per step.
    scheduler : diffusers scheduler
        From :func:`pathgen.diffusion.schedulers.make_scheduler`; ``set_timesteps(steps)`` is called here.
    shape : (C, H, W)
        Shape of one sample.
    steps : int
        Number of denoising steps (≥ 1, ≤ the training ``T``).
    generators : sequence of torch.Generator
        One per sample; the batch size is ``len(generators)``.
    callback : callable, optional
        ``callback(step_index, steps)`` after every step (progress bars).

    Returns
    -------
    (B, C, H, W) tensor
        Final samples, not clipped.
    """
    steps = int(steps)
    total = int(scheduler.config.num_train_timesteps)
    if steps < 1 or steps > total:
        raise PathgenError(f"steps must be in 1..{total}, got {steps}")
    gens = list(generators)
    if not gens:
        raise PathgenError("no samples requested")
    scheduler.set_timesteps(steps, device=device)
    x = initial_noise(tuple(shape), gens, device, dtype) * float(getattr(scheduler, "init_noise_sigma", 1.0))
    channels = shape[0]
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        out = denoise(x_in, t)
        x = scheduler.step(scheduler_input(scheduler, out, channels), t, x, generator=gens).prev_sample
        if callback is not None:
            callback(i + 1, steps)
    return x


# ---------------------------------------------------------------------------------------------------------------
# Large canvases: overlapping windows fused at every step


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels covering ``0..length`` with at least ``overlap`` overlap;
    the last window is aligned with the end (so the overlap before it may be larger)."""
    if length <= window:
        return [0]
    stride = max(1, window - overlap)
    n = math.ceil((length - window) / stride) + 1
    starts = [min(i * stride, length - window) for i in range(n)]
    return sorted(set(starts))


def window_weight_1d(window: int, start: int, length: int, overlap: int) -> np.ndarray:
    """Blending weights along one axis for a window: 1 inside, cosine² ramps over ``overlap`` pixels on the sides
    that have a neighbour (strictly positive everywhere, so normalising by their sum is always defined)."""
    w = np.ones(window, np.float64)
    ramp_len = min(overlap, window // 2)
    if ramp_len > 0:
        t = (np.arange(ramp_len, dtype=np.float64) + 0.5) / ramp_len
        up = np.sin(0.5 * np.pi * t) ** 2
        if start > 0:
            w[:ramp_len] = up
        if start + window < length:
            w[window - ramp_len:] = up[::-1]
    return w


def windowed_model(model: ModelFn, window: int, overlap: int, max_batch: int = 16) -> ModelFn:
    """Wrap ``model(x, t, cond)`` so it accepts canvases larger than ``window`` (square windows).

    ``x`` (B, C, H, W) is cut into overlapping ``window × window`` windows (``H, W ≥ window``); a 4-D ``cond`` is
    cut the same way, any other ``cond`` (e.g. a class vector) is repeated per window. Windows are batched
    ``max_batch`` at a time and the outputs blended with :func:`window_weight_1d` weights normalised to sum to 1.
    Canvases no larger than ``window`` go to ``model`` unchanged.
    """

    def fused(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if h <= window and w <= window:
            return model(x, t, cond)
        if h < window or w < window:
            raise PathgenError(f"canvas {h}x{w} is smaller than the model's window {window} on one side")
        ys, xs = window_starts(h, window, overlap), window_starts(w, window, overlap)
        boxes = [(y0, x0) for y0 in ys for x0 in xs]
        t = torch.as_tensor(t, device=x.device)
        tb = t.expand(b) if t.ndim == 0 else t
        out_sum = None
        weight_sum = torch.zeros((1, 1, h, w), dtype=x.dtype, device=x.device)
        per_call = max(1, max_batch // max(1, b))
        for k in range(0, len(boxes), per_call):
            chunk = boxes[k:k + per_call]
            xw = torch.cat([x[:, :, y0:y0 + window, x0:x0 + window] for y0, x0 in chunk])
            if cond.ndim == 4:
                cw = torch.cat([cond[:, :, y0:y0 + window, x0:x0 + window] for y0, x0 in chunk])
            else:
                cw = torch.cat([cond] * len(chunk))
            out = model(xw, torch.cat([tb] * len(chunk)), cw)
            if out_sum is None:
                out_sum = torch.zeros((b, out.shape[1], h, w), dtype=out.dtype, device=out.device)
            for j, (y0, x0) in enumerate(chunk):
                wy = window_weight_1d(window, y0, h, overlap)
                wx = window_weight_1d(window, x0, w, overlap)
                wt = torch.from_numpy(np.outer(wy, wx)).to(x.device, x.dtype)[None, None]
                out_sum[:, :, y0:y0 + window, x0:x0 + window] += out[j * b:(j + 1) * b] * wt
                weight_sum[:, :, y0:y0 + window, x0:x0 + window] += wt
        return out_sum / weight_sum

    return fused


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) samples in [−1, 1] → (B, H, W, 3) uint8 (clipped, rounded half up)."""
    arr = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).cpu().numpy()
    return np.floor(arr + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
