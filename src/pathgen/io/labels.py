"""Readers for the label and image files that metrics compare, and pairing of folders by file name.

Label files (instance maps, optionally with classes):

* ``.npy`` — (H, W) instance map; (H, W, 2) CoNIC (``[..., 0]`` instances, ``[..., 1]`` per-pixel class);
  (H, W, 5|6) PanNuke channels (channel c = instances of class c + 1; channel 5, background, ignored);
  (N, H, W) a stack of instance maps; (N, H, W, 2) CoNIC; (N, H, W, 5|6) PanNuke ``masks.npy``.
  Never unpickled.
* ``.png`` / ``.tif`` / ``.tiff`` — single-channel label images (8, 16 or 32 bit); TIFF may also hold the
  array layouts above.
* ``.mat`` — HoVer-Net: ``inst_map`` and optionally ``inst_type`` (one type per instance, in ``inst_uid`` order
  when present, else ascending id) or ``type_map``.
* ``.geojson`` / ``.json`` — polygons (QuPath export), rasterised with :mod:`pathgen.io.annotations`. In folders
  only ``.geojson`` files take part in the pairing (so run records such as ``config.json`` are ignored); a
  ``.json`` file can be given directly.

``layout`` forces the reading of ambiguous arrays: "instance", "conic" or "pannuke"; "auto" uses the rules above.
Folders are paired by file stem, never by sorted order; an unpaired file is a ``PathgenError`` that names it.

Whole datasets with images (:func:`read_nuclei_dataset`, :func:`detect_format`): "hovernet-mat" (CoNSeP / Kumar
layout: ``Images/NAME.png`` + ``Labels/NAME.mat``), "pannuke" (``images.npy`` + ``masks.npy``, anywhere below the
folder, as in a PanNuke fold) and "conic" (``images.npy`` + ``labels.npy``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from pathgen.errors import PathgenError, require_file
from pathgen.io.image import READ_SUFFIXES, read_array, read_image, read_labels
from pathgen.nucleus_types import pannuke_binarize

LABEL_EXTENSIONS = (".npy", ".png", ".tif", ".tiff", ".mat", ".geojson", ".json")
FOLDER_LABEL_EXTENSIONS = (".npy", ".png", ".tif", ".tiff", ".mat", ".geojson")
IMAGE_EXTENSIONS = READ_SUFFIXES
Layout = Literal["auto", "instance", "conic", "pannuke"]


@dataclass
class LabelSample:
    """One annotated image.

    Attributes
    ----------
    name : str
        File stem, with ``[i]`` appended for the i-th image of a stack.
    instances : ndarray of int32, shape (H, W)
    classes : ndarray of int32, shape (H, W), or None
        Per-pixel class (0 = background / unclassified).
    channels : ndarray, shape (H, W, C), or None
        Raw PanNuke channels when read from a PanNuke array (kept because channels may overlap).
    source : str
        File it came from.
    """

    name: str
    instances: np.ndarray
    classes: np.ndarray | None
    channels: np.ndarray | None
    source: str


def _ext(path: Path) -> str:
    return path.suffix.lower()


def read_label_array(path: str | os.PathLike) -> np.ndarray:
    """Read a label array from ``.npy``, ``.png`` or ``.tif`` without interpreting its layout.

    PNG palette images give their palette indices; an RGB(A) PNG is accepted only if its colour channels are
    equal (a grey label image saved as RGB). ``.npy`` and TIFF come back as stored (stacks and channel layouts
    are read by :func:`read_label_samples`).
    """
    p = Path(require_file(path))
    ext = _ext(p)
    if ext == ".png":
        return read_labels(p)
    if ext in (".npy", ".tif", ".tiff"):
        return read_array(p)
    raise PathgenError(f"unsupported label file type {ext!r}", p)


def _int_map(arr: np.ndarray, path: str, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == bool:
        return a.astype(np.int32)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a) & (a == np.round(a))):
            raise PathgenError(f"{what} has non-integer values", path)
    elif a.dtype.kind not in "iu":
        raise PathgenError(f"{what} must hold integers, got dtype {a.dtype}", path)
    if a.size and a.min() < 0:
        raise PathgenError(f"{what} has negative values", path)
    if a.size and a.max() > np.iinfo(np.int32).max:
        raise PathgenError(f"{what} has labels beyond int32", path)
    return a.astype(np.int32, copy=False)


def _pannuke_sample(channels: np.ndarray, name: str, source: str) -> LabelSample:
    chans = _int_map(channels, source, "PanNuke mask")
    n = 5
    classes = np.zeros(chans.shape[:2], np.int32)
    for c in range(n):
        classes[chans[..., c] > 0] = c + 1  # later channels win, as in PanNuke's binarize
    return LabelSample(name, pannuke_binarize(chans, n), classes, chans, source)


def _samples_from_array(arr: np.ndarray, stem: str, source: str, layout: Layout) -> list[LabelSample]:
    a = np.asarray(arr)
    if layout == "auto":
        if a.ndim == 2:
            layout_used, stacked = "instance", False
        elif a.ndim == 3 and a.shape[-1] == 2:
            layout_used, stacked = "conic", False
        elif a.ndim == 3 and a.shape[-1] in (5, 6):
            layout_used, stacked = "pannuke", False
        elif a.ndim == 3:
            layout_used, stacked = "instance", True
        elif a.ndim == 4 and a.shape[-1] == 2:
            layout_used, stacked = "conic", True
        elif a.ndim == 4 and a.shape[-1] in (5, 6):
            layout_used, stacked = "pannuke", True
        else:
            raise PathgenError(f"cannot tell the layout of an array of shape {a.shape}", source)
    else:
        layout_used = layout
        per_image = {"instance": 2, "conic": 3, "pannuke": 3}[layout]
        if a.ndim not in (per_image, per_image + 1):
            raise PathgenError(f"{layout} layout expects {per_image} or {per_image + 1} dimensions, "
                               f"got shape {a.shape}", source)
        stacked = a.ndim == per_image + 1
        if layout == "conic" and a.shape[-1] != 2:
            raise PathgenError(f"CoNIC layout expects a last axis of 2 (instance, class), got {a.shape}", source)
        if layout == "pannuke" and a.shape[-1] < 5:
            raise PathgenError(f"PanNuke layout expects >= 5 channels, got {a.shape}", source)
    images = list(a) if stacked else [a]
    out = []
    for i, img in enumerate(images):
        name = f"{stem}[{i}]" if stacked else stem
        if layout_used == "instance":
            out.append(LabelSample(name, _int_map(img, source, "instance map"), None, None, source))
        elif layout_used == "conic":
            out.append(LabelSample(name, _int_map(img[..., 0], source, "instance map"),
                                   _int_map(img[..., 1], source, "class map"), None, source))
        else:
            out.append(_pannuke_sample(img, name, source))
    return out


def read_hovernet_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Instance map and per-pixel class map (or None) from a HoVer-Net / CoNSeP ``.mat`` file."""
    import scipy.io

    p = require_file(path)
    try:
        data = scipy.io.loadmat(p)
    except Exception as exc:  # noqa: BLE001
        raise PathgenError(f"cannot read .mat file ({exc})", p)
    if "inst_map" not in data:
        raise PathgenError("no 'inst_map' in .mat file", p)
    inst = _int_map(data["inst_map"], p, "inst_map")
    if inst.ndim != 2:
        raise PathgenError(f"inst_map must be 2-D, got {inst.shape}", p)
    if "inst_type" in data:
        types = np.asarray(data["inst_type"]).ravel().astype(np.int64)
        ids = np.unique(inst)
        ids = ids[ids > 0]
        if "inst_uid" in data and np.asarray(data["inst_uid"]).size == types.size:
            order = np.asarray(data["inst_uid"]).ravel().astype(np.int64)
        else:
            order = ids
        if order.size != types.size or not np.all(np.isin(ids, order)):
            raise PathgenError(f"inst_type has {types.size} entries for {ids.size} instances", p)
        lut = np.zeros(int(max(inst.max(), order.max() if order.size else 0)) + 1, np.int32)
        lut[order] = types
        return inst, lut[inst]
    if "type_map" in data:
        cls = _int_map(data["type_map"], p, "type_map")
        if cls.shape != inst.shape:
            raise PathgenError(f"type_map {cls.shape} and inst_map {inst.shape} differ in shape", p)
        return inst, cls
    return inst, None


