"""Shared fixtures: small slides written with pathgen's own pyramid writer, and the real sample data."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, position-dependent RGB image (JPEG-friendly, every pixel distinct enough to locate)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(20, 60, 3)
    r = 128 + 90 * np.sin(xx / a) * np.cos(yy / b)
    g = 128 + 90 * np.cos((xx + yy) / c)
    bl = 128 + 90 * np.sin(yy / a)
    return np.clip(np.stack([r, g, bl], -1), 0, 255).astype(np.uint8)


def tissue_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """White glass with two pink/purple tissue blobs."""
    img = np.full((h, w, 3), 242, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    for cy, cx, r in [(h * 0.3, w * 0.3, min(h, w) * 0.2), (h * 0.7, w * 0.75, min(h, w) * 0.15)]:
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        noise = rng.integers(-15, 15, (h, w, 1))
        img[blob] = np.clip(np.array([200, 120, 170]) + noise[blob], 0, 255)
    return img


@pytest.fixture
def make_slide(tmp_path):
    """Write ``array`` as a generic pyramidal TIFF and return its path."""
    from pathgen.io.pyramid import iter_row_blocks, write_pyramid

    def _make(array: np.ndarray, name: str = "slide.tiff", mpp=0.5, compression="zlib", tile=256, **kw):
        path = tmp_path / name
        write_pyramid(path, iter_row_blocks(array, 97), array.shape, dtype=array.dtype, mpp=mpp,
                      compression=compression, tile_size=tile, **kw)
        return path

    return _make


@pytest.fixture(scope="session")
def real_svs():
    from pathgen.data.fetch import sample_path

    return sample_path("cmu_small_region.svs")


@pytest.fixture(scope="session")
def real_target():
    from pathgen.data.fetch import sample_path

    return sample_path("target_image.png")
