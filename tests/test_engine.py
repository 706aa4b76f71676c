"""The tile engine: exact identity, seam-free blending, tissue skipping, executors."""

import numpy as np
import pytest

from pathgen.engine import EngineConfig, TileGrid, process_array, ramp
from pathgen.errors import PathgenError
from pathgen.engine.tissue import TissueMask

from conftest import smooth_rgb


@pytest.mark.parametrize("tile,overlap", [(64, 0), (64, 8), (64, 32), (100, 17), (256, 64), (16, 8), (512, 32)])
@pytest.mark.parametrize("blend", ["cosine", "linear", "none"])
def test_identity_is_pixel_exact(tile, overlap, blend):
    rng = np.random.default_rng(tile + overlap)
    img = rng.integers(0, 256, (301, 457, 3), dtype=np.uint8)
    out = process_array(img, lambda b: b, cfg=EngineConfig(tile_size=tile, overlap=overlap, blend=blend,
                                                           batch_size=3, threads=2))
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_identity_exact_for_int32_labels():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 2**31 - 1, (200, 300, 1), dtype=np.int32)
    out = process_array(lab, lambda b: b, cfg=EngineConfig(tile_size=64, overlap=16, blend="none"))
    np.testing.assert_array_equal(out, lab)


def test_ramps_are_a_partition_of_unity():
    for kind in ("cosine", "linear"):
        r = ramp(40, kind)
        np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-12)
        assert np.all(np.diff(r) > 0)
    g = TileGrid(1000, 700, tile=128, overlap=24)
    total = np.zeros(1000 + 2 * 24 + 128)
    for i in range(g.nx):
        w = g.weights_1d(i, g.nx, "cosine")
        x0 = i * 128  # shifted by +overlap so indices are non-negative
        total[x0:x0 + g.window] += w
    np.testing.assert_allclose(total[24:24 + 1000], 1.0, atol=1e-12)


def test_position_dependent_function_has_no_seams():
    """Each tile adds an offset that depends on where the tile is: hard stitching makes steps at tile borders,
    blending keeps every neighbouring-pixel difference as small as inside a tile."""
    img = smooth_rgb(256, 256)
    calls = {"n": 0}

    def shifty(batch):
        out = batch.astype(np.float32)
        for i in range(len(out)):
            calls["n"] += 1
            out[i] += 20.0 * np.sin(calls["n"])  # a different brightness per tile
        return np.clip(out, 0, 255)

    def max_step(a):
        a = a.astype(np.float32).mean(-1)
        return max(np.abs(np.diff(a, axis=0)).max(), np.abs(np.diff(a, axis=1)).max())

    base = max_step(img)
    hard = process_array(img, shifty, cfg=EngineConfig(tile_size=64, overlap=32, blend="none", threads=1))
    soft = process_array(img, shifty, cfg=EngineConfig(tile_size=64, overlap=32, blend="cosine", threads=1))
    assert max_step(hard) > base + 10  # seams exist without blending
    assert max_step(soft) < base + 4  # and disappear with it


def test_smooth_function_matches_global_application():
    """A pointwise function through the engine equals the function applied to the whole image."""
    img = smooth_rgb(190, 333)
    out = process_array(img, lambda b: 255 - b, cfg=EngineConfig(tile_size=64, overlap=16))
    np.testing.assert_array_equal(out, 255 - img)


def test_tissue_free_tiles_are_skipped_and_filled():
    img = smooth_rgb(256, 256)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True  # only the top-left 64×64 core has tissue
    seen = []

    def record(batch):
        seen.append(len(batch))
        return batch

    out = process_array(img, record, cfg=EngineConfig(tile_size=64, overlap=0, background=255),
                        tissue=TissueMask(mask, (64.0, 64.0)))
    assert sum(seen) == 1
    np.testing.assert_array_equal(out[:64, :64], img[:64, :64])
    assert (out[64:] == 255).all() and (out[:, 64:] == 255).all()


def test_bad_geometry_and_bad_function_output():
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(PathgenError, match="overlap"):
        process_array(img, lambda b: b, cfg=EngineConfig(tile_size=32, overlap=20))
    with pytest.raises(PathgenError, match="returned shape"):
        process_array(img, lambda b: b[:, :10], cfg=EngineConfig(tile_size=32, overlap=4))


def test_local_process_cluster_gives_the_same_result():
    img = smooth_rgb(200, 260)
    ref = process_array(img, np.negative, cfg=EngineConfig(tile_size=64, overlap=16))
    out = process_array(img, np.negative, cfg=EngineConfig(tile_size=64, overlap=16, workers=2))
    np.testing.assert_array_equal(out, ref)


def test_max_blend_draws_owned_objects_whole_once():
    """Windows paint only the discs whose centre lies in their core, over their whole window: every disc comes out
    whole and exactly once, whatever the tile size."""
    h, w = 300, 420
    rng = np.random.default_rng(3)
    centres = rng.uniform([10, 10], [h - 10, w - 10], (40, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    truth = np.zeros((h, w), np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = i
    for tile in (64, 128):
        cfg = EngineConfig(tile_size=tile, overlap=16, blend="max")

        def paint(batch, origins):
            out = np.zeros(batch.shape[:3] + (1,), np.int32)
            records = []
            for k, (x0, y0) in enumerate(origins):
                wy, wx = np.mgrid[y0:y0 + batch.shape[1], x0:x0 + batch.shape[2]]
                owned = []
                for i, (cy, cx) in enumerate(centres, 1):
                    if x0 + 16 <= cx < x0 + 16 + tile and y0 + 16 <= cy < y0 + 16 + tile:
                        out[k, (wy - cy) ** 2 + (wx - cx) ** 2 <= 36, 0] = i
                        owned.append(i)
                records.append(owned)
            return out, records

        paint.wants_origins = True
        from pathgen.engine import ArraySource, RunReport, iter_stitched_rows

        rep = RunReport()
        rows = list(iter_stitched_rows(ArraySource(np.zeros((h, w, 3), np.uint8)), paint, 1, np.int32, cfg,
                                       report=rep, quiet=True))
        out = np.concatenate(rows)[..., 0]
        np.testing.assert_array_equal(out, truth)
        assert sorted(i for r in rep.records for i in r) == list(range(1, 41))
