"""Optical density, luminosity, background intensity and tissue-pixel sampling.

Beer–Lambert: a pixel of intensity ``I`` (per RGB channel) under illumination ``I0`` has optical density
``OD = ln(I0 / I)``. Stains add in OD space (``OD = C @ V``), which is what makes colour deconvolution linear.

Conventions used throughout :mod:`pathgen.stain`:

- RGB arrays are ``uint8`` with the channel last, ``(..., 3)``; nothing here writes into its input.
- ``I`` is clamped below at 1 before the logarithm (a 0 would give an infinite OD) and OD is clamped below at 0
  (pixels brighter than ``I0`` carry no stain), so OD is always finite and non-negative.
- Tissue pixels are those with CIELAB lightness ``L/100 < luminosity_threshold`` (0.8, as in StainTools and
  TIAToolbox) and ``L/100 >= MIN_TISSUE_LUMINOSITY``, which drops pure-black pixels (scanner borders, ink) whose
  saturated OD would dominate a fit.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterable, Iterator

import numpy as np
import torch

from pathgen.errors import PathgenError

#: Pixels darker than this CIELAB lightness (L/100) are not counted as tissue (black borders, pen ink).
MIN_TISSUE_LUMINOSITY = 0.05

# sRGB (D65) -> CIE XYZ, the matrix skimage.color uses; row 1 gives the relative luminance Y.
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


# --------------------------------------------------------------------------------------------------------- tensors
def as_tensor(x, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> torch.Tensor:
    """Wrap ``x`` as a tensor without copying when possible; never used to write into ``x``."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        a = np.asarray(x)
        with warnings.catch_warnings():  # read-only arrays are fine: nothing writes through the view
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(a) if a.dtype != np.uint16 else torch.from_numpy(a.astype(np.int32))
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device if device is not None else t.device)
    return t


@contextlib.contextmanager
def single_thread(device: torch.device | str | None = None) -> Iterator[None]:
    """Run torch on one CPU thread inside the block (restored afterwards).

    The fits are loops of small reductions (N × 3 by N × 2 products): threading gains nothing there, and on a
    busy machine BLAS threads waiting for each other made one 4096-pixel Vahadane fit 50× slower (7 s against
    0.13 s). Only the fits use this; the transform is elementwise and keeps every thread. The thread count is a
    process-wide torch setting, so another thread's torch work also runs on one thread for the (short) fit.
    """
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _like_input(t: torch.Tensor, ref):
    """Return ``t`` as numpy when ``ref`` was not a tensor."""
    return t if isinstance(ref, torch.Tensor) else t.detach().cpu().numpy()


def parse_i0(i0, default: float = 255.0) -> np.ndarray:
    """Background intensity as a float64 array of shape (3,).

    Accepts ``None`` (gives ``default``), a number, a sequence of three numbers or a string ``"240"`` /
    ``"242,244,241"``. Each value must lie in (1, 255].
    """
    if i0 is None:
        arr = np.full(3, float(default))
    else:
        if isinstance(i0, str):
            try:
                vals = [float(v) for v in i0.replace(" ", "").split(",") if v != ""]
            except ValueError:
                raise PathgenError(f"I0 must be a number or three comma-separated numbers, got {i0!r}") from None
        else:
            vals = np.atleast_1d(np.asarray(i0, dtype=np.float64)).tolist()
        if len(vals) == 1:
            vals = vals * 3
        if len(vals) != 3:
            raise PathgenError(f"I0 needs one value or three (R,G,B), got {len(vals)}")
        arr = np.asarray(vals, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 1.0) or np.any(arr > 255.0):
        raise PathgenError(f"I0 values must lie in (1, 255], got {arr.tolist()}")
    return arr


# -------------------------------------------------------------------------------------------------- optical density
def rgb_to_od(rgb, i0=255.0):
    """Optical density of RGB intensities.

    Parameters
    ----------
    rgb : array or tensor, (..., 3), uint8 or float in [0, 255]
        Intensities; not modified.
    i0 : float or (3,) array
        Background (illumination) intensity per channel.

    Returns
    -------
    od : same kind as ``rgb`` (numpy or torch), (..., 3), float32
        ``max(ln(I0) - ln(max(I, 1)), 0)``: finite and non-negative.
    """
    t = as_tensor(rgb)
    i0_t = torch.as_tensor(parse_i0(i0), dtype=torch.float32, device=t.device)
    od = torch.log(i0_t) - torch.log(t.to(torch.float32).clamp(min=1.0))
    return _like_input(od.clamp_(min=0.0), rgb)


