"""Nucleus-segmentation datasets and augmentations for HoVer-Net training.

Layouts read:

* **tile folders** (the sample generator's layout): ``images/NAME.png`` (RGB), ``instances/NAME.tif`` (integer
  labels, 0 = background) and optionally ``classes/NAME.png`` (type per pixel, 0 = background), paired by name;
* the formats of :mod:`pathgen.io.labels` when that module is installed (HoVer-Net ``.mat`` folders,
  PanNuke, CoNIC), see :func:`open_nuclei_dataset`.

Augmentations move image, instances and classes together (flips, 90-degree rotations, crops) and jitter only
the colours; training targets are computed *after* augmentation from the moved instance map, so the HV maps
always agree with the augmented geometry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pathgen.errors import PathgenError

FORMATS = ("auto", "tiles", "hovernet-mat", "pannuke", "conic")


@dataclass
class NucleiSample:
    """One annotated tile.

    Attributes
    ----------
    name : str
    image : (H, W, 3) uint8 RGB
    instances : (H, W) int32 labels, 0 = background
    classes : (H, W) uint8 type per pixel (0 = background), or None when the dataset has no types

    Datasets (sequences of samples) also carry ``has_classes``, ``class_names`` (by id, 0 = background; empty
    when unknown) and ``mpp`` (None when unknown).
    """

    name: str
    image: np.ndarray
    instances: np.ndarray
    classes: np.ndarray | None = None


def _check_sample(s: NucleiSample, where) -> NucleiSample:
    img = np.asarray(s.image)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[-1] != 3:
        raise PathgenError(f"image must be RGB (H, W, 3), got shape {img.shape}", where)
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.max() <= 1.0:
            img = (img * 255).round()
        img = np.clip(img, 0, 255).astype(np.uint8)
    inst = np.asarray(s.instances)
    if inst.ndim == 3 and inst.shape[-1] == 1:
        inst = inst[..., 0]
    if inst.shape != img.shape[:2]:
        raise PathgenError(f"instance map {inst.shape} does not match image {img.shape[:2]}", where)
    if not np.issubdtype(inst.dtype, np.integer) and not np.all(np.mod(inst, 1) == 0):
        raise PathgenError("instance map holds non-integer labels", where)
    inst = inst.astype(np.int32)
    cls = s.classes
    if cls is not None:
        cls = np.asarray(cls)
        if cls.ndim == 3:
            cls = cls[..., 0]
        if cls.shape != inst.shape:
            raise PathgenError(f"class map {cls.shape} does not match image {img.shape[:2]}", where)
        cls = cls.astype(np.uint8)
    return NucleiSample(s.name, np.ascontiguousarray(img), inst, cls)


class TileFolderDataset(Sequence[NucleiSample]):
    """Tiles in the sample generator's layout, read on access.

    Parameters
    ----------
    root : path
        Folder with ``images/`` and ``instances/`` (and optionally ``classes/``).
    cache_bytes : int
        Samples read are kept in memory up to this many bytes (training visits each tile many times).
    """

    def __init__(self, root: str | os.PathLike, cache_bytes: int = 1 << 30):
        self.root = Path(root)
        self._cache: dict[int, NucleiSample] = {}
        self._cache_left = int(cache_bytes)
        img_dir, inst_dir, cls_dir = self.root / "images", self.root / "instances", self.root / "classes"
        if not img_dir.is_dir() or not inst_dir.is_dir():
            raise PathgenError("not a tile dataset: needs images/ and instances/ folders", self.root)
        names = sorted(p.stem for p in img_dir.glob("*.png"))
        if not names:
            raise PathgenError("no images/*.png in the dataset", self.root)
        inst_files = {p.stem: p for p in inst_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")}
        missing = [n for n in names if n not in inst_files]
        if missing:
            raise PathgenError(f"{len(missing)} images have no instance map (first: instances/{missing[0]}.tif)",
                               self.root)
        self.names = names
        self._inst = inst_files
        self._cls = ({p.stem: p for p in cls_dir.glob("*.png")} if cls_dir.is_dir() else {})
        self.has_classes = bool(self._cls) and all(n in self._cls for n in names)
        self.class_names, self.mpp = _dataset_description(self.root)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self.names))[i]  # normalises negative indices, raises IndexError
        if i in self._cache:
            return self._cache[i]
        sample = self._read(i)
        size = sum(a.nbytes for a in (sample.image, sample.instances, sample.classes) if a is not None)
        if size <= self._cache_left:
            self._cache[i] = sample
            self._cache_left -= size
        return sample

    def _read(self, i: int) -> NucleiSample:
        from pathgen.io.image import read_image, read_labels

        name = self.names[i]
        img_path = self.root / "images" / f"{name}.png"
        image = read_image(img_path)
        instances = read_labels(self._inst[name])
        classes = read_labels(self._cls[name]) if self.has_classes else None
        return _check_sample(NucleiSample(name, image, instances, classes), img_path)


def _dataset_description(root: Path) -> tuple[tuple[str, ...], float | None]:
    """Class names (by id, 0 = background) and mpp from the generator's ``dataset.json``, when present."""
    meta = root / "dataset.json"
    if not meta.is_file():
        return (), None
    import json

    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise PathgenError(f"unreadable dataset description ({exc})", meta) from exc
    classes = data.get("classes") or {}
    names: tuple[str, ...] = ()
    if isinstance(classes, dict) and classes:
        ids = sorted(int(k) for k in classes)
        if ids == list(range(len(ids))):
            names = tuple(str(classes[str(i)]) for i in ids)
    elif isinstance(classes, list):
        names = tuple(str(c) for c in classes)
    mpp = data.get("mpp")
    return names, (float(mpp) if isinstance(mpp, (int, float)) and mpp > 0 else None)


