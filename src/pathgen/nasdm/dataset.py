"""Training data for NASDM and MaskGen: annotated tiles held in memory, cut into random tissue crops.

Reads the tile-folder layout (``images/NAME.png``, ``instances/NAME.tif``, ``classes/NAME.png``, paired by
name — not by sorted position as the reference code does). Crops follow NASDM's patch rules (METHODS.md §3.6):
square crops of the model's size, at least ``min_tissue`` (50 %) tissue, random flips — horizontal as in the
reference code, plus vertical flips and 90° rotations, which tissue sections do not distinguish; images scaled
to [−1, 1]; the conditioning tensor is computed *after* cropping (an edge is never invented at the crop border).

Crop origins are enumerated once on a grid (``stride`` pixels) and filtered by tissue fraction, then sampled
uniformly; every draw comes from the generator passed in, so batches are a pure function of the seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pathgen.errors import PathgenError
from pathgen.nasdm.conditioning import NUM_CLASSES, conditioning_batch


def tissue_mask(image: np.ndarray, od_threshold: float = 0.15) -> np.ndarray:
    """(H, W) bool: pixels whose largest optical density ``−log10((I + 1)/256)`` over RGB exceeds the threshold
    (glass is bright in every channel)."""
    od = -np.log10((image.astype(np.float32) + 1.0) / 256.0)
    return od.max(axis=-1) > od_threshold


@dataclass
class TileArrays:
    """One annotated tile in memory: image (H, W, 3) uint8, instances (H, W) int32, classes (H, W) uint8."""

    name: str
    image: np.ndarray
    instances: np.ndarray
    classes: np.ndarray


def load_tiles(folder: str | os.PathLike, limit: int | None = None) -> list[TileArrays]:
    """Read every tile of a tile-folder dataset (needs ``classes/``: NASDM conditions on nucleus types)."""
    from pathgen.segment.data import TileFolderDataset

    ds = TileFolderDataset(folder)
    if not ds.has_classes:
        raise PathgenError("dataset has no classes/ maps for every tile (NASDM and MaskGen need nucleus types)",
                           folder)
    n = len(ds) if limit is None else min(len(ds), int(limit))
    tiles = []
    for i in range(n):
        s = ds[i]
        cls = s.classes
        if cls.max(initial=0) >= NUM_CLASSES:
            raise PathgenError(f"class ids must be 0..{NUM_CLASSES - 1}, found {int(cls.max())}",
                               Path(folder) / "classes" / f"{s.name}.png")
        tiles.append(TileArrays(s.name, s.image, s.instances, cls))
    return tiles


class CropSampler:
    """Random square crops of tiles with enough tissue, with flips/rotations.

    Parameters
    ----------
    tiles : list of TileArrays
    size : int
        Crop side in pixels.
    min_tissue : float
        Minimum tissue fraction of a crop (NASDM: 0.5).
    stride : int
        Grid spacing of candidate crop origins.
    augment : bool
        Random flips and 90° rotations.
    """

    def __init__(self, tiles: list[TileArrays], size: int, min_tissue: float = 0.5, stride: int = 8,
                 augment: bool = True):
        if not tiles:
            raise PathgenError("no tiles to train on")
        self.tiles, self.size, self.augment = tiles, int(size), augment
        origins = []
        for k, t in enumerate(tiles):
            h, w = t.instances.shape
            if h < size or w < size:
                continue
            frac = _window_means(tissue_mask(t.image).astype(np.float64), size)
            ys = list(range(0, h - size + 1, stride)) + ([h - size] if (h - size) % stride else [])
            xs = list(range(0, w - size + 1, stride)) + ([w - size] if (w - size) % stride else [])
            for y in ys:
                for x in xs:
                    if frac[y, x] >= min_tissue:
                        origins.append((k, y, x))
        if not origins:
            raise PathgenError(f"no {size}x{size} crop of the dataset has {min_tissue:.0%} tissue")
        self.origins = np.asarray(origins, np.int64)

    def __len__(self) -> int:
        return len(self.origins)

    def crops(self, rng: np.random.Generator, n: int) -> list[TileArrays]:
        """``n`` random crops (image, instances, classes), augmented."""
        out = []
        s = self.size
        for idx in rng.integers(0, len(self.origins), n):
            k, y, x = (int(v) for v in self.origins[idx])
            t = self.tiles[k]
            img, inst, cls = (a[y:y + s, x:x + s] for a in (t.image, t.instances, t.classes))
            if self.augment:
                rot, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
                img, inst, cls = (np.rot90(a, rot) for a in (img, inst, cls))
                if flip:
                    img, inst, cls = (a[:, ::-1] for a in (img, inst, cls))
            out.append(TileArrays(t.name, np.ascontiguousarray(img), np.ascontiguousarray(inst),
                                  np.ascontiguousarray(cls)))
        return out

    def image_batch(self, rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
        """NASDM batch: ``image`` (n, 3, s, s) float32 in [−1, 1] and ``cond`` (n, 8, s, s) float32."""
        crops = self.crops(rng, n)
        images = np.stack([c.image for c in crops]).astype(np.float32) / 127.5 - 1.0
        cond = conditioning_batch([(c.instances, c.classes) for c in crops])
        return {"image": torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), "cond": torch.from_numpy(cond)}


def _window_means(a: np.ndarray, size: int) -> np.ndarray:
    """Mean of ``a`` over every ``size × size`` window, indexed by the window's top-left corner."""
    c = np.pad(np.cumsum(np.cumsum(a, 0), 1), ((1, 0), (1, 0)))
    s = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    return s / float(size * size)
