"""Reinhard colour transfer (Reinhard et al., IEEE CG&A 2001) in CIELAB, with tissue statistics.

Each CIELAB channel of the source is shifted and scaled to the target's mean and standard deviation:
``lab_out = (lab - mean_src) / std_src * std_tgt + mean_tgt``. Statistics come from tissue pixels only, and the
transfer is faded out over background (weight 1 below ``L/100 = threshold - 0.05``, 0 above
``threshold + 0.05``, linear between), so white background stays white instead of taking a tint.
"""

from __future__ import annotations

import numpy as np
import torch

from pathgen.stain.optical import as_tensor, lab_to_rgb, luminosity, rgb_to_lab

#: Half-width (in L/100) of the ramp that fades the transfer out over background.
BACKGROUND_RAMP = 0.05
#: Lower bound on a source standard deviation (flat inputs).
MIN_STD = 1e-3


def lab_statistics(rgb_pixels) -> tuple[np.ndarray, np.ndarray]:
    """CIELAB mean and standard deviation of pixels (N, 3) uint8 -> two (3,) float64 arrays."""
    lab = rgb_to_lab(as_tensor(rgb_pixels).reshape(-1, 3)).double()
    if lab.shape[0] == 0:
        return np.zeros(3), np.ones(3)
    return lab.mean(dim=0).cpu().numpy(), lab.std(dim=0, correction=0).cpu().numpy()


def reinhard_transfer(pixels: torch.Tensor, source_mean, source_std, target_mean, target_std,
                      luminosity_threshold: float = 0.8) -> torch.Tensor:
    """Apply the Reinhard transfer to uint8 pixels (P, 3) on their device; returns (P, 3) uint8."""
    dev = pixels.device
    sm, ss, tm, ts = (torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float32, device=dev)
                      for a in (source_mean, source_std, target_mean, target_std))
    lab = rgb_to_lab(pixels)
    out = lab_to_rgb((lab - sm) / ss.clamp(min=MIN_STD) * ts + tm).to(torch.float32)
    weight = ((luminosity_threshold + BACKGROUND_RAMP - luminosity(pixels)) / (2 * BACKGROUND_RAMP)).clamp_(0, 1)
    blended = pixels.to(torch.float32) + weight[:, None] * (out - pixels.to(torch.float32))
    return blended.round_().clamp_(0, 255).to(torch.uint8)
