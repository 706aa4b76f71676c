"""Batch pipelines from their TOML configs: the cohort and dataset jobs run, resume, chain, and run on an existing
dask cluster."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pathgen.cli import main
from pathgen.data.synth import render_tile
from pathgen.errors import PathgenError
from pathgen.io.pyramid import iter_row_blocks, write_pyramid


def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def small_cohort(tmp_path):
    """One 512 × 768 generated slide (site C) and a folder of two image tiles (site E)."""
    tiles = [render_tile(256, seed=500 + i, site="C").image for i in range(6)]
    img = np.concatenate([np.concatenate(tiles[k:k + 2], axis=1) for k in (0, 2, 4)])
    slide = tmp_path / "in" / "slide_c.tiff"
    slide.parent.mkdir()
    write_pyramid(slide, iter_row_blocks(img, 128), img.shape, mpp=0.5, tile_size=256, compression="jpeg")
    return slide


def test_cohort_pipeline_normalises_qcs_summarises_and_resumes(small_cohort, real_target, tmp_path, capsys):
    out = tmp_path / "cohort"
    cfg = _toml(tmp_path / "cohort.toml", f"""
pipeline = "normalize_cohort"
output_dir = "{out}"
inputs = ["{small_cohort}"]
generate_sites = ["B"]
generate_size = 1024
method = "macenko"
target = "{real_target}"
tile_size = 256
threads = 1
""")
    assert main(["run", str(cfg), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [Path(r["input"]).name for r in rows] == ["slide_c.tiff", "generated_site_B.svs"]
    for r in rows:
        assert r["status"] == "normalised" and Path(r["output"]).is_file() and Path(r["report"]).is_file()
        assert 0.5 < float(r["ssim"]) <= 1.0 and float(r["colour_before"]) > 0
        record = json.loads(Path(r["output"] + ".json").read_text())
        assert record["config"]["engine"]["tile_size"] == 256 and record["config"]["engine"]["threads"] == 1
    assert "generated_site_B.svs" in (out / "index.html").read_text()
    capsys.readouterr()
    assert main(["run", str(cfg), "--quiet"]) == 0  # again: everything was done, nothing is redone
    assert {r["status"] for r in csv.DictReader(open(out / "summary.csv"))} == {"done earlier"}


def test_pipelines_chain_and_unknown_settings_are_refused(small_cohort, real_target, tmp_path):
    second = _toml(tmp_path / "second.toml", f"""
pipeline = "normalize_cohort"
output_dir = "{tmp_path / 'second'}"
inputs = ["{small_cohort}"]
generate_sites = []
method = "vahadane"
target = "{real_target}"
qc = false
""")
    first = _toml(tmp_path / "first.toml", f"""
pipeline = "normalize_cohort"
output_dir = "{tmp_path / 'first'}"
inputs = ["{small_cohort}"]
generate_sites = []
target = "{real_target}"
qc = false
then = ["{second}"]
""")
    from pathgen.pipelines import run

    results = run(first)
    assert [r["method"] for r in results] == ["macenko", "vahadane"]
    assert (tmp_path / "second" / "normalized" / "slide_c.tiff").is_file()
    bad = _toml(tmp_path / "bad.toml", 'pipeline = "normalize_cohort"\nmethd = "macenko"\n')
    with pytest.raises(PathgenError, match="unknown setting.*methd"):
        run(bad)


def test_cohort_on_an_existing_dask_cluster(small_cohort, real_target, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        cfg = _toml(tmp_path / "cluster.toml", f"""
pipeline = "normalize_cohort"
output_dir = "{tmp_path / 'out'}"
inputs = ["{small_cohort}"]
generate_sites = []
target = "{real_target}"
scheduler = "{cluster.scheduler_address}"
qc = false
""")
        from pathgen.pipelines import run

        run(cfg)
    record = json.loads((tmp_path / "out" / "normalized" / "slide_c.tiff.json").read_text())
    assert record["config"]["engine"]["scheduler"].startswith("inproc://") or \
        record["config"]["engine"]["scheduler"].startswith("tcp://")
    assert record["processed"] > 0


def test_dataset_pipeline_synthesises_segments_back_scores_and_resumes(tmp_path):
    out = tmp_path / "ds"
    cfg = _toml(tmp_path / "ds.toml", f"""
pipeline = "synthesize_dataset"
output_dir = "{out}"
n = 2
seed = 3
device = "cpu"
threads = 1

[synthesis]
steps = 2
""")
    from pathgen.pipelines import run

    summary = run(cfg)[0]
    assert summary["samples"] == 2 and summary["generated"] == 2 and summary["segmented"] == 2
    names = sorted(p.stem for p in (out / "dataset" / "images").iterdir())
    assert sorted(p.stem for p in (out / "segmented" / "instances").iterdir()) == names
    scores = json.loads((out / "scores.json").read_text())
    assert scores["n_images"] == 2 and 0.0 <= scores["dice1"] <= 1.0
    assert sorted(r["name"] for r in scores["per_image"]) == names  # paired by name
    again = run(cfg)[0]
    assert again["generated"] == 0 and again["segmented"] == 0  # resumed: nothing redone
