"""SAASN inference: the X→Y generator over tiles, blended by the tile engine (METHODS.md §2.6).

The generator runs in eval mode (BatchNorm running statistics, spectral norm baked into the weights), so its
weights and statistics are the same for every tile and the whole slide gets one stain. Windows overlap by
``overlap`` pixels on each side and are blended with the engine's cosine partition of unity, which removes the
seams of the authors' paste-last-wins stitching; background windows (no tissue in the core) are not processed.

Each window is reflect-padded to a multiple of ``2**g_depth`` before the generator and cropped after it. The
default window, 448 + 2·32 = 512 px, is already a multiple of 128.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pathgen.errors import PathgenError
from pathgen.saasn.checkpoint import load_generator
from pathgen.saasn.data import to_tensor, to_uint8

DEFAULT_TILE = 448
DEFAULT_OVERLAP = 32


class SaasnNormalizer:
    """Callable tile function: ``(N, H, W, 3)`` uint8 → ``(N, H, W, 3)`` uint8 through a SAASN generator.

    Parameters
    ----------
    checkpoint : path
        Run folder or model folder (``generator.safetensors`` + ``config.json``), or the weights file.
    device : str
        "auto", "cpu" or "cuda[:N]".
    direction : {"x2y", "y2x"}
        The normaliser (default) or, for evaluation, the reverse generator.
    max_batch : int
        Windows per forward pass (larger batches are split).
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", direction: str = "x2y",
                 max_batch: int = 8):
        from pathgen.engine import resolve_device

        self.device = torch.device(resolve_device(device))
        self.checkpoint = str(checkpoint)
        self.generator, self.info = load_generator(checkpoint, direction, self.device)
        self.multiple = self.generator.config.multiple
        self.max_batch = max(1, int(max_batch))

    @property
    def mpp(self) -> float | None:
        """µm/px of the training data, when known."""
        value = self.info.get("mpp")
        return None if value is None else float(value)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
        y = self.generator(x)
        return y[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Normalise a batch.

        Parameters
        ----------
        batch : ndarray, shape (N, H, W, 3) or (H, W, 3), uint8

        Returns
        -------
        ndarray, same shape, uint8
        """
        arr = np.asarray(batch)
        single = arr.ndim == 3
        if single:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise PathgenError(f"expected (N, H, W, 3) uint8 tiles, got {arr.dtype} {arr.shape}")
        outs = []
        with torch.inference_mode():
            for start in range(0, arr.shape[0], self.max_batch):
                x = to_tensor(arr[start:start + self.max_batch], self.device)
                outs.append(to_uint8(self._forward(x)))
        out = np.concatenate(outs, axis=0) if outs else arr.copy()
        return out[0] if single else out


def _normalizer(checkpoint, device: str) -> SaasnNormalizer:
    if isinstance(checkpoint, SaasnNormalizer):
        return checkpoint
    return SaasnNormalizer(checkpoint, device=device)


def _engine_config(tile_size: int, overlap: int, batch_size: int, device: str):
    from pathgen.engine import EngineConfig

    # One worker thread: torch already uses every core inside a forward pass, and a GPU serialises anyway.
    return EngineConfig(tile_size=int(tile_size), overlap=int(overlap), batch_size=int(batch_size),
                        blend="cosine", threads=1, device=device)


def normalize_image_saasn(image: np.ndarray, checkpoint, device: str = "auto", tile_size: int = DEFAULT_TILE,
                          overlap: int = DEFAULT_OVERLAP, batch_size: int = 4) -> np.ndarray:
    """Normalise an in-memory RGB image with a SAASN generator, tiled and blended like a slide.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
    checkpoint : path or SaasnNormalizer
    device : str
    tile_size, overlap : int
        Window core and halo in pixels (window side = ``tile_size + 2·overlap``).
    batch_size : int
        Windows per call.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
    """
    from pathgen.engine import process_array

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise PathgenError(f"expected an (H, W, 3) uint8 image, got {arr.dtype} {arr.shape}")
    norm = _normalizer(checkpoint, device)
    cfg = _engine_config(tile_size, overlap, batch_size, str(norm.device))
    return process_array(arr, norm, out_channels=3, out_dtype=np.uint8, cfg=cfg)


def normalize_slide_saasn(slide_path: str | os.PathLike, output: str | os.PathLike, checkpoint,
                          device: str = "auto", tile_size: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                          batch_size: int = 4, level: int | None = 0, mpp: float | None = None,
                          skip_background: bool = True, overwrite: bool = False, quality: int = 90,
                          compression: str | None = None):
    """Normalise a whole slide with a SAASN generator into a pyramidal TIFF (or OME-Zarr for ``*.zarr``).

    Parameters
    ----------
    slide_path : path
        Anything :func:`pathgen.slide.open_slide` opens.
    output : path
        ``.tif``/``.tiff`` (pyramidal, JPEG tiles by default) or ``.zarr``; written atomically, never over the
        input; an existing output is refused unless ``overwrite``.
    checkpoint : path or SaasnNormalizer
    device : str
    tile_size, overlap, batch_size : int
        Engine tiling (see :func:`normalize_image_saasn`).
    level : int, optional
        Pyramid level processed (0 = full resolution); ignored when ``mpp`` is given.
    mpp : float, optional
        Process the slide resampled to this resolution (µm/px), e.g. the training data's.
    skip_background : bool
        Leave windows without tissue white instead of running the generator on them.
    quality : int
        JPEG quality of the output tiles.
    compression : str, optional
        Override the output compression ("jpeg", "zlib", ...).

    Returns
    -------
    pathgen.engine.RunReport
    """
    from pathgen.config import save_run_config
    from pathgen.engine import run_slide
    from pathgen.slide import open_slide
    from pathgen.tissue import tissue_mask

    slide = open_slide(slide_path)
    norm = _normalizer(checkpoint, device)
    cfg = _engine_config(tile_size, overlap, batch_size, str(norm.device))
    tissue = tissue_mask(slide) if skip_background else None
    report = run_slide(slide, norm, output, out_channels=3, out_dtype=np.uint8, level=level, mpp=mpp, cfg=cfg,
                       tissue=tissue, overwrite=overwrite, quality=quality, compression=compression,
                       progress_desc="SAASN normalising", description="pathgen SAASN stain normalisation")
    save_run_config(output, {"method": "saasn", "checkpoint": norm.checkpoint, "slide": str(slide_path),
                             "tile_size": tile_size, "overlap": overlap, "batch_size": batch_size, "level": level,
                             "mpp": mpp, "skip_background": skip_background, "device": str(norm.device),
                             "windows": report.windows, "processed": report.processed,
                             "skipped": report.skipped})
    return report


def default_model_path() -> Path:
    """The SAASN model shipped with the repository (``sample_data/models/saasn_small``)."""
    return Path(__file__).resolve().parents[3] / "sample_data" / "models" / "saasn_small"
