"""HoVer-Net losses: cross-entropy + Dice for NP and TP, MSE + MSGE for HV; all weights 1 as published.

Device-agnostic: every constant is created on the input's device and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_DICE_SMOOTH = 1e-3


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = _DICE_SMOOTH) -> torch.Tensor:
    """Soft Dice loss summed over classes (background included), pooled over the batch as in the reference.

    Parameters
    ----------
    logits : (N, C, H, W) float tensor
    target : (N, H, W) integer tensor with values in 0..C-1

    Returns
    -------
    scalar tensor: ``sum_c 1 - (2|P_c T_c| + s) / (|P_c| + |T_c| + s)``
    """
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).sum()


def sobel_kernels(size: int = 5, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's gradient kernels: ``k_x = x / (x^2 + y^2)``, ``k_y = y / (x^2 + y^2)`` on a size x size grid.

    Returns (size, size) tensors for cross-correlation; ``k_x`` responds positively to values increasing with the
    column, ``k_y`` to values increasing with the row.
    """
    if size % 2 == 0:
        raise ValueError("kernel size must be odd")
    r = torch.arange(-(size // 2), size // 2 + 1, device=device, dtype=dtype)
    y, x = torch.meshgrid(r, r, indexing="ij")
    norm = x * x + y * y + 1e-15
    return x / norm, y / norm


def hv_gradients(hv: torch.Tensor, size: int = 5) -> torch.Tensor:
    """d/dx of the horizontal map and d/dy of the vertical map.

    Each map is differentiated along its own axis, as the paper describes. (The public PyTorch code builds its
    kernel with an "ij" meshgrid and so differentiates the horizontal map along rows.)

    Parameters
    ----------
    hv : (N, 2, H, W) float tensor, channel 0 horizontal, channel 1 vertical

    Returns
    -------
    (N, 2, H, W) float tensor
    """
    kx, ky = sobel_kernels(size, device=hv.device, dtype=hv.dtype)
    weight = torch.stack([kx, ky])[:, None]  # (2, 1, k, k), one kernel per channel
    return F.conv2d(hv, weight, padding=size // 2, groups=2)


def msge_loss(pred_hv: torch.Tensor, true_hv: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    """Mean squared error of HV gradients over nuclear pixels.

    Parameters
    ----------
    pred_hv, true_hv : (N, 2, H, W) float tensors
    focus : (N, H, W) tensor, nonzero inside nuclei
    """
    diff = hv_gradients(pred_hv) - hv_gradients(true_hv)
    f = (focus > 0).to(diff.dtype)[:, None].expand_as(diff)
    return (f * diff * diff).sum() / (f.sum() + 1e-8)


def hovernet_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Total HoVer-Net loss and its parts.

    Parameters
    ----------
    outputs : dict
        ``"np"`` logits (N, 2, H, W), ``"hv"`` (N, 2, H, W), optional ``"tp"`` logits (N, C, H, W).
    targets : dict
        ``"np"`` (N, H, W) integer 0/1, ``"hv"`` (N, 2, H, W) float, ``"tp"`` (N, H, W) integer (needed when
        ``outputs`` has ``"tp"``).

    Returns
    -------
    total : scalar tensor
    parts : dict of float
        ``np_ce``, ``np_dice``, ``hv_mse``, ``hv_msge`` and, with typing, ``tp_ce``, ``tp_dice``.
    """
    np_t = targets["np"].long()
    parts = {
        "np_ce": F.cross_entropy(outputs["np"], np_t),
        "np_dice": dice_loss(outputs["np"], np_t),
        "hv_mse": F.mse_loss(outputs["hv"], targets["hv"].to(outputs["hv"].dtype)),
        "hv_msge": msge_loss(outputs["hv"], targets["hv"].to(outputs["hv"].dtype), np_t),
    }
    if "tp" in outputs:
        tp_t = targets["tp"].long()
        parts["tp_ce"] = F.cross_entropy(outputs["tp"], tp_t)
        parts["tp_dice"] = dice_loss(outputs["tp"], tp_t)
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}
