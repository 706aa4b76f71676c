"""Pyramidal TIFF and OME-Zarr writers: reopened by OpenSlide and tifffile, pixels and mpp checked."""

import numpy as np
import openslide
import pytest
import tifffile

from pathgen.errors import PathgenError
from pathgen.io.pyramid import downsample2, iter_row_blocks, level_shapes, write_ome_zarr, write_pyramid

from conftest import smooth_rgb


def test_openslide_reads_every_level_and_mpp(tmp_path):
    img = smooth_rgb(1100, 1700)
    path = tmp_path / "out.tiff"
    write_pyramid(path, iter_row_blocks(img, 300), img.shape, mpp=(0.25, 0.25), tile_size=256, quality=95)
    shapes = level_shapes(1100, 1700, 256)
    assert shapes[-1] == (138, 213) and len(shapes) == 4
    with openslide.OpenSlide(str(path)) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert s.level_count == len(shapes)
        assert [tuple(d) for d in s.level_dimensions] == [(w, h) for h, w in shapes]
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25, rel=1e-4)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.25, rel=1e-4)
        assert int(s.properties["openslide.level[0].tile-width"]) == 256
        lvl0 = np.asarray(s.read_region((0, 0), 0, (1700, 1100)))[..., :3]
        lvl2 = np.asarray(s.read_region((0, 0), 2, shapes[2][::-1]))[..., :3]
    # JPEG q95 of a smooth image: close to the input
    assert np.abs(lvl0.astype(int) - img).mean() < 2.0
    ref2 = downsample2(downsample2(img, "mean"), "mean")
    assert np.abs(lvl2.astype(int) - ref2).mean() < 2.5
    with tifffile.TiffFile(path) as t:
        assert t.is_bigtiff
        pages = t.pages
        assert pages[0].is_tiled and pages[0].compression == tifffile.COMPRESSION.JPEG
        assert all(p.subfiletype == 1 for p in list(pages)[1:])
        assert not pages[0].subifds  # OpenSlide ignores SubIFDs: levels live in the main chain
        assert "MPP = 0.250000" in pages[0].description
        # resolution tags: 10^4 / mpp pixels per centimetre
        xr = pages[0].tags["XResolution"].value
        assert xr[0] / xr[1] == pytest.approx(4e4, rel=1e-4)
        assert pages[0].tags["ResolutionUnit"].value == 3
        thumb = pages[-1]
        assert not thumb.is_tiled and thumb.description == "thumbnail"


def test_labels_are_lossless_with_nearest_levels(tmp_path):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 100000, (700, 900), dtype=np.int32)
    path = tmp_path / "labels.tiff"
    write_pyramid(path, iter_row_blocks(lab, 128), lab.shape, dtype=np.int32, compression="zlib", mpp=0.5,
                  tile_size=256)
    with tifffile.TiffFile(path) as t:
        assert t.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(t.pages[0].asarray(), lab)
        np.testing.assert_array_equal(t.pages[1].asarray(), lab[::2, ::2])
        np.testing.assert_array_equal(t.pages[2].asarray(), lab[::4, ::4])


def test_lossless_rgb_roundtrip_through_openslide(tmp_path):
    img = smooth_rgb(600, 520)
    path = tmp_path / "z.tiff"
    write_pyramid(path, iter_row_blocks(img, 100), img.shape, mpp=0.5, compression="zlib", tile_size=256)
    with openslide.OpenSlide(str(path)) as s:
        np.testing.assert_array_equal(np.asarray(s.read_region((0, 0), 0, (520, 600)))[..., :3], img)


def test_failed_write_leaves_nothing(tmp_path):
    img = smooth_rgb(300, 300)
    path = tmp_path / "bad.tiff"

    def broken_rows():
        yield img[:100]
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        write_pyramid(path, broken_rows(), img.shape, tile_size=128)
    assert list(tmp_path.iterdir()) == []


def test_short_stream_is_an_error(tmp_path):
    img = smooth_rgb(300, 300)
    with pytest.raises(PathgenError, match="rows"):
        write_pyramid(tmp_path / "x.tiff", iter([img[:200]]), img.shape, tile_size=128)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_unless_overwrite(tmp_path):
    img = smooth_rgb(64, 64)
    path = tmp_path / "o.tiff"
    write_pyramid(path, [img], img.shape, tile_size=64)
    with pytest.raises(PathgenError, match="exists"):
        write_pyramid(path, [img], img.shape, tile_size=64)
    write_pyramid(path, [img], img.shape, tile_size=64, overwrite=True)


