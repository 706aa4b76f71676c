"""SSIM (SAASN grayscale, RGB), PSNR, and binary / per-class Dice and IoU."""

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from pathgen.errors import PathgenError
from pathgen.metrics import dice_masks, iou_masks, psnr, semantic_scores, ssim_gray, ssim_map, ssim_rgb, to_gray
from pathgen.metrics.image import gaussian_window

C1, C2 = 0.01 ** 2, 0.03 ** 2


def _brute_ssim_map(x, y, size=11, sigma=1.5):
    """SSIM map by explicit weighted window sums over a reflect-padded image (independent of scipy filters)."""
    r = size // 2
    offsets = np.arange(size) - r
    g = np.exp(-(offsets ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    px, py = np.pad(x, r, mode="reflect"), np.pad(y, r, mode="reflect")
    wx, wy = sliding_window_view(px, (size, size)), sliding_window_view(py, (size, size))
    mx = (wx * w).sum((-1, -2))
    my = (wy * w).sum((-1, -2))
    vx = (wx ** 2 * w).sum((-1, -2)) - mx ** 2
    vy = (wy ** 2 * w).sum((-1, -2)) - my ** 2
    cxy = (wx * wy * w).sum((-1, -2)) - mx * my
    return ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))


def test_ssim_of_constant_images_by_hand():
    # Flat grey 0.5 vs 0.25: μx = 0.5, μy = 0.25, all σ = 0 ->
    # SSIM = (2·0.5·0.25 + C1) C2 / ((0.25 + 0.0625 + C1) C2) = 0.2501 / 0.3126.
    a = np.full((16, 16), 0.5)
    b = np.full((16, 16), 0.25)
    assert ssim_gray(a, b) == pytest.approx(0.2501 / 0.3126, abs=1e-12)


def test_gray_weights_and_uint8_scaling():
    # (200, 100, 50) -> 0.299·200 + 0.587·100 + 0.114·50 = 124.2
    px = np.array([[[200, 100, 50]]], np.uint8)
    assert to_gray(px)[0, 0] == pytest.approx(124.2, abs=1e-12)
    a = np.tile(px, (12, 12, 1))
    b = np.full((12, 12, 3), 0, np.uint8)
    b[..., 0] = 124  # grey level 0.299·124 = 37.076 in every pixel
    mx, my = 124.2 / 255, 37.076 / 255
    expected = (2 * mx * my + C1) / (mx ** 2 + my ** 2 + C1)  # flat images: the structure term is C2 / C2
    assert ssim_gray(a, b) == pytest.approx(expected, abs=1e-12)


def test_ssim_map_matches_brute_force_window_sums():
    rng = np.random.default_rng(0)
    x = rng.random((23, 19))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    np.testing.assert_allclose(ssim_map(x, y), _brute_ssim_map(x, y), atol=1e-12)
    assert ssim_gray(x, y) == pytest.approx(_brute_ssim_map(x, y).mean(), abs=1e-12)


def test_ssim_interior_matches_scikit_image():
    # skimage with the same Gaussian (σ 1.5, 11 taps) and population statistics crops 5 px at each border;
    # the interior never sees the padding, so it must agree with our map there.
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    x = rng.random((40, 36))
    y = np.clip(0.8 * x + 0.1 + rng.normal(0, 0.05, x.shape), 0, 1)
    ref = structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ssim_map(x, y)[5:-5, 5:-5].mean() == pytest.approx(ref, abs=1e-10)


