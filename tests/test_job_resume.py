"""Resumable slide jobs: a run killed mid-slide (kill -9 included) resumes with the same command and ends with a
pyramid byte-identical to an uninterrupted run's, leaving no temporary file behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pathgen.data.synth import render_tile
from pathgen.engine import EngineConfig
from pathgen.engine.job import TileMethod, run_slide_job
from pathgen.io.journal import job_folder
from pathgen.io.pyramid import iter_row_blocks, write_pyramid


@pytest.fixture(scope="module")
def mosaic_slide(tmp_path_factory):
    """A 1024 × 1536 pyramidal TIFF of generated tissue at 0.5 µm/px (3 bands of 512-px pyramid tiles)."""
    tiles = [render_tile(256, seed=40 + i, site="ABCDE"[i % 5]).image for i in range(8)]
    img = np.zeros((1536, 1024, 3), np.uint8)
    for k, (y, x) in enumerate((y, x) for y in range(0, 1536, 256) for x in range(0, 1024, 256)):
        img[y:y + 256, x:x + 256] = tiles[k % len(tiles)]
    path = tmp_path_factory.mktemp("resume") / "mosaic.tiff"
    write_pyramid(path, iter_row_blocks(img, 256), img.shape, mpp=0.5, tile_size=256, compression="jpeg")
    return path


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing on the way catches it."""


class CountingTiles:
    """A deterministic non-trivial tile function (colour mixed with a blurred copy: windows overlap in the
    result) that can die after ``die_after`` calls, and counts the windows it computes."""

    def __init__(self, die_after: int | None = None):
        self.calls = 0
        self.windows = 0
        self.die_after = die_after

    def __call__(self, batch):
        from scipy import ndimage

        self.calls += 1
        if self.die_after is not None and self.calls > self.die_after:
            raise Crash()
        self.windows += batch.shape[0]
        blurred = ndimage.uniform_filter(batch.astype(np.float32), size=(1, 9, 9, 1))
        return np.clip(0.6 * batch[..., ::-1] + 0.4 * blurred, 0, 255)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("overlap, tile, die_after", [(32, 256, 9), (0, 512, 2), (16, 192, 15)])
def test_a_crashed_job_resumes_to_the_same_pyramid(mosaic_slide, tmp_path, overlap, tile, die_after):
    def prepare_with(fn):
        return lambda ctx: TileMethod(name="mix", fn=fn, halo=overlap, skip_background=False,
                                      config={"blur": 9})

    engine = EngineConfig(tile_size=tile, overlap=overlap, batch_size=2, threads=2)
    ref = tmp_path / "ref" / "out.tiff"
    ref.parent.mkdir()
    full = CountingTiles()
    run_slide_job(mosaic_slide, ref, prepare_with(full), engine)

    out = tmp_path / "run" / "out.tiff"
    out.parent.mkdir()
    with pytest.raises(Crash):
        run_slide_job(mosaic_slide, out, prepare_with(CountingTiles(die_after=die_after)), engine)
    journal = job_folder(out)
    assert journal.is_dir() and not out.exists()
    assert (journal / "bands" / "000000.bin").is_file()  # the first band was finished before the crash
    again = CountingTiles()
    report = run_slide_job(mosaic_slide, out, prepare_with(again), engine)
    assert report.resumed_bands >= 1
    assert again.windows < full.windows  # finished work was reused, not recomputed
    assert out.read_bytes() == ref.read_bytes()  # byte-identical to the uninterrupted run
    assert _leftovers(out.parent, {"out.tiff", "out.tiff.json"}) == []  # no work folder, no temporary file
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["resumed_from_band"] == report.resumed_bands
    assert record["config"]["engine"]["tile_size"] == tile and record["config"]["engine"]["overlap"] == overlap


def test_another_setting_or_no_resume_starts_over(mosaic_slide, tmp_path):
    engine = EngineConfig(tile_size=256, overlap=32, batch_size=2, threads=1)
    out = tmp_path / "out.tiff"

    def prepare(fn, blur=9):
        return lambda ctx: TileMethod(name="mix", fn=fn, halo=32, skip_background=False, config={"blur": blur})

    with pytest.raises(Crash):
        run_slide_job(mosaic_slide, out, prepare(CountingTiles(die_after=9)), engine)
    changed = CountingTiles()
    report = run_slide_job(mosaic_slide, out, prepare(changed, blur=5), engine)  # another job: nothing reused
    assert report.resumed_bands == 0
    with pytest.raises(Crash):
        run_slide_job(mosaic_slide, out, prepare(CountingTiles(die_after=9)), engine, overwrite=True)
    fresh = CountingTiles()
    report = run_slide_job(mosaic_slide, out, prepare(fresh), engine, overwrite=True, resume=False)
    assert report.resumed_bands == 0 and fresh.windows == changed.windows


