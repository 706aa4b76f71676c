"""SAASN inference: the X→Y generator over tiles, blended by the tile engine (METHODS.md §2.6).

The generator runs in eval mode (BatchNorm running statistics, spectral norm baked into the weights), so its
weights and statistics are the same for every tile and the whole slide gets one stain. Windows overlap by
``overlap`` pixels on each side and are blended with the engine's cosine partition of unity, which removes the
seams of the authors' paste-last-wins stitching.

Background. The generator renders glass in the target domain's background tint, not white. Windows holding
only glass — at most ``glass_fraction`` (0.2 %) of their pixels have a channel darker than ``glass_level``, i.e.
optical density above about 0.15, which tolerates dust specks — are not run through the generator: they are filled with the generator's rendering of a flat patch of their median
colour (computed once per colour and cached). So glass has one colour across the slide, whether it lies in a
skipped window or beside tissue in a processed one. (The engine's own skipping fills skipped windows with a
single grey level, which would leave lighter rectangles in the background.)

Each window is reflect-padded to a multiple of ``2**g_depth`` before the generator and cropped after it. The
default window, 448 + 2·32 = 512 px, is already a multiple of 128.

Two modes (``mode``; the model's ``config.json`` ``inference`` entry gives the default, else ``"generator"``):
``"generator"`` paints every window with the generator, as above; ``"stain-map"`` runs the generator only on tissue
tiles sampled across the slide, fits one linear map of optical density to what it made of them, and applies that
map to every pixel (:mod:`pathgen.saasn.stainmap`: no structure can be invented, one stain for the whole slide).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pathgen.errors import PathgenError
from pathgen.saasn.checkpoint import load_generator
from pathgen.saasn.data import to_tensor, to_uint8
from pathgen.saasn.stainmap import MODES, StainMap, fit_stain_map

DEFAULT_TILE = 448
DEFAULT_OVERLAP = 32
#: A pixel with any channel below this level is tissue (optical density above about 0.15).
GLASS_LEVEL = 220
#: A window with at most this share of tissue pixels counts as glass (dust specks are not tissue).
GLASS_FRACTION = 0.002


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
    skip_glass : bool
        Fill glass-only windows with the generator's rendering of glass instead of running it (module
        docstring).
    glass_level : int
        A pixel is tissue if any channel is below this value.
    glass_fraction : float
        A window is glass if at most this fraction of its pixels is tissue.
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", direction: str = "x2y",
                 max_batch: int = 8, skip_glass: bool = False, glass_level: int = GLASS_LEVEL,
                 glass_fraction: float = GLASS_FRACTION):
        from pathgen.engine import resolve_device

        self.device = torch.device(resolve_device(device))
        self.checkpoint = str(checkpoint)
        self.direction = direction
        self.generator, self.info = load_generator(checkpoint, direction, self.device)
        self.multiple = self.generator.config.multiple
        self.max_batch = max(1, int(max_batch))
        self.skip_glass = bool(skip_glass)
        self.glass_level = int(glass_level)
        self.glass_fraction = float(glass_fraction)
        self._glass_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()
        self.windows_run = 0
        self.windows_glass = 0

    def __getstate__(self):
        # What a dask worker process receives: the checkpoint's path, not the network (loaded there on first use)
        state = dict(self.__dict__)
        state.update(generator=None, _lock=None, _glass_cache={})
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _network(self):
        with self._lock:
            if self.generator is None:
                self.generator, _ = load_generator(self.checkpoint, self.direction, self.device)
            return self.generator

    def inference_defaults(self) -> tuple[str, float]:
        """``(mode, strength)`` stored with the model (``config.json`` ``inference``), else ``("generator", 1)``."""
        entry = self.info.get("inference") or {}
        return str(entry.get("mode", "generator")), float(entry.get("strength", 1.0))

    def resolve_mode(self, mode: str | None, strength: float | None) -> tuple[str, float]:
        """The mode and strength to use: the given ones, else the model's stored defaults (checked)."""
        stored_mode, stored_strength = self.inference_defaults()
        mode = stored_mode if mode is None else mode
        if mode not in MODES:
            raise PathgenError(f"unknown SAASN mode {mode!r} (choose {', '.join(MODES)})")
        strength = stored_strength if strength is None else float(strength)
        if not 0.0 <= strength <= 1.0:
            raise PathgenError(f"stain-map strength must be in [0, 1], got {strength}")
        return mode, strength

    def fit_stain_map(self, tiles, strength: float = 1.0, seed: int = 0) -> StainMap:
        """Run the generator on ``tiles`` (``(H, W, 3)`` uint8 each) and fit one stain map to its outputs
        (:func:`pathgen.saasn.stainmap.fit_stain_map`)."""
        tiles = [np.asarray(t) for t in tiles]
        outputs = [self(t) for t in tiles]
        return StainMap(fit_stain_map(tiles, outputs, seed=seed), strength=strength, fit_tiles=len(tiles))

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
        y = self._network()(x)
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
        if self.skip_glass:
            glass = (arr.min(axis=3) < self.glass_level).mean(axis=(1, 2)) <= self.glass_fraction
        else:
            glass = np.zeros(arr.shape[0], bool)
        out = np.empty_like(arr)
        todo = np.flatnonzero(~glass)
        with torch.inference_mode():
            for start in range(0, len(todo), self.max_batch):
                idx = todo[start:start + self.max_batch]
                out[idx] = to_uint8(self._forward(to_tensor(arr[idx], self.device)))
        for i in np.flatnonzero(glass):
            out[i] = self.glass_colour(np.median(arr[i].reshape(-1, 3), axis=0))
        with self._lock:
            self.windows_run += len(todo)
            self.windows_glass += int(glass.sum())
        return out[0] if single else out

    def glass_colour(self, rgb) -> np.ndarray:
        """The generator's output, ``(3,)`` uint8, at the centre of a flat patch of colour ``rgb`` (cached by
        colour rounded to multiples of 4)."""
        key = tuple(int(v) for v in np.clip(np.round(np.asarray(rgb, np.float64) / 4) * 4, 0, 255))
        with self._lock:
            cached = self._glass_cache.get(key)
        if cached is None:
            side = self.multiple
            patch = np.broadcast_to(np.asarray(key, np.uint8), (1, side, side, 3))
            with torch.inference_mode():
                cached = to_uint8(self._forward(to_tensor(patch, self.device)))[0, side // 2, side // 2]
            with self._lock:
                self._glass_cache[key] = cached
        return cached


def _normalizer(checkpoint, device: str, skip_glass: bool = False) -> SaasnNormalizer:
    if isinstance(checkpoint, SaasnNormalizer):
        return checkpoint
    return SaasnNormalizer(checkpoint, device=device, skip_glass=skip_glass)


def generator_halo(tile_size: int, multiple: int, min_halo: int = DEFAULT_OVERLAP) -> int:
    """The halo SAASN's generator needs around a ``tile_size`` core: ``min_halo`` px of blended context, grown (up
    to twice that) when that makes the window (core + 2 halo) a multiple of the generator's ``multiple``, so the
    generator needs no padding inside the window."""
    for halo in range(min_halo, 2 * min_halo + 1):
        if (tile_size + 2 * halo) % multiple == 0 and 2 * halo <= tile_size:
            return halo
    return min(min_halo, tile_size // 2)


def normalize_image_saasn(image: np.ndarray, checkpoint, device: str = "auto", tile_size: int = DEFAULT_TILE,
                          overlap: int = DEFAULT_OVERLAP, batch_size: int = 4, mode: str | None = None,
                          strength: float | None = None, seed: int = 0) -> np.ndarray:
    """Normalise an in-memory RGB image with a SAASN generator, tiled and blended like a slide.

    In ``"stain-map"`` mode the stain map is fitted on the whole image's generator output, then applied to the
    image (module docstring).

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
    checkpoint : path or SaasnNormalizer
    device : str
    tile_size, overlap : int
        Window core and halo in pixels (window side = ``tile_size + 2·overlap``).
    batch_size : int
        Windows per call.
    mode : {"generator", "stain-map"}, optional
        Default: the model's stored mode.
    strength : float, optional
        Stain-map strength in [0, 1] (default: the model's stored one).
    seed : int
        Seed of the stain-map fit's pixel subsampling.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
    """
    from pathgen.engine import EngineConfig, process_array

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise PathgenError(f"expected an (H, W, 3) uint8 image, got {arr.dtype} {arr.shape}")
    norm = _normalizer(checkpoint, device)
    mode, strength = norm.resolve_mode(mode, strength)
    # One worker thread: torch already uses every core inside a forward pass.
    cfg = EngineConfig(tile_size=int(tile_size), overlap=int(overlap), batch_size=int(batch_size), blend="cosine",
                       threads=1, device=str(norm.device))
    out = process_array(arr, norm, out_channels=3, out_dtype=np.uint8, cfg=cfg)
    if mode == "generator":
        return out
    return StainMap(fit_stain_map([arr], [out], seed=seed), strength=strength, fit_tiles=1)(arr)


def normalize_slide_saasn(slide_path: str | os.PathLike, output: str | os.PathLike, checkpoint, engine=None, *,
                          level: int | None = 0, mpp: float | None = None, skip_background: bool = True,
                          overwrite: bool = False, quality: int = 90, compression: str | None = None,
                          mode: str | None = None, strength: float | None = None, fit_config=None,
                          resume: bool = True):
    """Normalise a whole slide with a SAASN generator into a pyramidal TIFF (or OME-Zarr for ``*.zarr``).

    ``"generator"`` mode paints every window with the generator, windows blended over a halo of at least 32 px
    (:func:`generator_halo`); ``"stain-map"`` mode fits one stain map on tissue tiles sampled across the slide and
    streams the slide through it, without halo (module docstring). The run goes through
    :func:`pathgen.engine.job.run_slide_job` (resumable).

    Parameters
    ----------
    slide_path : path
        Anything :func:`pathgen.io.slide.open_slide` opens.
    output : path
        ``.tif``/``.tiff`` (pyramidal, JPEG tiles by default) or ``.zarr``; written atomically, never over the
        input; an existing output is refused unless ``overwrite``.
    checkpoint : path or SaasnNormalizer
    engine : pathgen.engine.EngineConfig, optional
        Tiling, batching, threads, workers and device (default: 512 px tiles, batches of 4, one thread).
    level : int, optional
        Pyramid level processed (0 = full resolution); ignored when ``mpp`` is given.
    mpp : float, optional
        Process the slide resampled to this resolution (µm/px), e.g. the training data's.
    skip_background : bool
        Do not run the generator on glass-only windows; fill them with its rendering of glass (module
        docstring). With a :class:`SaasnNormalizer` passed as ``checkpoint``, its own ``skip_glass`` applies.
    quality : int
        JPEG quality of the output tiles.
    compression : str, optional
        Override the output compression ("jpeg", "zlib", ...).
    mode : {"generator", "stain-map"}, optional
        Default: the model's stored mode.
    strength : float, optional
        Stain-map strength in [0, 1] (default: the model's stored one).
    fit_config : pathgen.stain.slide.SlideFitConfig, optional
        Which tissue tiles the stain map is fitted on (default: 64 tiles of 256 px spread over the slide).
    resume : bool
        Continue an interrupted run of the same job (default) or start over.

    Returns
    -------
    pathgen.engine.job.JobReport
    """
    from pathgen.engine import EngineConfig
    from pathgen.engine.job import TileMethod, run_slide_job
    from pathgen.stain.slide import SlideFitConfig, sample_slide_tiles

    fit_config = fit_config or SlideFitConfig()
    counts = {}

    def prepare(ctx) -> TileMethod:
        norm = _normalizer(checkpoint, ctx.engine.device, skip_glass=skip_background)
        run_mode, run_strength = norm.resolve_mode(mode, strength)
        config = {"checkpoint": norm.checkpoint, "mode": run_mode, "skip_background": norm.skip_glass}
        counts.update(norm=norm, run=norm.windows_run, glass=norm.windows_glass)
        if run_mode == "generator":
            halo = generator_halo(ctx.engine.tile_size, norm.multiple)
            return TileMethod(name="saasn", fn=norm, halo=halo, skip_background=False, default_threads=1,
                              compression=compression, config=config,
                              description="pathgen SAASN stain normalisation")
        slide = ctx.slide
        if mpp is not None:  # fit on the pyramid level nearest the asked resolution, not finer than it
            fit_level = slide.best_level_for_downsample(mpp / slide.mpp[0]) if slide.mpp else 0
        else:
            fit_level = level or 0
        tiles = sample_slide_tiles(slide, ctx.tissue, fit_level, fit_config)
        if not tiles:
            raise PathgenError("no tissue tile to fit the SAASN stain map on", slide_path)
        try:
            stain_map = norm.fit_stain_map(tiles, run_strength, seed=fit_config.seed)
        except PathgenError as err:
            raise PathgenError(err.problem, err.path or slide_path) from err
        config.update(strength=run_strength, fit_level=fit_level, fit=fit_config, stain_map=stain_map.to_dict())
        counts.update(run=norm.windows_run, glass=norm.windows_glass)  # count the slide pass only, not the fit
        # a pointwise map needs no halo; glass keeps its colour through the map, nothing is skipped
        return TileMethod(name="saasn", fn=stain_map, halo=0, skip_background=False, default_threads=1,
                          compression=compression, config=config,
                          description="pathgen SAASN stain normalisation")

    report = run_slide_job(slide_path, output, prepare, engine or EngineConfig(overlap=None, batch_size=4),
                           level=None if mpp is not None else level, mpp=mpp, overwrite=overwrite, resume=resume,
                           quality=quality, seed=fit_config.seed, progress_desc="SAASN normalising")
    norm = counts["norm"]
    report.extra["generator_windows"] = norm.windows_run - counts["run"]
    report.extra["glass_windows"] = norm.windows_glass - counts["glass"]
    return report


def default_model_path() -> Path:
    """The shipped SAASN model (``saasn_small`` under ``$PATHGEN_MODELS`` or the repository's models)."""
    from pathgen.io.models import shipped_model

    return shipped_model("saasn")
