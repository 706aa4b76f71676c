"""FID against closed forms, KID by hand, and the plain-torch FID Inception network and extractors."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pathgen.errors import PathgenError
from pathgen.io.checkpoint import sha256_file
from pathgen.metrics.fid import (InceptionExtractor, InceptionV3Pool3, ModuleExtractor, compare_image_sets,
                                 extract_features, fid_from_features, frechet_distance, kid_from_features,
                                 load_inception, mmd2_polynomial_unbiased)

torch.set_num_threads(1)


def test_frechet_distance_closed_forms():
    # Σ1 = I, Σ2 = [[2,1],[1,2]] (eigenvalues 3, 1): tr sqrt(Σ2) = √3 + 1; μ difference (1, 2) -> 5.
    # FID = 5 + 2 + 4 - 2(√3 + 1) = 9 - 2√3.
    got = frechet_distance(np.zeros(2), np.eye(2), np.array([1.0, 2.0]), np.array([[2.0, 1.0], [1.0, 2.0]]))
    assert got == pytest.approx(9 - 2 * math.sqrt(3), abs=1e-12)
    # Commuting diagonal case: diag(1,4) vs diag(4,1) -> Σ(√a - √b)² = 1 + 1 = 2.
    assert frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.zeros(2), np.diag([4.0, 1.0])) == \
        pytest.approx(2.0, abs=1e-12)
    # Non-commuting, by hand with 2x2 algebra: Σ1 = diag(4, 1), Σ2 = [[1, 1], [1, 2]].
    # Σ1^½ Σ2 Σ1^½ = [[4, 2], [2, 2]] (trace 6, det 4): tr sqrt = sqrt(6 + 2·2) = √10.
    s2 = np.array([[1.0, 1.0], [1.0, 2.0]])
    assert frechet_distance(np.zeros(2), np.diag([4.0, 1.0]), np.zeros(2), s2) == \
        pytest.approx(5 + 3 - 2 * math.sqrt(10), abs=1e-12)


def test_fid_from_gaussian_samples_approaches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
    a = rng.normal(size=(3, 3))
    b = rng.normal(size=(3, 3))
    s1, s2 = a @ a.T + 0.5 * np.eye(3), b @ b.T + 0.5 * np.eye(3)
    x = rng.multivariate_normal(mu1, s1, size=40_000)
    y = rng.multivariate_normal(mu2, s2, size=40_000)
    exact = frechet_distance(mu1, s1, mu2, s2)
    assert fid_from_features(x, y) == pytest.approx(exact, rel=0.03)
    # fid_from_features is exactly the Fréchet distance of the sample mean and (ddof=1) covariance.
    assert fid_from_features(x, y) == pytest.approx(
        frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)), abs=1e-9)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_rank_deficient_and_errors():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 16)), rng.normal(size=(6, 16))  # fewer samples than dimensions
    value = fid_from_features(x, y)
    assert math.isfinite(value) and value > 0
    # Same value as the covariance route (eigendecompositions of the 16x16 covariances), up to the ~1e-8
    # round-off that square roots of the covariances' zero eigenvalues add there.
    stats = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert value == pytest.approx(stats, rel=1e-7)
    # A constant feature makes the covariance singular (Cholesky fails; the eigen square root takes over).
    xs, ys = rng.normal(size=(50, 4)), rng.normal(size=(60, 4))
    xs[:, 2] = 1.0
    stats = frechet_distance(xs.mean(0), np.cov(xs, rowvar=False), ys.mean(0), np.cov(ys, rowvar=False))
    assert fid_from_features(xs, ys) == pytest.approx(stats, abs=1e-9)
    with pytest.raises(PathgenError, match="at least 2"):
        fid_from_features(x[:1], y)
    with pytest.raises(PathgenError):
        fid_from_features(x, y[:, :3])


def test_kid_by_hand():
    # d = 1, k(a, b) = (ab + 1)^3. x = {0, 1}, y = {1, 2}:
    # within x: k(0,1) = 1 twice / (2·1) = 1; within y: k(1,2) = 27 twice / 2 = 27;
    # cross: k(0,1) + k(0,2) + k(1,1) + k(1,2) = 1 + 1 + 8 + 27 = 37 -> 2·37/4 = 18.5.  MMD² = 1 + 27 - 18.5.
    x, y = np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])
    assert mmd2_polynomial_unbiased(x, y) == pytest.approx(9.5, abs=1e-12)
    res = kid_from_features(x, y, subset_size=1000, n_subsets=5)
    # Subsets are capped at min(Na, Nb) = 2, i.e. the whole sets every time.
    assert (res.mean, res.std, res.subset_size, res.n_subsets, res.seed) == (pytest.approx(9.5), 0.0, 2, 5, 0)


def test_kid_is_unbiased_and_seeded():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same = kid_from_features(x, y, subset_size=100, n_subsets=50, seed=3)
    assert abs(same.mean) < 3 * same.std / math.sqrt(50) + 1e-3  # centred on 0 for one distribution
    shifted = kid_from_features(x, y + 1.0, subset_size=100, n_subsets=50, seed=3)
    assert shifted.mean > 10 * same.std
    assert kid_from_features(x, y, 100, 50, seed=3) == same


def test_inception_state_dict_layout_matches_fid_weights_file():
    keys = InceptionV3Pool3().state_dict()
    # A few tensors of pytorch-fid's pt_inception-2015-12-05 file with their shapes.
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for k, shape in expected.items():
        assert tuple(keys[k].shape) == shape, k
    # 94 conv+bn units (conv weight, bn weight/bias/mean/var) and fc weight/bias, plus num_batches_tracked.
    real = [k for k in keys if not k.endswith("num_batches_tracked")]
    assert len(real) == 94 * 5 + 2
    assert not any(k.startswith("AuxLogits") for k in keys)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = InceptionV3Pool3().eval()
    folder = tmp_path_factory.mktemp("weights")
    pth = folder / "inception.pth"
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}, pth)
    from safetensors.torch import save_file

    st = folder / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    return model, pth, st


def test_load_inception_from_pth_and_safetensors(inception_weights):
    model, pth, st = inception_weights
    x = torch.rand(1, 3, 107, 107) * 2 - 1  # fully convolutional up to pool3; small input keeps it quick
    with torch.no_grad():
        ref = model(x)
        assert ref.shape == (1, 2048)
        for path in (pth, st):
            loaded, digest = load_inception(path)
            assert digest == sha256_file(path)
            torch.testing.assert_close(loaded(x), ref)
        assert loaded(x, logits=True).shape == (1, 1008)


def test_load_inception_rejects_wrong_files(inception_weights, tmp_path):
    _, pth, _ = inception_weights
    named = tmp_path / "pt_inception-2015-12-05-deadbeef.pth"
    named.write_bytes(pth.read_bytes())
    with pytest.raises(PathgenError, match="hash in the file name"):
        load_inception(named)
    partial = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, partial)
    with pytest.raises(PathgenError, match="missing"):
        load_inception(partial)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PathgenError, match="cannot read weights"):
        load_inception(junk)


def _write_images(folder, seeds, size=(24, 20)):
    folder.mkdir()
    for s in seeds:
        rng = np.random.default_rng(s)
        Image.fromarray((rng.random(size + (3,)) * 255).astype(np.uint8)).save(folder / f"img{s}.png")


def test_inception_extractor_records_preprocessing(inception_weights, tmp_path):
    _, _, st = inception_weights
    _write_images(tmp_path / "a", [1, 2])
    ext = InceptionExtractor.from_weights(st)
    feats = extract_features(sorted((tmp_path / "a").iterdir()), ext, batch_size=2)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    info = ext.describe()
    assert info["weights_sha256"] == sha256_file(st) and "299x299" in info["resize"]


class _TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3)

    def forward(self, x):
        return self.conv(x)


def test_module_extractor_and_image_set_comparison(tmp_path):
    _write_images(tmp_path / "a", [1, 2, 3, 4])
    _write_images(tmp_path / "b", [5, 6, 7])
    ext = ModuleExtractor(_TinyEncoder(), "tiny-encoder", resize=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
    res = compare_image_sets(tmp_path / "a", tmp_path / "b", ext, batch_size=2, kid_subset_size=50,
                             kid_subsets=4, seed=1)
    assert (res["n_images_a"], res["n_images_b"], res["kid_subset_size"], res["kid_subsets"]) == (4, 3, 3, 4)
    assert res["extractor"]["name"] == "tiny-encoder" and "16x16" in res["extractor"]["resize"]
    feats_a = extract_features(sorted((tmp_path / "a").iterdir()), ext)
    feats_b = extract_features(sorted((tmp_path / "b").iterdir()), ext)
    # features are extracted in float32; torch thread count changes the summation order
    assert res["fid"] == pytest.approx(fid_from_features(feats_a, feats_b), rel=1e-5)
    with pytest.raises(PathgenError, match="at least 2"):
        (tmp_path / "c").mkdir()
        compare_image_sets(tmp_path / "a", tmp_path / "c", ext)
