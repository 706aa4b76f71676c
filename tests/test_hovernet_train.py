"""HoVer-Net training runs: datasets on disk, run folder outputs, resume, the `train hovernet` command."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
import typer
from PIL import Image

from pathgen.errors import PathgenError
from pathgen.segment.checkpoint import load_model, read_checkpoint_config
from pathgen.segment.data import (AUGMENT_PRESETS, AugmentConfig, NucleiSample, count_types, jitter_stains,
                                  open_nuclei_dataset, random_patch, vary_hematoxylin)
from pathgen.segment.targets import hv_maps
from pathgen.segment.train import TrainConfig, train_hovernet

CLASS_NAMES = ["background", "round", "long"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP waits dominate."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fake_tile(seed: int, size: int = 48) -> NucleiSample:
    """Dark round and elongated nuclei with pale rims on a pink background, two types."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int32)
    cls = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    label = 0
    for _ in range(25):
        cy, cx = rng.uniform(0, size, 2)
        kind = int(rng.integers(1, 3))
        a, b = (4.0, 4.0) if kind == 1 else (7.0, 2.5)
        th = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
        m = u * u + v * v <= 1
        if (m & (inst > 0)).any() or m.sum() < 12:
            continue
        label += 1
        inst[m], cls[m] = label, kind
    img = np.empty((size, size, 3), np.float32)
    img[:] = (236, 196, 222)
    img[cls == 1] = (70, 40, 130)
    img[cls == 2] = (120, 60, 150)
    img += rng.normal(0, 5, img.shape)
    return NucleiSample(f"t{seed:03d}", np.clip(img, 0, 255).astype(np.uint8), inst, cls)


def write_dataset(root, seeds, size: int = 48):
    for sub in ("images", "instances", "classes"):
        (root / sub).mkdir(parents=True)
    for s in seeds:
        t = fake_tile(s, size)
        Image.fromarray(t.image).save(root / "images" / f"{t.name}.png")
        tifffile.imwrite(root / "instances" / f"{t.name}.tif", t.instances)
        Image.fromarray(t.classes).save(root / "classes" / f"{t.name}.png")
    (root / "dataset.json").write_text(json.dumps({"mpp": 0.5, "classes": dict(enumerate(CLASS_NAMES))}))
    return root


def quick(**kw) -> TrainConfig:
    base = dict(preset="tiny", epochs=3, batch_size=2, patch_size=32, steps_per_epoch=2, lr=1e-3, val_every=1)
    return TrainConfig(**{**base, **kw})


def test_tile_folder_dataset_and_augmented_patches(tmp_path):
    ds = open_nuclei_dataset(write_dataset(tmp_path / "d", range(3)))
    assert len(ds) == 3 and ds.has_classes and ds.class_names == tuple(CLASS_NAMES) and ds.mpp == 0.5
    assert count_types(ds) == 3
    s = ds[1]
    assert s.image.shape == (48, 48, 3) and s.image.dtype == np.uint8 and s.instances.dtype == np.int32
    rng = np.random.default_rng(0)
    for k in range(6):
        p = random_patch(s, 32, rng, AUGMENT_PRESETS["strong"] if k % 2 else AugmentConfig())
        assert p.image.shape == (32, 32, 3) and p.instances.shape == (32, 32)
        # geometry moves together: every instance keeps a single class, and HV recomputed on the moved
        # instances spans [-1, 1] inside each whole nucleus
        for label in np.unique(p.instances)[1:]:
            assert len(np.unique(p.classes[p.instances == label])) == 1
        assert hv_maps(p.instances, min_size=1)[:, p.instances == 0].sum() == 0
    with pytest.raises(PathgenError, match="patch size"):
        random_patch(s, 64, rng)
    with pytest.raises(PathgenError):
        open_nuclei_dataset(tmp_path / "nowhere")
    with pytest.raises(PathgenError, match="format"):
        open_nuclei_dataset(tmp_path / "d", "jpeg")


def test_stain_jitter_is_identity_without_change_and_darkens_with_more_haematoxylin():
    img = fake_tile(7).image
    rng = np.random.default_rng(0)
    assert np.abs(jitter_stains(img, rng, 0.0, 0.0).astype(int) - img).max() <= 2

    class Fixed:  # draws: alpha_H, alpha_E, beta_H, beta_E
        def __init__(self, values):
            self.values = iter(values)

        def uniform(self, lo, hi):
            return next(self.values)

    darker = jitter_stains(img, Fixed([1.5, 1.0, 0.0, 0.0]), 0.5, 0.0)
    assert darker.shape == img.shape and darker.dtype == np.uint8
    assert darker.astype(int).sum() < img.astype(int).sum()


