"""`pathgen normalize` and `pathgen stain fit` on image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathgen.cli import main
from pathgen.cli.normalize import _is_slide

from test_stain_core import E_REF, H_REF, render, unit


@pytest.fixture()
def images(tmp_path):
    src, _ = render(np.stack([unit([0.55, 0.75, 0.37]), unit([0.20, 0.85, 0.48])]), size=64, seed=1)
    tgt, _ = render(np.stack([H_REF, E_REF]), size=64, seed=2)
    Image.fromarray(src).save(tmp_path / "src.png")
    Image.fromarray(tgt).save(tmp_path / "tgt.png")
    return tmp_path, src, tgt


def test_normalize_png(images, capsys):
    d, src, _ = images
    before = (d / "src.png").read_bytes()
    out = d / "out.png"
    rc = main(["normalize", str(d / "src.png"), "-o", str(out), "--method", "macenko", "--target",
               str(d / "tgt.png"), "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    arr = np.asarray(Image.open(out))
    assert arr.shape == src.shape and arr.dtype == np.uint8 and not np.array_equal(arr, src)
    assert (d / "src.png").read_bytes() == before  # input byte-identical
    cfg = json.loads((d / "out.png.json").read_text())
    assert cfg["config"]["method"] == "macenko" and cfg["sources"]["src.png"]["tissue_pixels"] > 0
    # refused without --overwrite, one line on stderr, exit 1
    rc = main(["normalize", str(d / "src.png"), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "output exists" in err and len(err.splitlines()) == 1
    rc = main(["normalize", str(d / "src.png"), "-o", str(out), "--overwrite", "--method", "vahadane", "--quiet"])
    assert rc == 0


def test_normalize_bad_inputs_one_line_errors(images, capsys):
    d, _, _ = images
    (d / "notes.png").write_text("not an image")
    cases = [
        (["normalize", str(d / "missing.png"), "-o", str(d / "o.png")], "no such file"),
        (["normalize", str(d / "notes.png"), "-o", str(d / "o.png")], "cannot read image"),
        (["normalize", str(d / "src.png"), "-o", str(d / "o.bmp")], "not a PNG, JPEG or TIFF"),
        (["normalize", str(d / "src.png"), "-o", str(d / "o.png"), "--method", "spams"], "unknown method"),
        (["normalize", str(d / "src.png"), "-o", str(d / "o.png"), "--i0", "a,b"], "I0"),
        (["normalize", str(d / "src.png"), "-o", str(d / "o.png"), "--target", str(d / "nope.json")], "no such"),
    ]
    for argv, expected in cases:
        rc = main(argv + ["--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and expected in err and len(err.splitlines()) == 1, (argv, err)
        assert not (d / "o.png").exists()


def test_stain_fit_then_normalize_folder_with_json_target(images, capsys):
    d, src, _ = images
    Image.fromarray(src).save(d / "src2.jpg", quality=95)
    tifffile.imwrite(d / "src3.tif", src, photometric="rgb")
    rc = main(["stain", "fit", str(d / "tgt.png"), "-o", str(d / "stain.json"), "--method", "vahadane"])
    out = capsys.readouterr().out
    assert rc == 0 and "H: OD vector" in out
    stain = json.loads((d / "stain.json").read_text())
    assert stain["format"] == "pathgen.stain/1" and len(stain["vectors"]) == 2 and stain["percentile"] == 99.0
    inputs = d / "in"
    inputs.mkdir()
    for name in ("src.png", "src2.jpg", "src3.tif"):
        (inputs / name).write_bytes((d / name).read_bytes())
    rc = main(["normalize", str(inputs), "-o", str(d / "outdir"), "--target", str(d / "stain.json"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    outs = sorted(p.name for p in (d / "outdir").iterdir())
    assert outs == ["config.json", "src.png", "src2.jpg", "src3.tif"]
    assert np.asarray(Image.open(d / "outdir" / "src2.jpg")).shape == src.shape
    assert Image.open(d / "outdir" / "src2.jpg").format == "JPEG"
    assert tifffile.imread(d / "outdir" / "src3.tif").shape == src.shape
    # glob input, per-tile mode; the second run refuses to overwrite the first's outputs
    pattern = str(inputs / "*.png")
    rc = main(["normalize", pattern, "-o", str(d / "globdir"), "--per-tile", "--tile-size", "32", "--quiet"])
    assert rc == 0 and (d / "globdir" / "src.png").exists()
    rc = main(["normalize", pattern, "-o", str(d / "globdir"), "--quiet"])
    assert rc == 1 and "output exists" in capsys.readouterr().err


def test_stain_fit_refuses_blank(tmp_path, capsys):
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(tmp_path / "blank.png")
    rc = main(["stain", "fit", str(tmp_path / "blank.png"), "-o", str(tmp_path / "s.json")])
    assert rc == 1 and "no tissue" in capsys.readouterr().err and not (tmp_path / "s.json").exists()


def test_is_slide(tmp_path):
    for name in ("a.svs", "a.ndpi", "a.mrxs", "b.DCM"):
        assert _is_slide(tmp_path / name)
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    assert not _is_slide(flat)
    pyramid = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(pyramid) as tif:
        tif.write(np.zeros((64, 64, 3), np.uint8), photometric="rgb", tile=(16, 16))
        tif.write(np.zeros((32, 32, 3), np.uint8), photometric="rgb", tile=(16, 16), subfiletype=1)
    assert _is_slide(pyramid)
    assert not _is_slide(tmp_path / "x.png")