def od_to_rgb(od, i0=255.0):
    """Intensities ``I0 * exp(-OD)`` rounded and clipped to uint8; (..., 3) in, same shape out."""
    t = as_tensor(od)
    i0_t = torch.as_tensor(parse_i0(i0), dtype=torch.float32, device=t.device)
    rgb = (i0_t * torch.exp(-t.to(torch.float32))).round_().clamp_(0.0, 255.0).to(torch.uint8)
    return _like_input(rgb, od)


# ------------------------------------------------------------------------------------------------------- CIELAB
def _srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v: torch.Tensor) -> torch.Tensor:
    v = v.clamp(min=0.0)
    return torch.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1.0 / 2.4) - 0.055)


# Linearised sRGB of every uint8 value, and times each channel's Y coefficient: Y = lut[r,0] + lut[g,1] + lut[b,2].
_LINEAR_LUT = _srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).to(torch.float32)
_Y_LUT = (_LINEAR_LUT.double()[:, None] * torch.as_tensor(_XYZ_FROM_RGB[1])[None, :]).to(torch.float32)


def _f_lab(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0.008856, t.clamp(min=1e-12) ** (1.0 / 3.0), 7.787 * t + 16.0 / 116.0)


def _f_lab_inv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0.2068966, t ** 3, (t - 16.0 / 116.0) / 7.787)


def _relative_luminance(t: torch.Tensor) -> torch.Tensor:
    """CIE Y in [0, 1] of (..., 3) RGB (uint8 through a lookup table)."""
    if t.dtype == torch.uint8:
        lut = _Y_LUT.to(t.device)
        idx = t.long()
        return lut[idx[..., 0], 0] + lut[idx[..., 1], 1] + lut[idx[..., 2], 2]
    lin = _srgb_to_linear(t.to(torch.float32) / 255.0)
    return lin @ torch.as_tensor(_XYZ_FROM_RGB[1], dtype=torch.float32, device=t.device)


def _luminance_of_lightness(lightness: float) -> float:
    """CIE Y with CIELAB ``L/100 = lightness`` (inverse of the L formula), for thresholds without cube roots."""
    return float(_f_lab_inv(torch.tensor((100.0 * lightness + 16.0) / 116.0, dtype=torch.float64)))


def luminosity(rgb):
    """CIELAB lightness ``L/100`` in [0, 1] of uint8 RGB (D65, as skimage.color.rgb2lab); (..., 3) -> (...)."""
    t = as_tensor(rgb)
    lum = (116.0 * _f_lab(_relative_luminance(t)) - 16.0) / 100.0
    return _like_input(lum.clamp_(0.0, 1.0), rgb)