def test_training_run_writes_checkpoint_logs_and_plot(tmp_path):
    data = write_dataset(tmp_path / "train", range(6))
    val = write_dataset(tmp_path / "val", range(100, 102))
    lines = []
    res = train_hovernet(data, tmp_path / "run", quick(), val=val, log=lines.append)
    run = tmp_path / "run"
    assert len(lines) == 4 and res.best_epoch in (1, 2, 3)  # 3 epochs + the post-processing tuning
    rows = list(csv.DictReader(open(run / "loss_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and all(r["val_loss"] for r in rows)
    assert all(float(r["lr"]) > 0 for r in rows)
    with Image.open(run / "loss_plot.png") as im:
        assert im.format == "PNG" and im.size == (800, 480)
    desc = read_checkpoint_config(run)
    assert desc["training"]["best_epoch"] == res.best_epoch
    assert desc["model"]["type_names"] == ["round", "long"] and desc["model"]["nr_types"] == 3
    model = load_model(run)
    assert model.config.mpp == 0.5
    # post-processing chosen on validation, stored with the weights, used by inference by default
    tuning = desc["training"]["postprocess_tuning"]
    assert tuning["reference_settings"]["marker_threshold"] == 0.4 and len(tuning["table"]) == 36
    assert model.postprocess is not None and model.postprocess.sobel_size == tuning["chosen"]["sobel_size"]
    train_json = json.loads((run / "train.json").read_text())
    assert train_json["train_tiles"] == 6 and train_json["val_tiles"] == 2
    with pytest.raises(PathgenError, match="resume"):
        train_hovernet(data, run, quick(), val=val)


def test_phases_and_learning_rate_schedule():
    cfg = TrainConfig(epochs=50)
    assert cfg.phases() == [("frozen", 0), ("all", 50)]
    assert TrainConfig(epochs=50, pretrained="w.safetensors").phases() == [("frozen", 50), ("all", 50)]
    assert cfg.lr_at(0, 50) == 1e-4 and cfg.lr_at(24, 50) == 1e-4
    assert cfg.lr_at(25, 50) == pytest.approx(1e-5) and cfg.lr_at(49, 50) == pytest.approx(1e-5)
    with pytest.raises(PathgenError):
        TrainConfig(patch_size=30)


def test_frozen_phase_keeps_encoder_weights(tmp_path):
    data = write_dataset(tmp_path / "train", range(4))
    res = train_hovernet(data, tmp_path / "run", quick(epochs=0, frozen_epochs=2, val_every=5))
    assert [r["phase"] for r in res.history] == ["frozen", "frozen"]
    torch.manual_seed(0)  # the run's initial weights
    from pathgen.segment.hovernet import build_model, preset_config

    init = build_model(preset_config("tiny", nr_types=3, mpp=0.5, type_names=("round", "long")))
    trained = load_model(tmp_path / "run" / "last")
    enc0, enc1 = init.encoder.state_dict(), trained.encoder.state_dict()
    weights = [k for k in enc0 if k.endswith("weight")]
    assert all(torch.equal(enc0[k], enc1[k]) for k in weights)
    dec0, dec1 = init.decoder.state_dict(), trained.decoder.state_dict()
    assert any(not torch.equal(dec0[k], dec1[k]) for k in dec0 if k.endswith("weight"))


class _Stop(Exception):
    pass


def test_resume_continues_to_the_same_weights(tmp_path):
    data = write_dataset(tmp_path / "train", range(5))
    cfg = quick(val_every=2)
    train_hovernet(data, tmp_path / "straight", cfg)

    def stop_after_first(msg):
        if msg.startswith("epoch 1/"):
            raise _Stop

    with pytest.raises(_Stop):
        train_hovernet(data, tmp_path / "cut", cfg, log=stop_after_first)
    res = train_hovernet(data, tmp_path / "cut", TrainConfig(), resume=True)  # settings come from the run
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    a = load_model(tmp_path / "straight" / "last").state_dict()
    b = load_model(tmp_path / "cut" / "last").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert read_checkpoint_config(tmp_path / "cut")["training"]["best_epoch"] == res.best_epoch
    with pytest.raises(PathgenError, match="nothing to resume"):
        train_hovernet(data, tmp_path / "fresh", cfg, resume=True)


def test_train_hovernet_command(tmp_path):
    from pathgen.cli.train import register

    data = write_dataset(tmp_path / "train", range(4))
    app = typer.Typer()
    register(app)
    args = ["train", "hovernet", "--data", str(data), "-o", str(tmp_path / "run"), "--preset", "tiny",
            "--epochs", "1", "--batch-size", "2", "--patch-size", "32", "--steps-per-epoch", "1", "--threads", "1"]
    app(args=args, standalone_mode=False)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    # one of the four tiles was held out for validation
    assert json.loads((tmp_path / "run" / "train.json").read_text())["val_tiles"] == 1
    with pytest.raises(PathgenError, match="not empty"):
        app(args=args, standalone_mode=False)
    app(args=args + ["--overwrite", "--preset", "tiny"], standalone_mode=False)
    # fine-tune the result with strong augmentation: same architecture, --preset ignored
    tuned = ["train", "hovernet", "--data", str(data), "-o", str(tmp_path / "ft"), "--init", str(tmp_path / "run"),
             "--preset", "small", "--augment", "strong", "--epochs", "1", "--batch-size", "2", "--patch-size", "32",
             "--steps-per-epoch", "1", "--threads", "1"]
    app(args=tuned, standalone_mode=False)
    assert load_model(tmp_path / "ft").config == load_model(tmp_path / "run").config
    with pytest.raises(PathgenError, match="augment"):
        app(args=tuned[:-2] + ["--augment", "wild", "--overwrite"], standalone_mode=False)
    with pytest.raises(PathgenError, match="unknown preset"):
        app(args=args + ["--overwrite", "--preset", "huge"], standalone_mode=False)


def test_conic_and_pannuke_arrays_are_read_through_the_metrics_formats(tmp_path):
    pytest.importorskip("pathgen.io.labels")
    tiles = [fake_tile(s, 32) for s in (1, 2)]
    conic = tmp_path / "conic"
    conic.mkdir()
    np.save(conic / "images.npy", np.stack([t.image for t in tiles]))
    np.save(conic / "labels.npy", np.stack([np.stack([t.instances, t.classes], -1) for t in tiles]))
    ds = open_nuclei_dataset(conic)  # detected from images.npy + labels.npy
    assert len(ds) == 2 and ds.has_classes and ds.class_names[:3] == ("background", "neutrophil", "epithelial")
    np.testing.assert_array_equal(ds[1].instances > 0, tiles[1].instances > 0)
    np.testing.assert_array_equal(ds[1].classes, tiles[1].classes)
    pannuke = tmp_path / "pannuke"
    pannuke.mkdir()
    masks = np.zeros((2, 32, 32, 6), np.float64)
    for i, t in enumerate(tiles):
        for c in (1, 2):
            masks[i, ..., c - 1] = np.where(t.classes == c, t.instances, 0)
    np.save(pannuke / "images.npy", np.stack([t.image for t in tiles]).astype(np.float64))
    np.save(pannuke / "masks.npy", masks)
    ds = open_nuclei_dataset(pannuke, "pannuke")
    assert count_types(ds) == 6 and ds.class_names[1] == "neoplastic"
    np.testing.assert_array_equal(ds[0].classes, tiles[0].classes)


def test_haematoxylin_sheets_darken_tissue_and_nuclear_jitter_touches_only_nuclei():
    from skimage.color import hed_from_rgb

    sample = fake_tile(11, size=96)
    img, inst = sample.image, sample.instances
    rng = np.random.default_rng(0)
    # nuclear jitter alone: background pixels unchanged, nuclei changed
    only_nuclei = vary_hematoxylin(img, inst, rng, counterstain=0.0, nuclear=0.5)
    assert np.array_equal(only_nuclei[inst == 0], img[inst == 0])
    assert not np.array_equal(only_nuclei[inst > 0], img[inst > 0])
    # sheets add haematoxylin (never remove it): the H density rises somewhere outside nuclei, falls nowhere
    def h_density(x):
        return (-np.log((x.reshape(-1, 3).astype(np.float64) + 1) / 256) @ hed_from_rgb[:, 0]).reshape(inst.shape)

    gained = [h_density(vary_hematoxylin(img, inst, np.random.default_rng(s), 0.8, 0.0)) - h_density(img)
              for s in range(8)]
    assert min(g.min() for g in gained) > -0.01
    assert max(g[inst == 0].max() for g in gained) > 0.05
    # no nuclei: nothing to calibrate against, image returned as is
    assert vary_hematoxylin(img, np.zeros_like(inst), rng, 0.8, 0.5) is img
    assert "real" in AUGMENT_PRESETS and AUGMENT_PRESETS["real"].counterstain_h > 0


def test_fibrous_ground_leaves_nuclei_and_textures_the_ground():
    from scipy import ndimage as ndi

    from pathgen.segment.data import fibrous_ground

    sample = fake_tile(12, size=96)
    img, inst = sample.image, sample.instances
    out = fibrous_ground(img, inst, np.random.default_rng(3))
    assert out.shape == img.shape and out.dtype == np.uint8
    # nuclei and a 1 px ring around them are untouched (labels stay exact)
    keep = ndi.binary_dilation(inst > 0, iterations=1)
    assert np.abs(out[keep].astype(int) - img[keep].astype(int)).max() <= 1
    # the ground gains clefts (lighter) and bundles (darker), not a uniform shift
    far = ~ndi.binary_dilation(inst > 0, iterations=5) & (img.mean(-1) < 230)
    diff = out[far].astype(int).sum(-1) - img[far].astype(int).sum(-1)
    assert (diff > 20).mean() > 0.05 and (diff < -20).mean() > 0.05
    # same generator state, same texture
    np.testing.assert_array_equal(out, fibrous_ground(img, inst, np.random.default_rng(3)))
    assert AUGMENT_PRESETS["real-stroma"].fibre_texture > 0
