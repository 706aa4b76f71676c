"""Unpaired training data for SAASN: K source sites pooled into X, one target site Y (METHODS.md §2.1, §2.5).

A *site* is a folder of tiles (PNG/JPEG/TIFF; a dataset written by ``pathgen data synth`` is accepted through its
``images/`` subfolder) or one slide / large image, from which square crops are sampled where the tissue mask
covers at least ``tissue_fraction`` of the crop. Losses never see site labels: X is the pool of all source sites.
Sampling across sites is either ``"pooled"`` (a site is drawn in proportion to its size, i.e. uniform over all
tiles) or ``"sites"`` (each site equally often, whatever its size: the balance the text leaves open).

All randomness comes from a ``numpy.random.Generator`` passed in by the caller, so a run is reproducible and
resumable from the generator's state.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pathgen.errors import PathgenError
from pathgen.io.image import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
BALANCES = ("pooled", "sites")


def to_tensor(batch: np.ndarray, device=None) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 → ``(N, 3, H, W)`` float32 in [-1, 1]."""
    arr = np.asarray(batch)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise PathgenError(f"expected (N, H, W, 3) uint8 images, got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # torch wants writable memory; read-only views (engine windows) are copied
        arr = arr.copy()
    t = torch.from_numpy(arr).to(device)
    return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in [-1, 1] → ``(N, H, W, 3)`` uint8 (rounded, clipped)."""
    t = ((images.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return t.permute(0, 2, 3, 1).cpu().numpy()


def augment_dihedral(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random one of the 8 flips/rotations of a square ``(S, S, 3)`` tile (tissue has no orientation)."""
    k = int(rng.integers(8))
    out = np.rot90(tile, k % 4)
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


class TileFolder:
    """A site given as a folder of tiles; crops of ``size`` are cut at random positions.

    Parameters
    ----------
    folder : path
        Holds the tiles, or an ``images/`` subfolder holding them.
    size : int
        Crop side in pixels; every tile must be at least this large.
    cache_bytes : int
        Decoded tiles are kept in memory up to this many bytes.
    """

    def __init__(self, folder: str | os.PathLike, size: int, cache_bytes: int = 1 << 30):
        root = Path(folder)
        if not root.is_dir():
            raise PathgenError("no such folder", root)
        if (root / "images").is_dir():
            root = root / "images"
        self.files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise PathgenError("folder holds no PNG/JPEG/TIFF tiles", root)
        self.name = str(folder)
        self.size = int(size)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, np.ndarray] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.files)

    def tile(self, index: int) -> np.ndarray:
        """Tile ``index`` as ``(H, W, 3)`` uint8."""
        if index in self._cache:
            return self._cache[index]
        arr = read_image(self.files[index])
        if min(arr.shape[:2]) < self.size:
            raise PathgenError(f"tile {arr.shape[1]}x{arr.shape[0]} is smaller than the crop size {self.size}",
                               self.files[index])
        if self._cached + arr.nbytes <= self.cache_bytes:
            self._cache[index] = arr
            self._cached += arr.nbytes
        return arr

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One random ``(size, size, 3)`` uint8 crop of a random tile."""
        arr = self.tile(int(rng.integers(len(self.files))))
        h, w = arr.shape[:2]
        y = int(rng.integers(h - self.size + 1))
        x = int(rng.integers(w - self.size + 1))
        return arr[y:y + self.size, x:x + self.size]


class SlideSite:
    """A site given as a slide (or a large image): random crops where tissue covers enough of the crop.

    Parameters
    ----------
    path : path
        Anything :func:`pathgen.io.slide.open_slide` opens.
    size : int
        Crop side in output pixels.
    mpp : float, optional
        Read crops at this resolution (µm/px); default level 0.
    tissue_fraction : float
        Minimum fraction of a candidate crop covered by the tissue mask.
    """

    def __init__(self, path: str | os.PathLike, size: int, mpp: float | None = None, tissue_fraction: float = 0.5):
        from pathgen.io.slide import open_slide
        from pathgen.engine.tissue import tissue_mask

        self.name = str(path)
        self.slide = open_slide(path)
        self.size = int(size)
        self.mpp = mpp
        if mpp is not None:
            base = self.slide.require_mpp()[0]
            self.extent = size * mpp / base  # level-0 pixels per crop side
        else:
            self.extent = float(size)
        w0, h0 = self.slide.dimensions
        if self.extent > min(w0, h0):
            raise PathgenError(f"slide {w0}x{h0} is smaller than one {size}-px crop", path)
        mask = tissue_mask(self.slide)
        self.positions = _tissue_positions(mask.mask, mask.downsample, (w0, h0), self.extent, tissue_fraction)
        if len(self.positions) == 0:
            raise PathgenError(f"no {size}-px crop has {tissue_fraction:.0%} tissue", path)
        self.stride = self.extent / 2

    def __len__(self) -> int:
        # candidate positions are half a crop apart: four of them per crop-sized area of tissue
        return max(1, len(self.positions) // 4)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One random ``(size, size, 3)`` uint8 crop from tissue."""
        x, y = self.positions[int(rng.integers(len(self.positions)))]
        w0, h0 = self.slide.dimensions
        jx, jy = rng.uniform(-0.5, 0.5, 2) * self.stride
        x = int(round(min(max(x + jx, 0), w0 - self.extent)))
        y = int(round(min(max(y + jy, 0), h0 - self.extent)))
        if self.mpp is None:
            return self.slide.read_region((x, y), 0, (self.size, self.size))
        return self.slide.read_region_mpp((x, y), self.mpp, (self.size, self.size))


