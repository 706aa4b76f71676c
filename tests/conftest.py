"""Shared fixtures: small slides written with pathgen's own pyramid writer, and the real sample data."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def save_tiny_saasn(folder, seed: int = 0, attention_mu: float | None = None, **extra):
    """A tiny SAASN saved as a generator checkpoint in ``folder``: random weights, BatchNorm statistics from three
    training-mode passes, attention switched on with residual weight ``attention_mu`` when given. Returns the
    model (for reference outputs)."""
    import torch

    from pathgen.saasn.checkpoint import save_generators
    from pathgen.saasn.networks import SAASN, SelfAttention, preset

    torch.manual_seed(seed)
    model = SAASN(preset("tiny"))
    if attention_mu is not None:
        for m in model.modules():
            if isinstance(m, SelfAttention):
                m.mu.data.fill_(attention_mu)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.g_x2y(torch.rand(4, 3, 32, 32) * 2 - 1)
            model.g_y2x(torch.rand(4, 3, 32, 32) * 2 - 1)
    save_generators(folder, model.g_x2y, model.g_y2x, extra=extra or None)
    return model


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