def test_ome_zarr_multiscale(tmp_path):
    import zarr

    img = smooth_rgb(500, 700)
    path = tmp_path / "out.zarr"
    write_ome_zarr(path, iter_row_blocks(img, 64), img.shape, tile_size=128, mpp=0.5)
    root = zarr.open_group(str(path), mode="r")
    ms = root.attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2", "3"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(np.moveaxis(root["0"][:], 0, -1), img)
    np.testing.assert_array_equal(np.moveaxis(root["1"][:], 0, -1), downsample2(img, "mean"))


def _tiles_of(img, t, full_edges):
    h, w = img.shape[:2]
    for y in range(0, h, t):
        for x in range(0, w, t):
            tile = img[y:y + t, x:x + t]
            if full_edges and tile.shape[:2] != (t, t):  # engine-style windows: padded past the edge
                tile = np.pad(tile, ((0, t - tile.shape[0]), (0, t - tile.shape[1]), (0, 0)), mode="reflect")
            yield tile


@pytest.mark.parametrize("full_edges", [False, True])
def test_tile_stream_levels_equal_whole_image_reduction(tmp_path, full_edges):
    """Tiles in raster order (clipped or padded at the edges) give exactly the pyramid of the whole image: each
    level is the 2×2 mean of the level above, pieced together from per-tile reductions."""
    from pathgen.io.pyramid import write_pyramid_tiles

    img = smooth_rgb(333, 517)
    path = tmp_path / "tiles.tiff"
    write_pyramid_tiles(path, _tiles_of(img, 64, full_edges), img.shape, compression="zlib", tile_size=64,
                        maxworkers=3)
    ref = img
    with tifffile.TiffFile(path) as t:
        levels = [p for p in t.pages if p.is_tiled]
        assert len(levels) == len(level_shapes(333, 517, 64))
        for k, page in enumerate(levels):
            np.testing.assert_array_equal(page.asarray(), ref, err_msg=f"level {k}")
            ref = downsample2(ref, "mean")


def test_tile_stream_of_the_wrong_length_is_an_error(tmp_path):
    from pathgen.io.pyramid import write_pyramid_tiles

    img = smooth_rgb(200, 200)
    tiles = list(_tiles_of(img, 64, False))
    with pytest.raises(PathgenError, match="ended after 15 of 16 tiles"):
        write_pyramid_tiles(tmp_path / "short.tiff", iter(tiles[:-1]), img.shape, tile_size=64)
    with pytest.raises(PathgenError, match="more than the 16 tiles"):
        write_pyramid_tiles(tmp_path / "long.tiff", iter(tiles + tiles[:1]), img.shape, tile_size=64)
    with pytest.raises(PathgenError, match="shape"):
        write_pyramid_tiles(tmp_path / "bad.tiff", iter([t[:10] for t in tiles]), img.shape, tile_size=64)
    assert not any(tmp_path.iterdir())  # nothing left behind, scratch included


def test_jpeg_tiles_decode_like_tifffiles_own_encoding(tmp_path):
    """Tiles are JPEG-encoded by pathgen's pool, not by tifffile: interior tiles must be byte-identical to
    tifffile's encoding for the same tags (YCbCr 4:2:0), so every reader decodes them the same way."""
    img = smooth_rgb(512, 512)
    ours, theirs = tmp_path / "ours.tiff", tmp_path / "theirs.tiff"
    write_pyramid(ours, [img], img.shape, tile_size=256, quality=85)
    tifffile.imwrite(theirs, img, tile=(256, 256), compression="jpeg", compressionargs={"level": 85},
                     photometric="rgb")
    with tifffile.TiffFile(ours) as a, tifffile.TiffFile(theirs) as b:
        pa, pb = a.pages[0], b.pages[0]
        assert pa.photometric == pb.photometric and pa.tags["YCbCrSubSampling"].value == (2, 2)
        ra, rb = ours.read_bytes(), theirs.read_bytes()
        for oa, na, ob, nb in zip(pa.dataoffsets, pa.databytecounts, pb.dataoffsets, pb.databytecounts):
            assert ra[oa:oa + na] == rb[ob:ob + nb]
