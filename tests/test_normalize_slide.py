"""Whole-slide normalisation through the engine (slide-level fit) and the QC report."""

import hashlib
import json
from pathlib import Path

import numpy as np
import openslide
import pytest

from pathgen.cli import main
from pathgen.data.synth import render_rgb, render_tile
from pathgen.engine import EngineConfig
from pathgen.errors import PathgenError
from pathgen.stain.normalize import StainNormalizer
from pathgen.stain.slide import fit_slide, normalize_slide


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_slide_to_real_target_cli(real_svs, real_target, tmp_path, capsys):
    out = tmp_path / "norm.tiff"
    before = sha(real_svs)
    rc = main(["normalize", str(real_svs), "-o", str(out), "--method", "macenko", "--target", str(real_target),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sha(real_svs) == before  # the input is byte-identical afterwards
    with openslide.OpenSlide(str(real_svs)) as src, openslide.OpenSlide(str(out)) as dst:
        assert dst.dimensions == src.dimensions and dst.level_count >= 3
        assert float(dst.properties["openslide.mpp-x"]) == pytest.approx(0.499)
        a = np.asarray(src.read_region((800, 1200), 0, (512, 512)))[..., :3].astype(float)
        b = np.asarray(dst.read_region((800, 1200), 0, (512, 512)))[..., :3].astype(float)
    assert np.isfinite(b).all() and np.abs(a - b).mean() > 3  # colours changed
    side = json.loads((tmp_path / "norm.tiff.json").read_text())
    assert side["config"]["normalizer"]["source"]["vectors"] is not None
    assert side["config"]["per_tile"] is False


def test_slide_level_fit_is_consistent_across_tiles(make_slide, tmp_path):
    """A slide whose left half is haematoxylin-rich and right half eosin-rich: slide-level fitting uses one stain
    matrix for both halves, per-tile fitting flips colours between them."""
    left = render_tile(256, seed=1, site="A")
    right = render_tile(256, seed=2, site="A")
    conc_l = left.concentrations.copy()
    conc_l[..., 1] *= 0.2  # almost no eosin on the left
    conc_r = right.concentrations.copy()
    conc_r[..., 0] *= 0.2  # almost no haematoxylin on the right
    img = np.concatenate([render_rgb(conc_l, "A"), render_rgb(conc_r, "A")], axis=1)
    img = np.concatenate([img, img], axis=0)
    src = make_slide(img, mpp=0.5, tile=128)
    target = render_rgb(render_tile(256, seed=3, site="C").concentrations, "C")
    outs = {}
    for per_tile in (False, True):
        norm = StainNormalizer("macenko").fit_target(target)
        out = tmp_path / f"n_{per_tile}.tiff"
        normalize_slide(src, out, norm, per_tile=per_tile, engine=EngineConfig(tile_size=128, overlap=16),
                        skip_background=False)
        with openslide.OpenSlide(str(out)) as s:
            outs[per_tile] = np.asarray(s.read_region((0, 0), 0, (512, 512)))[..., :3].astype(float)
    # the same tissue in the top and bottom half gets identical colours either way; the slide-level output keeps
    # the input's contrast between the halves, the per-tile output does not
    contrast_in = np.abs(img[:, :256].mean((0, 1)) - img[:, 256:].mean((0, 1))).sum()
    contrast_slide = np.abs(outs[False][:, :256].mean((0, 1)) - outs[False][:, 256:].mean((0, 1))).sum()
    assert contrast_slide > 0.5 * contrast_in
    assert np.isfinite(outs[True]).all()


def test_blank_slide_is_a_one_line_error(make_slide, tmp_path, capsys):
    src = make_slide(np.full((400, 400, 3), 244, np.uint8), name="glass.tiff")
    norm = StainNormalizer("macenko").fit_target(None)
    with pytest.raises(PathgenError, match="no tissue"):
        fit_slide(src, norm)
    rc = main(["normalize", str(src), "-o", str(tmp_path / "o.tiff"), "--method", "macenko"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no tissue" in err[0] and str(src) in err[0]
    assert not (tmp_path / "o.tiff").exists()


def test_qc_slide_pair_and_report(real_svs, tmp_path, capsys):
    from pathgen.pipelines.qc import slide_pair_ssim

    same = slide_pair_ssim(real_svs, real_svs, tile=256, max_tiles=10)
    assert same.ssim == pytest.approx(1.0) and same.ssim_std == pytest.approx(0.0) and same.n_tiles == 10
    out = tmp_path / "n.tiff"
    norm = StainNormalizer("macenko").fit_target(None)
    normalize_slide(real_svs, out, norm, engine=EngineConfig(tile_size=512, overlap=32))
    rc = main(["qc", "report", str(real_svs), str(out), "-o", str(tmp_path / "r.html"), "--max-tiles", "20"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # before, after
    assert page.count("<svg") == 1 and "grayscale SSIM of a tissue tile" in page  # the histogram, with axes
    expect = slide_pair_ssim(real_svs, out, tile=256, max_tiles=20)
    assert f"{expect.ssim:.4f} ± {expect.ssim_std:.4f}" in page
    assert "source (slide-level fit)" in page and "not recorded" not in page
    rc = main(["qc", "ssim", str(real_svs), str(out), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and 0.5 < d["ssim"] < 1.0 and d["ssim_std"] >= 0


def test_batch_resume_skips_finished_outputs(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(render_tile(128, seed=i, site="B").image).save(src / f"t{i}.png")
    out = tmp_path / "out"
    assert main(["normalize", str(src), "-o", str(out), "--method", "macenko", "-q"]) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    (out / "t1.png").unlink()  # as if the job had been killed before t1 finished
    assert main(["normalize", str(src), "-o", str(out), "--method", "macenko"]) != 0  # refuses to clobber
    capsys.readouterr()
    assert main(["normalize", str(src), "-o", str(out), "--method", "macenko", "--resume", "-q"]) == 0
    assert "1 to go" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["t0.png", "t1.png", "t2.png"]
    for name in ("t0.png", "t2.png"):
        assert (out / name).stat().st_mtime_ns == stamps[name]


def test_saasn_method_on_image_and_slide(make_slide, tmp_path, capsys):
    """`pathgen normalize --method saasn` with the shipped model: image in → image out, slide in → pyramid out,
    deterministic."""
    from PIL import Image

    tile = render_tile(160, seed=5, site="D").image
    Image.fromarray(tile).save(tmp_path / "in.png")
    assert main(["normalize", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--method", "saasn",
                 "-q"]) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == tile.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - tile).mean() > 1
    slide = make_slide(np.concatenate([tile, tile], axis=1), mpp=0.5, tile=128)
    for name in ("a.tiff", "b.tiff"):
        assert main(["normalize", str(slide), "-o", str(tmp_path / name), "--method", "saasn", "-q"]) == 0
    with openslide.OpenSlide(str(tmp_path / "a.tiff")) as a, openslide.OpenSlide(str(tmp_path / "b.tiff")) as b:
        pa = np.asarray(a.read_region((0, 0), 0, a.dimensions))
        np.testing.assert_array_equal(pa, np.asarray(b.read_region((0, 0), 0, b.dimensions)))
    capsys.readouterr()
    assert main(["normalize", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.png"), "--method", "saasn",
                 "--target", str(tmp_path / "in.png")]) != 0
    assert "no --target" in capsys.readouterr().err


def test_qc_colour_distance_to_the_target_by_hand_and_in_the_report(real_svs, real_target, tmp_path, capsys):
    from pathgen.metrics import colour_distance
    from pathgen.pipelines.qc import slide_pair_ssim
    from pathgen.io.image import read_image
    from pathgen.io.slide import open_slide
    from PIL import Image

    out = tmp_path / "n.tiff"
    norm = StainNormalizer("macenko").fit_target(str(real_target))
    normalize_slide(real_svs, out, norm, engine=EngineConfig(tile_size=512, overlap=32))
    res = slide_pair_ssim(real_svs, out, tile=64, max_tiles=10, target=real_target)
    # by hand, on the same tiles (small enough that no colour sample is thinned)
    with open_slide(real_svs) as sa, open_slide(out) as sb:
        src = [sa.read_region((t["x"], t["y"]), 0, (64, 64)) for t in res.tiles]
        dst = [sb.read_region((t["x"], t["y"]), 0, (64, 64)) for t in res.tiles]
    target = read_image(real_target)
    assert res.colour_to_target == pytest.approx(colour_distance(dst, src, [target]))
    assert res.colour_before == pytest.approx(colour_distance(src, src, [target]))
    # a target made of the very tiles compared has the same colours: distance 0, before and after "no change"
    own = tmp_path / "own.png"
    Image.fromarray(np.concatenate(src, axis=1)).save(own)
    itself = slide_pair_ssim(real_svs, real_svs, tile=64, max_tiles=10, target=own)
    assert itself.colour_to_target == itself.colour_before == pytest.approx(0.0, abs=1e-9)
    assert res.colour_before > 1.0  # the other lab's target image is not
    rc = main(["qc", "report", str(real_svs), str(out), "-o", str(tmp_path / "r.html"), "--max-tiles", "20",
               "--target", str(real_target)])
    text = capsys.readouterr().out
    assert rc == 0 and "colour distance to the target" in text
    assert "Colour distance to the target" in (tmp_path / "r.html").read_text()


def test_demo_pipeline_writes_every_method_and_scores_both_ways(tmp_path, capsys):
    """`make demo`'s pipeline on the real sample data, with a classical method and the shipped SAASN model."""
    import openslide

    out = tmp_path / "demo"
    config = tmp_path / "demo.toml"
    config.write_text(f'pipeline = "demo"\noutput_dir = "{out}"\nmethods = ["macenko", "saasn"]\n'
                      'tile_size = 512\noverlap = 32\nseed = 0\noverwrite = true\ndevice = "cpu"\n')
    assert main(["run", str(config), "--quiet"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"macenko", "saasn"} and summary["colour_before"] > 0
    for method, row in summary["methods"].items():
        with openslide.OpenSlide(row["output"]) as s:
            assert s.level_count >= 2 and s.dimensions == (2220, 2967)
        assert 0.5 < row["ssim"] < 1.0 and row["colour_to_target"] > 0
        assert "Colour distance to the target" in Path(row["report"]).read_text()
    printed = capsys.readouterr().out
    assert "saasn:" in printed and "colour distance to the target" in printed
