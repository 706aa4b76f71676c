"""HoVer-Net building blocks: targets, post-processing, losses, network, checkpoints, batch inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathgen.errors import PathgenError
from pathgen.segment.checkpoint import load_model, read_checkpoint_config, save_checkpoint
from pathgen.segment.hovernet import (HoVerNet, HoVerNetConfig, build_model, load_encoder_weights,
                                      preset_config)
from pathgen.segment.infer import segment_tile_batch
from pathgen.segment.losses import dice_loss, hovernet_loss, hv_gradients, msge_loss
from pathgen.segment.postprocess import (PostProcessConfig, ellipse_element, instance_types,
                                         instances_from_maps, sobel)
from pathgen.segment.targets import class_map_from_types, hv_maps, make_targets, np_target, tp_target


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP waits dominate."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def touching_nuclei(size: int = 128, attempts: int = 90, seed: int = 0) -> np.ndarray:
    """Ellipses of 5-11 px radii placed at random; a candidate overlapping earlier ones by more than 15 % is
    rejected, the rest is clipped to free pixels, so many nuclei touch."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    label = 0
    for _ in range(attempts):
        cy, cx = rng.uniform(0, size, 2)
        a, b = rng.uniform(5, 11, 2)
        th = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
        full = u * u + v * v <= 1
        if (full & (inst > 0)).sum() > 0.15 * full.sum():
            continue
        free = full & (inst == 0)
        if free.sum() < 30:
            continue
        label += 1
        inst[free] = label
    return inst


def panoptic_quality(true: np.ndarray, pred: np.ndarray) -> float:
    """PQ from pathgen.metrics when available, else a direct IoU > 0.5 matching."""
    try:
        from pathgen.metrics.instance import pq

        return float(pq(true, pred).pq)
    except ImportError:
        ious = []
        for g in np.unique(true)[1:]:
            gm = true == g
            for p in np.unique(pred[gm]):
                if p and (iou := (gm & (pred == p)).sum() / (gm | (pred == p)).sum()) > 0.5:
                    ious.append(iou)
        tp = len(ious)
        fp, fn = len(np.unique(pred)) - 1 - tp, len(np.unique(true)) - 1 - tp
        return tp / (tp + 0.5 * fp + 0.5 * fn) * (np.mean(ious) if ious else 0.0)


# ------------------------------------------------------------------------------------------------ targets


def two_instances() -> np.ndarray:
    inst = np.zeros((6, 7), np.int32)
    inst[1:4, 1:5] = 1  # 3 x 4 block: centre of mass row 2, column 2.5 -> rounded up to 3
    inst[4:6, 5:7] = 7  # 2 x 2 block: centre (4.5, 5.5) -> (5, 6); labels need not be contiguous
    return inst


