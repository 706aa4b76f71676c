"""Macenko stain-vector estimation (Macenko et al., ISBI 2009), on pooled OD samples.

Steps (METHODS.md §1.2):

1. Drop transparent pixels: by default those whose OD vector has L2 norm below ``beta`` (0.15), as HistomicsTK
   thresholds the OD magnitude. ``beta_rule="any_channel"`` is the rule of the original MATLAB code and
   torchstain (drop a pixel with OD < β in any channel); it discards almost every pure-eosin pixel (eosin's red
   OD is 0.07 per unit concentration, so below β until the concentration exceeds 2), which leaves the eosin
   direction to mixed pixels and pulls it towards haematoxylin on eosin-poor images.
2. Find the plane of the two leading directions of the OD vectors. By default this is the SVD of the uncentred
   OD tuples, as the paper's text says ("SVD on the OD tuples"): Beer–Lambert mixtures of two stains lie in a plane
   through the origin, which the uncentred second-moment matrix finds. ``centered=True`` uses the mean-centred
   covariance instead, as StainTools/torchstain do (METHODS.md §1.6).
3. Express every OD vector as an angle ``phi`` in that plane and take the ``alpha``-th and ``(100-alpha)``-th
   percentile angles (robust extremes).
4. Map both angles back to OD space; clip negative components (the stain matrix is non-negative), unit-normalise,
   and put haematoxylin first with :func:`pathgen.stain.matrix.order_he`.
"""

from __future__ import annotations

import numpy as np
import torch

from pathgen.errors import PathgenError
from pathgen.stain.matrix import StainMatrix, order_he
from pathgen.stain.optical import as_tensor, single_thread

#: Fewer OD samples than this (after the β filter) cannot give a stable plane: the fit reports "no tissue".
MIN_FIT_PIXELS = 50


class NoTissueError(PathgenError):
    """Raised by the fitting functions when too few stained pixels remain to fit stains."""


def _as_od(od_pixels) -> torch.Tensor:
    od = as_tensor(od_pixels)
    if od.ndim != 2 or od.shape[1] != 3:
        raise PathgenError(f"OD samples must have shape (N, 3), got {tuple(od.shape)}")
    od = od.to(torch.float64)
    finite = torch.isfinite(od).all(dim=1)
    return od if bool(finite.all()) else od[finite]


def stain_plane(od: torch.Tensor, centered: bool = False) -> torch.Tensor:
    """Orthonormal basis (3, 2) of the two leading directions of OD samples (N, 3), float64.

    The first axis is oriented to have a positive component sum (OD vectors are non-negative), the second so
    that its largest-magnitude component is positive (only the sign convention of the angles depends on it).
    """
    x = od - od.mean(dim=0) if centered else od
    moment = x.T @ x / max(1, x.shape[0])
    _, evecs = torch.linalg.eigh(moment)  # ascending eigenvalues
    e1, e2 = evecs[:, 2].clone(), evecs[:, 1].clone()
    if e1.sum() < 0:
        e1 = -e1
    if e2[e2.abs().argmax()] < 0:
        e2 = -e2
    return torch.stack([e1, e2], dim=1)


def _angular_extremes(od: torch.Tensor, basis: torch.Tensor, alpha: float) -> np.ndarray:
    proj = od @ basis
    phi = torch.atan2(proj[:, 1], proj[:, 0]).cpu().numpy()
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    b = basis.cpu().numpy()
    v_lo = b[:, 0] * np.cos(lo) + b[:, 1] * np.sin(lo)
    v_hi = b[:, 0] * np.cos(hi) + b[:, 1] * np.sin(hi)
    vectors = np.stack([v_lo, v_hi])
    # A back-projected vector with negative sum is the antipode of a stain direction.
    vectors *= np.where(vectors.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    return vectors


BETA_RULES = ("norm", "any_channel")


def fit_macenko(od_pixels, beta: float = 0.15, alpha: float = 1.0, centered: bool = False,
                beta_rule: str = "norm") -> StainMatrix:
    """Macenko stain vectors from pooled OD samples.

    Parameters
    ----------
    od_pixels : ndarray or tensor, (N, 3), float
        Optical densities of (tissue) pixels, e.g. sampled from many tiles of one slide.
    beta : float
        OD threshold for transparent pixels.
    beta_rule : {"norm", "any_channel"}
        Drop samples whose OD norm is below ``beta`` (default), or that have OD < ``beta`` in any channel
        (original Macenko code).
    alpha : float
        Angular percentile in percent: the stain directions are the ``alpha`` and ``100 - alpha`` percentiles of
        the angle distribution.
    centered : bool
        Use the mean-centred covariance instead of the uncentred second moment for the plane.

    Returns
    -------
    StainMatrix
        Rows (H, E), unit norm, non-negative; ``params`` records beta, alpha, centered and the pixel count.

    Raises
    ------
    NoTissueError
        Fewer than ``MIN_FIT_PIXELS`` samples pass the β filter.
    """
    if not 0.0 <= alpha < 50.0:
        raise PathgenError(f"alpha must lie in [0, 50), got {alpha}")
    if beta_rule not in BETA_RULES:
        raise PathgenError(f"unknown beta_rule {beta_rule!r} (choose {', '.join(BETA_RULES)})")
    od = _as_od(od_pixels)
    if beta_rule == "norm":
        od = od[torch.linalg.vector_norm(od, dim=1) >= beta]
    else:
        od = od[(od >= beta).all(dim=1)]
    if od.shape[0] < MIN_FIT_PIXELS:
        raise NoTissueError(f"only {od.shape[0]} pixels pass the OD threshold beta={beta} ({beta_rule}); "
                            f"at least {MIN_FIT_PIXELS} are needed to fit stains")
    with single_thread(od.device):
        basis = stain_plane(od, centered=centered)
        vectors = order_he(_angular_extremes(od, basis, alpha))
    if np.any(np.clip(vectors, 0, None).sum(axis=1) <= 1e-9):
        raise NoTissueError("the OD samples do not span two non-negative stain directions")
    return StainMatrix(vectors, "macenko",
                       {"beta": float(beta), "beta_rule": beta_rule, "alpha": float(alpha),
                        "centered": bool(centered), "pixels": int(od.shape[0])})