def rgb_to_lab(rgb) -> torch.Tensor:
    """CIELAB (D65, 2°) of RGB in [0, 255]; (..., 3) -> (..., 3) float32 tensor, L in [0, 100]."""
    t = as_tensor(rgb)
    if t.dtype == torch.uint8:
        lin = _LINEAR_LUT.to(t.device)[t.long()]
    else:
        lin = _srgb_to_linear(t.to(torch.float32) / 255.0)
    m = torch.as_tensor(_XYZ_FROM_RGB / _WHITE_D65[:, None], dtype=torch.float32, device=t.device)
    f = _f_lab(lin @ m.T)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return torch.stack([lightness, a, b], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`: (..., 3) CIELAB -> (..., 3) uint8 RGB (rounded, clipped)."""
    lab = lab.to(torch.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    xyz = _f_lab_inv(torch.stack([fx, fy, fz], dim=-1)) * torch.as_tensor(_WHITE_D65, dtype=torch.float32,
                                                                          device=lab.device)
    m = torch.as_tensor(_RGB_FROM_XYZ, dtype=torch.float32, device=lab.device)
    srgb = _linear_to_srgb(xyz @ m.T)
    return (srgb * 255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


def tissue_mask(rgb, luminosity_threshold: float = 0.8):
    """Boolean tissue mask: ``MIN_TISSUE_LUMINOSITY <= L/100 < luminosity_threshold``; (..., 3) -> (...)."""
    # Compare CIE Y with the thresholds mapped to Y (L is monotone in Y): no cube root per pixel.
    y = _relative_luminance(as_tensor(rgb))
    mask = (y < _luminance_of_lightness(luminosity_threshold)) & (y >= _luminance_of_lightness(MIN_TISSUE_LUMINOSITY))
    return _like_input(mask, rgb)


# ---------------------------------------------------------------------------------------------- background: I0
def estimate_i0(pixels, top_fraction: float = 0.01, band: float = 0.03, min_luminosity: float = 0.85,
                max_chroma: float = 6.0, default: float = 255.0) -> np.ndarray:
    """Background (illumination) intensity per channel, from the brightest neutral pixels.

    Background is bare glass: bright and nearly grey. Among pixels with CIELAB chroma ``sqrt(a² + b²) <
    max_chroma``, the brightest ``top_fraction`` fixes a reference lightness ``L_ref`` (its lower bound); every
    neutral pixel within ``band`` of it is background, and the per-channel median of those is I0. The band keeps
    the estimate at the centre of the background cluster rather than at its noisy upper tail; the chroma limit
    keeps faintly stained lumens (pink, chroma ≈ 8) from being taken for glass in images that are all tissue.
    When no neutral pixel reaches ``min_luminosity`` there is no background to measure and ``default`` is
    returned for every channel (pass I0 explicitly for scanners with strongly tinted glass).

    Parameters
    ----------
    pixels : array or tensor, (..., 3) uint8
        Any pixels: a whole image, tiles, or a uniform sample across a slide (including background).
    top_fraction : float
        Fraction of the brightest neutral pixels that defines ``L_ref``.
    band : float
        Width (in L/100) of the background band below ``L_ref``.
    min_luminosity : float
        ``L/100`` the reference must reach to count as background.
    max_chroma : float
        Largest CIELAB chroma of a background pixel.
    default : float
        I0 used when there is no background.

    Returns
    -------
    i0 : ndarray, (3,), float64, in [2, 255]
    """
    px = as_tensor(pixels).reshape(-1, 3)
    fallback = np.full(3, float(default))
    # Only pixels that could be in the background band matter; CIELAB of the rest is never needed.
    px = px[_relative_luminance(px) >= _luminance_of_lightness(min_luminosity - band)]
    if px.shape[0] == 0:
        return fallback
    lab = rgb_to_lab(px)
    neutral = torch.linalg.vector_norm(lab[:, 1:], dim=1) < max_chroma
    px, lum = px[neutral], lab[neutral, 0] / 100.0
    if px.shape[0] == 0:
        return fallback
    k = max(1, int(round(top_fraction * lum.numel())))
    l_ref = torch.topk(lum, k).values.min()
    if float(l_ref) < min_luminosity:
        return fallback
    background = px[lum >= l_ref - band].to(torch.float32)
    i0 = background.median(dim=0).values.double().cpu().numpy()
    return np.clip(i0, 2.0, 255.0)


# ----------------------------------------------------------------------------------------------- pixel sampling
def _permutation_prefix(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """The first ``count`` entries of a pseudo-random permutation of ``range(total)``, in O(count).

    A 4-round Feistel network on the smallest even number of bits covering ``total`` is a bijection; values that
    fall outside ``range(total)`` are walked through it again (cycle walking), which keeps it a bijection of
    ``range(total)``. Every prefix is the prefix of the same permutation, whatever ``count`` is.
    """
    half = max(1, (int(total - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    round_keys = rng.integers(0, 1 << 32, size=4, dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)

    def permute(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for rk in round_keys:
            h = (right ^ rk) * mult
            h ^= h >> np.uint64(29)
            left, right = right, left ^ (h & mask)
        return (left << np.uint64(half)) | right

    out = permute(np.arange(count, dtype=np.uint64))
    outside = out >= np.uint64(total)
    while outside.any():
        out[outside] = permute(out[outside])
        outside = out >= np.uint64(total)
    return out.astype(np.int64)


class PixelReservoir:
    """A uniform random sample of at most ``n`` pixels from a stream of images or tiles, in O(n) per image.

    Every pixel offered has an independent uniform key, fixed by (seed, image key, position), and the reservoir
    keeps the smallest keys below a bound ``tau`` (bottom-k sampling), so the sample is uniform over everything
    offered. Only pixels whose key can still matter are touched: for an image much larger than ``n`` the keys are
    generated in increasing order (Rényi's representation of uniform order statistics) together with the
    positions holding them (a prefix of a keyed pseudo-random permutation), stopping at ``tau`` — O(tau·P) work
    instead of O(P). ``tau`` is the smaller of the current n-th smallest key and ``oversample * n / (P * pass_rate)``, so a
    single large image is sampled without drawing a key for every pixel.

    A ``predicate`` (e.g. the tissue mask) is applied to the candidates only; its pass rate, measured on a small
    pilot draw, sets how many candidates are drawn. With ``key`` given to :meth:`add` (e.g. a tile index) every
    random number depends on (seed, key) alone and the final sample does not depend on the order in which tiles
    arrive (parallel readers); without it, on the order of the calls.

    Parameters
    ----------
    n : int
        Sample size.
    seed : int
        Seed of the random keys.
    oversample : float
        Candidates drawn per image as a multiple of ``n``; just under 1 so that a single image is sampled without
        a selection step (its sample then holds about ``oversample * n`` pixels).
    """

    PILOT = 4096
    BATCH = 1 << 14  # fixed batch of the sequential draws: keeps every prefix identical whatever tau is

    def __init__(self, n: int, seed: int = 0, oversample: float = 0.97):
        if n <= 0:
            raise PathgenError(f"sample size must be positive, got {n}")
        self.n = int(n)
        self.seed = int(seed)
        self.oversample = float(oversample)
        self.seen = 0
        self._calls = 0
        self._tau = 1.0  # stored = offered (passing) pixels whose key < tau
        self._keys = np.empty(0, dtype=np.float64)
        self._pixels = np.empty((0, 3), dtype=np.uint8)

    def add(self, pixels, key: int | None = None, predicate=None) -> None:
        """Offer pixels, (..., 3) uint8 (numpy or tensor).

        ``key`` makes the draw order-independent; ``predicate`` maps (m, 3) uint8 to an (m,) bool mask of the
        pixels that may enter the sample.
        """
        px = np.asarray(pixels.cpu() if isinstance(pixels, torch.Tensor) else pixels).reshape(-1, 3)
        if px.dtype != np.uint8:
            raise PathgenError(f"pixels must be uint8 RGB, got {px.dtype}")
        stream = [self.seed, self._calls if key is None else int(key) + (1 << 40)]
        self._calls += 1
        total = px.shape[0]
        self.seen += total
        if total == 0:
            return
        pass_rate = 1.0
        if predicate is not None:
            pilot_rng = np.random.default_rng(stream + [0])
            pilot = np.take(px, pilot_rng.integers(0, total, size=min(total, self.PILOT)), axis=0)
            pass_rate = max(float(np.count_nonzero(predicate(pilot))), 1.0) / pilot.shape[0]
        tau = min(self._tau, self.oversample * self.n / (total * pass_rate))
        if tau < self._tau:
            self._restrict(tau)
        if total <= 4 * self.n:
            keys = np.random.default_rng(stream + [1]).random(total)
            positions = np.flatnonzero(keys < tau)
            keys = keys[positions]
        else:
            keys, positions = self._smallest_keys(total, tau, stream)
        candidates = np.take(px, positions, axis=0)  # several times faster than px[positions]
        if predicate is not None and candidates.shape[0]:
            keep = np.asarray(predicate(candidates), dtype=bool)
            keys, candidates = keys[keep], candidates[keep]
        self._keys = np.concatenate([self._keys, keys])
        self._pixels = np.concatenate([self._pixels, candidates])
        if self._keys.size > self.n:
            self._shrink()

    def _smallest_keys(self, total: int, tau: float, stream: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The keys below ``tau`` of ``total`` iid uniform keys, in increasing order, and their positions."""
        key_rng = np.random.default_rng(stream + [1])
        log_survival = 0.0  # log(1 - U_(i)) = -sum_j E_j / (total - j + 1)
        keys: list[np.ndarray] = []
        drawn = 0
        limit = -np.log1p(-tau) if tau < 1.0 else np.inf
        while drawn < total:
            m = min(self.BATCH, total - drawn)
            steps = key_rng.standard_exponential(m) / (total - drawn - np.arange(m))
            cum = log_survival + np.cumsum(steps)
            below = cum < limit
            keys.append(-np.expm1(-cum[below]))
            drawn += m
            log_survival = cum[-1]
            if not below[-1]:
                break
        k = np.concatenate(keys)
        return k, _permutation_prefix(total, k.size, np.random.default_rng(stream + [2]))

    def _restrict(self, tau: float) -> None:
        keep = self._keys < tau
        self._keys, self._pixels = self._keys[keep], self._pixels[keep]
        self._tau = tau

    def _shrink(self) -> None:
        keep = np.argpartition(self._keys, self.n - 1)[: self.n]
        self._keys, self._pixels = self._keys[keep], self._pixels[keep]
        self._tau = float(np.nextafter(self._keys.max(), np.inf))

    def sample(self) -> np.ndarray:
        """The sample so far, (m, 3) uint8 with m <= n, ordered by key (deterministic for the seed and keys)."""
        return self._pixels[np.argsort(self._keys, kind="stable")]


def _check_rgb(image, what: str = "image") -> np.ndarray | torch.Tensor:
    shape = tuple(image.shape)
    if len(shape) < 1 or shape[-1] != 3:
        raise PathgenError(f"{what} must have 3 channels last (…, 3), got shape {shape}")
    dtype = image.dtype
    if dtype not in (np.uint8, torch.uint8):
        raise PathgenError(f"{what} must be uint8, got {dtype}")
    return image


def _iter_images(images) -> Iterable:
    """A single (H, W, 3) / (N, H, W, 3) array or tensor, or an iterable of them, as a stream of arrays."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            yield from images
        else:
            yield images
        return
    yield from images


def sample_pixels(images, n: int = 200_000, seed: int = 0,
                  luminosity_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pool a uniform sample of tissue pixels and one of all pixels from images, in one pass.

    Parameters
    ----------
    images : (H, W, 3) or (N, H, W, 3) uint8 array/tensor, or an iterable of (H, W, 3) uint8 arrays
        Images or tiles, e.g. many tiles of one slide; read once.
    n : int
        Size of each sample.
    seed : int
        Seed; the i-th image always gets the same random keys.
    luminosity_threshold : float or None
        Tissue threshold on ``L/100`` (see :func:`tissue_mask`); None gives 0.8.

    Returns
    -------
    tissue : ndarray, (m, 3) uint8
        Uniform sample of tissue pixels, m <= n (0 when there is no tissue).
    everything : ndarray, (k, 3) uint8
        Uniform sample of all pixels (for I0 and brightness statistics), k <= n.
    """
    thr = 0.8 if luminosity_threshold is None else float(luminosity_threshold)
    tissue, everything = PixelReservoir(n, seed), PixelReservoir(n, seed + 1)

    def is_tissue(px: np.ndarray) -> np.ndarray:
        return tissue_mask(px, thr)

    for i, image in enumerate(_iter_images(images)):
        _check_rgb(image)
        px = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image).reshape(-1, 3)
        everything.add(px, key=i)
        tissue.add(px, key=i, predicate=is_tissue)
    return tissue.sample(), everything.sample()


def sample_tissue_pixels(images, n: int = 200_000, seed: int = 0, luminosity_threshold: float = 0.8) -> np.ndarray:
    """Uniform sample of at most ``n`` tissue pixels pooled over images or tiles.

    Parameters
    ----------
    images : (H, W, 3) or (N, H, W, 3) uint8, or an iterable of (H, W, 3) uint8 arrays
    n : int
        Maximum number of pixels returned.
    seed : int
        Seed; deterministic for the same images in the same order.
    luminosity_threshold : float
        Tissue is ``MIN_TISSUE_LUMINOSITY <= L/100 < luminosity_threshold``.

    Returns
    -------
    pixels : ndarray, (m, 3) uint8, m <= n; m == 0 when no pixel is tissue.
    """
    return sample_pixels(images, n=n, seed=seed, luminosity_threshold=luminosity_threshold)[0]