def test_hv_maps_reference_convention_by_hand():
    hv = hv_maps(two_instances(), min_size=1)  # origin_offset=1: the reference counts from 1 in its crop
    # columns 1..4 -> offsets c + 1 - 3 = -1, 0, 1, 2 -> negatives / 1, positives / 2
    np.testing.assert_allclose(hv[0, 1:4, 1:5], np.tile([-1.0, 0.0, 0.5, 1.0], (3, 1)))
    # rows 1..3 -> r + 1 - 2 = 0, 1, 2 -> / 2
    np.testing.assert_allclose(hv[1, 1:4, 1:5], np.repeat([[0.0], [0.5], [1.0]], 4, axis=1))
    np.testing.assert_allclose(hv[0, 4:6, 5:7], [[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(hv[1, 4:6, 5:7], [[0.0, 0.0], [1.0, 1.0]])
    bg = two_instances() == 0
    assert not hv[0][bg].any() and not hv[1][bg].any()
    assert hv.dtype == np.float32 and hv.shape == (2, 6, 7)


def test_hv_maps_centred_offsets_by_hand():
    hv = hv_maps(two_instances(), min_size=1, origin_offset=0)
    np.testing.assert_allclose(hv[0, 2, 1:5], [-1.0, -0.5, 0.0, 1.0])  # c - 3 = -2, -1, 0, 1
    np.testing.assert_allclose(hv[1, 1:4, 2], [-1.0, 0.0, 1.0])  # r - 2
    np.testing.assert_allclose(hv[0, 4, 5:7], [-1.0, 0.0])
    np.testing.assert_allclose(hv[1, 4:6, 6], [-1.0, 0.0])


def test_hv_maps_skip_small_instances_like_the_reference():
    hv = hv_maps(two_instances())  # default min_size 30: both instances (12 and 4 px) get no HV
    assert not hv.any()
    big = np.zeros((40, 40), np.int32)
    big[5:15, 5:15] = 3  # 100 px
    big[30:33, 30:33] = 4  # 9 px
    hv = hv_maps(big)
    assert hv[:, 5:15, 5:15].min() == -1.0 and hv[:, 5:15, 5:15].max() == 1.0
    assert not hv[:, 30:33, 30:33].any()


def test_np_tp_and_class_targets():
    inst = two_instances()
    cls = np.full(inst.shape, 2, np.uint8)  # classes outside instances are forced to background
    np.testing.assert_array_equal(np_target(inst), (inst > 0).astype(np.uint8))
    np.testing.assert_array_equal(tp_target(inst, cls), np.where(inst > 0, 2, 0))
    cmap = class_map_from_types(inst, {1: 3, 7: 5})
    assert cmap[2, 2] == 3 and cmap[5, 6] == 5 and cmap[0, 0] == 0
    t = make_targets(inst, cls, min_size=1)
    assert set(t) == {"np", "hv", "tp"}
    with pytest.raises(PathgenError):
        tp_target(inst, cls[:3])
    with pytest.raises(PathgenError):
        hv_maps(np.zeros((2, 2, 2), np.int32))


# ------------------------------------------------------------------------------------------ post-process


def test_sobel_and_ellipse_match_opencv_conventions():
    ramp = np.tile(np.arange(12, dtype=np.float64), (9, 1))  # increases along columns
    # 3-tap Sobel: [-1, 0, 1] along x times [1, 2, 1] along y -> 2 * 4 = 8 on a unit ramp
    np.testing.assert_allclose(sobel(ramp, axis=1, size=3)[1:-1, 1:-1], 8.0)
    np.testing.assert_allclose(sobel(ramp, axis=0, size=3), 0.0)
    assert (sobel(ramp, axis=1, size=21)[:, 10:-10] > 0).all()
    expected = np.array([[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(ellipse_element(5), expected.astype(bool))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ground_truth_maps_recover_instances(seed):
    inst = touching_nuclei(seed=seed)
    a, b = inst[:, :-1], inst[:, 1:]
    touching = len({(x, y) for x, y in zip(a[(a > 0) & (b > 0) & (a != b)], b[(a > 0) & (b > 0) & (a != b)])})
    assert inst.max() >= 35 and touching >= 10  # crowded: many pairs of nuclei share a border
    pred = instances_from_maps((inst > 0).astype(np.float32), hv_maps(inst))
    assert pred.dtype == np.int32 and set(np.unique(pred)) == set(range(int(pred.max()) + 1))
    assert panoptic_quality(inst, pred) >= 0.95


def test_empty_maps_give_no_instances():
    pred = instances_from_maps(np.zeros((32, 32), np.float32), np.zeros((2, 32, 32), np.float32))
    assert pred.shape == (32, 32) and not pred.any()
    with pytest.raises(PathgenError):
        instances_from_maps(np.zeros((32, 32)), np.zeros((2, 16, 16)))


def test_blob_without_marker_is_kept_unless_reference_behaviour_asked():
    inst = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    inst[(yy - 12) ** 2 + (xx - 12) ** 2 <= 36] = 1  # a disc gets a marker
    inst[30:32, 5:35] = 2  # a 2-px thin bar: the 5x5 opening erases its marker
    np_prob = (inst > 0).astype(np.float32)
    hv = hv_maps(inst)
    kept = instances_from_maps(np_prob, hv)
    assert kept.max() == 2 and (kept[30:32, 5:35] == 2).all()
    dropped = instances_from_maps(np_prob, hv, PostProcessConfig(keep_unmarked=False))
    assert dropped.max() == 1 and not dropped[30:32].any()


def test_instance_types_majority_vote_by_hand():
    inst = np.zeros((4, 10), np.int32)
    inst[0] = 1
    inst[1, :4] = 2
    inst[2, :3] = 3
    types = np.zeros((4, 10), np.int64)
    types[0, :3] = 2
    types[0, 3:5] = 1  # instance 1: 5 background, 3 x type 2, 2 x type 1 -> type 2 with 3 / 10
    types[1, :2] = 1
    types[1, 2:4] = 3  # instance 2: tie 2 / 2 -> the lower type, 1, with 0.5
    t, p = instance_types(inst, types, nr_types=4)  # instance 3: only background -> 0 with 1.0
    np.testing.assert_array_equal(t, [2, 1, 0])
    np.testing.assert_allclose(p, [0.3, 0.5, 1.0])


# ---------------------------------------------------------------------------------------------- losses


def test_losses_are_zero_for_perfect_hv_and_positive_otherwise():
    inst = touching_nuclei(64, attempts=30, seed=3)
    hv = torch.from_numpy(hv_maps(inst))[None]
    focus = torch.from_numpy(inst > 0)[None]
    assert float(msge_loss(hv, hv, focus)) == 0.0
    assert float(msge_loss(torch.zeros_like(hv), hv, focus)) > 0.1
    ramp = torch.arange(8.0).repeat(8, 1)  # horizontal map rising along x, vertical map rising along y
    g = hv_gradients(torch.stack([ramp, ramp.T])[None])
    assert (g[0, 0, 2:-2, 2:-2] > 0).all() and (g[0, 1, 2:-2, 2:-2] > 0).all()
    target = torch.tensor([[[0, 1], [1, 0]]])
    perfect = torch.tensor([[[[50.0, -50.0], [-50.0, 50.0]], [[-50.0, 50.0], [50.0, -50.0]]]])
    assert float(dice_loss(perfect, target)) < 1e-3


# ------------------------------------------------------------------------------------- model, checkpoint


def tiny(nr_types: int = 3) -> HoVerNetConfig:
    return preset_config("tiny", nr_types=nr_types, type_names=tuple(f"t{i}" for i in range(1, nr_types)))


def test_forward_shapes_and_presets():
    torch.manual_seed(0)
    model = HoVerNet(tiny()).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 48) * 255)
    assert out["np"].shape == (2, 2, 32, 48) and out["hv"].shape == (2, 2, 32, 48)
    assert out["tp"].shape == (2, 3, 32, 48)
    assert "tp" not in HoVerNet(preset_config("tiny")).decoder
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 30, 32))
    with pytest.raises(PathgenError):
        preset_config("huge")
    r50 = preset_config("resnet50")
    assert r50.encoder_depths == (3, 4, 6, 3) and r50.encoder_widths[-1] == 2048


def test_tiny_model_loss_falls_in_a_few_steps():
    torch.manual_seed(0)
    model = HoVerNet(tiny())
    inst = np.stack([touching_nuclei(32, attempts=12, seed=s) for s in (4, 5)])
    images = np.where(inst[..., None] > 0, [90, 50, 140], [235, 200, 220]).astype(np.float32)
    images += np.random.default_rng(0).normal(0, 5, images.shape)
    classes = np.where(inst > 0, 1 + inst % 2, 0)
    targets = [make_targets(i, c) for i, c in zip(inst, classes)]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    t = {k: torch.from_numpy(np.stack([d[k] for d in targets])) for k in ("np", "hv", "tp")}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss, parts = hovernet_loss(model(x), t)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert set(parts) == {"np_ce", "np_dice", "hv_mse", "hv_msge", "tp_ce", "tp_dice"}
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = HoVerNet(tiny())
    model.train()
    with torch.no_grad():  # move the batch-norm statistics away from their initial values
        model(torch.rand(2, 3, 32, 32) * 255)
    model.eval()
    save_checkpoint(model, tmp_path / "ckpt", extra={"note": "test"})
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert read_checkpoint_config(tmp_path / "ckpt")["note"] == "test"
    # the weights file alone carries the architecture
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "w.safetensors").write_bytes((tmp_path / "ckpt" / "model.safetensors").read_bytes())
    assert load_model(alone / "w.safetensors").config == model.config
    with pytest.raises(PathgenError):
        load_model(tmp_path / "missing")


def test_encoder_weights_load_from_torch_and_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    src = HoVerNet(tiny())
    enc = src.encoder.state_dict()
    torch.save({"desc": {f"module.{k}": v for k, v in enc.items()}}, tmp_path / "enc.tar")
    save_file({f"encoder.{k}": v.contiguous() for k, v in enc.items()} | {"fc.weight": torch.zeros(3)},
              str(tmp_path / "enc.safetensors"))
    for f in ("enc.tar", "enc.safetensors"):
        torch.manual_seed(3)
        dst = build_model(tiny())
        ignored = load_encoder_weights(dst, tmp_path / f)
        for k, v in dst.encoder.state_dict().items():
            assert torch.equal(v, enc[k]), k
        assert ignored == ([] if f == "enc.tar" else ["fc.weight"])
    other = HoVerNet(preset_config("small"))
    with pytest.raises(PathgenError, match="shape"):
        load_encoder_weights(other, tmp_path / "enc.safetensors")
    # an ImageNet ResNet has no conv_bot: allowed; a missing stage tensor is not
    imagenet = {k: v for k, v in enc.items() if not k.startswith("conv_bot.")}
    torch.save(imagenet, tmp_path / "imagenet.pt")
    load_encoder_weights(build_model(tiny()), tmp_path / "imagenet.pt")
    del imagenet["d2.units.0.conv2.weight"]
    torch.save(imagenet, tmp_path / "broken.pt")
    with pytest.raises(PathgenError, match="missing"):
        load_encoder_weights(build_model(tiny()), tmp_path / "broken.pt")


def test_segment_tile_batch_on_odd_sizes():
    torch.manual_seed(0)
    model = HoVerNet(tiny()).eval()
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 255, (3, 37, 45, 3), dtype=np.uint8)
    res = segment_tile_batch(model, batch, batch_size=2)
    assert len(res.nuclei) == 3
    assert res.maps.np_prob.shape == (3, 37, 45) and res.maps.hv.shape == (3, 2, 37, 45)
    assert res.maps.tp_prob.shape == (3, 3, 37, 45)
    np.testing.assert_allclose(res.maps.tp_prob.sum(1), 1.0, atol=1e-5)
    for n in res.nuclei:
        assert n.instances.shape == (37, 45) and len(n.types) == n.instances.max() == len(n.type_probs)
        assert n.class_map().shape == (37, 45)
    with pytest.raises(PathgenError):
        segment_tile_batch(model, batch.astype(np.float32))
    # the CPU default forwards one tile at a time (less memory, as fast); the maps do not depend on it
    default = segment_tile_batch(model, batch)
    for a, b in ((default.maps.np_prob, res.maps.np_prob), (default.maps.hv, res.maps.hv)):
        np.testing.assert_allclose(a, b, atol=2e-4)


