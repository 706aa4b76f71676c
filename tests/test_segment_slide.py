"""Whole-slide segmentation with the shipped HoVer-Net: tile-size independence, outputs QuPath and the metrics
module read back."""

import csv
import json

import numpy as np
import openslide
import pytest
import tifffile

from pathgen.cli import main
from pathgen.engine import EngineConfig
from pathgen.io.models import shipped_model
from pathgen.data.synth import render_tile
from pathgen.errors import PathgenError
from pathgen.metrics import pq
from pathgen.segment.slide import SegmentConfig, segment


@pytest.fixture(scope="module")
def generated_slide(tmp_path_factory):
    """A 768×640 mosaic of generated tiles written as a pyramidal TIFF at 0.5 µm/px, with its ground truth."""
    from pathgen.io.pyramid import iter_row_blocks, write_pyramid

    tiles = [render_tile(256, seed=100 + i, site="ABC"[i % 3]) for i in range(9)]
    img = np.zeros((768, 768, 3), np.uint8)
    truth = np.zeros((768, 768), np.int32)
    offset = 0
    for i, t in enumerate(tiles):
        y, x = 256 * (i // 3), 256 * (i % 3)
        img[y:y + 256, x:x + 256] = t.image
        inst = t.instances.astype(np.int32)
        truth[y:y + 256, x:x + 256] = np.where(inst > 0, inst + offset, 0)
        offset += int(inst.max())
    img, truth = img[:640], truth[:640]
    path = tmp_path_factory.mktemp("seg") / "gen.tiff"
    write_pyramid(path, iter_row_blocks(img, 128), img.shape, mpp=0.5, compression="zlib", tile_size=256)
    return path, img, truth


def _run(path, out, tile):
    cfg = SegmentConfig(engine=EngineConfig(tile_size=tile, overlap=64, batch_size=2, skip_background=False))
    return segment(path, out, shipped_model("hovernet"), cfg, overwrite=True)


def test_tile_size_does_not_change_the_nuclei(generated_slide, tmp_path):
    path, img, truth = generated_slide
    s256 = _run(path, tmp_path / "a", 256)
    s512 = _run(path, tmp_path / "b", 512)
    a = tifffile.imread(tmp_path / "a" / "instances.tif", key=0)
    b = tifffile.imread(tmp_path / "b" / "instances.tif", key=0)
    assert a.shape == b.shape == truth.shape
    assert s256["nuclei"] > 50
    # the same nuclei: counts within 2 % and near-identical instance maps
    assert abs(s256["nuclei"] - s512["nuclei"]) <= max(2, 0.02 * s256["nuclei"])
    assert pq(a, b).pq > 0.95
    # and they are real nuclei
    assert pq(truth, a).pq > 0.5


def test_outputs_reopen_and_round_trip(generated_slide, tmp_path):
    from pathgen.io.annotations import read_geojson_maps

    path, img, truth = generated_slide
    out = tmp_path / "seg"
    rc = main(["segment", str(path), "-o", str(out), "--checkpoint", str(shipped_model("hovernet")),
               "--tile-size", "256", "--no-skip", "--quiet"])
    assert rc == 0
    inst = tifffile.imread(out / "instances.tif", key=0)
    cls = tifffile.imread(out / "classes.tif", key=0)
    with openslide.OpenSlide(str(out / "instances.tif")) as s:  # a pyramid OpenSlide opens, with mpp
        assert s.level_count >= 2 and float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    n = int(inst.max())
    assert set(np.unique(inst)) == set(range(n + 1))  # ids 1..n, no gaps
    assert ((inst > 0) == (cls > 0)).all() and cls.max() <= 6
    for i in np.unique(inst)[1:20]:  # one type per nucleus
        assert len(np.unique(cls[inst == i])) == 1
    rows = list(csv.DictReader(open(out / "nuclei.csv")))
    assert len(rows) == n and {int(r["id"]) for r in rows} == set(range(1, n + 1))
    gj = json.loads((out / "nuclei.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == n
    f0 = gj["features"][0]
    assert f0["geometry"]["type"] in ("Polygon", "MultiPolygon")
    assert {"objectType", "id", "probability"} <= set(f0["properties"])
    # GeoJSON → the metrics module's rasteriser gives back the instance map
    back, back_cls = read_geojson_maps(out / "nuclei.geojson", shape=inst.shape)
    assert pq(inst, back).pq > 0.98
    summary = json.loads((out / "segment.json").read_text())
    assert summary["nuclei"] == n and summary["checkpoint_sha256"]
    assert summary["processed"] + summary["skipped"] == summary["windows"] > 0
    check = summary["stain_check"]  # the shipped model's stain check, fitted once on this slide
    assert check["status"] == "on" and check["min_haematoxylin"] == pytest.approx(0.25)
    assert len(check["haematoxylin_vector"]) == 3 and check["haematoxylin_p99"] > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["instances.tif", "classes.tif", "nuclei.geojson",
                                                            "nuclei.csv", "segment.json"])  # no spool left


def test_stain_check_keeps_generated_nuclei_and_can_be_switched_off(generated_slide, tmp_path):
    """Generated tissue has no eosin fragments: the check keeps (almost) every nucleus; 0 switches it off."""
    path, img, truth = generated_slide
    on = segment(path, tmp_path / "on", shipped_model("hovernet"),
                 SegmentConfig(engine=EngineConfig(tile_size=512, batch_size=2, skip_background=False)))
    off = segment(path, tmp_path / "off", shipped_model("hovernet"),
                  SegmentConfig(engine=EngineConfig(tile_size=512, batch_size=2, skip_background=False),
                                min_haematoxylin=0.0))
    assert on["stain_check"]["status"] == "on" and off["stain_check"]["status"] == "off"
    assert on["nuclei"] <= off["nuclei"] <= on["nuclei"] * 1.05
    a = tifffile.imread(tmp_path / "on" / "instances.tif", key=0)
    b = tifffile.imread(tmp_path / "off" / "instances.tif", key=0)
    assert pq(b, a).pq > 0.95
    assert pq(truth, a).pq >= pq(truth, b).pq - 0.01
    with pytest.raises(PathgenError, match="threshold must lie in"):
        SegmentConfig(min_haematoxylin=1.5)  # refused before any work


def test_tile_function_loads_once_when_called_from_many_threads(monkeypatch):
    """The engine calls one SegmentTiles from its thread pool; the first calls race to load the model (a fresh
    clone's run once failed with a model published before its post-processing settings)."""
    import pickle
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import pathgen.segment.checkpoint as ckpt
    from pathgen.segment.slide import SegmentTiles

    real_read, loads = ckpt.read_checkpoint_config, []

    def slow_read(path):  # widen the window between loading the weights and reading the settings
        loads.append(threading.get_ident())
        time.sleep(0.3)
        return real_read(path)

    monkeypatch.setattr(ckpt, "read_checkpoint_config", slow_read)

    fn = SegmentTiles(str(shipped_model("hovernet")), tile=64, overlap=32, grid_nx=4)
    batch = np.stack([render_tile(128, seed=7).image] * 1)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda k: fn(batch, [(-32 + 64 * k, -32)]), range(4)))
    assert all(out[0].shape == (1, 128, 128, 1) for out in outs)
    assert all(np.array_equal(outs[0][0] > 0, out[0] > 0) for out in outs)  # same nuclei from every thread
    assert len(set(loads)) == 1  # one thread loaded the model, the others waited for it
    clone = pickle.loads(pickle.dumps(fn))  # what a dask worker receives: no model, a fresh lock
    assert clone._model is None and clone(batch, [(-32, -32)])[0].shape == (1, 128, 128, 1)


def test_a_failed_run_leaves_no_empty_output_folder(tmp_path, capsys):
    from PIL import Image

    png = tmp_path / "no_mpp.png"  # a PNG carries no pixel size: the run stops before any output
    Image.fromarray(render_tile(96, seed=1).image).save(png)
    out = tmp_path / "seg"
    assert main(["segment", str(png), "-o", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "no_mpp.png" in err and "--mpp" in err and not out.exists()
    kept = tmp_path / "mine"
    kept.mkdir()  # a folder the user made stays, even empty
    assert main(["segment", str(png), "-o", str(kept), "--quiet"]) != 0
    assert kept.is_dir() and not any(kept.iterdir())
