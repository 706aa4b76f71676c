"""SAASN training on generated sites: losses move, outputs are written, resume is exact, CLI works."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from pathgen.errors import PathgenError
from pathgen.saasn.checkpoint import load_tensors
from pathgen.saasn.data import DataConfig, TileFolder, UnpairedData
from pathgen.saasn.losses import LossConfig
from pathgen.saasn.networks import preset
from pathgen.saasn.train import TrainConfig, cycle_weight, lr_factor, train_preset, train_saasn

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Three generated sites (A target, B and C sources), four 40-px tiles each."""
    from PIL import Image

    from pathgen.data.synth import render_tile

    root = tmp_path_factory.mktemp("sites")
    out = {}
    for site in "ABC":
        folder = root / site
        folder.mkdir()
        for i in range(4):
            Image.fromarray(render_tile(40, 10 + i, site).image).save(folder / f"{site}{i}.png")
        out[site] = folder
    return out


def _data(sites, balance="pooled"):
    return DataConfig([str(sites["B"]), str(sites["C"])], [str(sites["A"])], balance=balance)


def _rows(run):
    with (run / "losses.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_lr_schedule_constant_then_linear():
    assert [lr_factor(e, 4, 2) for e in range(4)] == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3])
    assert lr_factor(0, 100, 50) == 1.0 and lr_factor(99, 100, 50) == pytest.approx(1 / 51)


def test_sampling_is_seeded_and_balanced(sites):
    data = UnpairedData(_data(sites, "sites"), 32)
    a, ka = data.sample_x(64, np.random.default_rng(1))
    b, kb = data.sample_x(64, np.random.default_rng(1))
    assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ka, kb)
    assert set(ka.tolist()) == {0, 1}
    assert data.sample_y(3, np.random.default_rng(0)).shape == (3, 32, 32, 3)
    with pytest.raises(PathgenError):
        TileFolder(sites["A"], 64).tile(0)  # tiles smaller than the crop