def test_nucleus_whose_pixels_all_vote_background_gets_its_most_probable_type():
    from pathgen.segment.infer import HoVerNetMaps, nuclei_from_maps

    h = w = 32
    np_prob = np.zeros((1, h, w), np.float32)
    np_prob[0, 8:16, 8:16] = 1.0  # one nucleus
    np_prob[0, 20:28, 20:28] = 1.0  # and another
    hv = np.zeros((1, 2, h, w), np.float32)
    tp = np.zeros((1, 4, h, w), np.float32)
    tp[0, 0] = 1.0
    tp[0, 0, 8:16, 8:16], tp[0, 2, 8:16, 8:16], tp[0, 3, 8:16, 8:16] = 0.5, 0.2, 0.3  # background wins every pixel
    tp[0, 0, 20:28, 20:28], tp[0, 1, 20:28, 20:28] = 0.2, 0.8  # a plain type-1 nucleus
    res = nuclei_from_maps(HoVerNetMaps(np_prob, hv, tp), 0)
    assert res.instances.max() == 2
    by_pos = {int(res.instances[12, 12]): 3, int(res.instances[24, 24]): 1}
    for label, want in by_pos.items():
        assert res.types[label - 1] == want
    assert res.type_probs[int(res.instances[12, 12]) - 1] == pytest.approx(0.3)
    assert ((res.instances > 0) == (res.class_map() > 0)).all()


