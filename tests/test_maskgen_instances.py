"""MaskGen's instance-aware encoding: touching nuclei of one type decode into separate instances, and whatever
the model generates decodes into distinct, connected, single-type instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from pathgen.errors import PathgenError
from pathgen.maskgen.encoding import (MASK_CHANNELS, decode_mask, encode_mask, interior_distance, parse_types,
                                      presence_names, presence_vector)
from pathgen.maskgen.pipeline import MaskGenPipeline
from pathgen.maskgen.unet import MaskGenUNet, preset_config


def _touching_discs():
    yy, xx = np.mgrid[0:24, 0:32]
    inst = np.zeros((24, 32), np.int32)
    inst[(yy - 12) ** 2 + (xx - 8) ** 2 <= 30] = 1
    inst[((yy - 12) ** 2 + (xx - 18) ** 2 <= 30) & (inst == 0)] = 2
    inst[((yy - 12) ** 2 + (xx - 27) ** 2 <= 12) & (inst == 0)] = 3
    cls = np.zeros_like(inst, dtype=np.uint8)
    cls[(inst == 1) | (inst == 2)] = 2  # two touching epithelial nuclei
    cls[inst == 3] = 3  # a lymphocyte touching the second one
    return inst, cls


def test_interior_distance_is_one_at_centres_and_low_at_contacts():
    inst, _ = _touching_discs()
    d = interior_distance(inst)
    assert d.dtype == np.float32 and d.min() == 0.0 and d.max() == 1.0
    assert d[12, 8] == 1.0 and d[12, 18] == 1.0
    assert np.all(d[inst == 0] == 0)
    contact_cols = [x for x in range(31) if inst[12, x] == 1 and inst[12, x + 1] == 2][0]
    assert d[12, contact_cols] < 0.3 and d[12, contact_cols + 1] < 0.3


def test_touching_same_type_nuclei_decode_into_separate_instances():
    inst, cls = _touching_discs()
    enc = encode_mask(inst, cls)
    assert enc.shape == (MASK_CHANNELS, 24, 32) and enc.min() >= -1 and enc.max() <= 1
    out_inst, out_cls = decode_mask(enc)
    assert out_inst.max() == 3
    for label in (1, 2, 3):  # each true nucleus is exactly one decoded nucleus
        ids = np.unique(out_inst[inst == label])
        assert len(ids) == 1 and ids[0] > 0
        assert np.array_equal(out_inst == ids[0], inst == label)
    np.testing.assert_array_equal(out_cls, cls)


def test_decoding_a_class_map_alone_would_merge_them():
    # what the published MaskGen emits: no distance channel (flat interior) -> one blob per touching group
    inst, cls = _touching_discs()
    enc = encode_mask(inst, cls)
    enc[MASK_CHANNELS - 1] = np.where(inst > 0, 1.0, -1.0)
    merged, _ = decode_mask(enc)
    assert merged.max() < 3


def test_presence_vectors():
    _, cls = _touching_discs()
    np.testing.assert_array_equal(presence_vector(cls), [1, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(parse_types("Epithelial, lymphocyte"), [1, 0, 1, 1, 0, 0, 0])
    assert presence_names(parse_types(["connective"])) == ["connective"]
    with pytest.raises(PathgenError):
        parse_types("mitosis")


@pytest.mark.parametrize("scheduler", ["ddpm", "dpm"])
def test_generated_masks_decode_into_distinct_instances(scheduler):
    torch.manual_seed(0)
    unet = MaskGenUNet(preset_config("tiny"))
    torch.nn.init.normal_(unet.out[-1].weight, std=0.05)  # an untrained but non-trivial denoiser
    pipe = MaskGenPipeline(unet.eval(), scheduler)
    calls = []
    forward = unet.forward
    unet.forward = lambda x, t, c: (calls.append(1), forward(x, t, c))[1]
    out = pipe(np.stack([parse_types("epithelial,lymphocyte")] * 3), steps=4, seed=0, guidance=1.5)
    assert len(calls) == 4 and out.raw.shape == (3, MASK_CHANNELS, 16, 16)
    four = ndi.generate_binary_structure(2, 1)
    for inst, cls in out.masks:
        labels = np.unique(inst[inst > 0])
        np.testing.assert_array_equal(labels, np.arange(1, len(labels) + 1))
        for label in labels:
            region = inst == label
            assert ndi.label(region, structure=four)[1] == 1  # one connected piece per id
            assert len(np.unique(cls[region])) == 1 and cls[region][0] > 0  # one type per nucleus
        assert np.all(cls[inst == 0] == 0)


# ---------------------------------------------------------------------------------------------------------------
# Per-channel means ("DC"): the shipped maskgen_small (16 channels, max_groups 32) had a GroupNorm of one channel per
# group in front of its output, so ε̂'s per-channel mean could follow neither the input's mean nor t. Sampling from
# noise then never built up the class channels' means (background ≈ +0.7, nucleus types ≈ −0.95) and ~3/4 of the
# pixels decoded as fragments of nuclei, whatever the scheduler.


def _dc_response(cfg):
    """(|Δ mean ε̂| for a per-channel input shift, |mean ε̂(t=100) − mean ε̂(t=900)|) with all weights non-zero."""
    torch.manual_seed(0)
    unet = MaskGenUNet(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in unet.parameters():
            if p.ndim > 1 and not p.abs().sum():  # the zero-initialised output layers: make them non-trivial
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        n = cfg.image_size
        x = torch.randn(4, MASK_CHANNELS, n, n, generator=gen)
        pres = torch.zeros(4, 7)
        pres[:, 0] = 1
        shift = torch.linspace(-0.5, 0.5, MASK_CHANNELS).view(1, -1, 1, 1)
        t100, t900 = torch.full((4,), 100), torch.full((4,), 900)
        base = unet(x, t100, pres)[:, :MASK_CHANNELS]
        moved = unet(x + shift, t100, pres)[:, :MASK_CHANNELS]
        late = unet(x, t900, pres)[:, :MASK_CHANNELS]
    follows_input = float((moved - base).mean(dim=(0, 2, 3)).abs().mean())
    follows_t = float((base - late).mean(dim=(2, 3)).abs().mean())
    return follows_input, follows_t


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_presets_let_the_output_mean_follow_input_mean_and_timestep(preset):
    follows_input, follows_t = _dc_response(preset_config(preset))
    assert follows_input > 0.1 and follows_t > 0.05


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_no_groupnorm_in_the_presets_is_a_per_channel_norm(preset):
    norms = [m for m in MaskGenUNet(preset_config(preset)).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 2 for m in norms)


def test_dc_path_starts_at_zero_and_old_configs_load_without_it():
    from dataclasses import replace

    from pathgen.maskgen.unet import MaskGenConfig

    cfg = preset_config("tiny")
    torch.manual_seed(0)
    with_dc = MaskGenUNet(cfg).eval()
    torch.manual_seed(0)
    without = MaskGenUNet(replace(cfg, dc_path=False)).eval()
    assert with_dc.dc_bias is not None and without.dc_bias is None
    missing, unexpected = with_dc.load_state_dict(without.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("dc_bias", "dc_gain")) for k in missing)
    x, t, pres = torch.randn(2, MASK_CHANNELS, 16, 16), torch.tensor([3, 700]), torch.ones(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(with_dc(x, t, pres), without(x, t, pres))  # same weights, zero DC path
    old = cfg.to_dict()
    del old["dc_path"]  # a config.json written before the field existed
    assert MaskGenConfig.from_dict(old).dc_path is False


def test_shipped_maskgen_samples_nucleus_shaped_masks():
    """The shipped checkpoint generates masks like the training data, not noise: a few solid nuclei per 32 px
    mask and a minority of nuclear pixels (held-out generated masks: 4.2 nuclei, 31 % nuclear pixels; the noisy
    1400-step checkpoint gave ~40 fragments and ~75 %)."""
    from skimage.measure import regionprops

    from pathgen.io.models import shipped_model

    torch.manual_seed(0)
    pipe = MaskGenPipeline.from_pretrained(shipped_model("maskgen"), scheduler="ddpm")
    pres = np.zeros((6, 7), np.float32)
    pres[:, 0] = 1
    pres[:3, 2] = 1  # epithelial
    pres[3:, [3, 6]] = 1  # lymphocytes and connective
    masks = pipe(pres, steps=50, seed=0).masks
    fg = np.mean([(inst > 0).mean() for inst, _ in masks])
    props = [p for inst, _ in masks for p in regionprops(inst)]
    assert 0.1 < fg < 0.5
    assert 1 <= len(props) / len(masks) <= 12
    assert np.median([p.area for p in props]) >= 25 and np.median([p.solidity for p in props]) > 0.85