def test_ssim_identities_and_options():
    rng = np.random.default_rng(2)
    img = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    assert ssim_gray(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim_rgb(img, img) == pytest.approx(1.0, abs=1e-12)
    inverted = 255 - img
    assert ssim_gray(img, inverted) < 0  # anti-correlated structure
    assert ssim_gray(img, inverted, clip_negative=True) >= 0
    # RGB SSIM is the mean over channels of the single-channel SSIM.
    other = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    per_channel = [ssim_map(img[..., c] / 255.0, other[..., c] / 255.0).mean() for c in range(3)]
    assert ssim_rgb(img, other) == pytest.approx(np.mean(per_channel), abs=1e-12)
    assert gaussian_window().sum() == pytest.approx(1.0) and gaussian_window().size == 11


def test_ssim_errors():
    with pytest.raises(PathgenError, match="too small"):
        ssim_gray(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(PathgenError):
        ssim_gray(np.zeros((12, 12)), np.zeros((12, 13)))


def test_psnr_by_hand():
    a = np.zeros((4, 4), np.uint8)
    b = np.full((4, 4), 51, np.uint8)  # 0.2 everywhere: MSE 0.04 -> 10 log10(25)
    assert psnr(a, b) == pytest.approx(10 * math.log10(25), abs=1e-12)
    assert psnr(a, a) == math.inf


def test_dice_and_iou_masks_by_hand():
    t = np.array([[1, 1, 0], [0, 1, 0]])
    p = np.array([[1, 0, 0], [0, 1, 1]])
    # |T| = 3, |P| = 3, |T∩P| = 2, |T∪P| = 4
    assert dice_masks(t, p) == pytest.approx(4 / 6)
    assert iou_masks(t, p) == pytest.approx(2 / 4)
    empty = np.zeros((2, 3))
    assert math.isnan(dice_masks(empty, empty))
    assert dice_masks(empty, empty, eps=1.0) == 1.0
    assert dice_masks(empty, p) == 0.0 and iou_masks(t, empty) == 0.0


def test_semantic_scores_per_image_and_pooled():
    # Image 0: class 1 Dice 2·1/(2+1) = 2/3, IoU 1/2; class 2 absent on both sides (undefined, skipped).
    t0 = np.array([[1, 1, 0, 0]])
    p0 = np.array([[1, 0, 0, 0]])
    # Image 1: class 1 Dice 1 (IoU 1); class 2 Dice 0 (true 1 px, pred none).
    t1 = np.array([[1, 2, 0, 0]])
    p1 = np.array([[1, 0, 0, 0]])
    res = semantic_scores([t0, t1], [p0, p1], n_classes=3)
    assert res.classes == (1, 2)
    np.testing.assert_allclose(res.per_image_dice, [2 / 3, 0.5])
    assert res.dice == pytest.approx((2 / 3 + 0.5) / 2)
    np.testing.assert_allclose(res.per_class_dice, [(2 / 3 + 1) / 2, 0.0])
    np.testing.assert_allclose(res.per_image_iou, [0.5, 0.5])
    pooled = semantic_scores([t0, t1], [p0, p1], n_classes=3, average="pooled")
    # Class 1 pooled: inter 2, |T| 3, |P| 2 -> 4/5; class 2: 0.  Mean 0.4.
    np.testing.assert_allclose(pooled.per_class_dice, [0.8, 0.0])
    assert pooled.dice == pytest.approx(0.4)
    with_bg = semantic_scores([t0], [p0], n_classes=2, include_background=True)
    # Background: true 2 px, pred 3 px, inter 2 -> 4/5; class 1: 2/3.
    np.testing.assert_allclose(with_bg.per_class_dice, [0.8, 2 / 3])
    smoothed = semantic_scores([t0], [p0], n_classes=3, eps=1.0)
    assert smoothed.per_class_dice[1] == 1.0  # class 2 absent on both sides
    with pytest.raises(PathgenError, match="outside"):
        semantic_scores([t0], [p0 + 5], n_classes=3)


def test_sliced_wasserstein_hand_values():
    from pathgen.metrics import sliced_wasserstein

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 1))
    # in one dimension every direction is ±1: W1 between a cloud and its shift by 2.5 is exactly 2.5
    assert sliced_wasserstein(a, a + 2.5) == pytest.approx(2.5)
    assert sliced_wasserstein(a, a) == 0.0
    # two point masses a distance r apart in 3-D: the mean of |cos| over random directions is 1/2, so r / 2
    v = np.array([[3.0, -4.0, 0.0]])
    got = sliced_wasserstein(np.zeros((10, 3)), np.repeat(v, 10, axis=0), projections=20000)
    assert got == pytest.approx(2.5, rel=0.02)
    assert np.isnan(sliced_wasserstein(np.zeros((0, 3)), v))


def test_colour_distance_uses_the_source_tissue_and_ignores_glass():
    from pathgen.metrics import colour_distance

    tissue = np.zeros((32, 32, 3), np.uint8)
    tissue[:16] = (150, 60, 160)  # dark purple, L < 80: tissue
    tissue[16:] = (245, 245, 245)  # glass
    # an "output" that paints the glass black is still compared on the source's tissue only
    out = tissue.copy()
    out[16:] = 0
    assert colour_distance([out], [tissue], [tissue]) == pytest.approx(0.0, abs=1e-9)
    shifted = tissue.copy()
    shifted[:16] = (130, 40, 140)
    assert colour_distance([shifted], [tissue], [tissue]) > 3.0
