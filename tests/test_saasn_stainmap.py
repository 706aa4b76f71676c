"""SAASN stain-map mode: the fit recovers a known map of optical density, the map is pointwise (no structure
invented, one stain per slide), slides and images go through it deterministically, bad settings are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_tiny_saasn
from pathgen.cli import main
from pathgen.engine import EngineConfig
from pathgen.data.synth import render_tile
from pathgen.errors import PathgenError
from pathgen.metrics.image import ssim_gray
from pathgen.saasn.infer import SaasnNormalizer, normalize_image_saasn, normalize_slide_saasn
from pathgen.saasn.stainmap import StainMap, fit_stain_map
from pathgen.stain.optical import od_to_rgb, rgb_to_od

torch.set_num_threads(1)

#: a stain change: darker haematoxylin-like channel mix, a little cross-talk
KNOWN = np.array([[1.30, 0.10, 0.00], [0.00, 0.85, 0.10], [0.05, 0.00, 1.20]])


def _tiles(n=3, size=96, site="D"):
    return [render_tile(size, seed=s, site=site).image for s in range(n)]


def _lookup_is_pointwise(inputs: np.ndarray, outputs: np.ndarray) -> bool:
    """True if every input colour maps to exactly one output colour."""
    seen: dict[tuple, tuple] = {}
    for a, b in zip(inputs.reshape(-1, 3), outputs.reshape(-1, 3)):
        key, val = tuple(a), tuple(b)
        if seen.setdefault(key, val) != val:
            return False
    return True


def test_fit_recovers_a_known_map_and_applying_it_matches_by_hand():
    tiles = _tiles()
    outputs = [od_to_rgb(rgb_to_od(t).astype(np.float64) @ KNOWN) for t in tiles]
    fitted = fit_stain_map(tiles, outputs)
    np.testing.assert_allclose(fitted, KNOWN, atol=0.02)
    applied = StainMap(fitted, 1.0)(np.stack(tiles))
    assert np.abs(applied.astype(int) - np.stack(outputs)).max() <= 2
    # by hand for one pixel: OD = -ln(I/255), times M, back to 255·exp(-OD)
    px = tiles[0][40, 40].astype(np.float64)
    by_hand = np.rint(255 * np.exp(-(-np.log(px / 255) @ (np.eye(3) + 0.5 * (fitted - np.eye(3))))))
    assert np.abs(StainMap(fitted, 0.5)(tiles[0][40:41, 40:41])[0, 0] - by_hand).max() <= 1


def test_strength_zero_is_the_identity_and_glass_stays_glass():
    tile = _tiles(1)[0]
    assert np.abs(StainMap(KNOWN, 0.0)(tile).astype(int) - tile).max() <= 1
    glass = np.full((4, 4, 3), 255, np.uint8)
    assert (StainMap(KNOWN, 1.0)(glass) == 255).all()
    half = StainMap(KNOWN, 0.5)(tile).astype(int)
    full = StainMap(KNOWN, 1.0)(tile).astype(int)
    assert np.abs(half - tile).mean() < np.abs(full - tile).mean()
    assert ssim_gray(StainMap(KNOWN, 1.0)(tile), tile) > 0.9  # a colour map, not a redraw


def test_bad_fits_and_settings_are_refused():
    tile = _tiles(1)[0]
    with pytest.raises(PathgenError, match="strength"):
        StainMap(KNOWN, 1.5)
    with pytest.raises(PathgenError, match="tissue pixels"):
        fit_stain_map([np.full((64, 64, 3), 250, np.uint8)], [np.full((64, 64, 3), 240, np.uint8)])
    with pytest.raises(PathgenError, match="shape"):
        fit_stain_map([tile], [tile[:10]])
    with pytest.raises(PathgenError):
        StainMap(KNOWN)(tile.astype(np.float32))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_saasn(folder, seed=1)
    return folder


def test_slide_in_stain_map_mode_is_pointwise_deterministic_and_recorded(tiny_model, make_slide, tmp_path):
    from pathgen.io.slide import open_slide

    image = np.concatenate([np.concatenate(_tiles(2, 128, "B"), axis=1), np.concatenate(_tiles(2, 128, "D"), axis=1)])
    slide = make_slide(image, name="tissue.tiff", mpp=0.5)
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}.tif"
        report = normalize_slide_saasn(slide, out, tiny_model, EngineConfig(tile_size=64, device="cpu"),
                                       compression="zlib", mode="stain-map", strength=0.8)
        assert report.extra["generator_windows"] == 0  # the generator only saw the fit tiles
        with open_slide(out) as s:
            outs.append(s.read_region((0, 0), 0, (256, 256)))
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], image)
    assert _lookup_is_pointwise(image, outs[0])  # one stain for the whole slide, nothing redrawn
    record = json.loads((tmp_path / "out0.tif.json").read_text())["config"]
    assert record["mode"] == "stain-map" and record["engine"]["overlap"] == 0 and record["fit_level"] == 0
    assert record["engine"]["tile_size"] == 64
    assert record["stain_map"]["strength"] == 0.8 and record["stain_map"]["fit_tiles"] >= 1
    again = StainMap(np.array(record["stain_map"]["matrix"]), 0.8)(image)
    assert np.abs(again.astype(int) - outs[0]).max() <= 1


def test_slide_read_at_an_mpp_fits_its_map_on_the_nearest_level(tiny_model, make_slide, tmp_path):
    from pathgen.stain.slide import SlideFitConfig

    image = np.concatenate([np.concatenate(_tiles(4, 128, site), axis=1) for site in "BDCB"])  # 512 × 512
    slide = make_slide(image, name="big.tiff", mpp=0.25, tile=128)
    out = tmp_path / "half.tif"
    normalize_slide_saasn(slide, out, tiny_model, EngineConfig(tile_size=64, device="cpu"), mpp=0.5,
                          mode="stain-map", strength=0.5, fit_config=SlideFitConfig(tile=64, n_tiles=8))
    record = json.loads((tmp_path / "half.tif.json").read_text())["config"]
    assert record["fit_level"] == 1 and record["mpp"] == 0.5  # level 1 is 0.5 µm/px, as the model reads it


def test_image_path_and_stored_defaults(tiny_model, tmp_path):
    image = np.concatenate(_tiles(2, 96, "C"), axis=1)
    mapped = normalize_image_saasn(image, tiny_model, device="cpu", tile_size=64, overlap=16, mode="stain-map",
                                   strength=1.0)
    assert _lookup_is_pointwise(image, mapped) and not np.array_equal(mapped, image)
    off = normalize_image_saasn(image, tiny_model, device="cpu", tile_size=64, overlap=16, mode="stain-map",
                                strength=0.0)
    assert np.abs(off.astype(int) - image).max() <= 1
    painted = normalize_image_saasn(image, tiny_model, device="cpu", tile_size=64, overlap=16, mode="generator")
    assert not _lookup_is_pointwise(image, painted)
    # a model may store its default mode and strength; explicit arguments override them; bad ones are refused
    cfg_path = tiny_model / "config.json"
    original = cfg_path.read_text()
    try:
        cfg_path.write_text(json.dumps({**json.loads(original), "inference": {"mode": "stain-map", "strength": 0.3}}))
        norm = SaasnNormalizer(tiny_model, device="cpu")
        assert norm.resolve_mode(None, None) == ("stain-map", 0.3)
        assert norm.resolve_mode("generator", None) == ("generator", 0.3)
        with pytest.raises(PathgenError, match="mode"):
            norm.resolve_mode("paint", None)
        with pytest.raises(PathgenError, match="strength"):
            norm.resolve_mode(None, -0.1)
    finally:
        cfg_path.write_text(original)


def test_cli_stain_map_options(tiny_model, tmp_path, capsys):
    tile = _tiles(1, 96, "D")[0]
    Image.fromarray(tile).save(tmp_path / "in.png")
    assert main(["normalize", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--method", "saasn",
                 "--checkpoint", str(tiny_model), "--saasn-mode", "stain-map", "--strength", "0.5", "-q"]) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert _lookup_is_pointwise(tile, out)
    capsys.readouterr()
    assert main(["normalize", str(tmp_path / "in.png"), "-o", str(tmp_path / "bad.png"), "--method", "saasn",
                 "--checkpoint", str(tiny_model), "--strength", "2"]) != 0
    err = capsys.readouterr().err
    assert "strength" in err and "Traceback" not in err and not (tmp_path / "bad.png").exists()
    assert main(["normalize", str(tmp_path / "in.png"), "-o", str(tmp_path / "m.png"), "--strength", "0.5"]) != 0
    assert "--method saasn only" in capsys.readouterr().err
    # an image without tissue has no stain to fit: one line naming it, no output
    Image.fromarray(np.full((64, 64, 3), 245, np.uint8)).save(tmp_path / "glass.png")
    assert main(["normalize", str(tmp_path / "glass.png"), "-o", str(tmp_path / "g.png"), "--method", "saasn",
                 "--checkpoint", str(tiny_model), "--saasn-mode", "stain-map"]) != 0
    err = capsys.readouterr().err
    assert "glass.png" in err and "tissue pixels" in err and not (tmp_path / "g.png").exists()


def test_eval_reports_the_stain_map_rows_with_means(tiny_model, tmp_path):
    from pathgen.saasn.evaluate import evaluate_stain, format_table

    for site, seeds in (("B", (0, 1)), ("D", (2, 3)), ("target", (4, 5))):
        (tmp_path / site).mkdir()
        for s in seeds:
            Image.fromarray(render_tile(64, seed=s, site="A" if site == "target" else site).image).save(
                tmp_path / site / f"{s}.png")
    report = evaluate_stain({"B": tmp_path / "B", "D": tmp_path / "D"}, tmp_path / "target", saasn=tiny_model,
                            methods=("identity", "saasn-map"), strength=0.0)
    # strength 0 leaves the tiles as they are: the same scores as the identity, up to rounding
    for d in report["directions"]:
        ident, mapped = report["results"]["identity"][d], report["results"]["saasn-map"][d]
        assert mapped["ssim_mean"] > 0.999 and abs(mapped["colour_swd"] - ident["colour_swd"]) < 0.5
    # the ablation's map row is fitted and scored the same way, at the same strength
    both = evaluate_stain({"B": tmp_path / "B"}, tmp_path / "target", saasn=tiny_model, ablation=tiny_model,
                          methods=("saasn-map", "cyclegan-map"), strength=0.7, reverse=False)
    assert both["results"]["cyclegan-map"] == both["results"]["saasn-map"]
    assert both["results"]["saasn-map"]["B → Y"]["ssim_mean"] < 0.999
    table = format_table(report)
    assert "mean → Y" in table and "mean all" in table and "| saasn-map |" in table


def test_eval_classical_methods_fit_the_named_reference_not_the_test_tiles(tmp_path):
    """--fit-target: the classical methods fit their target stain to the named tiles (as a learnt model only sees
    its training tiles); the colour distance is still measured against the test target tiles."""
    from pathgen.saasn.evaluate import colour_distance, evaluate_stain, format_table
    from pathgen.stain.normalize import StainNormalizer

    tiles = {}
    for folder, site, seeds in (("B", "B", (0, 1)), ("test_y", "A", (4, 5)), ("train_y", "C", (6, 7))):
        (tmp_path / folder).mkdir()
        tiles[folder] = [render_tile(64, seed=s, site=site).image for s in seeds]
        for s, t in zip(seeds, tiles[folder]):
            Image.fromarray(t).save(tmp_path / folder / f"{s}.png")
    oracle = evaluate_stain({"B": tmp_path / "B"}, tmp_path / "test_y", methods=("identity", "macenko"),
                            reverse=False)
    fair = evaluate_stain({"B": tmp_path / "B"}, tmp_path / "test_y", methods=("identity", "macenko"),
                          reverse=False, fit_target=tmp_path / "train_y")
    assert oracle["classical_reference"]["X → Y"] == "evaluation target tiles"
    assert fair["classical_reference"]["X → Y"] == str(tmp_path / "train_y")
    assert fair["results"]["identity"] == oracle["results"]["identity"]
    # by hand: Macenko fitted on the named tiles, scored against the test target tiles
    norm = StainNormalizer("macenko", seed=0)
    norm.fit_target(np.stack(tiles["train_y"]))
    norm.fit_source(np.stack(tiles["B"]))
    out = [np.asarray(norm.transform(t)) for t in tiles["B"]]
    got = fair["results"]["macenko"]["B → Y"]
    assert got["ssim_mean"] == pytest.approx(np.mean([ssim_gray(o, t) for o, t in zip(out, tiles["B"])]))
    assert got["colour_swd"] == pytest.approx(colour_distance(out, tiles["B"], tiles["test_y"]))
    assert got["colour_swd"] != pytest.approx(oracle["results"]["macenko"]["B → Y"]["colour_swd"])
    assert f"X → Y: {tmp_path / 'train_y'}" in format_table(fair)
    # the CLI passes the reference through
    report = tmp_path / "fair.json"
    assert main(["eval", "stain", "--source", f"B={tmp_path / 'B'}", "--target", str(tmp_path / "test_y"),
                 "--methods", "macenko", "--no-reverse", "--fit-target", str(tmp_path / "train_y"),
                 "-o", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["results"]["macenko"]["B → Y"]["colour_swd"] == pytest.approx(got["colour_swd"])


def test_eval_of_a_model_without_the_reverse_generator_says_to_skip_y_to_x(tmp_path, capsys):
    from pathgen.io.models import shipped_model

    for site in ("B", "target"):
        (tmp_path / site).mkdir()
        Image.fromarray(render_tile(64, seed=1, site="A" if site == "target" else site).image).save(
            tmp_path / site / "0.png")
    args = ["eval", "stain", "-s", str(tmp_path / "B"), "-t", str(tmp_path / "target"),
            "--saasn", str(shipped_model("saasn")), "--methods", "saasn-map"]
    assert main(args) != 0  # the shipped model keeps only the X → Y generator
    err = capsys.readouterr().err
    assert "saasn_small" in err and "no y2x generator" in err and "--no-reverse" in err
    assert main(args + ["--no-reverse"]) == 0
    assert "| saasn-map |" in capsys.readouterr().out
