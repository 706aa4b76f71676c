"""Image similarity: SSIM (grayscale as SAASN computes it, and RGB) and PSNR.

SAASN's protocol (METHODS.md §6.1; ``gen_samples.py``) measures structure preservation between a normalised
image and its source: both images in [0, 1] are converted to grayscale ``0.299 R + 0.587 G + 0.114 B``
(kornia ``RgbToGrayscale``), and ``kornia.losses.SSIM(11, 'mean')`` is applied. That SSIM is

* an 11 × 11 Gaussian window, σ = 1.5, normalised to sum 1 (separable, taps at offsets -5..5);
* local statistics by filtering with reflect padding ("same" size output; kornia ``filter2d`` default
  ``border_type='reflect'``, i.e. mirror without repeating the edge pixel, scipy ``mode='mirror'``);
* ``C1 = (0.01 L)², C2 = (0.03 L)²`` with L the data range (1 for images scaled to [0, 1]);
* the map ``((2 μx μy + C1)(2 σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2))``, where the σ are biased
  local (co)variances ``E[xy] - E[x]E[y]``. The denominator is at least C1·C2 > 0, so no extra epsilon is added
  (recent kornia adds 1e-12, which lowers flat identical regions by up to ~1e-5);
* the score is the mean of the map (SAASN's ``1 - 2·loss``). Older kornia releases clamped the map to [0, 1]
  inside the loss; ``clip_negative=True`` reproduces that (it matters only where local SSIM < 0).

Inputs: uint8 images are divided by 255 and uint16 by 65535 (L = 1 afterwards); float images must already be in
[0, ``data_range``] (default 1).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d

from pathgen.errors import PathgenError

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _to_unit(image: np.ndarray, data_range: float | None) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if arr.dtype.kind in "iu":
        raise PathgenError(f"integer images must be uint8 or uint16, got {arr.dtype}")
    rng = 1.0 if data_range is None else float(data_range)
    if rng <= 0:
        raise PathgenError(f"data_range must be positive, got {data_range}")
    return arr.astype(np.float64) / rng


def to_gray(image: np.ndarray) -> np.ndarray:
    """Grayscale ``0.299 R + 0.587 G + 0.114 B`` of an (H, W, 3|4) image (alpha ignored); (H, W) passes through.

    Returns
    -------
    ndarray of float64, shape (H, W), same units as the input.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float64)
        return rgb[..., 0] * GRAY_WEIGHTS[0] + rgb[..., 1] * GRAY_WEIGHTS[1] + rgb[..., 2] * GRAY_WEIGHTS[2]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0].astype(np.float64)
    raise PathgenError(f"expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """1-D Gaussian taps at offsets ``i - size // 2`` (shifted by 0.5 for even sizes), summing to 1."""
    x = np.arange(size, dtype=np.float64) - size // 2
    if size % 2 == 0:
        x += 0.5
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _filter(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    out = correlate1d(img, taps, axis=0, mode="mirror")
    return correlate1d(out, taps, axis=1, mode="mirror")


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, window_size: int = 11,
             sigma: float = 1.5) -> np.ndarray:
    """Local SSIM of two single-channel float images (same units, range ``data_range``).

    Parameters
    ----------
    a, b : ndarray of float, shape (H, W)
    data_range : float
        L in the stability constants.

    Returns
    -------
    ndarray of float64, shape (H, W)
    """
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise PathgenError(f"SSIM needs two (H, W) images of one shape, got {x.shape} and {y.shape}")
    if min(x.shape) < window_size // 2 + 1:
        raise PathgenError(f"image {x.shape} too small for an {window_size}x{window_size} SSIM window")
    taps = gaussian_window(window_size, sigma)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = _filter(x, taps), _filter(y, taps)
    var_x = _filter(x * x, taps) - mu_x ** 2
    var_y = _filter(y * y, taps) - mu_y ** 2
    cov = _filter(x * y, taps) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
    return num / den


def ssim_gray(a: np.ndarray, b: np.ndarray, data_range: float | None = None, window_size: int = 11,
              sigma: float = 1.5, clip_negative: bool = False) -> float:
    """SSIM of the grayscale versions of two images, as in SAASN (see the module docstring).

    Parameters
    ----------
    a, b : ndarray, shape (H, W, 3) or (H, W); uint8, uint16 or float in [0, data_range]
    data_range : float, optional
        Range of float inputs (default 1); ignored for uint8 / uint16.
    clip_negative : bool
        Clamp the map to [0, 1] before averaging (older kornia loss).

    Returns
    -------
    float (1 for identical images)
    """
    x = to_gray(_to_unit(a, data_range))
    y = to_gray(_to_unit(b, data_range))
    m = ssim_map(x, y, 1.0, window_size, sigma)
    if clip_negative:
        m = np.clip(m, 0.0, 1.0)
    return float(m.mean())


def ssim_rgb(a: np.ndarray, b: np.ndarray, data_range: float | None = None, window_size: int = 11,
             sigma: float = 1.5) -> float:
    """SSIM of colour images: the mean of the per-channel SSIM maps (kornia on a 3-channel tensor).

    Parameters
    ----------
    a, b : ndarray, shape (H, W, C); uint8, uint16 or float in [0, data_range]

    Returns
    -------
    float
    """
    x = _to_unit(a, data_range)
    y = _to_unit(b, data_range)
    if x.shape != y.shape:
        raise PathgenError(f"images differ in shape: {x.shape} vs {y.shape}")
    if x.ndim == 2:
        return float(ssim_map(x, y, 1.0, window_size, sigma).mean())
    if x.ndim != 3:
        raise PathgenError(f"expected an (H, W, C) image, got shape {x.shape}")
    channels = min(x.shape[-1], 3)
    return float(np.mean([ssim_map(x[..., c], y[..., c], 1.0, window_size, sigma).mean()
                          for c in range(channels)]))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(L² / MSE)`` in dB over all pixels and channels.

    Parameters
    ----------
    a, b : ndarray, same shape; uint8, uint16 or float in [0, data_range]

    Returns
    -------
    float; ``inf`` for identical images.
    """
    x = _to_unit(a, data_range)
    y = _to_unit(b, data_range)
    if x.shape != y.shape:
        raise PathgenError(f"images differ in shape: {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(1.0 / mse))
