"""Nuclei as GeoJSON in QuPath's convention, and polygons rasterised to instance / class maps.

Written files are a ``FeatureCollection``; each nucleus is a ``Feature`` with a ``Polygon`` (``MultiPolygon`` when
the instance has several parts) in full-resolution pixel coordinates ``(x, y)``, where pixel (row r, col c)
covers the square ``[c, c+1] × [r, r+1]``. Outlines follow pixel edges, so rasterising a written file gives the
instance map back exactly. Properties:

* ``objectType``: ``"annotation"`` or ``"detection"`` (QuPath imports both);
* ``classification``: ``{"name": <class name>, "color": [r, g, b]}`` from the class table (omitted for class 0);
* ``id`` (instance label), ``type`` (class id), ``probability`` (when given).

The feature itself also carries a deterministic UUID ``id`` derived from the instance label.

Reading accepts a FeatureCollection, a single Feature or a list of Features (QuPath exports any of these), the
``classification`` as an object or a plain name, QuPath 0.2's ``colorRGB``, and cell objects (their
``nucleusGeometry`` is used when present). Rasterisation marks a pixel when its centre ``(c + 0.5, r + 0.5)`` lies
inside or on the polygon (holes respected); where polygons overlap, the later feature wins.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import mapping, shape as to_shape

from pathgen.errors import PathgenError, require_file
from pathgen.io.atomic import atomic_path
from pathgen.nucleus_types import NUCLEUS_TYPES, NucleusType, centroids_and_types

_UUID_NAMESPACE = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")


@dataclass(frozen=True)
class Nucleus:
    """One nucleus read from GeoJSON: polygonal geometry in pixel (x, y), class id (0 = none), probability."""

    geometry: shapely.Geometry
    class_id: int
    class_name: str | None
    probability: float | None
    object_type: str


def instance_polygons(instances: np.ndarray) -> dict[int, shapely.Geometry]:
    """Pixel-edge outline of every instance.

    Parameters
    ----------
    instances : ndarray of int, shape (H, W)

    Returns
    -------
    dict
        Instance label → shapely Polygon or MultiPolygon in (x, y) pixel coordinates (holes kept).
    """
    inst = np.asarray(instances)
    if inst.ndim != 2 or inst.dtype.kind not in "iu":
        raise PathgenError(f"instance map must be a 2-D integer array, got {inst.shape} {inst.dtype}")
    out: dict[int, shapely.Geometry] = {}
    if not inst.any():
        return out
    top = int(inst.max())
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if top <= 4 * inst.size:
        slices = ndimage.find_objects(inst, max_label=top)
        boxes = {int(i): slices[i - 1] for i in ids}
    else:
        boxes = {int(i): ndimage.find_objects((inst == i).astype(np.uint8))[0] for i in ids}
    for label, (rs, cs) in boxes.items():
        mask = inst[rs, cs] == label
        # One rectangle per horizontal run of pixels; their union is the outline.
        padded = np.zeros((mask.shape[0], mask.shape[1] + 2), bool)
        padded[:, 1:-1] = mask
        edges = np.diff(padded.astype(np.int8), axis=1)
        r_start, c_start = np.nonzero(edges == 1)
        _, c_end = np.nonzero(edges == -1)
        rects = shapely.box(c_start + cs.start, r_start + rs.start, c_end + cs.start, r_start + rs.start + 1)
        geom = shapely.simplify(shapely.union_all(rects), 0.0)
        out[label] = shapely.normalize(geom)
    return out


def _class_table(table: Sequence[NucleusType]) -> dict[int, NucleusType]:
    return {t.id: t for t in table}


def instance_types_from_classes(instances: np.ndarray, classes: np.ndarray) -> dict[int, int]:
    """Most frequent non-zero class of every instance (ties → smaller class id; 0 when unclassified)."""
    ids, _, types = centroids_and_types(instances, classes)
    return {int(i): int(t) for i, t in zip(ids, types)}


def nuclei_feature_collection(instances: np.ndarray, instance_types: Mapping[int, int] | None = None,
                              probabilities: Mapping[int, float] | None = None, object_type: str = "annotation",
                              class_table: Sequence[NucleusType] = NUCLEUS_TYPES) -> dict:
    """GeoJSON FeatureCollection (a dict) of the nuclei of an instance map.

    Parameters
    ----------
    instances : ndarray of int, shape (H, W)
    instance_types : mapping label → class id, optional
        Class of each instance (missing or 0: no classification).
    probabilities : mapping label → float, optional
    object_type : {"annotation", "detection"}
    class_table : sequence of NucleusType
        Names and colours; Lizard's by default.

    Returns
    -------
    dict
    """
    if object_type not in ("annotation", "detection"):
        raise PathgenError(f"object type must be 'annotation' or 'detection', got {object_type!r}")
    table = _class_table(class_table)
    features = []
    for label, geom in instance_polygons(instances).items():
        cls = int((instance_types or {}).get(label, 0))
        props: dict = {"objectType": object_type, "id": label, "type": cls}
        if cls != 0:
            if cls not in table:
                raise PathgenError(f"instance {label} has class {cls}, which the class table does not name")
            props["classification"] = {"name": table[cls].name, "color": list(table[cls].color)}
        if probabilities is not None and label in probabilities:
            props["probability"] = float(probabilities[label])
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(_UUID_NAMESPACE, f"pathgen-nucleus-{label}")),
            "geometry": _int_coords(mapping(geom)),
            "properties": props,
        })
    return {"type": "FeatureCollection", "features": features}


def _int_coords(geo: dict) -> dict:
    # Pixel-edge vertices are integers; write them without ".0".
    def conv(x):
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return int(x) if float(x).is_integer() else float(x)

    return {"type": geo["type"], "coordinates": conv(geo["coordinates"])}


def write_geojson(path: str | os.PathLike, instances: np.ndarray, classes: np.ndarray | None = None,
                  instance_types: Mapping[int, int] | None = None, probabilities: Mapping[int, float] | None = None,
                  object_type: str = "annotation", class_table: Sequence[NucleusType] = NUCLEUS_TYPES,
                  overwrite: bool = False) -> int:
    """Write the nuclei of an instance map as a QuPath-compatible GeoJSON FeatureCollection (atomically).

    Parameters
    ----------
    path : path of the ``.geojson`` output
    instances : ndarray of int, shape (H, W)
    classes : ndarray of int, shape (H, W), optional
        Per-pixel class map; each instance takes its majority class. Ignored when ``instance_types`` is given.
    instance_types, probabilities, object_type, class_table
        See :func:`nuclei_feature_collection`.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    int: number of nuclei written.
    """
    if instance_types is None and classes is not None:
        instance_types = instance_types_from_classes(instances, classes)
    collection = nuclei_feature_collection(instances, instance_types, probabilities, object_type, class_table)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(collection, separators=(",", ":")) + "\n")
    return len(collection["features"])


def _features_of(data, path: str) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if data.get("type") == "FeatureCollection":
            return list(data.get("features", []))
        if data.get("type") == "Feature":
            return [data]
    raise PathgenError("not a GeoJSON FeatureCollection, Feature or list of Features", path)


def read_geojson(path: str | os.PathLike, class_table: Sequence[NucleusType] = NUCLEUS_TYPES) -> list[Nucleus]:
    """Read nuclei from a GeoJSON file (QuPath export or :func:`write_geojson` output).

    Class names are matched to ``class_table`` case-insensitively; an unknown name is an error. A feature
    without classification gets its integer ``properties.type`` if present, else class 0.

    Returns
    -------
    list of Nucleus, in file order.
    """
    p = require_file(path)
    try:
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PathgenError(f"not valid JSON ({exc})", p)
    by_name = {t.name.lower(): t.id for t in class_table}
    nuclei = []
    for index, feat in enumerate(_features_of(data, p)):
        if not isinstance(feat, dict):
            raise PathgenError(f"feature {index} is not an object", p)
        props = feat.get("properties") or {}
        geo = feat.get("nucleusGeometry") or feat.get("geometry")
        if geo is None:
            raise PathgenError(f"feature {index} has no geometry", p)
        try:
            geom = to_shape(geo)
        except Exception as exc:  # noqa: BLE001 - malformed geometry is a user error
            raise PathgenError(f"feature {index}: bad geometry ({exc})", p)
        if geom.geom_type == "GeometryCollection":
            geom = shapely.union_all([g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")])
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise PathgenError(f"feature {index} is a {geom.geom_type}; nuclei must be polygons", p)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        cls_info = props.get("classification")
        name = cls_info.get("name") if isinstance(cls_info, dict) else cls_info
        if name:
            key = str(name).strip().lower()
            if key not in by_name:
                known = ", ".join(t.name for t in class_table)
                raise PathgenError(f"feature {index} has class {name!r}, not one of: {known}", p)
            cls = by_name[key]
        else:
            cls = int(props.get("type", 0) or 0)
        prob = props.get("probability")
        nuclei.append(Nucleus(geometry=geom, class_id=cls, class_name=name if name else None,
                              probability=None if prob is None else float(prob),
                              object_type=str(props.get("objectType", "annotation"))))
    return nuclei


def rasterize_nuclei(geometries: Sequence[shapely.Geometry], shape: tuple[int, int],
                     class_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise polygons to an instance map (labels 1..n in input order) and a class map.

    Parameters
    ----------
    geometries : sequence of shapely Polygon / MultiPolygon in pixel (x, y)
    shape : (H, W)
    class_ids : sequence of int, optional
        Class of each geometry (0 if omitted).

    Returns
    -------
    instances : ndarray of int32, shape (H, W)
    classes : ndarray of int32, shape (H, W)
    """
    h, w = int(shape[0]), int(shape[1])
    instances = np.zeros((h, w), np.int32)
    classes = np.zeros((h, w), np.int32)
    for index, geom in enumerate(geometries):
        if geom.is_empty:
            continue
        minx, miny, maxx, maxy = geom.bounds
        c0 = max(int(math.ceil(minx - 0.5)), 0)
        c1 = min(int(math.floor(maxx - 0.5)), w - 1)
        r0 = max(int(math.ceil(miny - 0.5)), 0)
        r1 = min(int(math.floor(maxy - 0.5)), h - 1)
        if c1 < c0 or r1 < r0:
            continue
        shapely.prepare(geom)
        xs, ys = np.meshgrid(np.arange(c0, c1 + 1) + 0.5, np.arange(r0, r1 + 1) + 0.5)
        inside = shapely.intersects_xy(geom, xs, ys)
        instances[r0:r1 + 1, c0:c1 + 1][inside] = index + 1
        classes[r0:r1 + 1, c0:c1 + 1][inside] = 0 if class_ids is None else int(class_ids[index])
    return instances, classes


def geojson_extent(nuclei: Sequence[Nucleus]) -> tuple[int, int]:
    """(H, W) just large enough to hold every nucleus' bounding box."""
    if not nuclei:
        return (0, 0)
    bounds = np.array([n.geometry.bounds for n in nuclei if not n.geometry.is_empty]).reshape(-1, 4)
    if bounds.size == 0:
        return (0, 0)
    return int(math.ceil(max(bounds[:, 3].max(), 0))), int(math.ceil(max(bounds[:, 2].max(), 0)))


def read_geojson_maps(path: str | os.PathLike, shape: tuple[int, int] | None = None,
                      class_table: Sequence[NucleusType] = NUCLEUS_TYPES) -> tuple[np.ndarray, np.ndarray]:
    """Instance and class maps of a GeoJSON nuclei file.

    Parameters
    ----------
    path : GeoJSON file
    shape : (H, W), optional
        Output size; by default just large enough for every nucleus.

    Returns
    -------
    instances, classes : ndarray of int32, shape (H, W)
    """
    nuclei = read_geojson(path, class_table)
    if shape is None:
        shape = geojson_extent(nuclei)
    return rasterize_nuclei([n.geometry for n in nuclei], shape, [n.class_id for n in nuclei])