def _tissue_positions(mask: np.ndarray, downsample: tuple[float, float], dims: tuple[int, int], extent: float,
                      fraction: float) -> np.ndarray:
    """Level-0 top-left corners, on a grid of half-crop stride, of crops with enough tissue; ``(n, 2)`` float."""
    w0, h0 = dims
    step = extent / 2
    xs = np.arange(0, w0 - extent + 1, step)
    ys = np.arange(0, h0 - extent + 1, step)
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    dx, dy = downsample
    mh, mw = mask.shape
    out = []
    for y in ys:
        i0, i1 = int(np.floor(y / dy)), min(int(np.ceil((y + extent) / dy)), mh)
        for x in xs:
            j0, j1 = int(np.floor(x / dx)), min(int(np.ceil((x + extent) / dx)), mw)
            area = max((i1 - i0) * (j1 - j0), 1)
            covered = integral[i1, j1] - integral[i0, j1] - integral[i1, j0] + integral[i0, j0]
            if covered / area >= fraction:
                out.append((x, y))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def open_site(path: str | os.PathLike, size: int, mpp: float | None = None, tissue_fraction: float = 0.5):
    """A folder → :class:`TileFolder`; a file → :class:`SlideSite`."""
    p = Path(path)
    if p.is_dir():
        return TileFolder(p, size)
    if not p.exists():
        raise PathgenError("no such file or folder", p)
    return SlideSite(p, size, mpp=mpp, tissue_fraction=tissue_fraction)


@dataclass
class DataConfig:
    """How training crops are drawn (saved with the run).

    Attributes
    ----------
    sources : list of str
        One folder or slide per source site (pooled into X).
    targets : list of str
        The target site (several paths are pooled into one Y).
    balance : {"pooled", "sites"}
        Draw source sites in proportion to their size, or equally often.
    augment : bool
        Random flips and 90° rotations.
    mpp : float, optional
        Resolution at which slides are read (µm/px); default level 0. Tile folders are used as they are.
    tissue_fraction : float
        Minimum tissue cover of a crop sampled from a slide.
    """

    sources: Sequence[str] = ()
    targets: Sequence[str] = ()
    balance: str = "pooled"
    augment: bool = True
    mpp: float | None = None
    tissue_fraction: float = 0.5

    def __post_init__(self):
        if self.balance not in BALANCES:
            raise PathgenError(f"unknown balance {self.balance!r} (choose {', '.join(BALANCES)})")
        self.sources = [str(s) for s in self.sources]
        self.targets = [str(t) for t in self.targets]
        if not self.sources:
            raise PathgenError("no source site given")
        if not self.targets:
            raise PathgenError("no target site given")


class UnpairedData:
    """Source sites pooled into X and the target site Y, sampled independently (unpaired).

    Parameters
    ----------
    cfg : DataConfig
    size : int
        Crop side in pixels.
    """

    def __init__(self, cfg: DataConfig, size: int):
        self.cfg = cfg
        self.size = int(size)
        self.sources = [open_site(p, size, cfg.mpp, cfg.tissue_fraction) for p in cfg.sources]
        self.targets = [open_site(p, size, cfg.mpp, cfg.tissue_fraction) for p in cfg.targets]

    @property
    def source_sizes(self) -> list[int]:
        return [len(s) for s in self.sources]

    @property
    def target_size(self) -> int:
        return sum(len(t) for t in self.targets)

    def default_steps_per_epoch(self, batch_size: int) -> int:
        """Steps to see as many crops as the larger domain has tiles (an "epoch" of unpaired data)."""
        return max(1, math.ceil(max(sum(self.source_sizes), self.target_size) / batch_size))

    def _draw(self, sites, weights, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(weights, dtype=np.float64)
        p = p / p.sum()
        which = rng.choice(len(sites), size=n, p=p)
        tiles = []
        for k in which:
            tile = sites[int(k)].sample(rng)
            tiles.append(augment_dihedral(tile, rng) if self.cfg.augment else tile)
        return np.stack(tiles), which.astype(np.int64)

    def sample_x(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` source crops ``(n, S, S, 3)`` uint8 and the site index of each (for reports only)."""
        weights = [1.0] * len(self.sources) if self.cfg.balance == "sites" else self.source_sizes
        return self._draw(self.sources, weights, n, rng)

    def sample_y(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` target crops ``(n, S, S, 3)`` uint8."""
        return self._draw(self.targets, [len(t) for t in self.targets], n, rng)[0]
