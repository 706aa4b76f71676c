"""pathgen.stain: optical density, sampling, I0, concentrations, Macenko/Vahadane fits, H/E order, JSON."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathgen.errors import PathgenError
from pathgen.stain import (NoTissueError, PixelReservoir, StainFit, StainMatrix, StainNormalizer, estimate_i0,
                           fit_macenko, fit_vahadane, luminosity, nonneg_lasso_2, od_to_rgb, order_he, rgb_to_od,
                           sample_tissue_pixels, tissue_mask)

H_REF = np.array([0.650, 0.704, 0.286]) / np.linalg.norm([0.650, 0.704, 0.286])
E_REF = np.array([0.072, 0.990, 0.105]) / np.linalg.norm([0.072, 0.990, 0.105])


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def render(vectors, size=128, seed=0, h_scale=1.0, e_scale=1.0, i0=255.0, tissue=0.8, noise=1.0):
    """Beer–Lambert image from known stain vectors (rows H, E) and random sparse concentrations.

    Pixels are background (``1 - tissue``), pure H, pure E or mixtures; returns (image uint8, concentrations).
    """
    rng = np.random.default_rng(seed)
    n = size * size
    c = np.zeros((n, 2))
    kind = rng.random(n)
    pure_h = kind < tissue * 0.35
    pure_e = (kind >= tissue * 0.35) & (kind < tissue * 0.8)
    mixed = (kind >= tissue * 0.8) & (kind < tissue)
    c[pure_h, 0] = rng.gamma(2.0, 0.4, pure_h.sum())
    c[pure_e, 1] = rng.gamma(2.0, 0.3, pure_e.sum())
    c[mixed] = rng.gamma(2.0, 0.25, (mixed.sum(), 2))
    c *= [h_scale, e_scale]
    rgb = np.asarray(i0, float) * np.exp(-c @ np.asarray(vectors, float)) + rng.normal(0, noise, (n, 3))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(size, size, 3), c.reshape(size, size, 2)


# ------------------------------------------------------------------------------------------------- optical
def test_rgb_to_od_values_and_clamping():
    rgb = np.array([[255, 0, 100], [300 - 45, 1, 255]], dtype=np.uint8)  # 255 -> 0, 0 -> clamped to 1
    od = rgb_to_od(rgb, 255.0)
    assert od.dtype == np.float32
    expected = np.array([[0.0, math.log(255.0), math.log(255.0 / 100.0)], [0.0, math.log(255.0), 0.0]])
    np.testing.assert_allclose(od, expected, rtol=1e-6)
    # brighter than I0 -> OD 0, never negative
    od240 = rgb_to_od(np.array([[250, 240, 120]], np.uint8), 240.0)
    np.testing.assert_allclose(od240, [[0.0, 0.0, math.log(2.0)]], rtol=1e-6)
    back = od_to_rgb(rgb_to_od(np.array([[10, 128, 254]], np.uint8)))
    np.testing.assert_array_equal(back, [[10, 128, 254]])


def test_luminosity_matches_cielab():
    rgb = np.array([[255, 255, 255], [0, 0, 0], [128, 128, 128], [200, 100, 150]], np.uint8)
    lum = luminosity(rgb)
    # CIELAB L of mid-grey 128 is 53.585 (sRGB, D65); of (200,100,150) 54.97 (skimage.color.rgb2lab)
    np.testing.assert_allclose(lum[:3], [1.0, 0.0, 0.53585], atol=2e-4)
    from skimage.color import rgb2lab

    np.testing.assert_allclose(lum[3], rgb2lab(rgb[3:4][None] / 255.0)[0, 0, 0] / 100, atol=1e-5)
    mask = tissue_mask(rgb, 0.8)
    np.testing.assert_array_equal(mask, [False, False, True, True])  # white: background; black: excluded


def test_estimate_i0_background_and_all_tissue():
    rng = np.random.default_rng(0)
    img = np.empty((100, 100, 3), np.uint8)
    img[:] = (238, 241, 246)
    img[:60] = np.clip(rng.normal([150, 80, 140], 20, (60, 100, 3)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(estimate_i0(img), [238, 241, 246])
    tissue_only = img[:60]
    np.testing.assert_array_equal(estimate_i0(tissue_only), [255, 255, 255])
    # pale pink lumen (chroma > 6) is not glass
    pink = np.full((50, 50, 3), (241, 223, 232), np.uint8)
    np.testing.assert_array_equal(estimate_i0(pink), [255, 255, 255])
    np.testing.assert_array_equal(estimate_i0(np.zeros((0, 3), np.uint8)), [255, 255, 255])


def test_pixel_reservoir_is_uniform_deterministic_and_order_free():
    tiles = [np.full((100, 100, 3), i, np.uint8) for i in range(10)]  # tile i has value i everywhere
    a = PixelReservoir(2000, seed=3)
    for i, t in enumerate(tiles):
        a.add(t, key=i)
    b = PixelReservoir(2000, seed=3)
    for i in reversed(range(10)):
        b.add(tiles[i], key=i)
    sa, sb = a.sample(), b.sample()
    assert sa.shape[0] == 2000 and a.seen == 100_000
    np.testing.assert_array_equal(np.sort(sa[:, 0]), np.sort(sb[:, 0]))  # same multiset: order of tiles irrelevant
    counts = np.bincount(sa[:, 0], minlength=10)
    assert counts.min() > 140 and counts.max() < 260  # ~200 each: uniform over tiles (binomial sd ~13)


def test_sample_tissue_pixels_only_tissue_and_blank():
    img, _ = render(np.stack([H_REF, E_REF]), size=64, tissue=0.5)
    px = sample_tissue_pixels(img, n=1000, seed=1)
    assert 0 < px.shape[0] <= 1000 and px.dtype == np.uint8
    assert tissue_mask(px).all()
    np.testing.assert_array_equal(px, sample_tissue_pixels(img, n=1000, seed=1))
    assert sample_tissue_pixels(np.full((32, 32, 3), 250, np.uint8)).shape == (0, 3)
    # pooled over a list of images
    assert sample_tissue_pixels([img, img[::-1]], n=500).shape[0] <= 500


# ------------------------------------------------------------------------------------------ concentrations
def test_nonneg_lasso_hand_computed():
    v = np.stack([H_REF, E_REF])
    x = np.stack([2.0 * v[0] + 1.0 * v[1],  # interior
                  -v[0],  # negative OD direction -> zero
                  v[0],  # pure H
                  np.zeros(3)])
    c = nonneg_lasso_2(x, v, 0.0)
    np.testing.assert_allclose(c, [[2, 1], [0, 0], [1, 0], [0, 0]], atol=1e-6)
    # lasso on a pure-H pixel with unit vectors: c_H = 1 - lam (E stays 0 because (G^-1)(V x - lam) has c_E < 0)
    c = nonneg_lasso_2(v[0:1] * 1.0, v, 0.1)
    np.testing.assert_allclose(c, [[0.9, 0.0]], atol=1e-6)
    # exactly non-negative and never NaN, even for parallel vectors
    par = np.stack([H_REF, H_REF])
    c = nonneg_lasso_2(np.abs(np.random.default_rng(0).normal(size=(50, 3))), par, 0.01)
    assert np.isfinite(c).all() and (c >= 0).all()


def test_nonneg_lasso_is_optimal_against_projected_gradient():
    rng = np.random.default_rng(2)
    for signed in (False, True):
        v = rng.normal(size=(2, 3)) if signed else np.abs(rng.normal(size=(2, 3)))
        x = rng.normal(0.3, 0.5, (300, 3))
        lam = 0.05
        c = nonneg_lasso_2(x, v, lam)
        g = v @ v.T
        step = 1.0 / np.linalg.eigvalsh(g).max()
        z = np.zeros((300, 2))
        for _ in range(5000):
            z = np.maximum(z - step * (z @ g - x @ v.T + lam), 0.0)

        def f(cc):
            return 0.5 * ((x - cc @ v) ** 2).sum(1) + lam * cc.sum(1)

        assert (f(c) - f(z)).max() < 1e-9


# ---------------------------------------------------------------------------------------------- fits, order
def test_order_he_rule():
    v = order_he(np.stack([E_REF, H_REF]))
    np.testing.assert_allclose(v, [H_REF, E_REF])
    # a site whose H and E have almost the same red OD: the red-only rule is a coin toss, this one is not
    h = unit([0.45, 0.70, 0.55])
    e = unit([0.42, 0.85, 0.31])
    np.testing.assert_allclose(order_he(np.stack([e, h])), [h, e])
    np.testing.assert_allclose(order_he(np.stack([h, e])), [h, e])


@pytest.mark.parametrize("fit", [fit_macenko, fit_vahadane])
def test_known_vectors_recovered(fit):
    h = unit([0.55, 0.75, 0.37])
    e = unit([0.20, 0.85, 0.48])
    img, _ = render(np.stack([h, e]), size=160, seed=4)
    od = rgb_to_od(sample_tissue_pixels(img, n=20_000, seed=0))
    m = fit(od)
    ah, ae = m.angles_to(StainMatrix(np.stack([h, e])))
    assert ah < 3.0 and ae < 3.0, (ah, ae)
    assert np.allclose(np.linalg.norm(m.vectors, axis=1), 1.0) and (m.vectors >= 0).all()


@pytest.mark.parametrize("fit", [fit_macenko, fit_vahadane])
def test_he_order_kept_when_intensities_swap(fit):
    v = np.stack([H_REF, E_REF])
    for h_scale, e_scale in [(3.0, 0.4), (0.4, 3.0)]:  # haematoxylin-dominant, then eosin-dominant
        img, _ = render(v, size=128, seed=5, h_scale=h_scale, e_scale=e_scale)
        m = fit(rgb_to_od(sample_tissue_pixels(img, n=20_000)))
        ah, ae = m.angles_to(StainMatrix(v))
        assert ah < 5.0 and ae < 5.0, (h_scale, ah, ae)


def test_vahadane_deterministic_and_fixed_budget():
    img, _ = render(np.stack([H_REF, E_REF]), size=128, seed=6)
    od = rgb_to_od(sample_tissue_pixels(img, n=20_000))
    a = fit_vahadane(od, seed=7, n_iter=40, max_pixels=5000)
    b = fit_vahadane(od.copy(), seed=7, n_iter=40, max_pixels=5000)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.params["n_iter"] == 40 and a.params["pixels"] == 5000 and a.params["lambda1"] == 0.1


def test_fits_do_not_modify_inputs_and_fail_cleanly():
    img, _ = render(np.stack([H_REF, E_REF]), size=64)
    od = rgb_to_od(sample_tissue_pixels(img)).astype(np.float64)
    before = od.copy()
    fit_macenko(od)
    fit_vahadane(od, n_iter=5)
    np.testing.assert_array_equal(od, before)
    with pytest.raises(NoTissueError):
        fit_macenko(np.zeros((1000, 3)))
    with pytest.raises(NoTissueError):
        fit_vahadane(np.zeros((10, 3)))
    with pytest.raises(PathgenError):
        fit_macenko(np.zeros((10, 4)))


def test_synthetic_site_vectors_recovered():
    synth = pytest.importorskip("pathgen.data.synth")
    tile = synth.render_tile(192, seed=1, site="A")
    site = synth.get_site("A")
    truth = StainMatrix(np.asarray(site.stain_matrix)[:2])
    pixels = sample_tissue_pixels(tile.image, n=30_000)
    m = fit_macenko(rgb_to_od(pixels, estimate_i0(tile.image)))
    ah, ae = m.angles_to(truth)
    assert ah < 6.0 and ae < 6.0, (ah, ae)


# ------------------------------------------------------------------------------------------------- JSON
def test_stain_fit_json_round_trip(tmp_path):
    img, _ = render(np.stack([H_REF, E_REF]), size=96)
    fit = StainNormalizer("vahadane", percentile=95, seed=3, n_iter=20).fit_images(img)
    path = fit.save(tmp_path / "stain.json")
    back = StainFit.load(path)
    np.testing.assert_allclose(back.vectors, fit.vectors)
    np.testing.assert_allclose(back.concentration_percentiles, fit.concentration_percentiles)
    np.testing.assert_allclose(back.i0, fit.i0)
    assert back.percentile == 95 and back.method == "vahadane" and back.tissue_pixels == fit.tissue_pixels
    assert back.params["n_iter"] == 20 and back.matrix.params["lambda1"] == 0.1
    with pytest.raises(PathgenError, match="output exists"):
        fit.save(path)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(PathgenError, match="not a pathgen stain file"):
        StainFit.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PathgenError, match="not valid JSON"):
        StainFit.load(tmp_path / "broken.json")


def test_tensor_inputs():
    img, _ = render(np.stack([H_REF, E_REF]), size=32)
    od_t = rgb_to_od(torch.from_numpy(img))
    assert isinstance(od_t, torch.Tensor)
    np.testing.assert_allclose(od_t.numpy(), rgb_to_od(img))
