"""Training loop: a tiny NASDM learns (loss falls), resuming reproduces an uninterrupted run, and the trained
model samples with every scheduler in exactly the requested number of denoiser calls."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pathgen.nasdm.pipeline import NASDMPipeline, load_nasdm
from pathgen.nasdm.train import NASDMTrainConfig, train_nasdm


def _tiny_config(**kw) -> NASDMTrainConfig:
    base = dict(preset="tiny", steps=24, finetune_steps=6, batch_size=4, lr=1e-3, finetune_lr=5e-4, warmup_steps=4,
                log_every=3, save_every=10, device="cpu", min_tissue=0.0, seed=0)
    base.update(kw)
    return NASDMTrainConfig(**base)


@pytest.fixture(scope="module")
def tile_data(tmp_path_factory):
    from pathgen.data.synth import write_tile_dataset

    out = tmp_path_factory.mktemp("tiles") / "ds"
    write_tile_dataset(out, 3, seed=11, size=48, sites="A")
    return out


@pytest.fixture(scope="module")
def trained_run(tile_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "nasdm"
    summary = train_nasdm(tile_data, run, _tiny_config())
    return run, summary


def _log(run):
    with open(run / "loss_log.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_model_trains_and_loss_falls(trained_run):
    run, summary = trained_run
    assert summary.finished and summary.step == 30
    rows = _log(run)
    assert [int(r["step"]) for r in rows] == list(range(3, 31, 3))
    losses = [float(r["loss"]) for r in rows]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2])
    assert {r["phase"] for r in rows} == {"main", "finetune"}
    for name in ("model.safetensors", "config.json", "train.json", "state/optimizer.safetensors",
                 "state/ema.safetensors", "state/train_state.json"):
        assert (run / name).is_file(), name
    unet, schedule, cfg = load_nasdm(run)
    assert cfg["format"] == "pathgen-nasdm" and schedule.num_train_timesteps == 1000
    assert cfg["training"]["step"] == 30


def test_resumed_run_matches_uninterrupted_run(tile_data, tmp_path):
    cfg = _tiny_config(steps=8, finetune_steps=4, save_every=4)
    train_nasdm(tile_data, tmp_path / "a", cfg)
    first = train_nasdm(tile_data, tmp_path / "b", cfg, stop_after=4)
    assert first.step == 4 and not first.finished
    second = train_nasdm(tile_data, tmp_path / "b", cfg)
    assert second.resumed_from == 4 and second.finished
    from safetensors.torch import load_file

    for name in ("state/model.safetensors", "state/ema.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["loss"] for r in _log(tmp_path / "a")] == [r["loss"] for r in _log(tmp_path / "b")]


@pytest.mark.parametrize("scheduler,steps", [("ddpm", 6), ("ddim", 4), ("dpm", 5)])
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_sampling_makes_one_denoiser_call_per_step(trained_run, tile_data, scheduler, steps, guidance):
    run, _ = trained_run
    pipe = NASDMPipeline.from_pretrained(run, scheduler=scheduler)
    calls = []
    forward = pipe.unet.forward

    def counting(x, t, cond):
        calls.append(x.shape[0])
        return forward(x, t, cond)

    pipe.unet.forward = counting
    from pathgen.segment.data import TileFolderDataset

    s = TileFolderDataset(tile_data)[0]
    masks = [(s.instances[:16, :16], s.classes[:16, :16]), (s.instances[16:32, :16], s.classes[16:32, :16])]
    out = pipe(masks, guidance=guidance, steps=steps, seed=3)
    assert out.images.shape == (2, 16, 16, 3) and out.images.dtype == np.uint8
    assert len(calls) == steps
    assert set(calls) == {2 if guidance == 1.0 else 4}  # both guidance passes batched into one call
    again = pipe(masks, guidance=guidance, steps=steps, seed=3)
    np.testing.assert_array_equal(out.images, again.images)


def test_large_region_is_one_fused_canvas(trained_run, tile_data):
    run, _ = trained_run
    pipe = NASDMPipeline.from_pretrained(run, scheduler="ddim", overlap=6)
    calls = []
    forward = pipe.unet.forward

    def counting(x, t, cond):
        calls.append(tuple(x.shape))
        return forward(x, t, cond)

    pipe.unet.forward = counting
    from pathgen.segment.data import TileFolderDataset

    s = TileFolderDataset(tile_data)[1]
    out = pipe([(s.instances[:40, :28], s.classes[:40, :28])], guidance=1.0, steps=3, seed=0)
    assert out.images.shape == (1, 40, 28, 3)
    # windows of the 16 px training size: rows 0/10/20/24, columns 0/10/12 -> 12 windows per step
    assert all(shape[-2:] == (16, 16) for shape in calls)
    assert sum(shape[0] for shape in calls) == 3 * 12