def read_label_samples(path: str | os.PathLike, layout: Layout = "auto",
                       shape: tuple[int, int] | None = None) -> list[LabelSample]:
    """Read every annotated image in one label file.

    Parameters
    ----------
    path : label file (see the module docstring)
    layout : {"auto", "instance", "conic", "pannuke"}
    shape : (H, W), optional
        Raster size for GeoJSON input (default: the polygons' extent).

    Returns
    -------
    list of LabelSample
    """
    p = Path(require_file(path))
    ext = _ext(p)
    if ext not in LABEL_EXTENSIONS:
        raise PathgenError(f"unsupported label file type {ext!r} (use one of {', '.join(LABEL_EXTENSIONS)})", p)
    if ext == ".mat":
        inst, cls = read_hovernet_mat(p)
        return [LabelSample(p.stem, inst, cls, None, str(p))]
    if ext in (".geojson", ".json"):
        from pathgen.io.annotations import read_geojson_maps

        inst, cls = read_geojson_maps(p, shape)
        return [LabelSample(p.stem, inst, cls, None, str(p))]
    return _samples_from_array(read_label_array(p), p.stem, str(p), layout)


def _listing(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or _ext(entry) not in extensions:
            continue
        if entry.stem in files:
            raise PathgenError(f"two files share the name {entry.stem!r} ({files[entry.stem].name}, {entry.name})",
                               folder)
        files[entry.stem] = entry
    return files


def pair_files(true_dir: str | os.PathLike, pred_dir: str | os.PathLike,
               extensions: tuple[str, ...] = FOLDER_LABEL_EXTENSIONS) -> list[tuple[str, Path, Path]]:
    """Pair the files of two folders by stem (extension may differ).

    Returns
    -------
    list of (stem, true_path, pred_path), ordered by stem.

    Raises
    ------
    PathgenError
        Naming the first unpaired file (and how many more), or when a folder holds no file of ``extensions``.
    """
    a, b = Path(true_dir), Path(pred_dir)
    for d in (a, b):
        if not d.is_dir():
            raise PathgenError("not a folder", d)
    fa, fb = _listing(a, extensions), _listing(b, extensions)
    if not fa:
        raise PathgenError(f"no files of type {', '.join(extensions)}", a)
    only_a = sorted(set(fa) - set(fb))
    only_b = sorted(set(fb) - set(fa))
    if only_a or only_b:
        first, other = (fa[only_a[0]], b) if only_a else (fb[only_b[0]], a)
        more = len(only_a) + len(only_b) - 1
        tail = f" ({more} more unpaired)" if more else ""
        raise PathgenError(f"no file with this name in {other}{tail}", first)
    return [(stem, fa[stem], fb[stem]) for stem in sorted(fa)]


def _read_pair(true_file: Path, pred_file: Path, layout: Layout, names_from: str | None
               ) -> list[tuple[str, LabelSample, LabelSample]]:
    geo = (".geojson", ".json")
    t_geo, p_geo = _ext(true_file) in geo, _ext(pred_file) in geo
    if t_geo and p_geo:
        from pathgen.io.annotations import geojson_extent, read_geojson

        extent = np.maximum(geojson_extent(read_geojson(true_file)), geojson_extent(read_geojson(pred_file)))
        t_samples = read_label_samples(true_file, layout, tuple(int(v) for v in extent))
        p_samples = read_label_samples(pred_file, layout, tuple(int(v) for v in extent))
    elif t_geo:
        p_samples = read_label_samples(pred_file, layout)
        t_samples = read_label_samples(true_file, layout, p_samples[0].instances.shape)
    else:
        t_samples = read_label_samples(true_file, layout)
        p_samples = read_label_samples(pred_file, layout, t_samples[0].instances.shape if p_geo else None)
    if len(t_samples) != len(p_samples):
        raise PathgenError(f"{len(t_samples)} images in {true_file.name} but {len(p_samples)} in {pred_file.name}",
                           pred_file)
    out = []
    for i, (t, p) in enumerate(zip(t_samples, p_samples)):
        if t.instances.shape != p.instances.shape:
            raise PathgenError(f"image {t.name}: shape {p.instances.shape} differs from the ground truth "
                               f"{t.instances.shape}", pred_file)
        name = t.name if names_from is None else (str(i) if len(t_samples) > 1 else names_from)
        out.append((name, t, p))
    return out


def load_label_pairs(true_path: str | os.PathLike, pred_path: str | os.PathLike, layout: Layout = "auto"
                     ) -> list[tuple[str, LabelSample, LabelSample]]:
    """Ground-truth / prediction samples from two files or two folders.

    Two files: their images are paired in stack order (named ``"0"``, ``"1"``, … for stacks, else by the true
    file's stem). Two folders: files paired by stem, each pair then as two files.

    Returns
    -------
    list of (name, true LabelSample, pred LabelSample)
    """
    t, p = Path(true_path), Path(pred_path)
    if not t.exists():
        raise PathgenError("no such file or folder", t)
    if not p.exists():
        raise PathgenError("no such file or folder", p)
    if t.is_dir() != p.is_dir():
        raise PathgenError("the true and predicted labels must both be files or both be folders", p)
    if not t.is_dir():
        return _read_pair(t, p, layout, t.stem)
    pairs = []
    for stem, tf, pf in pair_files(t, p, FOLDER_LABEL_EXTENSIONS):
        pairs.extend(_read_pair(tf, pf, layout, None))
    return pairs


def read_tissue_types(path: str | os.PathLike, names: list[str]) -> list[str]:
    """Tissue type of each named image.

    ``.npy``: an array of N names in image order (PanNuke ``types.npy``); only for images read from one stack.
    ``.csv`` / ``.tsv``: rows ``name,tissue`` (a header row starting with "name" or "image" is skipped); every
    image name must appear.
    """
    p = Path(require_file(path))
    if _ext(p) == ".npy":
        types = np.load(p, allow_pickle=False)
        if types.ndim != 1 or types.size != len(names):
            raise PathgenError(f"{types.size} tissue types for {len(names)} images", p)
        if any(not n.isdigit() for n in names):
            raise PathgenError("a .npy tissue list needs images from one stack file; use a name,tissue CSV", p)
        return [str(v) for v in types]
    delimiter = "\t" if _ext(p) == ".tsv" else ","
    mapping: dict[str, str] = {}
    with open(p, newline="", encoding="utf-8") as fh:
        for row_no, row in enumerate(csv.reader(fh, delimiter=delimiter)):
            if not row or not "".join(row).strip():
                continue
            if row_no == 0 and row[0].strip().lower() in ("name", "image", "file"):
                continue
            if len(row) < 2:
                raise PathgenError(f"row {row_no + 1}: expected name{delimiter}tissue", p)
            mapping[row[0].strip()] = row[1].strip()
    missing = [n for n in names if n not in mapping]
    if missing:
        raise PathgenError(f"no tissue type for image {missing[0]!r} ({len(missing)} missing)", p)
    return [mapping[n] for n in names]


def file_pairs(a: str | os.PathLike, b: str | os.PathLike,
               extensions: tuple[str, ...] = FOLDER_LABEL_EXTENSIONS) -> list[tuple[str, Path, Path]]:
    """``[(stem, a, b)]`` for two files, or the files of two folders paired by stem (:func:`pair_files`)."""
    pa, pb = Path(a), Path(b)
    for q in (pa, pb):
        if not q.exists():
            raise PathgenError("no such file or folder", q)
    if pa.is_dir() != pb.is_dir():
        raise PathgenError("give two files or two folders", pb)
    if pa.is_dir():
        return pair_files(pa, pb, extensions)
    return [(pa.stem, pa, pb)]


def image_pairs(a: str | os.PathLike, b: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Two image files, or two folders of images paired by stem."""
    return file_pairs(a, b, IMAGE_EXTENSIONS + (".npy",))


@dataclass
class NucleusImage:
    """One image of an annotated nucleus dataset: RGB uint8 (H, W, 3), instances and classes (H, W) int32."""

    name: str
    image: np.ndarray
    instances: np.ndarray
    classes: np.ndarray | None


def _child(folder: Path, name: str) -> Path | None:
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.is_dir() and entry.name.lower() == name:
            return entry
    return None


def _find_one(folder: Path, filename: str) -> Path | None:
    hits = sorted(q for q in folder.rglob(filename) if q.is_file())
    if len(hits) > 1:
        raise PathgenError(f"{len(hits)} files named {filename} below this folder; point at one dataset", folder)
    return hits[0] if hits else None


def detect_format(path: str | os.PathLike) -> str | None:
    """"hovernet-mat", "pannuke" or "conic" when ``path`` holds such a dataset, else None."""
    p = Path(path)
    if not p.is_dir():
        return None
    if _child(p, "images") is not None and _child(p, "labels") is not None:
        if any(q.suffix.lower() == ".mat" for q in _child(p, "labels").iterdir()):
            return "hovernet-mat"
    if _find_one(p, "images.npy") is not None:
        if _find_one(p, "masks.npy") is not None:
            return "pannuke"
        if _find_one(p, "labels.npy") is not None:
            return "conic"
    return None


def _rgb_uint8(image: np.ndarray, where) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise PathgenError(f"expected RGB images, got shape {img.shape}", where)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)  # PanNuke stores float64 in 0..255
    return img


def read_nuclei_dataset(path: str | os.PathLike, fmt: str) -> Iterator[NucleusImage]:
    """Iterate over the images of a nucleus dataset with their instance and class maps.

    Parameters
    ----------
    path : folder of the dataset
    fmt : {"hovernet-mat", "pannuke", "conic"}
        See the module docstring. PanNuke classes are the channel numbers 1..5 (later channels win where they
        overlap); CoNIC classes are Lizard's 1..6; HoVer-Net classes are those stored in the ``.mat`` files.

    Yields
    ------
    NucleusImage
    """
    p = Path(path)
    if not p.is_dir():
        raise PathgenError("not a folder", p)
    if fmt == "hovernet-mat":
        images, labels = _child(p, "images"), _child(p, "labels")
        if images is None or labels is None:
            raise PathgenError("expected Images/ and Labels/ folders", p)
        for stem, img_path, mat_path in pair_files(images, labels, IMAGE_EXTENSIONS + (".mat",)):
            if mat_path.suffix.lower() != ".mat":
                raise PathgenError("expected a .mat label file", mat_path)
            image = _rgb_uint8(read_image(img_path), img_path)
            inst, cls = read_hovernet_mat(mat_path)
            if inst.shape != image.shape[:2]:
                raise PathgenError(f"label {inst.shape} and image {image.shape[:2]} differ in size", mat_path)
            yield NucleusImage(stem, image, inst, cls)
        return
    if fmt not in ("pannuke", "conic"):
        raise PathgenError(f"unknown dataset format {fmt!r} (use hovernet-mat, pannuke or conic)")
    image_file = _find_one(p, "images.npy")
    label_file = _find_one(p, "masks.npy" if fmt == "pannuke" else "labels.npy")
    if image_file is None or label_file is None:
        need = "images.npy and masks.npy" if fmt == "pannuke" else "images.npy and labels.npy"
        raise PathgenError(f"expected {need} below this folder", p)
    images = np.load(image_file, mmap_mode="r", allow_pickle=False)
    labels = np.load(label_file, mmap_mode="r", allow_pickle=False)
    if images.ndim != 4 or labels.ndim != 4 or images.shape[:3] != labels.shape[:3]:
        raise PathgenError(f"images {images.shape} and labels {labels.shape} do not match", label_file)
    layout: Layout = "pannuke" if fmt == "pannuke" else "conic"
    for i in range(images.shape[0]):
        sample = _samples_from_array(np.asarray(labels[i]), str(i), str(label_file), layout)[0]
        yield NucleusImage(str(i), _rgb_uint8(images[i], image_file), sample.instances, sample.classes)