# ------------------------------------------------------------------------------------------- stain check


def test_drop_pale_instances_by_hand():
    from pathgen.segment.postprocess import drop_pale_instances

    inst = np.zeros((4, 6), np.int32)
    inst[0, 0:2] = 1  # haematoxylin 0.5, 0.7 -> mean 0.6
    inst[2, 0:3] = 2  # 0.1, 0.2, 0.3 -> mean 0.2
    inst[3, 4:6] = 3  # 0.25, 0.25 -> mean 0.25 (kept: the threshold is inclusive)
    h = np.zeros((4, 6))
    h[0, 0:2] = (0.5, 0.7)
    h[2, 0:3] = (0.1, 0.2, 0.3)
    h[3, 4:6] = 0.25
    kept, means = drop_pale_instances(inst, h, 0.25)
    np.testing.assert_allclose(means, [0.6, 0.2, 0.25])
    expected = np.zeros_like(inst)
    expected[0, 0:2] = 1
    expected[3, 4:6] = 2  # relabelled in order, no gap
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == np.int32
    np.testing.assert_array_equal(drop_pale_instances(inst, h, 0.0)[0], inst)
    with pytest.raises(PathgenError):
        drop_pale_instances(inst, h[:3], 0.25)
    with pytest.raises(PathgenError):
        PostProcessConfig(min_haematoxylin=1.5)


