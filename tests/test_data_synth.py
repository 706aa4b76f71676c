"""Procedural H&E generator: determinism, labels, Beer–Lambert optics, sites, datasets, seamless slides."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathgen.data import synth
from pathgen.data.stains import RUIFROK_E, RUIFROK_H, SITES, SiteStain, image_od, render_rgb, stain_od
from pathgen.data.tissue import TissuePlane, clean_instances
from pathgen.errors import PathgenError


@pytest.fixture(scope="module")
def tiles():
    """Six 256² tiles, one per seed, cycling over the sites."""
    names = list(SITES)
    return [synth.render_tile(256, seed, names[seed % len(names)]) for seed in range(6)]


# ---- determinism -------------------------------------------------------------------------------------------


def test_same_seed_same_arrays_and_other_seed_differs():
    a = synth.render_tile(96, seed=11, site="B")
    b = synth.render_tile(96, seed=11, site="B")
    c = synth.render_tile(96, seed=12, site="B")
    for field in ("image", "instances", "classes", "concentrations"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.origin == b.origin
    assert not np.array_equal(a.concentrations, c.concentrations)


def test_site_changes_colour_not_tissue():
    a = synth.render_tile(96, seed=3, site="A")
    d = synth.render_tile(96, seed=3, site="D")
    np.testing.assert_array_equal(a.concentrations, d.concentrations)
    np.testing.assert_array_equal(a.instances, d.instances)
    assert not np.array_equal(a.image, d.image)


def test_output_types(tiles):
    t = tiles[0]
    assert t.image.shape == (256, 256, 3) and t.image.dtype == np.uint8
    assert t.instances.shape == (256, 256) and t.instances.dtype == np.int32
    assert t.classes.shape == (256, 256) and t.classes.dtype == np.uint8
    assert t.concentrations.shape == (256, 256, 3) and t.concentrations.dtype == np.float32
    assert isinstance(t.site, SiteStain)
    assert (t.concentrations >= 0).all()


# ---- labels ------------------------------------------------------------------------------------------------


def test_labels_are_consistent(tiles):
    from skimage.measure import label

    for t in tiles:
        inst, cls = t.instances, t.classes
        assert cls.max() <= 6
        # Background in one map is background in the other.
        np.testing.assert_array_equal(inst == 0, cls == 0)
        ids = np.unique(inst)
        ids = ids[ids > 0]
        # Ids are 1..N, each present (≥ 1 pixel).
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
        # One class per instance.
        lo = np.full(len(ids) + 1, 255)
        hi = np.zeros(len(ids) + 1, int)
        np.minimum.at(lo, inst.ravel(), cls.ravel())
        np.maximum.at(hi, inst.ravel(), cls.ravel())
        np.testing.assert_array_equal(lo[1:], hi[1:])
        # Each instance is a single 4-connected component.
        comps = label(inst, background=0, connectivity=1)
        assert comps.max() == len(ids)


def test_all_six_types_occur(tiles):
    seen = set()
    for t in tiles:
        seen |= set(np.unique(t.classes).tolist())
    assert seen == {0, 1, 2, 3, 4, 5, 6}


def test_nucleus_sizes_plausible_at_20x(tiles):
    """Lymphocytes ≈ 5–8 µm across, epithelial nuclei longer than wide, fibroblasts elongated (0.5 µm/px)."""
    from skimage.measure import regionprops

    feats = {k: [] for k in range(1, 7)}
    for t in tiles:
        for r in regionprops(t.instances):
            if r.bbox[0] == 0 or r.bbox[1] == 0 or r.bbox[2] == 256 or r.bbox[3] == 256:
                continue  # cut by the tile edge
            k = int(t.classes[r.coords[0][0], r.coords[0][1]])
            feats[k].append((r.area, r.axis_major_length, r.axis_minor_length))
    lym = np.array(feats[3])
    diameter_um = np.sqrt(4 * np.median(lym[:, 0]) / np.pi) * 0.5
    assert 5.0 < diameter_um < 8.0
    epi = np.array(feats[2])
    assert np.median(epi[:, 1] / epi[:, 2]) > 1.5
    con = np.array(feats[6])
    assert np.median(con[:, 1] / con[:, 2]) > 2.5


def test_touching_nuclei_exist(tiles):
    """Some nuclei touch or overlap (adjacent pixels with different non-zero ids)."""
    touching = 0
    for t in tiles:
        a, b = t.instances[:, :-1], t.instances[:, 1:]
        touching += int(((a != b) & (a > 0) & (b > 0)).sum())
    assert touching > 0


def test_clean_instances_hand_example():
    # Instance 1 (class 3) is cut in two by instance 2 (class 2) drawn later; a 1-pixel piece of 1 remains at
    # the right. Instance 3 (class 6) is fully separate; raw id 4 was fully occluded (absent).
    raw = np.array([
        [1, 1, 2, 1, 0, 3],
        [1, 1, 2, 0, 0, 3],
        [0, 0, 2, 0, 0, 0],
    ], np.int32)
    classes_of = np.array([0, 3, 2, 6, 5], np.uint8)
    inst, cls = clean_instances(raw, classes_of)
    expected = np.array([
        [1, 1, 2, 2, 0, 3],
        [1, 1, 2, 0, 0, 3],
        [0, 0, 2, 0, 0, 0],
    ], np.int32)
    np.testing.assert_array_equal(inst, expected)
    np.testing.assert_array_equal(cls, np.array([
        [3, 3, 2, 2, 0, 6],
        [3, 3, 2, 0, 0, 6],
        [0, 0, 2, 0, 0, 0],
    ], np.uint8))


# ---- optics and sites --------------------------------------------------------------------------------------


def test_beer_lambert_hand_values():
    c = np.zeros((1, 3, 3), np.float32)
    c[0, 1, 0] = 1.0  # haematoxylin density 1
    c[0, 2, 1] = 0.5  # eosin density 0.5
    # Site A: I0 = (244, 242, 246), scale 1; H = (0.676, 0.683, 0.277)/1.000097, E = (0.070, 0.959, 0.276)/…
    # 244·exp(-0.675934) = 124.12 -> 124; 242·exp(-0.682934) = 122.24 -> 122; 246·exp(-0.276973) = 186.49 -> 186
    # 244·exp(-0.5·0.069982) = 235.61 -> 236; 242·exp(-0.5·0.958748) = 149.85 -> 150; 246·exp(-0.5·0.275928)
    # = 214.30 -> 214
    np.testing.assert_array_equal(render_rgb(c, "A")[0], [[244, 242, 246], [124, 122, 186], [236, 150, 214]])


def test_beer_lambert_round_trip(tiles):
    for t in tiles:
        od_model = stain_od(t.concentrations, t.site)
        od_image = image_od(t.image, t.site)
        img = t.image.astype(np.float64)
        ok = img >= 8  # not saturated
        # Rounding to integers moves OD by at most 0.5 / (I - 0.5).
        tol = 0.5 / (img - 0.5) + 1e-4
        assert ok.mean() > 0.95
        assert (np.abs(od_image - od_model)[ok] <= tol[ok]).all()
        np.testing.assert_array_equal(render_rgb(t.concentrations, t.site), t.image)


def test_sites_are_distinct_and_realistic():
    names = list(SITES)
    t = synth.render_tile(128, seed=2)
    means = {n: render_rgb(t.concentrations, n).reshape(-1, 3).mean(0) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.linalg.norm(means[a] - means[b]) > 4.0, (a, b)
    ref_h = np.array(RUIFROK_H) / np.linalg.norm(RUIFROK_H)
    ref_e = np.array(RUIFROK_E) / np.linalg.norm(RUIFROK_E)
    for s in SITES.values():
        m = s.stain_matrix
        np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0)
        for row, ref in ((m[0], ref_h), (m[1], ref_e)):
            angle = np.degrees(np.arccos(np.clip(row @ ref, -1, 1)))
            assert angle <= 15.5
        # Haematoxylin absorbs red more than eosin does: nuclei blue-purple, stroma pink.
        assert m[0, 0] > m[1, 0] and m[1, 1] > m[0, 1]


def test_site_stain_validation():
    s = SiteStain("x", np.array([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0]]))
    np.testing.assert_allclose(s.stain_matrix, np.eye(3))
    with pytest.raises(PathgenError):
        SiteStain("neg", -np.eye(3))
    with pytest.raises(PathgenError):
        SiteStain("zero", np.zeros((3, 3)))
    with pytest.raises(PathgenError, match="unknown site"):
        synth.render_tile(32, site="Q")
    with pytest.raises(PathgenError):
        render_rgb(np.zeros((4, 4, 2)), "A")


def test_custom_site_object_renders():
    custom = SiteStain("mine", np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]),
                       i0=(250, 250, 250), concentration_scale=(0.5, 0.5, 0.5))
    t = synth.render_tile(64, seed=1, site=custom)
    assert t.site is custom
    np.testing.assert_array_equal(t.image, render_rgb(t.concentrations, custom))


# ---- seamless windows (slides) -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [4, 9])
def test_windows_join_without_seams(seed):
    """Windows rendered separately (fresh plane, empty caches) equal the same area rendered at once, bit for
    bit: what slide tiles need to join without seams."""
    plane = TissuePlane(seed=seed, mpp=0.5)
    whole, _, _ = plane.render(300, 500, 192, 320, labels=False)
    other = TissuePlane(seed=seed, mpp=0.5)
    pieces = np.full_like(whole, -1.0)
    for y in range(0, 192, 64):
        for x in range(0, 320, 80):
            c, _, _ = other.render(300 + y, 500 + x, 64, 80, labels=False)
            pieces[y:y + 64, x:x + 80] = c
    np.testing.assert_array_equal(whole, pieces)


def test_blank_tiles_are_skipped_without_changing_pixels():
    width, height, tile = 2048, 1536, 256
    plane = synth.slide_plane(width, height, seed=5, tissue_fraction=0.3)
    site = SITES["A"]
    grid = [[synth._tile_is_blank(plane, ty * tile, tx * tile, tile, tile) for tx in range(width // tile)]
            for ty in range(height // tile)]
    n_blank = sum(map(sum, grid))
    assert 4 <= n_blank < len(grid) * len(grid[0])
    # A row holding both kinds: skipped tiles are exactly blank glass.
    ty = next(k for k, r in enumerate(grid) if any(r) and not all(r))
    row = synth.render_slide_row(plane, site, ty * tile, width, height, tile)
    assert row.shape == (tile, width, 3)
    glass = np.asarray(np.rint(site.i0), np.uint8)
    is_glass = [bool((row[:, tx * tile:(tx + 1) * tile] == glass).all()) for tx in range(width // tile)]
    assert all(g for g, b in zip(is_glass, grid[ty]) if b)
    assert not all(is_glass)
    # Skipping never changes the output: the full renderer gives blank glass on skipped tiles (checked on the
    # skipped tiles nearest to tissue, where a wrong decision would show).
    blank = [(y, x) for y in range(len(grid)) for x in range(len(grid[0])) if grid[y][x]]
    field = [plane.tissue_field(np.float64((y + 0.5) * tile * 0.5), np.float64((x + 0.5) * tile * 0.5))
             for y, x in blank]
    for k in np.argsort(field)[::-1][:3]:
        y, x = blank[k]
        conc, _, _ = plane.render(y * tile, x * tile, tile, tile, labels=False)
        assert (render_rgb(conc, site) == glass).all()


def test_slide_tissue_fraction_is_respected():
    plane = synth.slide_plane(4000, 3000, seed=1, tissue_fraction=0.4)
    ys = (np.arange(0, 3000, 10) + 0.5) * 0.5
    xs = (np.arange(0, 4000, 10) + 0.5) * 0.5
    tissue = plane.tissue_field(ys[:, None], xs[None, :]) > plane.threshold
    assert abs(tissue.mean() - 0.4) < 0.02
    # Glass margin along the slide border.
    assert not tissue[0].any() and not tissue[-1].any() and not tissue[:, 0].any() and not tissue[:, -1].any()


def test_write_synthetic_slide_svs_opens_in_openslide(tmp_path):
    import openslide

    path = tmp_path / "synthetic.svs"
    out = synth.write_synthetic_slide(path, 1100, 900, seed=2, site="C", tile_size=256, mpp=0.5, quality=90,
                                      tissue_fraction=0.5)
    assert out == path and path.exists()
    slide = openslide.OpenSlide(str(path))
    try:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert slide.dimensions == (1100, 900)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert slide.properties["openslide.objective-power"] == "20"
        assert slide.level_count >= 3
        region = np.asarray(slide.read_region((0, 0), 0, (1100, 900)).convert("RGB"), np.float64)
    finally:
        slide.close()
    # The stored pixels are the rendered ones up to JPEG loss.
    plane = synth.slide_plane(1100, 900, seed=2, tissue_fraction=0.5)
    expected = np.concatenate(list(synth.slide_rows(plane, SITES["C"], 1100, 900, 256)), 0).astype(np.float64)
    assert np.abs(region - expected).mean() < 4.0
    with pytest.raises(PathgenError, match="exists"):
        synth.write_synthetic_slide(path, 64, 64)


def test_write_synthetic_slide_tiff_generic(tmp_path):
    import openslide

    path = tmp_path / "synthetic.tiff"
    synth.write_synthetic_slide(path, 700, 520, seed=1, tile_size=256, fmt="tiff", mpp=0.25)
    slide = openslide.OpenSlide(str(path))
    try:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.dimensions == (700, 520)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    finally:
        slide.close()
    with pytest.raises(PathgenError, match="unknown slide format"):
        synth.write_synthetic_slide(tmp_path / "x.tif", 64, 64, fmt="png")


def test_parallel_slide_equals_serial(tmp_path):
    import tifffile

    serial = synth.write_synthetic_slide(tmp_path / "a.tiff", 600, 520, seed=6, tile_size=256, fmt="tiff")
    parallel = synth.write_synthetic_slide(tmp_path / "b.tiff", 600, 520, seed=6, tile_size=256, fmt="tiff",
                                           workers=2)
    np.testing.assert_array_equal(tifffile.imread(serial), tifffile.imread(parallel))


def test_aperio_description():
    d = synth.aperio_description(1100, 900, 256, 90, 0.5)
    assert d == ("Aperio Image Library v12.0.15 \n1100x900 [0,0 1100x900] (256x256) JPEG/RGB Q=90|AppMag = 20|"
                 "MPP = 0.5000")
    assert "AppMag = 40|MPP = 0.2500" in synth.aperio_description(10, 10, 16, 80, 0.25)


# ---- datasets and CLI --------------------------------------------------------------------------------------


def test_write_tile_dataset_pairs_and_types(tmp_path):
    import tifffile
    from PIL import Image

    out = tmp_path / "ds"
    names = synth.write_tile_dataset(out, 4, seed=7, size=64, sites=["A", "C"])
    assert names == ["s7_00000_A", "s7_00001_C", "s7_00002_A", "s7_00003_C"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["seed"] == 7 and meta["size"] == 64 and meta["sites"] == ["A", "C"]
    assert [t["name"] for t in meta["tiles"]] == names
    assert "numpy" in meta["versions"]
    for name, tile_meta in zip(names, meta["tiles"]):
        img = np.asarray(Image.open(out / "images" / f"{name}.png"))
        inst = tifffile.imread(out / "instances" / f"{name}.tif")
        with Image.open(out / "classes" / f"{name}.png") as cim:
            assert cim.mode == "L"
            cls = np.asarray(cim)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert inst.shape == (64, 64) and inst.dtype == np.int32
        assert cls.shape == (64, 64) and cls.dtype == np.uint8
        np.testing.assert_array_equal(inst == 0, cls == 0)
        # The stored tile is exactly the tile its recorded seed renders.
        t = synth.render_tile(64, tile_meta["seed"], tile_meta["site"])
        np.testing.assert_array_equal(img, t.image)
        np.testing.assert_array_equal(inst, t.instances)
        np.testing.assert_array_equal(cls, t.classes)
        assert tile_meta["instances"] == int(inst.max())
    triples = synth.dataset_pairs(out)
    assert [p[0].stem for p in triples] == names
    with pytest.raises(PathgenError, match="exists"):
        synth.write_tile_dataset(out, 1, size=32)
    synth.write_tile_dataset(out, 1, seed=8, size=32, overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["s8_00000_A.png"]


def test_ground_density_darkens_stroma_not_nuclei_or_layout():
    from pathgen.data.tissue import TissueParams

    plain = synth.render_tile(128, seed=4, site="A")
    dense = synth.render_tile(128, seed=4, site="A", params=TissueParams(ground_h=4.0, ground_e=2.5))
    np.testing.assert_array_equal(plain.instances, dense.instances)
    np.testing.assert_array_equal(plain.classes, dense.classes)
    # away from nuclei (beyond the optical blur), stroma densities are the plain ones times the multipliers
    from scipy import ndimage as ndi

    far = ~ndi.binary_dilation(plain.instances > 0, iterations=4) & (plain.concentrations[..., 1] > 0.05)
    assert far.sum() > 500
    ratio_h = np.median(dense.concentrations[far, 0] / np.maximum(plain.concentrations[far, 0], 1e-6))
    ratio_e = np.median(dense.concentrations[far, 1] / np.maximum(plain.concentrations[far, 1], 1e-6))
    assert ratio_h == pytest.approx(4.0, rel=0.1) and ratio_e == pytest.approx(2.5, rel=0.1)
    # nuclei keep their own haematoxylin on top of the denser ground: still the darkest structures
    nuc = dense.instances > 0
    assert np.median(dense.concentrations[nuc, 0]) > 2 * np.median(dense.concentrations[far, 0])


def test_dataset_ground_max_draws_recorded_factors(tmp_path):
    import dataclasses

    from PIL import Image

    from pathgen.data.tissue import TissueParams

    out = tmp_path / "dense"
    names = synth.write_tile_dataset(out, 3, seed=9, size=48, ground_max=(5.0, 3.0), clefts_max=0.8)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["ground_max"] == [5.0, 3.0] and meta["clefts_max"] == 0.8
    assert all(0.0 <= t["stroma_clefts"] <= 0.8 for t in meta["tiles"])
    grounds = [t["ground"] for t in meta["tiles"]]
    assert all(1.0 <= h <= 5.0 and 1.0 <= e <= 3.0 for h, e in grounds)
    assert len({tuple(g) for g in grounds}) == 3  # each tile its own density
    for name, t in zip(names, meta["tiles"]):
        params = dataclasses.replace(TissueParams(), ground_h=t["ground"][0], ground_e=t["ground"][1],
                                     stroma_clefts=t["stroma_clefts"])
        expect = synth.render_tile(48, t["seed"], t["site"], params=params)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / f"{name}.png")), expect.image)
    again = synth.write_tile_dataset(tmp_path / "again", 3, seed=9, size=48, ground_max=(5.0, 3.0),
                                     clefts_max=0.8)
    assert again == names
    assert json.loads((tmp_path / "again" / "dataset.json").read_text())["tiles"][0]["ground"] == grounds[0]
    with pytest.raises(PathgenError, match="ground_max"):
        synth.write_tile_dataset(tmp_path / "bad", 1, ground_max=(0.5, 2.0))
    with pytest.raises(PathgenError, match="clefts_max"):
        synth.write_tile_dataset(tmp_path / "bad", 1, clefts_max=1.5)


def test_stroma_clefts_clear_stroma_only():
    from pathgen.data.tissue import TissueParams

    plain = synth.render_tile(128, seed=4, site="A")
    cleft = synth.render_tile(128, seed=4, site="A", params=TissueParams(stroma_clefts=1.0))
    np.testing.assert_array_equal(plain.instances, cleft.instances)
    ratio = cleft.concentrations[..., 1] / np.maximum(plain.concentrations[..., 1], 1e-6)
    assert ratio.max() <= 1.0 + 1e-5  # clefts only ever remove stain
    assert (ratio < 0.3).mean() > 0.01  # and open real clear spaces


def test_dataset_bad_arguments(tmp_path):
    with pytest.raises(PathgenError, match="unknown site"):
        synth.write_tile_dataset(tmp_path / "d", 2, sites="A,Z")
    assert not (tmp_path / "d").exists()
    with pytest.raises(PathgenError):
        synth.write_tile_dataset(tmp_path / "d", 0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathgenError, match="not a folder"):
        synth.write_tile_dataset(tmp_path / "file", 1)


def test_cli_synth_tiles_and_slide(tmp_path, capsys):
    from pathgen.cli import main

    out = tmp_path / "tiles"
    rc = main(["data", "synth-tiles", "-o", str(out), "-n", "3", "--seed", "5", "--size", "48", "--sites", "B,E",
               "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["s5_00000_B.png", "s5_00001_E.png",
                                                                 "s5_00002_B.png"]
    rc = main(["data", "synth-tiles", "-o", str(tmp_path / "bad"), "-n", "2", "--sites", "A,Q"])
    err = capsys.readouterr().err
    assert rc == 1 and "unknown site 'Q'" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    rc = main(["data", "synth-tiles", "-o", str(tmp_path / "dense"), "-n", "1", "--size", "32", "--ground-max", "4,2",
               "--quiet"])
    assert rc == 0
    assert json.loads((tmp_path / "dense" / "dataset.json").read_text())["ground_max"] == [4.0, 2.0]
    rc = main(["data", "synth-tiles", "-o", str(tmp_path / "bad2"), "-n", "1", "--ground-max", "four"])
    err = capsys.readouterr().err
    assert rc == 1 and "--ground-max" in err and "Traceback" not in err

    slide = tmp_path / "s.svs"
    rc = main(["data", "synth-slide", "-o", str(slide), "--width", "600", "--height", "400", "--seed", "3",
               "--site", "B", "--tile-size", "256", "--quiet"])
    assert rc == 0 and slide.exists()
    rc = main(["data", "synth-slide", "-o", str(slide), "--width", "600", "--height", "400"])
    assert rc == 1 and "exists" in capsys.readouterr().err
