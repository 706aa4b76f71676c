"""NASDM conditioning tensor from hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathgen.errors import PathgenError
from pathgen.nasdm.conditioning import (COND_CHANNELS, conditioning_batch, conditioning_tensor, drop_condition,
                                        instance_edges)

# Two 3x3 nuclei touching along a vertical line, inside a background frame.
INSTANCES = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 2, 2, 2, 0],
    [0, 1, 1, 1, 2, 2, 2, 0],
    [0, 1, 1, 1, 2, 2, 2, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
], np.int32)

# Every pixel with a 4-neighbour of another label, on both sides of each boundary; only the two nucleus centres
# and the four background corners have no differing neighbour.
EXPECTED_EDGES = np.array([
    [0, 1, 1, 1, 1, 1, 1, 0],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 0, 1, 1, 0, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [0, 1, 1, 1, 1, 1, 1, 0],
], bool)


def test_instance_edges_mark_both_sides_of_every_boundary():
    np.testing.assert_array_equal(instance_edges(INSTANCES), EXPECTED_EDGES)


def test_touching_same_type_nuclei_are_separated_by_the_edge_channel():
    classes = np.where(INSTANCES > 0, 2, 0).astype(np.uint8)  # both epithelial
    cond = conditioning_tensor(INSTANCES, classes)
    assert cond.shape == (COND_CHANNELS, 5, 8) and cond.dtype == np.float32
    # the contact columns 3|4 are edges although the class map is uniform there
    assert np.all(cond[7, 1:4, 3:5] == 1)
    # an edge map computed from the class map (the reference MaskGen path) would miss the contact
    assert not np.any(instance_edges(classes)[2, 3:5])


def test_one_hot_channels_include_background_and_types():
    classes = np.zeros_like(INSTANCES, dtype=np.uint8)
    classes[INSTANCES == 1] = 3  # lymphocyte
    classes[INSTANCES == 2] = 6  # connective
    cond = conditioning_tensor(INSTANCES, classes)
    np.testing.assert_array_equal(cond[0], (INSTANCES == 0).astype(np.float32))
    np.testing.assert_array_equal(cond[3], (INSTANCES == 1).astype(np.float32))
    np.testing.assert_array_equal(cond[6], (INSTANCES == 2).astype(np.float32))
    for c in (1, 2, 4, 5):
        assert not cond[c].any()
    np.testing.assert_array_equal(cond[:7].sum(axis=0), np.ones((5, 8), np.float32))
    np.testing.assert_array_equal(cond[7], EXPECTED_EDGES.astype(np.float32))


def test_image_border_is_not_an_edge():
    inst = np.full((3, 3), 5, np.int32)
    assert not instance_edges(inst).any()


def test_bad_inputs_are_refused():
    with pytest.raises(PathgenError):
        conditioning_tensor(INSTANCES, np.full((5, 8), 7, np.uint8))  # class id out of range
    with pytest.raises(PathgenError):
        conditioning_tensor(INSTANCES, np.zeros((4, 8), np.uint8))  # shape mismatch
    with pytest.raises(PathgenError):
        conditioning_batch([(INSTANCES, INSTANCES.clip(0, 1)), (INSTANCES[:4], INSTANCES[:4].clip(0, 1))])


def test_condition_dropout_zeroes_whole_samples():
    cond = torch.ones(64, COND_CHANNELS, 4, 4)
    g = torch.Generator().manual_seed(0)
    dropped = drop_condition(cond, 0.5, g)
    per_sample = dropped.flatten(1)
    kept = per_sample.all(dim=1)
    zeroed = (per_sample == 0).all(dim=1)
    assert torch.all(kept | zeroed)  # each sample entirely kept or entirely the null condition
    assert 10 < int(zeroed.sum()) < 54
    assert torch.equal(drop_condition(cond, 0.0, g), cond)