def test_orphans_of_a_dead_run_are_cleaned(mosaic_slide, tmp_path):
    out = tmp_path / "out.tiff"
    (tmp_path / ".out.tiff.abc123.part").write_bytes(b"half a pyramid")  # what older runs left behind
    (tmp_path / ".out.tiff.levels.xyz").mkdir()
    (tmp_path / ".out.tiff.levels.xyz" / "pieces.bin").write_bytes(b"\0" * 10)
    run_slide_job(mosaic_slide, out, lambda ctx: TileMethod(name="mix", fn=CountingTiles(), skip_background=False),
                  EngineConfig(tile_size=512, batch_size=4))
    assert _leftovers(tmp_path, {"out.tiff", "out.tiff.json"}) == []


def test_a_segmentation_job_resumes_to_the_same_outputs(tmp_path, monkeypatch):
    """The rows filter (instance renumbering) and the side records (nucleus polygons) resume too."""
    from pathgen.io.models import shipped_model
    from pathgen.segment import slide as seg

    tiles = [render_tile(256, seed=70 + i, site="AB"[i % 2]).image for i in range(4)]
    img = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)])
    img = np.concatenate([img, img[::-1]])[:, :384]  # 1024 × 384: windows 2 × 4, two bands of 512 rows
    path = tmp_path / "tissue.tiff"
    write_pyramid(path, iter_row_blocks(img, 256), img.shape, mpp=0.5, tile_size=256, compression="zlib")
    cfg = seg.SegmentConfig(engine=EngineConfig(tile_size=256, batch_size=2, threads=1, skip_background=False))
    ref = seg.segment(path, tmp_path / "ref", shipped_model("hovernet"), cfg)

    real_call = seg.SegmentTiles.__call__
    calls = {"n": 0}

    def dying(self, batch, origins):
        calls["n"] += 1
        if calls["n"] > 3:  # window rows 0-2 of 4 done (one call each): the first band is finished
            raise Crash()
        return real_call(self, batch, origins)

    monkeypatch.setattr(seg.SegmentTiles, "__call__", dying)
    with pytest.raises(Crash):
        seg.segment(path, tmp_path / "run", shipped_model("hovernet"), cfg)
    monkeypatch.setattr(seg.SegmentTiles, "__call__", real_call)
    again = seg.segment(path, tmp_path / "run", shipped_model("hovernet"), cfg)
    assert again["resumed_from_band"] == 1 and again["nuclei"] == ref["nuclei"] > 20
    for name in ("instances.tif", "classes.tif", "nuclei.csv", "nuclei.geojson"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        ["instances.tif", "classes.tif", "nuclei.csv", "nuclei.geojson", "segment.json"])


def test_kill_9_mid_slide_then_the_same_command_resumes(mosaic_slide, tmp_path):
    """A real process killed with SIGKILL while normalising; the same command line finishes the slide."""
    ref = tmp_path / "ref.tiff"
    out = tmp_path / "run" / "out.tiff"
    out.parent.mkdir()
    args = ["normalize", str(mosaic_slide), "--method", "macenko", "--per-tile", "--tile-size", "256",
            "--overlap", "32", "--threads", "1", "--batch-size", "1", "--quiet"]
    run = [sys.executable, "-c", "import sys; from pathgen.cli import main; sys.exit(main(sys.argv[1:]))"]
    assert subprocess.run(run + args + ["-o", str(ref)], capture_output=True).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(run + args + ["-o", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    band = job_folder(out) / "bands" / "000000.bin"
    deadline = time.monotonic() + 120
    while not band.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert job_folder(out).is_dir() and not out.exists()
    done = subprocess.run(run + args + ["-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == ref.read_bytes()
    assert _leftovers(out.parent, {"out.tiff", "out.tiff.json"}) == []
    assert json.loads(Path(f"{out}.json").read_text())["resumed_from_band"] >= 1