def test_stain_check_drops_an_eosin_fragment_and_keeps_every_nucleus():
    """A generated tile with a nucleus-shaped patch painted in eosin alone: fed as nuclear to the post-processing
    (as a network fooled by dense collagen would), the stain check removes it and nothing else."""
    from pathgen.data.synth import render_tile
    from pathgen.segment.infer import (HoVerNetMaps, fit_haematoxylin_reference, nuclei_from_maps,
                                       relative_haematoxylin)
    from pathgen.stain import od_to_rgb

    for site in "ABD":  # D is the pale, faded site: the check is relative to the image's own stain strength
        tile = render_tile(128, seed=7, site=site)
        truth = tile.instances.astype(np.int32)
        image = tile.image.copy()
        yy, xx = np.mgrid[:128, :128]
        far = ndi_distance(truth == 0)
        cy, cx = np.unravel_index(np.argmax(far), far.shape)  # the ground farthest from any nucleus
        fragment = ((yy - cy) / 6.0) ** 2 + ((xx - cx) / 4.0) ** 2 <= 1
        eosin = np.array([0.07, 0.99, 0.11])  # a pure eosin OD direction (Macenko's textbook vector)
        image[fragment] = np.asarray(od_to_rgb(np.tile(0.9 * eosin, (int(fragment.sum()), 1)), 255.0)
                                     ).round().astype(np.uint8)
        labels = truth.copy()
        labels[fragment & (truth == 0)] = truth.max() + 1
        maps = HoVerNetMaps((labels > 0).astype(np.float32)[None], hv_maps(labels)[None])
        stain = fit_haematoxylin_reference(image)
        h_rel = relative_haematoxylin(image, stain)
        pp = PostProcessConfig(min_haematoxylin=0.25)
        checked = nuclei_from_maps(maps, 0, pp, h_rel).instances
        unchecked = nuclei_from_maps(maps, 0, pp).instances
        assert unchecked.max() == checked.max() + 1  # exactly the fragment went ...
        gone = np.unique(unchecked[fragment & (truth == 0)])
        assert len(gone) == 1 and gone[0] > 0
        # ... and every other instance is kept as it was
        expected = np.where(unchecked == gone[0], 0, unchecked)
        assert np.array_equal(checked > 0, expected > 0)
        assert panoptic_quality(expected, checked) == pytest.approx(1.0)


def ndi_distance(mask):
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask)
