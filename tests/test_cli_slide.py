"""`pathgen info | convert | tissue | region` end to end, including every kind of bad input."""

import json
import os

import numpy as np
import openslide
import pytest

from pathgen.cli import main

from conftest import smooth_rgb, tissue_like


def run(args, capsys):
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_json(make_slide, capsys):
    path = make_slide(smooth_rgb(600, 800), mpp=0.5)
    rc, out, _ = run(["info", str(path), "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert d["width"] == 800 and d["height"] == 600
    assert d["levels"][0] == [800, 600] and len(d["levels"]) == 3
    assert d["mpp"] == pytest.approx([0.5, 0.5]) and d["vendor"] == "generic-tiff"


def test_convert_real_svs_reopens_in_openslide(real_svs, tmp_path, capsys):
    out = tmp_path / "cmu.tiff"
    before = real_svs.read_bytes()
    rc, _, err = run(["convert", str(real_svs), "-o", str(out), "--tile-size", "256", "--quiet"], capsys)
    assert rc == 0, err
    assert real_svs.read_bytes() == before  # input untouched
    with openslide.OpenSlide(str(real_svs)) as src, openslide.OpenSlide(str(out)) as dst:
        assert dst.dimensions == src.dimensions
        assert dst.level_count == 5  # 2967 → 1484 → 742 → 371 → 186 rows (last fits one 256 tile)
        assert float(dst.properties["openslide.mpp-x"]) == pytest.approx(float(src.properties["openslide.mpp-x"]))
        a = np.asarray(src.read_region((500, 700), 0, (512, 512)))[..., :3].astype(int)
        b = np.asarray(dst.read_region((500, 700), 0, (512, 512)))[..., :3].astype(int)
        assert np.abs(a - b).mean() < 3.0  # one JPEG generation at q90
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_convert_lossless_is_pixel_exact(make_slide, tmp_path, capsys):
    img = smooth_rgb(700, 900)
    src = make_slide(img, mpp=0.25)
    out = tmp_path / "exact.tiff"
    rc, _, err = run(["convert", str(src), "-o", str(out), "--compression", "zlib", "--tile-size", "256", "-q"],
                     capsys)
    assert rc == 0, err
    with openslide.OpenSlide(str(out)) as s:
        np.testing.assert_array_equal(np.asarray(s.read_region((0, 0), 0, (900, 700)))[..., :3], img)


def test_convert_to_ome_zarr(make_slide, tmp_path, capsys):
    import zarr

    img = smooth_rgb(300, 400)
    rc, _, err = run(["convert", str(make_slide(img)), "-o", str(tmp_path / "o.zarr"), "--tile-size", "128",
                      "--compression", "zlib", "-q"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.moveaxis(zarr.open_group(str(tmp_path / "o.zarr"))["0"][:], 0, -1), img)


def test_tissue_mask_png(make_slide, tmp_path, capsys):
    from PIL import Image

    img = tissue_like(800, 1000)
    path = make_slide(img, mpp=2.0)
    rc, out, err = run(["tissue", str(path), "-o", str(tmp_path / "m.png"), "--max-size", "500"], capsys)
    assert rc == 0, err
    m = np.asarray(Image.open(tmp_path / "m.png")) > 0
    assert m.shape == (400, 500)
    truth = (img != 242).any(-1)[::2, ::2]
    assert (m == truth).mean() > 0.97


def test_region_command(make_slide, tmp_path, capsys):
    from PIL import Image

    img = smooth_rgb(300, 300)
    rc, _, err = run(["region", str(make_slide(img)), "-o", str(tmp_path / "r.png"), "--x", "10", "--y", "20",
                      "--width", "50", "--height", "40"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r.png")), img[20:60, 10:60])


def _bad(tmp_path, make_slide, case):
    """(args, path that must appear in the error)."""
    out = tmp_path / "out.tiff"
    if case == "missing":
        p = tmp_path / "nope.svs"
        return ["convert", str(p), "-o", str(out)], p, out
    if case == "directory":
        return ["convert", str(tmp_path), "-o", str(out)], tmp_path, out
    if case == "empty":
        p = tmp_path / "empty.svs"
        p.write_bytes(b"")
        return ["convert", str(p), "-o", str(out)], p, out
    if case == "unsupported":
        p = tmp_path / "notes.svs"
        p.write_text("hello\n" * 100)
        return ["convert", str(p), "-o", str(out)], p, out
    if case == "corrupt":
        p = tmp_path / "corrupt.tiff"
        p.write_bytes(b"II*\x00" + os.urandom(5000))
        return ["convert", str(p), "-o", str(out)], p, out
    if case == "truncated":
        good = make_slide(smooth_rgb(900, 900), name="good.tiff", compression="jpeg")
        p = tmp_path / "trunc.tiff"
        p.write_bytes(good.read_bytes()[:40000])
        return ["convert", str(p), "-o", str(out), "-q"], p, out
    if case == "no-tissue":
        p = make_slide(np.full((600, 600, 3), 245, np.uint8), name="glass.tiff")
        return ["tissue", str(p), "-o", str(tmp_path / "m.png")], p, tmp_path / "m.png"
    if case == "region-outside":
        p = make_slide(smooth_rgb(100, 100), name="small.tiff")
        return ["region", str(p), "-o", str(tmp_path / "r.png"), "--x", "500", "--y", "0", "--width", "10",
                "--height", "10"], p, tmp_path / "r.png"
    if case == "unwritable":
        p = make_slide(smooth_rgb(100, 100), name="ok.tiff")
        return ["convert", str(p), "-o", str(tmp_path / "no" / "such" / "dir.tiff")], tmp_path / "no" / "such", \
            tmp_path / "no" / "such" / "dir.tiff"
    if case == "exists":
        p = make_slide(smooth_rgb(100, 100), name="ok2.tiff")
        out.write_bytes(b"keep me")
        return ["convert", str(p), "-o", str(out)], out, None
    if case == "onto-input":
        p = make_slide(smooth_rgb(100, 100), name="same.tiff")
        return ["convert", str(p), "-o", str(p), "--overwrite"], p, None
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "unsupported", "corrupt", "truncated",
                                  "no-tissue", "region-outside", "unwritable", "exists", "onto-input"])
def test_bad_input_one_line_error(tmp_path, make_slide, capsys, case):
    args, named, out = _bad(tmp_path, make_slide, case)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    rc, stdout, err = run(args, capsys)
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("pathgen: error:") and str(named) in lines[0]
    assert "Traceback" not in err
    if out is not None:
        assert not out.exists()
    for p, data in before.items():  # nothing that existed was changed
        assert p.read_bytes() == data
    assert not [p for p in tmp_path.rglob("*.part")]


def test_debug_shows_traceback(tmp_path):
    """The console script prints one line without --debug and the full traceback with it (anywhere on the line)."""
    import subprocess
    import sys

    script = "import sys; from pathgen.cli import run; sys.argv[0] = 'pathgen'; run()"
    args = ["convert", str(tmp_path / "nope.svs"), "-o", str(tmp_path / "x.tiff")]
    plain = subprocess.run([sys.executable, "-c", script] + args, capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [f"pathgen: error: {tmp_path / 'nope.svs'}: no such file"]
    debug = subprocess.run([sys.executable, "-c", script] + args + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "pathgen.errors.PathgenError" in debug.stderr and "nope.svs: no such file" in debug.stderr
    assert "open_slide" in debug.stderr  # the frames of the library call, not just the message
