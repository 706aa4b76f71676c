"""The synthesis batch job: layout, manifest, resuming after a kill (byte-identical files), job identity, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import typer
from PIL import Image

from pathgen.io.checkpoint import checkpoint_sha256, save_model
from pathgen.diffusion.schedulers import NoiseSchedule
from pathgen.errors import PathgenError
from pathgen.pipelines.synthesize import synthesize_dataset, synthesize_masks


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny untrained-but-non-trivial NASDM and MaskGen checkpoints (random output layers)."""
    from pathgen.maskgen.unet import MaskGenUNet
    from pathgen.maskgen.unet import preset_config as mg_preset
    from pathgen.nasdm.unet import NASDMUNet, preset_config

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    nasdm = NASDMUNet(preset_config("tiny"))
    torch.nn.init.normal_(nasdm.out[-1].weight, std=0.05)
    save_model(root / "nasdm", nasdm.state_dict(), "pathgen-nasdm", nasdm.config.to_dict(),
               header={"schedule": NoiseSchedule().to_dict()})
    maskgen = MaskGenUNet(mg_preset("tiny"))
    torch.nn.init.normal_(maskgen.out[-1].weight, std=0.05)
    save_model(root / "maskgen", maskgen.state_dict(), "pathgen-maskgen", maskgen.config.to_dict(),
               header={"schedule": NoiseSchedule().to_dict()},
               extra={"presence_distribution": [{"vector": [1, 0, 1, 1, 0, 0, 0], "count": 3},
                                          {"vector": [1, 0, 0, 0, 0, 0, 1], "count": 1}]})
    return root / "nasdm", root / "maskgen"


@pytest.fixture(scope="module")
def mask_dir(tmp_path_factory):
    """Five hand-made masks: four 16x16 and one 24x20 (rendered by window fusion)."""
    root = tmp_path_factory.mktemp("masks")
    (root / "instances").mkdir()
    (root / "classes").mkdir()
    rng = np.random.default_rng(0)
    for k, shape in enumerate([(16, 16)] * 4 + [(24, 20)]):
        inst = np.zeros(shape, np.int32)
        for label in range(1, 4):
            y, x = rng.integers(2, shape[0] - 4), rng.integers(2, shape[1] - 4)
            inst[y:y + 3, x:x + 4] = label
        cls = np.where(inst > 0, 1 + inst % 6, 0).astype(np.uint8)
        tifffile.imwrite(root / "instances" / f"m{k}.tif", inst)
        Image.fromarray(cls).save(root / "classes" / f"m{k}.png")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _kill_after(k):
    def hook(index, name):
        if index + 1 >= k:
            raise Killed(name)

    return hook


def test_dataset_from_masks_layout_and_manifest(checkpoints, mask_dir, tmp_path):
    nasdm, _ = checkpoints
    out = tmp_path / "syn"
    res = synthesize_dataset(out, nasdm_checkpoint=nasdm, masks_dir=mask_dir, guidance=2.0, steps=3,
                             scheduler="dpm", seed=1, batch_size=2, device="cpu")
    assert res.done == 5 and res.generated == 5 and res.complete
    assert res.names == [f"m{k}" for k in range(5)]
    for name in res.names:
        img = np.asarray(Image.open(out / "images" / f"{name}.png"))
        inst = tifffile.imread(out / "instances" / f"{name}.tif")
        cls = np.asarray(Image.open(out / "classes" / f"{name}.png"))
        src = tifffile.imread(mask_dir / "instances" / f"{name}.tif")
        assert img.shape == src.shape + (3,) and img.dtype == np.uint8
        np.testing.assert_array_equal(inst, src)
        assert inst.dtype == np.int32 and cls.dtype == np.uint8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 5 and [s["index"] for s in manifest["samples"]] == list(range(5))
    s0 = manifest["samples"][0]
    assert s0["guidance"] == 2.0 and s0["scheduler"] == "dpm" and s0["steps"] == 3 and s0["seed"] == 1
    assert s0["nasdm_sha256"] == checkpoint_sha256(nasdm) and "torch" in s0["versions"]
    assert s0["nuclei"] == 3
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 5
    # running it again does nothing
    again = synthesize_dataset(out, nasdm_checkpoint=nasdm, masks_dir=mask_dir, guidance=2.0, steps=3,
                               scheduler="dpm", seed=1, batch_size=2, device="cpu")
    assert again.done == 5 and again.generated == 0