def test_tiny_training_moves_both_losses_and_writes_the_run(sites, tmp_path):
    train = train_preset("tiny")
    train.epochs, train.steps_per_epoch, train.batch_size = 3, 4, 2
    run = tmp_path / "run"
    result = train_saasn(run, _data(sites), preset("tiny"), LossConfig(), train, quiet=True)
    assert result.epochs_done == 3 and result.steps_done == 12
    rows = _rows(run)
    assert len(rows) == 12 and [int(r["epoch"]) for r in rows] == [1] * 4 + [2] * 4 + [3] * 4
    g = np.array([float(r["loss_g"]) for r in rows])
    d = np.array([float(r["loss_dx"]) + float(r["loss_dy"]) for r in rows])
    assert np.isfinite(g).all() and np.isfinite(d).all()
    assert g[-3:].mean() < g[0]  # the reconstruction terms fall at once
    assert d[-3:].mean() < d[0]  # the discriminators learn too
    assert [float(r["lr"]) for r in rows[::4]] == pytest.approx([2e-4, 2e-4 * 2 / 3, 2e-4 / 3], rel=1e-5)
    for name in ("generator.safetensors", "generator_y2x.safetensors", "config.json", "run.json",
                 "state/training.safetensors", "state/training.json", "samples/epoch_003.png"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["format"] == "pathgen-saasn-generator" and cfg["model"]["spectral_norm"] is False
    from PIL import Image

    grid = np.asarray(Image.open(run / "samples" / "epoch_003.png"))
    assert grid.shape == (2 * 2 * 32, 3 * 32, 3)  # (x, y) blocks of `preview` rows; 3 columns
    with pytest.raises(PathgenError):
        train_saasn(run, _data(sites), preset("tiny"), LossConfig(), train, quiet=True)  # not empty, no resume


def test_cycle_weight_warm_up_schedule():
    assert [cycle_weight(10.0, s, 4) for s in range(6)] == pytest.approx([0, 2.5, 5, 7.5, 10, 10])
    assert cycle_weight(10.0, 0, 0) == 10.0
    assert train_preset("small").cycle_warmup_steps == 0  # the text's recipe
    assert train_preset("small-colour").cycle_warmup_steps > 0
    with pytest.raises(PathgenError):
        TrainConfig(cycle_warmup_steps=-1)


def _colour_run(sites, tmp_path, name, warmup):
    from dataclasses import replace

    train = train_preset("tiny")
    train.epochs, train.steps_per_epoch, train.batch_size, train.cycle_warmup_steps = 1, 10, 2, warmup
    train.lr = 2e-3
    run = tmp_path / name
    model = replace(preset("tiny"), colour_transform=True)
    train_saasn(run, _data(sites), model, LossConfig(), train, quiet=True)
    from pathgen.saasn.checkpoint import load_generator

    g, _ = load_generator(run, device="cpu")
    x = torch.from_numpy(UnpairedData(_data(sites), 32).sample_x(4, np.random.default_rng(5))[0])
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        deviation = (g(x) - x).abs().mean().item()
    return _rows(run), deviation


def test_colour_head_leaves_the_identity_with_the_cycle_warm_up(sites, tmp_path):
    """A tiny colour-transform SAASN: with the L1 cycle weight warmed up (here α ≤ 1 for all 10 steps) the X→Y
    generator moves off the identity more than twice as far as with the full α from the first step."""
    rows, warm = _colour_run(sites, tmp_path, "warm", warmup=100)
    assert [float(r["alpha"]) for r in rows] == pytest.approx([s / 10 for s in range(10)], rel=1e-5)
    rows, cold = _colour_run(sites, tmp_path, "cold", warmup=0)
    assert {float(r["alpha"]) for r in rows} == {10.0}
    assert warm > 1e-3 and warm > 2 * cold


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(sites, tmp_path):
    train = train_preset("tiny")
    train.epochs, train.steps_per_epoch, train.batch_size = 2, 2, 2
    a, b = tmp_path / "a", tmp_path / "b"
    train_saasn(a, _data(sites), preset("tiny"), LossConfig(), train, quiet=True, stop_after=1)
    assert json.loads((a / "state" / "training.json").read_text())["epoch"] == 1
    train_saasn(a, resume=True, quiet=True)
    train_saasn(b, _data(sites), preset("tiny"), LossConfig(), train, quiet=True)
    ta, tb = load_tensors(a / "state" / "training.safetensors"), load_tensors(b / "state" / "training.safetensors")
    assert sorted(ta) == sorted(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    ra, rb = _rows(a), _rows(b)
    assert [r["loss_g"] for r in ra] == [r["loss_g"] for r in rb]


def test_cli_train_and_eval(sites, tmp_path):
    from pathgen.cli.saasn import add_eval_command, add_train_command, register

    app = typer.Typer()
    train_app, eval_app = typer.Typer(), typer.Typer()
    add_train_command(train_app)
    add_eval_command(eval_app)
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    runner = CliRunner()
    run = tmp_path / "cli_run"
    res = runner.invoke(app, ["train", "saasn", "--source", str(sites["B"]), "--source", str(sites["C"]),
                              "--target", str(sites["A"]), "-o", str(run), "--preset", "tiny", "--epochs", "1",
                              "--device", "cpu", "--balance", "sites"])
    assert res.exit_code == 0, res.output
    assert (run / "generator.safetensors").is_file()
    assert json.loads((run / "run.json").read_text())["data"]["balance"] == "sites"
    report = tmp_path / "report.json"
    res = runner.invoke(app, ["eval", "stain", "--source", f"B={sites['B']}", "--target", str(sites["A"]),
                              "--saasn", str(run), "--methods", "identity,saasn", "-o", str(report)])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["directions"] == ["B → Y", "Y → X"] and data["methods"] == ["identity", "saasn"]
    ident = data["results"]["identity"]["B → Y"]
    assert ident["ssim_mean"] == pytest.approx(1.0) and ident["n"] == 4
    res = runner.invoke(app, ["train", "saasn", "-o", str(tmp_path / "nothing"), "--preset", "tiny"])
    assert res.exit_code != 0 and "--source" in str(res.exception)
    # register() reuses existing sub-apps instead of adding a second `train` group
    root = typer.Typer()
    existing = typer.Typer()
    root.add_typer(existing, name="train")
    register(root)
    assert [g.name for g in root.registered_groups].count("train") == 1
    assert any(c.name == "saasn" for c in existing.registered_commands)


def test_slide_site_samples_crops_from_tissue(make_slide):
    from conftest import tissue_like

    from pathgen.saasn.data import SlideSite, open_site

    image = tissue_like(256, 256, seed=1)
    slide = make_slide(image, name="site.tiff", mpp=2.0)
    site = open_site(slide, 32, tissue_fraction=0.9)
    assert isinstance(site, SlideSite) and len(site) >= 1
    rng = np.random.default_rng(0)
    for _ in range(10):
        crop = site.sample(rng)
        assert crop.shape == (32, 32, 3)
        assert (crop.min(axis=2) < 200).mean() > 0.5  # mostly the pink/purple blobs, not the 242 glass
    half = open_site(slide, 16, mpp=4.0, tissue_fraction=0.9)  # read at half resolution: 16 px cover 32 level-0 px
    assert half.sample(rng).shape == (16, 16, 3) and half.extent == 32
    glass = make_slide(np.full((128, 128, 3), 242, np.uint8), name="glass.tiff", mpp=2.0)
    with pytest.raises(PathgenError, match="tissue"):
        open_site(glass, 32)
