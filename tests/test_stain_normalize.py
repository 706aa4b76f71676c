"""StainNormalizer: transform correctness, defined behaviour on blank/low-tissue input, modes, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathgen.errors import PathgenError
from pathgen.stain import StainNormalizer, default_target
from pathgen.stain.apply import normalize_image

from test_stain_core import E_REF, H_REF, render, unit

SITE_V = np.stack([unit([0.55, 0.75, 0.37]), unit([0.20, 0.85, 0.48])])


def test_transform_recovers_same_tissue_in_target_stain():
    """Same concentrations rendered in the target stain are the right answer when no rescaling is asked."""
    src, conc = render(np.stack([H_REF, E_REF]), size=128, seed=1, noise=0.0, i0=245.0)
    tgt, _ = render(SITE_V, size=128, seed=2, noise=0.0, i0=250.0)
    truth = np.clip(np.round(250.0 * np.exp(-conc.reshape(-1, 2) @ SITE_V)), 0, 255).reshape(src.shape)
    norm = StainNormalizer("macenko", rescale=False, lasso_lambda=0.0).fit_target(tgt).fit_source(src)
    assert np.allclose(norm.source.i0, 245) and np.allclose(norm.target.i0, 250)
    out = norm.transform(src)
    err = np.abs(out.astype(int) - truth.astype(int))
    assert err.mean() < 2.0, err.mean()


def test_self_normalisation_is_near_identity_and_background_passes():
    img, _ = render(np.stack([H_REF, E_REF]), size=96, seed=3, tissue=0.6)
    norm = StainNormalizer("macenko", i0=255).fit_target(img).fit_source(img)
    out = norm.transform(img)
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 3.0
    white = np.full((4, 4, 3), 255, np.uint8)
    np.testing.assert_array_equal(norm.transform(white), white)  # OD 0 -> c 0 -> I0


@pytest.mark.parametrize("method", ["macenko", "vahadane", "reinhard"])
def test_blank_and_low_tissue_tiles_are_finite_and_inputs_untouched(method):
    target, _ = render(np.stack([H_REF, E_REF]), size=96, seed=4)
    norm = StainNormalizer(method, n_iter=20).fit_target(target)
    blank = np.full((64, 64, 3), 243, np.uint8)
    norm.fit_source(blank)
    assert not norm.source.has_tissue and norm.source.tissue_pixels == 0
    out = norm.transform(blank)
    np.testing.assert_array_equal(out, blank)  # defined behaviour: no tissue, unchanged
    assert out is not blank
    # a few stained pixels on glass: per-tile mode must not blow up (StainTools #33, torchstain #54)
    sparse = blank.copy()
    sparse[10:13, 10:13] = (120, 60, 150)
    sparse[40, 40:60] = (200, 150, 200)
    before = sparse.copy()
    batch = np.stack([blank, sparse, target[:64, :64]])
    out = norm.transform(batch, per_tile=True)
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(sparse, before)
    np.testing.assert_array_equal(out[0], blank)
    # slide-level source fitted on a real-looking image, applied to the sparse tile: finite, in range
    norm.fit_source(target)
    tile_out = norm.transform(sparse)
    assert tile_out.dtype == np.uint8 and tile_out.shape == sparse.shape
    np.testing.assert_array_equal(sparse, before)


def test_transform_keeps_shape_kind_and_device():
    img, _ = render(np.stack([H_REF, E_REF]), size=48, seed=5)
    norm = StainNormalizer().fit_target().fit_source(img)
    batch = np.stack([img, img[::-1]])
    out = norm.transform(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], norm.transform(img))  # batch == one by one
    t = torch.from_numpy(batch)
    out_t = norm.transform(t)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.uint8
    np.testing.assert_array_equal(out_t.numpy(), out)
    with pytest.raises(PathgenError, match="uint8"):
        norm.transform(batch.astype(np.float32))
    with pytest.raises(PathgenError, match="3 channels"):
        norm.transform(np.zeros((4, 4, 4), np.uint8))
    assert norm.transform(np.zeros((0, 3), np.uint8)).shape == (0, 3)


def test_slide_level_is_consistent_where_per_tile_drifts():
    """Two tiles of one slide with different content: one source fit maps a colour the same way in both."""
    v = np.stack([H_REF, E_REF])
    nuclei_rich, _ = render(v, size=64, seed=6, h_scale=2.5, e_scale=0.5)
    stroma_rich, _ = render(v, size=64, seed=7, h_scale=0.5, e_scale=2.5)
    probe = np.array([[[150, 90, 160]]], np.uint8)  # the same purple pixel placed in both tiles
    a, b = nuclei_rich.copy(), stroma_rich.copy()
    a[0, 0] = b[0, 0] = probe[0, 0]
    norm = StainNormalizer("macenko").fit_target()
    norm.fit_source([a, b])  # slide-level: pooled over both tiles
    slide = norm.transform(np.stack([a, b]))
    np.testing.assert_array_equal(slide[0, 0, 0], slide[1, 0, 0])
    tiles = norm.transform(np.stack([a, b]), per_tile=True)
    assert np.abs(tiles[0, 0, 0].astype(int) - tiles[1, 0, 0].astype(int)).max() > 5


def test_targets_default_list_folder_json(tmp_path):
    img, _ = render(np.stack([H_REF, E_REF]), size=64, seed=8)
    norm = StainNormalizer().fit_target(None)
    np.testing.assert_allclose(norm.target.vectors, default_target().vectors)
    pooled = StainNormalizer().fit_target([img, img[::-1]])
    single = StainNormalizer().fit_target(img)
    assert pooled.target.has_tissue and single.target.has_tissue
    path = single.target.save(tmp_path / "t.json")
    from_json = StainNormalizer("vahadane").fit_target(str(path))
    np.testing.assert_allclose(from_json.target.vectors, single.target.vectors)
    with pytest.raises(PathgenError, match="CIELAB"):
        StainNormalizer("reinhard").fit_target(str(path))  # a Macenko stain file has no Reinhard statistics
    with pytest.raises(PathgenError, match="no tissue"):
        StainNormalizer().fit_target(np.full((32, 32, 3), 250, np.uint8))
    with pytest.raises(PathgenError, match="unknown method"):
        StainNormalizer("spams")


def test_normalizer_save_load_same_output(tmp_path):
    src, _ = render(SITE_V, size=64, seed=9)
    tgt, _ = render(np.stack([H_REF, E_REF]), size=64, seed=10)
    norm = StainNormalizer("vahadane", percentile=97, n_iter=25).fit_target(tgt).fit_source(src)
    path = norm.save(tmp_path / "norm.json")
    back = StainNormalizer.load(path)
    assert back.percentile == 97 and back.method == "vahadane"
    np.testing.assert_array_equal(back.transform(src), norm.transform(src))


def test_rescale_maps_source_percentile_to_target_percentile():
    """After normalisation the tissue's p99 concentrations (in the target stain) are the target's p99."""
    from pathgen.stain import tissue_mask

    src, _ = render(SITE_V, size=96, seed=11, h_scale=0.7, e_scale=1.3)
    tgt, _ = render(np.stack([H_REF, E_REF]), size=96, seed=12)
    norm = StainNormalizer("macenko", i0=255, lasso_lambda=0.0).fit_target(tgt).fit_source(src)
    out = norm.transform(src)
    c_out = norm.concentrations(out, fit=norm.target)[tissue_mask(src)]
    np.testing.assert_allclose(np.percentile(c_out, 99, axis=0), norm.target.concentration_percentiles, rtol=0.05)
    # the same source percentiles serve every tile: a crop is scaled exactly like the whole image
    crop = src[:40, :40]
    np.testing.assert_array_equal(norm.transform(crop), out[:40, :40])


def test_variants_run_and_are_deterministic():
    img, _ = render(SITE_V, size=64, seed=12)
    tgt, _ = render(np.stack([H_REF, E_REF]), size=64, seed=13)
    for kwargs in ({"brightness": "rgb_p90", "rescale": False}, {"brightness": "lab_l_p95"}, {"lasso_lambda": 0.0},
                   {"percentile": 95.0, "i0": "250,250,250"}):
        a = StainNormalizer("vahadane", n_iter=15, **kwargs).fit_target(tgt).fit_source(img).transform(img)
        b = StainNormalizer("vahadane", n_iter=15, **kwargs).fit_target(tgt).fit_source(img).transform(img)
        np.testing.assert_array_equal(a, b)
    with pytest.raises(PathgenError, match="brightness"):
        StainNormalizer(brightness="p90")
    with pytest.raises(PathgenError, match="I0"):
        StainNormalizer(i0="1,2")


def test_normalize_image_per_tile_splits_into_tiles():
    img, _ = render(SITE_V, size=80, seed=14)
    norm = StainNormalizer().fit_target()
    whole, fit = normalize_image(img, norm)
    tiled, none = normalize_image(img, norm, per_tile=True, tile_size=32)
    assert fit.has_tissue and none is None
    assert whole.shape == tiled.shape == img.shape
    np.testing.assert_array_equal(tiled[:32, :32], norm.transform(img[:32, :32], per_tile=True))
