"""Opening slides and images through one interface."""

import numpy as np
import pytest
from PIL import Image

from pathgen.errors import PathgenError
from pathgen.io.slide import open_slide

from conftest import smooth_rgb


def test_generic_tiff_levels_regions_and_dask(make_slide):
    img = smooth_rgb(900, 1300)
    path = make_slide(img, mpp=0.25)
    with open_slide(path) as s:
        # OpenSlide for metadata, tifffile + imagecodecs for pixels (same pixels, less CPU)
        assert s.backend == "openslide+tifffile" and s.vendor == "generic-tiff"
        assert s.dimensions == (1300, 900)
        assert s.mpp == pytest.approx((0.25, 0.25))
        assert s.level_count == 4
        np.testing.assert_array_equal(s.read_region((100, 50), 0, (300, 200)), img[50:250, 100:400])
        # partially outside: white padding
        r = s.read_region((1200, 800), 0, (200, 200))
        np.testing.assert_array_equal(r[:100, :100], img[800:, 1200:])
        assert (r[100:] == 255).all() and (r[:, 100:] == 255).all()
        lazy = s.to_dask(0, chunk=256)
        assert lazy.shape == (900, 1300, 3) and lazy.chunksize == (256, 256, 3)
        np.testing.assert_array_equal(lazy[300:400, 700:900].compute(), img[300:400, 700:900])
        assert s.level_mpp(1) == pytest.approx((0.5, 0.5), rel=1e-3)


def test_fast_path_pixels_equal_openslide(make_slide):
    import openslide

    img = smooth_rgb(700, 900)
    path = make_slide(img, mpp=0.25, compression="jpeg")
    with open_slide(path) as s, openslide.OpenSlide(str(path)) as o:
        assert s.backend == "openslide+tifffile"
        for level in range(s.level_count):
            w, h = s.level_dimensions[level]
            ref = np.asarray(o.read_region((0, 0), level, (w, h)))[..., :3]
            np.testing.assert_array_equal(s.read_region((0, 0), level, (w, h)), ref)


def test_read_region_at_target_mpp(make_slide):
    img = smooth_rgb(800, 800)
    with open_slide(make_slide(img, mpp=0.25)) as s:
        r = s.read_region_mpp((0, 0), 0.5, (400, 400))  # uses the ×2 level directly
        ref = s.read_region((0, 0), 1, (400, 400))
        np.testing.assert_array_equal(r, ref)
        r2 = s.read_region_mpp((0, 0), 1.0 / 3, (300, 300))  # resampled from level 0
        assert r2.shape == (300, 300, 3)
        # 1/3 µm/px from 0.25 µm/px: 400 level-0 pixels shrink to 300 (box filter)
        ref2 = np.asarray(Image.fromarray(img[:400, :400]).resize((300, 300), Image.Resampling.BOX))
        assert np.abs(r2.astype(int) - ref2).mean() < 1.0


def test_tifffile_backend_for_subifd_ome_pyramid(tmp_path):
    import tifffile

    img = smooth_rgb(600, 500)
    path = tmp_path / "ome.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as w:
        w.write(img, subifds=1, tile=(256, 256), compression="zlib", photometric="rgb",
                metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        w.write(img[::2, ::2], subfiletype=1, tile=(256, 256), compression="zlib", photometric="rgb")
    with open_slide(path) as s:
        # OpenSlide does not read OME SubIFD pyramids; tifffile's zarr store does.
        assert s.backend == "tifffile"
        assert s.level_count == 2 and s.dimensions == (500, 600)
        assert s.mpp == pytest.approx((0.5, 0.5))
        np.testing.assert_array_equal(s.read_region((10, 20), 0, (100, 50)), img[20:70, 10:110])
        np.testing.assert_array_equal(s.to_dask(1)[:].compute(), img[::2, ::2])


def test_plain_png_is_a_one_level_slide(tmp_path):
    img = smooth_rgb(120, 160)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    with open_slide(path) as s:
        assert s.backend == "pillow" and s.level_count == 1 and s.mpp is None
        with pytest.raises(PathgenError, match="no pixel size") as err:
            s.require_mpp()
        assert err.value.param == "mpp"  # the command line names its own option
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (160, 120)), img)
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == (0.5, 0.5) and s.mpp_source == "override"


def test_real_svs(real_svs):
    with open_slide(real_svs) as s:
        assert s.vendor == "aperio" and s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx((0.499, 0.499))
        assert {"thumbnail", "label", "macro"} <= set(s.associated_names())
        assert s.associated_image("thumbnail").ndim == 3
        assert s.read_region((1000, 1000), 0, (64, 64)).std() > 5  # tissue, not glass


@pytest.mark.parametrize("case", ["missing", "dir", "empty", "text", "truncated"])
def test_bad_files_raise_one_line_errors(tmp_path, make_slide, case):
    path = tmp_path / "bad.svs"
    if case == "dir":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a slide\n" * 10)
    elif case == "truncated":
        good = make_slide(smooth_rgb(700, 700), name="good.tiff", compression="jpeg")
        data = good.read_bytes()
        path = tmp_path / "trunc.tiff"
        path.write_bytes(data[: len(data) // 3])
    with pytest.raises(PathgenError) as err:
        with open_slide(path) as s:
            s.read_region((0, 0), 0, s.dimensions)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg


def test_region_outside_the_slide(make_slide):
    with open_slide(make_slide(smooth_rgb(100, 100))) as s:
        with pytest.raises(PathgenError, match="outside the slide"):
            s.read_region((500, 500), 0, (10, 10))


def test_direct_tile_decoding_equals_tifffiles_reader(tmp_path):
    """The pread + segment-decoder path returns what tifffile's zarr store returns, for unaligned regions that
    span several tiles, touch the edges and sit on coarser levels."""
    from pathgen.io.pyramid import iter_row_blocks, write_pyramid
    from pathgen.io.slide import _TiffBackend

    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)
    path = tmp_path / "p.tiff"
    write_pyramid(path, iter_row_blocks(img, 128), img.shape, tile_size=128, compression="jpeg", quality=80)
    b = _TiffBackend(str(path))
    assert b._direct, "a plain tiled pyramid takes the direct path"
    for level, (x, y, w, h) in [(0, (37, 51, 300, 260)), (0, (640, 500, 260, 200)), (1, (10, 20, 300, 200)),
                                (2, (0, 0, 225, 175))]:
        x1, y1 = min(x + w, b.level_dimensions[level][0]), min(y + h, b.level_dimensions[level][1])
        np.testing.assert_array_equal(b._read_direct(level, x, y, x1, y1), b._read_zarr(level, x, y, x1, y1))
    b.close()
