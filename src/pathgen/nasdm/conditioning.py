"""The NASDM conditioning tensor: 7 one-hot class channels (background included) + 1 instance-edge channel.

Construction (METHODS.md §3.3, the reference code's ``preprocess_input`` / ``get_edges``):

1. class map ``c ∈ {0..6}`` in Lizard order (0 background, 1 neutrophil, 2 epithelial, 3 lymphocyte, 4 plasma,
   5 eosinophil, 6 connective) → one-hot, 7 channels, channel ``k`` is 1 where ``c == k``;
2. instance map ``u`` → edge channel ``e = 1`` where ``u`` differs from any of its in-image 4-neighbours, so
   both sides of every boundary are marked (nucleus–background and nucleus–nucleus alike); pixels outside the
   image are not neighbours;
3. ``y = concat(one-hot, e)``, float32, shape (8, H, W). The null condition of classifier-free guidance is
   ``y = 0`` in all 8 channels.

Because the edge channel comes from the *instance* map, touching nuclei of the same type stay separated.
"""

from __future__ import annotations

import numpy as np
import torch

from pathgen.errors import PathgenError

NUM_CLASSES = 7
COND_CHANNELS = NUM_CLASSES + 1


def instance_edges(instances: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose label differs from a 4-neighbour's (both sides of each boundary).

    Parameters
    ----------
    instances : (H, W) integer ndarray
        Instance labels, 0 = background.
    """
    u = np.asarray(instances)
    if u.ndim != 2:
        raise PathgenError(f"instance map must be 2-D (H, W), got shape {u.shape}")
    edge = np.zeros(u.shape, bool)
    dx = u[:, 1:] != u[:, :-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    dy = u[1:, :] != u[:-1, :]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def one_hot_classes(classes: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(H, W) class ids → (num_classes, H, W) float32 one-hot. Ids outside ``0..num_classes-1`` are refused."""
    c = np.asarray(classes)
    if c.ndim != 2:
        raise PathgenError(f"class map must be 2-D (H, W), got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.mod(c, 1) == 0):
            raise PathgenError("class map holds non-integer values")
        c = c.astype(np.int64)
    if c.size and (c.min() < 0 or c.max() >= num_classes):
        raise PathgenError(f"class ids must be in 0..{num_classes - 1}, found {int(c.min())}..{int(c.max())}")
    return (c[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)


def conditioning_tensor(instances: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The 8-channel NASDM condition of one mask.

    Parameters
    ----------
    instances : (H, W) integer ndarray
        Instance labels, 0 = background.
    classes : (H, W) integer ndarray
        Nucleus type per pixel, 0 = background, 1..6 Lizard types.

    Returns
    -------
    (8, H, W) float32 ndarray
        Channels 0–6 one-hot classes, channel 7 the instance-edge map; every value 0 or 1.
    """
    inst = np.asarray(instances)
    cls = np.asarray(classes)
    if inst.shape != cls.shape:
        raise PathgenError(f"instance map {inst.shape} and class map {cls.shape} differ in shape")
    return np.concatenate([one_hot_classes(cls), instance_edges(inst)[None].astype(np.float32)], axis=0)


def conditioning_batch(masks) -> np.ndarray:
    """Stack conditions of ``[(instances, classes), ...]`` (all the same size) into (N, 8, H, W) float32."""
    conds = [conditioning_tensor(i, c) for i, c in masks]
    if not conds:
        raise PathgenError("no masks given")
    shapes = {c.shape for c in conds}
    if len(shapes) > 1:
        raise PathgenError(f"masks differ in size: {sorted(s[1:] for s in shapes)}")
    return np.stack(conds)


def drop_condition(cond: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Classifier-free-guidance training: replace each sample's condition by the null condition (zeros) with
    probability ``p``. ``cond`` is (B, ...); returns a new tensor."""
    if p <= 0:
        return cond
    keep = (torch.rand(cond.shape[0], generator=generator, device="cpu") >= p).to(cond.device, cond.dtype)
    return cond * keep.reshape(-1, *([1] * (cond.ndim - 1)))
