"""GeoJSON nuclei in QuPath's convention: writing, reading, rasterising, round trips."""

import json

import numpy as np
import pytest

from pathgen.errors import PathgenError
from pathgen.io.annotations import (instance_polygons, read_geojson, read_geojson_maps, rasterize_nuclei,
                                    write_geojson)
from pathgen.metrics import remap_label

# Touching nuclei, a ring with a hole (7), a two-part nucleus (9), a single pixel (4) and nuclei at the borders.
INST = np.array([
    [3, 3, 0, 0, 0, 0, 0, 5, 5],
    [3, 3, 6, 6, 0, 0, 0, 5, 5],
    [0, 0, 6, 6, 0, 7, 7, 7, 0],
    [0, 4, 0, 0, 0, 7, 0, 7, 0],
    [0, 0, 0, 0, 0, 7, 7, 7, 0],
    [9, 9, 0, 0, 9, 0, 0, 0, 8],
])
CLASSES = np.where(INST > 0, 2, 0)
CLASSES[INST == 5] = 3
CLASSES[INST == 6] = 3
CLASSES[(INST == 6) & (np.arange(9)[None, :] == 2)] = 1  # nucleus 6: two pixels class 1, two class 3 -> tie


def test_round_trip_is_exact(tmp_path):
    out = tmp_path / "nuclei.geojson"
    n = write_geojson(out, INST, classes=CLASSES, probabilities={3: 0.9})
    assert n == 7
    inst, cls = read_geojson_maps(out, shape=INST.shape)
    # Features are written in ascending label order, so the read-back labels are the remapped ones.
    np.testing.assert_array_equal(inst, remap_label(INST))
    # Every nucleus carries its majority class; nucleus 6 ties between 1 and 3 and takes the smaller id.
    expected_cls = CLASSES.copy()
    expected_cls[INST == 6] = 1
    np.testing.assert_array_equal(cls, expected_cls)


def test_written_properties_follow_qupath(tmp_path):
    out = tmp_path / "nuclei.geojson"
    write_geojson(out, INST, instance_types={3: 3, 5: 6}, probabilities={3: 0.75}, object_type="detection")
    data = json.loads(out.read_text())
    assert data["type"] == "FeatureCollection"
    by_id = {f["properties"]["id"]: f for f in data["features"]}
    f3 = by_id[3]
    assert f3["type"] == "Feature" and isinstance(f3["id"], str)
    assert f3["properties"]["objectType"] == "detection"
    assert f3["properties"]["classification"] == {"name": "lymphocyte", "color": [34, 139, 34]}
    assert f3["properties"]["type"] == 3 and f3["properties"]["probability"] == 0.75
    # Nucleus 3 is the 2x2 block at rows 0-1, cols 0-1: a pixel-edge square in (x, y).
    assert f3["geometry"]["type"] == "Polygon"
    ring = f3["geometry"]["coordinates"][0]
    assert sorted(map(tuple, ring[:-1])) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert by_id[9]["geometry"]["type"] == "MultiPolygon"
    assert len(by_id[7]["geometry"]["coordinates"]) == 2  # exterior and one hole
    assert "classification" not in by_id[4]["properties"]  # class 0: unclassified
    # Same input, same bytes (deterministic ids).
    again = tmp_path / "again.geojson"
    write_geojson(again, INST, instance_types={3: 3, 5: 6}, probabilities={3: 0.75}, object_type="detection")
    assert again.read_bytes() == out.read_bytes()
    with pytest.raises(PathgenError, match="exists"):
        write_geojson(out, INST)


def test_polygons_have_no_redundant_vertices():
    square = instance_polygons(np.pad(np.ones((4, 4), int), 1))[1]
    assert len(square.exterior.coords) == 5  # 4 corners + closing point


def test_read_qupath_style_export(tmp_path):
    features = [
        {"type": "Feature", "id": "a",
         "geometry": {"type": "Polygon", "coordinates": [[[2, 2], [6, 2], [6, 5], [2, 5], [2, 2]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Lymphocyte", "colorRGB": -1}}},
        {"type": "Feature", "id": "b",  # a QuPath cell: the nucleus geometry is what we want
         "geometry": {"type": "Polygon", "coordinates": [[[0, 6], [10, 6], [10, 10], [0, 10], [0, 6]]]},
         "nucleusGeometry": {"type": "Polygon", "coordinates": [[[0.5, 7.5], [1.5, 7.5], [1.5, 8.5], [0.5, 8.5],
                                                                  [0.5, 7.5]]]},
         "properties": {"objectType": "cell", "classification": "Epithelial", "probability": 0.5}},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(features))  # a bare list of features
    nuclei = read_geojson(path)
    assert [n.class_id for n in nuclei] == [3, 2] and nuclei[1].probability == 0.5
    inst, cls = read_geojson_maps(path, shape=(10, 8))
    # Square [2,6]x[2,5]: pixel centres x in 2.5..5.5, y in 2.5..4.5 -> cols 2-5, rows 2-4 (12 pixels).
    expected = np.zeros((10, 8), int)
    expected[2:5, 2:6] = 1
    # Nucleus polygon [0.5,1.5]x[7.5,8.5] through pixel centres: its boundary holds centre (0.5, 7.5),
    # (1.5, 7.5), (0.5, 8.5), (1.5, 8.5) -> pixels rows 7-8, cols 0-1 (boundary counts as inside).
    expected[7:9, 0:2] = 2
    np.testing.assert_array_equal(inst, expected)
    np.testing.assert_array_equal(cls, np.select([expected == 1, expected == 2], [3, 2], 0))


def test_rasterize_overlap_later_wins_and_clipping():
    import shapely

    a = shapely.box(0, 0, 3, 3)
    b = shapely.box(2, 2, 10, 10)  # overlaps a and runs off the 4x4 image
    inst, cls = rasterize_nuclei([a, b], (4, 4), [1, 5])
    assert inst[2, 2] == 2 and inst[0, 0] == 1 and inst[3, 3] == 2
    assert cls[0, 0] == 1 and cls[3, 3] == 5


def test_read_errors(tmp_path):
    bad_class = tmp_path / "bad.geojson"
    bad_class.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
         "properties": {"classification": {"name": "Tumor"}}}]}))
    with pytest.raises(PathgenError, match="Tumor"):
        read_geojson(bad_class)
    point = tmp_path / "point.geojson"
    point.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},
                                 "properties": {}}))
    with pytest.raises(PathgenError, match="Point"):
        read_geojson(point)
    not_json = tmp_path / "x.geojson"
    not_json.write_text("{")
    with pytest.raises(PathgenError, match="JSON"):
        read_geojson(not_json)
