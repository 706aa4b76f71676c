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


def test_fixture_nuclei_touch():
    inst, _ = _touching_discs()
    contact = (inst[:, 1:] == 1) & (inst[:, :-1] == 2) | (inst[:, 1:] == 2) & (inst[:, :-1] == 1)
    assert contact.any()


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
