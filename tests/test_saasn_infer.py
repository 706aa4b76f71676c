"""SAASN checkpoints and inference: exact round trip, padding, seam-free and deterministic slide normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import save_tiny_saasn, tissue_like
from pathgen.engine import EngineConfig
from pathgen.errors import PathgenError
from pathgen.saasn.checkpoint import load_generator, load_tensors
from pathgen.saasn.data import to_tensor, to_uint8
from pathgen.saasn.infer import SaasnNormalizer, normalize_image_saasn, normalize_slide_saasn

torch.set_num_threads(1)


def smooth_image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = [150 + 60 * np.sin(xx / 30 + yy / 40), 120 + 50 * np.cos(yy / 25), 170 + 40 * np.sin((xx - yy) / 35)]
    return np.stack(rgb, -1).astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny SAASN whose attention is switched on (μ = 0.5: outputs depend on the whole window), with
    non-trivial spectral-norm vectors and BatchNorm statistics, saved as a generator checkpoint."""
    folder = tmp_path_factory.mktemp("model")
    return folder, save_tiny_saasn(folder, seed=0, attention_mu=0.5, mpp=0.5)


def test_checkpoint_round_trip_gives_identical_outputs(model_dir):
    folder, model = model_dir
    x = torch.rand(2, 3, 48, 32) * 2 - 1
    model.g_x2y.eval()
    with torch.no_grad():
        expected = model.g_x2y(x)
    loaded, info = load_generator(folder)
    again, _ = load_generator(folder / "generator.safetensors")
    with torch.no_grad():
        got, got_again = loaded(x), again(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got, got_again)
    assert info["model"]["spectral_norm"] is False and info["mpp"] == 0.5
    assert not any("parametrizations" in k for k in load_tensors(folder / "generator.safetensors"))
    reverse, _ = load_generator(folder, "y2x")
    model.g_y2x.eval()
    with torch.no_grad():
        assert torch.allclose(reverse(x), model.g_y2x(x), atol=1e-6)
    # saving did not touch the training model: it still has its spectral-norm parametrisations
    assert hasattr(model.g_x2y.downs[0][0], "parametrizations")


def test_checkpoint_errors(model_dir, tmp_path):
    folder, _ = model_dir
    with pytest.raises(PathgenError, match="no such checkpoint"):
        load_generator(tmp_path / "missing")
    with pytest.raises(PathgenError, match="config.json"):
        load_generator(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "config.json").read_text())
    (bad / "generator.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PathgenError, match="safetensors"):
        load_generator(bad)
    (bad / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PathgenError, match="expected 'pathgen-saasn-generator'"):
        load_generator(bad)


def test_normalizer_pads_and_crops_any_size(model_dir):
    folder, _ = model_dir
    norm = SaasnNormalizer(folder, device="cpu")
    batch = np.random.default_rng(0).integers(0, 256, (3, 40, 24, 3), dtype=np.uint8)
    out = norm(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert np.array_equal(norm(batch[1]), out[1])
    assert np.array_equal(norm(batch), out)
    exact = np.random.default_rng(1).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    with torch.no_grad():
        direct = to_uint8(norm.generator(to_tensor(exact)))
    assert np.array_equal(norm(exact), direct)  # multiples of 16 pass straight through
    with pytest.raises(PathgenError):
        norm(batch.astype(np.float32))


def _steps(image: np.ndarray, tile: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute step between neighbouring columns (axis 1) or rows (axis 0): at tile borders, inside."""
    d = np.abs(np.diff(image.astype(np.float64), axis=axis)).mean(axis=(1 - axis, 2))
    border = [c - 1 for c in range(tile, image.shape[axis], tile)]
    inner = np.setdiff1d(np.arange(len(d)), border)
    return d[border], d[inner]


def test_slide_inference_is_seam_free_deterministic_and_matches_the_image_path(model_dir, make_slide, tmp_path):
    from pathgen.io.slide import open_slide

    folder, _ = model_dir
    image = smooth_image(150, 200)
    slide = make_slide(image, name="smooth.tiff")
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}.tif"
        report = normalize_slide_saasn(slide, out, folder, EngineConfig(tile_size=48, overlap=8, batch_size=3,
                                                                        device="cpu"),
                                       skip_background=False, compression="zlib")
        assert report.windows == report.extra["generator_windows"] == 4 * 5
        with open_slide(out) as s:
            assert s.dimensions == (200, 150)
            outs.append(s.read_region((0, 0), 0, (200, 150)))
    assert np.array_equal(outs[0], outs[1])  # deterministic, byte for byte
    assert (tmp_path / "out0.tif.json").is_file()
    same = normalize_image_saasn(image, folder, device="cpu", tile_size=48, overlap=8, batch_size=3)
    assert np.array_equal(outs[0], same)
    assert not np.array_equal(outs[0], image)
    for axis in (0, 1):
        border, inner = _steps(outs[0], 48, axis)
        assert border.max() <= inner.max()
        assert border.mean() <= 1.5 * np.median(inner)


def test_glass_windows_are_skipped_and_get_the_generators_glass_colour(model_dir, make_slide, tmp_path):
    from pathgen.io.slide import open_slide

    folder, _ = model_dir
    image = tissue_like(256, 256, seed=2)
    image[:, 128:] = 242  # the right half is glass
    slide = make_slide(image, name="tissue.tiff", mpp=2.0)
    out = tmp_path / "out.tif"
    report = normalize_slide_saasn(slide, out, folder, EngineConfig(tile_size=64, overlap=8, device="cpu"),
                                   compression="zlib")
    assert report.windows == 16
    # tissue is left only in the blob of radius 51 around (77, 77): windows (64-px cores, 8-px halo) of rows and
    # columns 0-1 see it; by hand, the glass-only windows are column 3 (4), row 3 (3 more) and (row 2, column 2)
    assert report.extra["glass_windows"] == 8
    assert report.extra["generator_windows"] == 8
    glass = SaasnNormalizer(folder, device="cpu").glass_colour((242, 242, 242))
    with open_slide(out) as s:
        result = s.read_region((0, 0), 0, (256, 256))
    assert (result[:, 200:] == glass).all()  # only glass windows reach beyond x = 200: one flat colour
    assert not (result[:, :120] == glass).all()
    with pytest.raises(PathgenError):
        normalize_slide_saasn(slide, out, folder, EngineConfig(device="cpu"))  # exists, no overwrite