def test_killed_run_resumes_to_identical_files(checkpoints, mask_dir, tmp_path):
    nasdm, _ = checkpoints
    kw = dict(nasdm_checkpoint=nasdm, masks_dir=mask_dir, guidance=1.5, steps=3, scheduler="ddpm", seed=7,
              batch_size=2, device="cpu")
    synthesize_dataset(tmp_path / "full", **kw)
    with pytest.raises(Killed):
        synthesize_dataset(tmp_path / "killed", on_sample=_kill_after(3), **kw)  # dies mid-batch
    assert len((tmp_path / "killed" / "manifest.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "killed" / "manifest.json").exists()
    with open(tmp_path / "killed" / "manifest.jsonl", "a") as f:
        f.write('{"index": 3, "name": "m3", "fi')  # a torn append from the kill
    res = synthesize_dataset(tmp_path / "killed", **kw)
    assert res.generated == 2 and res.done == 5
    assert _files(tmp_path / "full") == _files(tmp_path / "killed")


def test_maskgen_job_resumes_to_identical_files(checkpoints, tmp_path):
    nasdm, maskgen = checkpoints
    kw = dict(n=5, nasdm_checkpoint=nasdm, maskgen_checkpoint=maskgen, guidance=1.5, steps=3, scheduler="ddim",
              seed=3, batch_size=3, device="cpu")
    full = synthesize_dataset(tmp_path / "full", **kw)
    assert full.names == [f"syn_{i:06d}" for i in range(5)]
    with pytest.raises(Killed):
        synthesize_dataset(tmp_path / "killed", on_sample=_kill_after(4), **kw)
    synthesize_dataset(tmp_path / "killed", **kw)
    assert _files(tmp_path / "full") == _files(tmp_path / "killed")
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    src = manifest["samples"][0]["mask_source"]
    assert src["maskgen_sha256"] == checkpoint_sha256(maskgen)
    assert src["types"] in (["epithelial", "lymphocyte"], ["connective"])
    for name in full.names:
        inst = tifffile.imread(tmp_path / "full" / "instances" / f"{name}.tif")
        img = np.asarray(Image.open(tmp_path / "full" / "images" / f"{name}.png"))
        assert inst.shape == (16, 16) and img.shape == (16, 16, 3)


def test_masks_only_job_and_fixed_types(checkpoints, tmp_path):
    _, maskgen = checkpoints
    res = synthesize_masks(tmp_path / "m", 3, maskgen, types="lymphocyte", steps=2, scheduler="dpm",
                           batch_size=2, device="cpu", size=24)
    assert res.done == 3 and not (tmp_path / "m" / "images").exists()
    for name in res.names:
        cls = np.asarray(Image.open(tmp_path / "m" / "classes" / f"{name}.png"))
        assert cls.shape == (24, 24)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert all(s["mask_source"]["types"] == ["lymphocyte"] for s in manifest["samples"])


def test_a_different_job_is_refused_unless_overwrite(checkpoints, mask_dir, tmp_path):
    nasdm, maskgen = checkpoints
    kw = dict(nasdm_checkpoint=nasdm, masks_dir=mask_dir, steps=2, scheduler="ddim", batch_size=5, device="cpu")
    synthesize_dataset(tmp_path / "o", n=2, guidance=1.0, **kw)
    with pytest.raises(PathgenError, match="different synthesis job"):
        synthesize_dataset(tmp_path / "o", n=2, guidance=3.0, **kw)
    res = synthesize_dataset(tmp_path / "o", n=2, guidance=3.0, overwrite=True, **kw)
    assert res.generated == 2
    with pytest.raises(PathgenError, match="exactly one mask source"):
        synthesize_dataset(tmp_path / "p", n=2, nasdm_checkpoint=nasdm, maskgen_checkpoint=maskgen,
                           masks_dir=mask_dir)
    with pytest.raises(PathgenError, match="pathgen-nasdm"):
        synthesize_dataset(tmp_path / "q", n=2, nasdm_checkpoint=maskgen, masks_dir=mask_dir)
    with pytest.raises(PathgenError, match="6 samples"):
        synthesize_dataset(tmp_path / "r", n=6, guidance=1.0, **kw)


def test_cli_commands(checkpoints, mask_dir, tmp_path, capsys):
    from pathgen.cli.synth import add_train_commands, register

    nasdm, maskgen = checkpoints
    app = typer.Typer()
    register(app)
    train = typer.Typer()
    add_train_commands(train)
    app.add_typer(train, name="train")

    def run(*args):
        try:
            app(args=[str(a) for a in args], prog_name="pathgen", standalone_mode=False)
        except SystemExit as exc:  # pragma: no cover - typer exits on --help
            return int(exc.code or 0)
        return 0

    assert run("synthesize", "dataset", "-n", 2, "-o", tmp_path / "d", "--nasdm", nasdm, "--masks", mask_dir,
               "--steps", 2, "--scheduler", "ddim", "--device", "cpu") == 0
    assert (tmp_path / "d" / "images" / "m1.png").is_file()
    assert run("synth", "masks", "--checkpoint", maskgen, "-n", 2, "-o", tmp_path / "gm", "--types",
               "epithelial,lymphocyte", "--steps", 2, "--device", "cpu") == 0
    assert run("synth", "images", "--masks", tmp_path / "gm", "--checkpoint", nasdm, "-o", tmp_path / "gi",
               "--steps", 2, "--guidance", 0, "--device", "cpu") == 0
    assert len(list((tmp_path / "gi" / "images").glob("*.png"))) == 2
    # a region larger than MaskGen's 16 px windows: masks and tiles of 24 px, fused from overlapping windows
    assert run("synthesize", "dataset", "-n", 1, "-o", tmp_path / "big", "--nasdm", nasdm, "--maskgen", maskgen,
               "--size", 24, "--steps", 2, "--scheduler", "ddim", "--device", "cpu") == 0
    assert tifffile.imread(tmp_path / "big" / "instances" / "syn_000000.tif").shape == (24, 24)
    assert np.asarray(Image.open(tmp_path / "big" / "images" / "syn_000000.png")).shape == (24, 24, 3)
    assert json.loads((tmp_path / "big" / "manifest.json").read_text())["job"]["mask_size"] == 24
    out = capsys.readouterr().out
    assert "2 samples" in out and "2 masks" in out and "2 tiles" in out
