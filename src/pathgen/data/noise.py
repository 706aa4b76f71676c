"""Deterministic procedural noise as pure functions of global coordinates.

Everything the generator draws derives from integer hashes of ``(seed, stream, coordinates)``, never from the
order in which windows are rendered, so any window of the infinite procedural plane renders the same pixels
whether it is drawn alone or as part of a larger one — tiles of a slide join without seams.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
_MASK64 = (1 << 64) - 1


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrapping arithmetic)."""
    h ^= h >> _S30
    h *= _M1
    h ^= h >> _S27
    h *= _M2
    h ^= h >> _S31
    return h


def hash_uint64(seed: int, stream: int, *coords) -> np.ndarray:
    """A 64-bit hash of ``(seed, stream, *coords)`` for every element of the broadcast integer coordinates."""
    arrays = [np.asarray(c, dtype=np.int64) for c in coords]
    shape = np.broadcast_shapes(*[a.shape for a in arrays]) if arrays else ()
    start = ((int(seed) & _MASK64) * 0x9E3779B97F4A7C15 + (int(stream) & _MASK64) * 0xD1B54A32D192ED03) & _MASK64
    start = int(_mix(np.array([start], dtype=np.uint64))[0])
    h = np.full(shape, start, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in arrays:
            h ^= a.view(np.uint64) * _GOLDEN  # int64 -> uint64 reinterpretation (negatives wrap)
            h = _mix(h)
    return h


def hash_uniform(seed: int, stream: int, *coords) -> np.ndarray:
    """Uniform floats in [0, 1) (float64) hashed from ``(seed, stream, *coords)``; see :func:`hash_uint64`."""
    return (hash_uint64(seed, stream, *coords) >> _S11).astype(np.float64) * (1.0 / (1 << 53))


def cell_seed(seed: int, stream: int, *cell: int) -> int:
    """A 63-bit integer seed for ``numpy.random.default_rng`` owned by one grid cell."""
    return int(hash_uint64(seed, stream, *[np.int64(c) for c in cell]) >> np.uint64(1))


def grid_sample(fn, y0: int, x0: int, height: int, width: int, mpp: float, step: int) -> np.ndarray:
    """Evaluate a smooth field ``fn(y_um, x_um)`` on a pixel window via a coarse grid aligned to global pixel
    multiples of ``step`` and bilinear interpolation.

    Each pixel's value depends only on its global position, so overlapping windows agree bit for bit. Pixel
    ``(i, j)`` sits at ``((i + 0.5) * mpp, (j + 0.5) * mpp)`` µm. Returns float64 (height, width).
    """
    gy = np.arange(y0 // step, (y0 + height - 1) // step + 2)
    gx = np.arange(x0 // step, (x0 + width - 1) // step + 2)
    coarse = np.asarray(fn(((gy * step) + 0.5)[:, None] * mpp, ((gx * step) + 0.5)[None, :] * mpp), np.float64)
    py = np.arange(y0, y0 + height)
    px = np.arange(x0, x0 + width)
    iy = py // step - gy[0]
    ix = px // step - gx[0]
    ty = ((py % step) / step)[:, None]
    tx = (px % step) / step
    left = coarse[:, ix]
    rows = left + tx * (coarse[:, ix + 1] - left)
    top = rows[iy]
    bottom = rows[iy + 1]
    return top + ty * (bottom - top)


def _smootherstep(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def value_noise(seed: int, stream: int, y: np.ndarray, x: np.ndarray, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] at coordinates ``y``, ``x`` (broadcastable, any unit), lattice spacing ``cell``.

    Lattice values are hashed from their integer lattice indices and blended with the quintic smootherstep, so
    the value at a coordinate is the same whether it is evaluated on a grid (``y[:, None]``, ``x[None, :]``) or
    as scattered points. Returns float64 of the broadcast shape.
    """
    gy = np.asarray(y, dtype=np.float64) / cell
    gx = np.asarray(x, dtype=np.float64) / cell
    if gy.size == 0 or gx.size == 0:
        return np.zeros(np.broadcast_shapes(gy.shape, gx.shape))
    fy0 = np.floor(gy)
    fx0 = np.floor(gx)
    ty = _smootherstep(gy - fy0)
    tx = _smootherstep(gx - fx0)
    iy = fy0.astype(np.int64)
    ix = fx0.astype(np.int64)
    y_lo, y_hi = int(iy.min()), int(iy.max()) + 1
    x_lo, x_hi = int(ix.min()), int(ix.max()) + 1
    if iy.ndim == 2 and ix.ndim == 2 and iy.shape[1] == 1 and ix.shape[0] == 1:
        # Grid: blend along x on the few lattice rows, then gather rows and blend along y. Same arithmetic,
        # in the same order, as the point formula below, so grids and points agree bit for bit.
        lattice = hash_uniform(seed, stream, np.arange(y_lo, y_hi + 1)[:, None],
                               np.arange(x_lo, x_hi + 1)[None, :])
        rx = ix[0] - x_lo
        left = lattice[:, rx]
        rows = left + tx[0] * (lattice[:, rx + 1] - left)  # (lattice rows, W)
        ry = iy[:, 0] - y_lo
        top = rows[ry]
        bottom = rows[ry + 1]
        return top + ty * (bottom - top)
    n_out = int(np.prod(np.broadcast_shapes(iy.shape, ix.shape)))
    if (y_hi - y_lo + 1) * (x_hi - x_lo + 1) <= 4 * max(n_out, 1) + 64:
        # Dense lattice over the bounding box, then gather (grids, clustered points).
        lattice = hash_uniform(seed, stream, np.arange(y_lo, y_hi + 1)[:, None],
                               np.arange(x_lo, x_hi + 1)[None, :])
        ry = iy - y_lo
        rx = ix - x_lo
        v00 = lattice[ry, rx]
        v01 = lattice[ry, rx + 1]
        v10 = lattice[ry + 1, rx]
        v11 = lattice[ry + 1, rx + 1]
    else:
        # Scattered points: hash the four corners of each point directly (same values), in one call.
        iy, ix = np.broadcast_arrays(iy, ix)
        corners = hash_uniform(seed, stream, np.stack([iy, iy, iy + 1, iy + 1]),
                               np.stack([ix, ix + 1, ix, ix + 1]))
        v00, v01, v10, v11 = corners
    top = v00 + tx * (v01 - v00)
    bottom = v10 + tx * (v11 - v10)
    return top + ty * (bottom - top)


def fbm(seed: int, stream: int, y: np.ndarray, x: np.ndarray, cell: float, octaves: int = 3,
        gain: float = 0.5) -> np.ndarray:
    """Fractal sum of ``octaves`` value-noise layers (cells ``cell / 2**k``, weights ``gain**k``), in [0, 1]."""
    total = None
    weight_sum = 0.0
    for k in range(octaves):
        w = gain ** k
        layer = value_noise(seed, stream * 16 + k, y, x, cell / (2 ** k))
        total = w * layer if total is None else total + w * layer
        weight_sum += w
    return total / weight_sum


def _gauss_radius(sigma: float) -> int:
    return int(4.0 * sigma + 0.5)  # scipy.ndimage's default truncate=4.0


def filtered_noise(seed: int, stream: int, y0: int, x0: int, height: int, width: int,
                   sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation on the pixel window
    ``[y0, y0 + height) × [x0, x0 + width)`` of the global pixel grid.

    The white noise is hashed from global pixel indices and padded by the filter radius before filtering, so
    overlapping windows agree exactly. ``sigma`` in pixels (0 gives unfiltered noise). Returns float32 (h, w).
    """
    return filtered_noises(seed, stream, y0, x0, height, width, (sigma,))[0]


def filtered_noises(seed: int, stream: int, y0: int, x0: int, height: int, width: int,
                    sigmas: tuple[float, ...]) -> list[np.ndarray]:
    """Up to four independent :func:`filtered_noise` fields (one per sigma) from a single 64-bit hash per pixel,
    split into four 16-bit uniforms. Returns a list of float32 (h, w) arrays with unit standard deviation."""
    if not 1 <= len(sigmas) <= 4:
        raise ValueError("one to four sigmas")
    radii = [_gauss_radius(sg) if sg > 0 else 0 for sg in sigmas]
    r_max = max(radii)
    ys = np.arange(y0 - r_max, y0 + height + r_max)
    xs = np.arange(x0 - r_max, x0 + width + r_max)
    bits = hash_uint64(seed, stream, ys[:, None], xs[None, :])
    out = []
    scale = np.float32(12 ** 0.5 / 65536.0)
    for k, (sigma, r) in enumerate(zip(sigmas, radii)):
        chunk = ((bits >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.float32)
        white = (chunk - np.float32(32767.5)) * scale
        lo = r_max - r
        white = white[lo:white.shape[0] - lo, lo:white.shape[1] - lo]
        if r == 0:
            out.append(np.ascontiguousarray(white))
            continue
        filt = ndi.gaussian_filter(white, sigma, mode="nearest")[r:r + height, r:r + width]
        # A separable Gaussian shrinks the variance of white noise by (sum of squared 1-D weights)^2.
        kern = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        kern /= kern.sum()
        out.append(filt / np.float32(np.sum(kern ** 2)))
    return out


def fbm_quantile(q: float, octaves: int = 3, gain: float = 0.5, samples: int = 20000) -> float:
    """The ``q`` quantile of :func:`fbm`'s distribution, estimated once from a fixed sample."""
    return float(np.quantile(_fbm_sample(octaves, gain, samples), q))


_SAMPLE_CACHE: dict[tuple, np.ndarray] = {}


def _fbm_sample(octaves: int, gain: float, samples: int) -> np.ndarray:
    key = (octaves, gain, samples)
    if key not in _SAMPLE_CACHE:
        u = hash_uniform(987654321, 1, np.arange(2 * samples)).reshape(2, samples) * 1000.0
        _SAMPLE_CACHE[key] = fbm(123456789, 7, u[0], u[1], 1.0, octaves, gain)
    return _SAMPLE_CACHE[key]