class ListDataset(Sequence[NucleiSample]):
    """Samples held in memory (e.g. from a format reader or a generator)."""

    def __init__(self, samples: Sequence[NucleiSample], has_classes: bool | None = None,
                 class_names: Sequence[str] = (), mpp: float | None = None):
        self.samples = [_check_sample(s, s.name) for s in samples]
        self.has_classes = (all(s.classes is not None for s in self.samples) if has_classes is None
                            else has_classes)
        self.class_names, self.mpp = tuple(class_names), mpp

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


class Subset(Sequence[NucleiSample]):
    """Items ``indices`` of another dataset."""

    def __init__(self, base: Sequence[NucleiSample], indices: Sequence[int]):
        self.base, self.indices = base, list(indices)
        self.has_classes = getattr(base, "has_classes", False)
        self.class_names = getattr(base, "class_names", ())
        self.mpp = getattr(base, "mpp", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


def _read_dataset(path: Path, fmt: str) -> ListDataset:
    """HoVer-Net .mat / PanNuke / CoNIC through :mod:`pathgen.io.labels` (held in memory)."""
    from pathgen.io.labels import read_nuclei_dataset
    from pathgen.nucleus_types import NUCLEUS_TYPES, PANNUKE_TYPES

    samples = [NucleiSample(str(item.name), item.image, item.instances, item.classes)
               for item in read_nuclei_dataset(path, fmt)]
    if not samples:
        raise PathgenError("dataset holds no samples", path)
    table = {"pannuke": PANNUKE_TYPES, "conic": NUCLEUS_TYPES}.get(fmt)
    return ListDataset(samples, class_names=tuple(t.name for t in table) if table else ())


def open_nuclei_dataset(path: str | os.PathLike, format: str = "auto") -> Sequence[NucleiSample]:
    """Open an annotated nucleus dataset.

    Parameters
    ----------
    path : path
        A tile folder (``images/``, ``instances/``, ``classes/``) or a dataset the metrics module reads.
    format : {"auto", "tiles", "hovernet-mat", "pannuke", "conic"}
        ``auto`` picks ``tiles`` when ``images/`` and ``instances/`` exist.

    Returns
    -------
    Sequence of :class:`NucleiSample` with a ``has_classes`` attribute.
    """
    p = Path(path)
    if format not in FORMATS:
        raise PathgenError(f"unknown dataset format {format!r} (choose from {', '.join(FORMATS)})")
    if not p.exists():
        raise PathgenError("no such dataset", p)
    if format == "tiles" or (format == "auto" and (p / "images").is_dir() and (p / "instances").is_dir()):
        return TileFolderDataset(p)
    if format == "auto":
        from pathgen.io.labels import detect_format

        detected = detect_format(p)
        if detected:
            return _read_dataset(p, detected)
        raise PathgenError("cannot tell the dataset format (expected images/ and instances/ folders; "
                           "give --format for HoVer-Net .mat, PanNuke or CoNIC data)", p)
    return _read_dataset(p, format)


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentations for training patches.

    Attributes
    ----------
    flips : bool
        Random horizontal and vertical flips.
    rotations : bool
        Random multiples of 90 degrees.
    brightness : float
        Added brightness drawn from +-``brightness`` x 255.
    contrast : float
        Contrast factor drawn from 1 +- ``contrast`` (around each image's mean).
    saturation : float
        Saturation (chroma) factor drawn from 1 +- ``saturation``.
    hue : float
        Hue rotation drawn from +-``hue`` of the full circle.
    stain_scale : float
        Haematoxylin and eosin amounts (Ruifrok-Johnston optical densities) each multiplied by a factor drawn
        from 1 +- ``stain_scale``, so a model cannot rely on absolute stain intensity.
    stain_shift : float
        Optical density drawn from +-``stain_shift`` added to each stain.
    blur : float
        With probability 1/2, a Gaussian blur of sigma drawn from 0..``blur`` pixels (focus, compression).
    counterstain_h : float
        Haematoxylin laid over the tissue as smooth sheets, up to ``counterstain_h`` times the tile's median
        nuclear haematoxylin (see :func:`vary_hematoxylin`): purple cytoplasm and dense stroma are not nuclei.
    nuclear_h : float
        Each nucleus's haematoxylin multiplied by a factor drawn from 1 +- ``nuclear_h`` (pale, vesicular nuclei).
    fibre_texture : float
        With this probability, the ground between nuclei (not the nuclei) is modulated by a random fibrous
        texture (see :func:`fibrous_ground`): wavy bundles with clear clefts and darker edges, like dermal
        collagen, which a model trained on smooth generated stroma otherwise reads as spindle nuclei.
    stain_log_range : float
        When > 0, the haematoxylin and eosin factors of the stain jitter are drawn log-uniformly from
        ``exp(±stain_log_range)`` instead of 1 +- ``stain_scale``: real slides are often stained two to three
        times heavier than the generator's tissue (very dark nuclei, deep red stroma).
    """

    flips: bool = True
    rotations: bool = True
    brightness: float = 0.06
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.04
    stain_scale: float = 0.0
    stain_shift: float = 0.0
    blur: float = 0.0
    counterstain_h: float = 0.0
    nuclear_h: float = 0.0
    stain_log_range: float = 0.0
    fibre_texture: float = 0.0


#: Named augmentation settings: ``standard`` (flips, rotations, mild colour jitter) and ``strong`` (adds stain
#: and blur jitter and widens the colour ranges; for training on generated tiles meant for real slides).
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "standard": AugmentConfig(),
    "strong": AugmentConfig(brightness=0.1, contrast=0.3, saturation=0.3, hue=0.06, stain_scale=0.5,
                            stain_shift=0.15, blur=1.5),
    "real": AugmentConfig(brightness=0.1, contrast=0.3, saturation=0.3, hue=0.06, stain_scale=0.5,
                          stain_shift=0.15, blur=1.5, counterstain_h=1.0, nuclear_h=0.4, stain_log_range=1.0),
    # "real" plus fibrous ground (dermis-like collagen); pair with denser generated ground (synth-tiles --ground-max)
    "real-stroma": AugmentConfig(brightness=0.1, contrast=0.3, saturation=0.3, hue=0.06, stain_scale=0.5,
                                 stain_shift=0.15, blur=1.5, counterstain_h=1.0, nuclear_h=0.4, stain_log_range=1.0,
                                 fibre_texture=0.5),
}


# Luma and chroma axes (YIQ): hue turns the chroma plane, saturation scales it.
_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = np.linalg.inv(_TO_YIQ)


def colour_matrix(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, float, float]:
    """Draw one colour jitter: a 3x3 RGB matrix (hue rotation and saturation scale in YIQ), a contrast factor
    and a brightness offset (fraction of full scale)."""
    angle = 2 * np.pi * rng.uniform(-cfg.hue, cfg.hue) if cfg.hue > 0 else 0.0
    sat = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) if cfg.saturation > 0 else 1.0
    c, s = np.cos(angle) * sat, np.sin(angle) * sat
    yiq = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast > 0 else 1.0
    brightness = rng.uniform(-cfg.brightness, cfg.brightness) if cfg.brightness > 0 else 0.0
    return _FROM_YIQ @ yiq @ _TO_YIQ, contrast, brightness


def jitter_colour(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Random hue, saturation, contrast and brightness change of an (H, W, 3) uint8 image (uint8 out).

    Hue and saturation act in the YIQ chroma plane, so the whole jitter is one affine map per image (cheap
    enough to run per patch on a CPU): ``out = (M @ rgb - mean) * contrast + mean + brightness``.
    """
    matrix, contrast, brightness = colour_matrix(rng, cfg)
    img = image.reshape(-1, 3).astype(np.float32) @ matrix.T.astype(np.float32)
    mean = img.mean()
    img = (img - mean) * contrast + mean + brightness * 255.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(image.shape)


def jitter_stains(image: np.ndarray, rng: np.random.Generator, scale: float, shift: float,
                  log_range: float = 0.0) -> np.ndarray:
    """Scale and shift the haematoxylin and eosin optical densities of an (H, W, 3) uint8 image (uint8 out).

    Colour deconvolution with the Ruifrok-Johnston matrix (``skimage.color.rgb_from_hed``); the third (DAB)
    component is left alone. Factors come from 1 +- ``scale``, or log-uniformly from ``exp(±log_range)`` when
    ``log_range > 0``.
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -np.log((image.reshape(-1, 3).astype(np.float32) + 1.0) / 256.0)
    conc = od @ hed_from_rgb.astype(np.float32)
    if log_range > 0:
        alpha = np.array([np.exp(rng.uniform(-log_range, log_range)), np.exp(rng.uniform(-log_range, log_range)),
                          1.0], np.float32)
    else:
        alpha = np.array([rng.uniform(1 - scale, 1 + scale), rng.uniform(1 - scale, 1 + scale), 1.0], np.float32)
    beta = np.array([rng.uniform(-shift, shift), rng.uniform(-shift, shift), 0.0], np.float32)
    # add only the change of the stain amounts, so unchanged amounts give the input back exactly
    od = np.maximum(od + (conc * (alpha - 1.0) + beta) @ rgb_from_hed.astype(np.float32), 0.0)
    out = 256.0 * np.exp(-od) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(image.shape)


def vary_hematoxylin(image: np.ndarray, instances: np.ndarray, rng: np.random.Generator, counterstain: float,
                     nuclear: float) -> np.ndarray:
    """Label-aware haematoxylin jitter of an (H, W, 3) uint8 image with its (H, W) instance map (uint8 out).

    With ``h`` the Ruifrok-Johnston haematoxylin density and ``h_n`` its median over nuclear pixels: each nucleus's
    ``h`` is scaled by a factor from 1 +- ``nuclear``, and a field ``a · h_n · s(x)`` is added everywhere, where
    ``s`` is a smooth random sheet pattern in [0, 1] (Gaussian-filtered noise, 6-20 px, random coverage; half of
    the time textured as a sheet of polygonal cells with paler borders, which also take up some eosin) and ``a`` is
    drawn from 0.25..1 times ``counterstain``. Generated tissue has pale cytoplasm and stroma; real epithelium and
    dense stroma take up haematoxylin too, so a model must find nuclei by their shape and relative darkness.
    """
    from scipy.ndimage import gaussian_filter
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    h = od.reshape(-1, 3) @ hed_from_rgb[:, 0].astype(np.float32)
    h = h.reshape(instances.shape)
    nuc = instances > 0
    if not nuc.any():
        return image
    h_n = float(np.median(h[nuc]))
    delta = np.zeros(instances.shape, np.float32)
    if nuclear > 0:
        factors = rng.uniform(1 - nuclear, 1 + nuclear, int(instances.max()) + 1).astype(np.float32)
        factors[0] = 1.0
        delta += h * (factors[instances] - 1.0)
    eosin = np.zeros(instances.shape, np.float32)
    if counterstain > 0:
        noise = gaussian_filter(rng.standard_normal(instances.shape).astype(np.float32), rng.uniform(6, 20))
        noise /= noise.std() + 1e-6
        sheet = np.clip((noise - rng.uniform(-1.0, 1.0)) * 1.5, 0.0, 1.0)
        if rng.random() < 0.5:
            # a sheet of cells (e.g. squamous epithelium): polygons with paler borders and cell-to-cell variation,
            # so a mesh of purple cytoplasm is not read as a mesh of nuclei
            sheet = sheet * _cell_sheet_texture(instances.shape, rng)
            eosin = rng.uniform(0.25, 1.0) * counterstain * max(h_n, 0.0) * sheet
        delta += rng.uniform(0.25, 1.0) * counterstain * max(h_n, 0.0) * sheet
    od = np.maximum(od + delta[..., None] * rgb_from_hed[0].astype(np.float32)
                    + eosin[..., None] * rgb_from_hed[1].astype(np.float32), 0.0)
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def fibrous_ground(image: np.ndarray, instances: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Modulate the optical density of the ground (pixels away from nuclei) of an (H, W, 3) uint8 image by a random
    fibrous texture; uint8 out, nuclei untouched.

    The texture is white noise smoothed along a random, slowly turning direction (4-16 px along, 1-3 px across),
    mapped to bundles (OD × up to 1.8), clefts (OD × down to 0.15) and darker bundle edges. Near nuclei (a 3 px
    smooth margin) the factor fades to 1, so nuclear outlines and labels stay exact.
    """
    from scipy.ndimage import distance_transform_edt, gaussian_filter, map_coordinates

    h, w = instances.shape
    along, across = rng.uniform(4, 16), rng.uniform(1, 3)
    # smooth anisotropically in a frame rotated by a random angle, with a gentle warp so bundles wave
    angle = rng.uniform(0, np.pi)
    pad = int(2 * max(h, w))
    noise = gaussian_filter(rng.standard_normal((pad, pad)).astype(np.float32), (across, along))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 12) * rng.uniform(20, 60)
    c, s_ = np.cos(angle), np.sin(angle)
    u = c * (yy - h / 2) - s_ * (xx - w / 2) + pad / 2 + warp
    v = s_ * (yy - h / 2) + c * (xx - w / 2) + pad / 2
    tex = map_coordinates(noise, [u, v], order=1, mode="wrap")
    tex /= tex.std() + 1e-6
    bundles = np.clip(0.5 + 0.5 * tex, 0.0, 1.0)
    edges = np.exp(-(tex / 0.35) ** 2)  # zero crossings of the texture: bundle borders
    clefts = np.clip(-tex - rng.uniform(0.2, 1.2), 0.0, 1.0)
    factor = (0.5 + 1.3 * bundles) * (1.0 + rng.uniform(0.0, 0.6) * edges) * (1.0 - 0.85 * clefts)
    near = distance_transform_edt(instances == 0) if (instances > 0).any() else np.full((h, w), 1e3)
    fade = np.clip((near - 1.0) / 3.0, 0.0, 1.0)
    factor = 1.0 + (factor - 1.0) * fade * rng.uniform(0.5, 1.0)
    od = -np.log((image.astype(np.float32) + 1.0) / 256.0) * factor[..., None].astype(np.float32)
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def _cell_sheet_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A (H, W) float32 texture in [0.3, 1.3] of Voronoi cells 16-48 px across, each with its own intensity, and
    paler borders between them."""
    from scipy.spatial import cKDTree

    h, w = shape
    cell = rng.uniform(16, 48)
    n = max(4, int(h * w / cell ** 2 * 1.3))
    seeds = rng.uniform([-cell, -cell], [h + cell, w + cell], (n, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    d, idx = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]), k=2)
    border = np.exp(-((d[:, 1] - d[:, 0]) / rng.uniform(1.0, 3.0)) ** 2)
    level = rng.uniform(0.7, 1.3, n)[idx[:, 0]]
    return np.clip(level * (1.0 - 0.7 * border), 0.3, 1.3).astype(np.float32).reshape(h, w)


def random_patch(sample: NucleiSample, size: int, rng: np.random.Generator,
                 augment: AugmentConfig | None = None) -> NucleiSample:
    """A random ``size`` x ``size`` crop of ``sample``, moved and colour-jittered by ``augment`` (None: crop only).

    Geometry changes apply to image, instances and classes alike.
    """
    h, w = sample.instances.shape
    if size > h or size > w:
        raise PathgenError(f"patch size {size} exceeds the tile size {w}x{h} (use a smaller --patch-size)",
                           sample.name)
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    arrays = [sample.image[y:y + size, x:x + size], sample.instances[y:y + size, x:x + size]]
    if sample.classes is not None:
        arrays.append(sample.classes[y:y + size, x:x + size])
    if augment is not None:
        if augment.flips:
            if rng.random() < 0.5:
                arrays = [a[:, ::-1] for a in arrays]
            if rng.random() < 0.5:
                arrays = [a[::-1] for a in arrays]
        if augment.rotations:
            k = int(rng.integers(0, 4))
            arrays = [np.rot90(a, k, axes=(0, 1)) for a in arrays]
    arrays = [np.ascontiguousarray(a) for a in arrays]
    image = arrays[0]
    if augment is not None:
        if augment.counterstain_h > 0 or augment.nuclear_h > 0:
            image = vary_hematoxylin(image, arrays[1], rng, augment.counterstain_h, augment.nuclear_h)
        if augment.fibre_texture > 0 and rng.random() < augment.fibre_texture:
            image = fibrous_ground(image, arrays[1], rng)
        if augment.stain_scale > 0 or augment.stain_shift > 0 or augment.stain_log_range > 0:
            image = jitter_stains(image, rng, augment.stain_scale, augment.stain_shift, augment.stain_log_range)
        image = jitter_colour(image, rng, augment)
        if augment.blur > 0 and rng.random() < 0.5:
            from scipy.ndimage import gaussian_filter

            sigma = rng.uniform(0, augment.blur)
            image = np.clip(np.rint(gaussian_filter(image.astype(np.float32), (sigma, sigma, 0))), 0, 255
                            ).astype(np.uint8)
    return NucleiSample(sample.name, image, arrays[1], arrays[2] if len(arrays) > 2 else None)


def count_types(dataset: Sequence[NucleiSample]) -> int:
    """Number of TP channels the dataset needs, background included; 0 when it has no classes.

    The number of named classes when the dataset names them (so a class absent from a small set still gets
    its channel), else the largest class present + 1.
    """
    if not getattr(dataset, "has_classes", False):
        return 0
    top = 0
    for s in dataset:
        if s.classes is not None and s.classes.size:
            top = max(top, int(s.classes[s.instances > 0].max(initial=0)))
    names = getattr(dataset, "class_names", ())
    if names and top >= len(names):
        raise PathgenError(f"class {top} found but the dataset names only {len(names)} classes")
    if names and len(names) > 1:
        return len(names)
    return top + 1 if top > 0 else 0
