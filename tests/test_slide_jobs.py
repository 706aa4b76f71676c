"""Every slide job runs through one job path: the user's engine options are honoured and recorded the same way."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import numpy as np
import pytest

from pathgen.cli import main
from pathgen.data.synth import render_tile
from pathgen.io.pyramid import iter_row_blocks, write_pyramid


@pytest.fixture(scope="module")
def slide_1024(tmp_path_factory):
    """A 1024 × 768 pyramidal TIFF of generated tissue at 0.5 µm/px."""
    tiles = [render_tile(256, seed=300 + i, site="ABCDE"[i % 5]).image for i in range(12)]
    img = np.zeros((768, 1024, 3), np.uint8)
    for k, (y, x) in enumerate((y, x) for y in range(0, 768, 256) for x in range(0, 1024, 256)):
        img[y:y + 256, x:x + 256] = tiles[k]
    path = tmp_path_factory.mktemp("jobs") / "tissue.tiff"
    write_pyramid(path, iter_row_blocks(img, 256), img.shape, mpp=0.5, tile_size=256, compression="jpeg")
    return path


@pytest.fixture
def pool_sizes(monkeypatch):
    """The thread counts of the engine's tile pools created during a command."""
    import pathgen.engine.core as core

    sizes: list[int] = []
    real = concurrent.futures.ThreadPoolExecutor

    class Spy(real):
        def __init__(self, max_workers=None, thread_name_prefix="", **kw):
            if thread_name_prefix == "pathgen-tile":
                sizes.append(max_workers)
            super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix, **kw)

    monkeypatch.setattr(core, "ThreadPoolExecutor", Spy)
    return sizes


COMMANDS = {
    "macenko": lambda src, out: ["normalize", src, "-o", out / "n.tiff", "--method", "macenko"],
    "saasn": lambda src, out: ["normalize", src, "-o", out / "s.tiff", "--method", "saasn"],
    "saasn-generator": lambda src, out: ["normalize", src, "-o", out / "g.tiff", "--method", "saasn",
                                         "--saasn-mode", "generator"],
    "segment": lambda src, out: ["segment", src, "-o", out / "seg", "--no-skip"],
    "convert": lambda src, out: ["convert", src, "-o", out / "c.tiff"],
}
RECORDS = {"macenko": "n.tiff.json", "saasn": "s.tiff.json", "saasn-generator": "g.tiff.json",
           "segment": "seg/segment.json", "convert": "c.tiff.json"}


@pytest.mark.parametrize("job", sorted(COMMANDS))
def test_tile_size_and_threads_are_honoured_and_recorded(job, slide_1024, tmp_path, pool_sizes):
    args = [str(a) for a in COMMANDS[job](slide_1024, tmp_path)]
    assert main(args + ["--tile-size", "512", "--threads", "1", "--quiet"]) == 0
    record = json.loads((tmp_path / RECORDS[job]).read_text())
    engine = record["config"]["engine"]
    assert engine["tile_size"] == 512 and engine["threads"] == 1
    assert record["windows"] == 2 * 2  # 512-px cores over 1024 × 768 (segment: at the model's 0.5 µm/px)
    assert pool_sizes and set(pool_sizes) == {1}
    assert record["config"]["method"] and "device" in engine and "overlap" in engine


def test_engine_section_is_the_same_for_every_job(slide_1024, tmp_path):
    keys = None
    for job in ("macenko", "segment"):
        args = [str(a) for a in COMMANDS[job](slide_1024, tmp_path)]
        assert main(args + ["--quiet"]) == 0
        engine = json.loads((tmp_path / RECORDS[job]).read_text())["config"]["engine"]
        keys = keys or set(engine)
        assert set(engine) == keys
    assert {"tile_size", "overlap", "batch_size", "threads", "workers", "scheduler", "device"} <= keys


def test_a_library_error_is_named_with_the_commands_own_flag(slide_1024, tmp_path, capsys):
    assert main(["normalize", str(slide_1024), "-o", str(tmp_path / "x.tiff"), "--overlap", "400",
                 "--tile-size", "512", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--overlap" in err and "overlap 400 is more than half" in err
    assert main(["normalize", str(slide_1024), "-o", str(tmp_path / "y.tiff"), "--device", "cuda:7",
                 "--quiet"]) == 1
    assert "(--device)" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["stain-map", "generator"])
def test_saasn_on_a_local_cluster_of_processes(slide_1024, tmp_path, mode):
    """The tile function travels to worker processes (the generator is loaded there from its checkpoint)."""
    out = Path(tmp_path) / "w.tiff"
    assert main(["normalize", str(slide_1024), "-o", str(out), "--method", "saasn", "--saasn-mode", mode,
                 "--workers", "2", "--quiet"]) == 0
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["config"]["engine"]["workers"] == 2 and record["processed"] == record["windows"]
