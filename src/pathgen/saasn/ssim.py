"""Differentiable SSIM in torch, identical to :func:`pathgen.metrics.image.ssim_gray` on the same images.

The definition (METHODS.md §2.3, §6.1; kornia ``SSIM(11)`` as used by the SAASN code): 11 × 11 separable Gaussian
window, σ = 1.5, normalised to sum 1; reflect ("mirror", edge not repeated) padding so the map has the input's
size; ``C1 = 0.01²``, ``C2 = 0.03²`` for images in [0, 1]; biased local (co)variances; the score of an image is the
mean of its map. Grayscale is ``0.299 R + 0.587 G + 0.114 B``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathgen.errors import PathgenError

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def gaussian_taps(window_size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """1-D Gaussian taps at offsets ``i - size // 2`` (shifted by 0.5 for even sizes), summing to 1."""
    x = torch.arange(window_size, dtype=torch.float64, device=device) - window_size // 2
    if window_size % 2 == 0:
        x = x + 0.5
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, 1, H, W)`` luma ``0.299 R + 0.587 G + 0.114 B``; 1-channel input passes through."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise PathgenError(f"expected (B, 3, H, W) or (B, 1, H, W) images, got {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images
    w = torch.tensor(GRAY_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter with reflect padding; ``x`` is ``(B, C, H, W)``."""
    c = x.shape[1]
    r = taps.numel() // 2
    right = taps.numel() - 1 - r
    x = F.pad(x, (r, right, r, right), mode="reflect")
    kx = taps.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = taps.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
             data_range: float = 1.0) -> torch.Tensor:
    """Local SSIM of two ``(B, C, H, W)`` tensors in [0, ``data_range``]; returns ``(B, C, H, W)``."""
    if a.shape != b.shape or a.ndim != 4:
        raise PathgenError(f"SSIM needs two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and "
                           f"{tuple(b.shape)}")
    if min(a.shape[-2:]) <= window_size // 2:
        raise PathgenError(f"images {tuple(a.shape[-2:])} too small for an {window_size}x{window_size} SSIM window")
    taps = gaussian_taps(window_size, sigma, a.dtype, a.device)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    stats = _blur(torch.cat([a, b, a * a, b * b, a * b], dim=1), taps)
    mu_a, mu_b, e_aa, e_bb, e_ab = torch.chunk(stats, 5, dim=1)
    var_a = e_aa - mu_a ** 2
    var_b = e_bb - mu_b ** 2
    cov = e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return num / (den + 1e-12)


def ssim(a: torch.Tensor, b: torch.Tensor, grayscale: bool = True, window_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of two batches of images in [0, 1].

    Parameters
    ----------
    a, b : tensor, shape (B, 3, H, W), float in [0, 1]
    grayscale : bool
        Compare luma (SAASN's structural terms and evaluation) instead of averaging the three channel maps.

    Returns
    -------
    tensor, shape (B,): the mean of each image's SSIM map (1 for identical images).
    """
    if grayscale:
        a, b = rgb_to_gray(a), rgb_to_gray(b)
    return ssim_map(a, b, window_size, sigma).mean(dim=(1, 2, 3))


def ssim_from_tanh(a: torch.Tensor, b: torch.Tensor, grayscale: bool = True) -> torch.Tensor:
    """:func:`ssim` of two batches in the networks' [-1, 1] range (mapped to [0, 1] first); shape (B,)."""
    return ssim((a + 1) * 0.5, (b + 1) * 0.5, grayscale=grayscale)
