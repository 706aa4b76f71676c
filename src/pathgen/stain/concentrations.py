"""Stain concentrations: an exact, batched non-negative lasso for two stains.

For each pixel's OD ``x`` (3,) and stain matrix ``V`` (2, 3) this solves

    min_{c >= 0}  1/2 ||x - c V||^2 + lam * (c_1 + c_2)

exactly, with no iterations: the problem is convex, so its minimiser is the unconstrained solution of the 2×2
normal equations ``(V V^T) c = V x - lam`` when that is non-negative; otherwise it lies on a face ``c_1 = 0`` or
``c_2 = 0``, where the one-variable problem is solved by clipping, and the face with the lower objective wins.
With ``lam = 0`` this is exact non-negative least squares (better than solving unconstrained and clipping, which
leaves the other stain at its unconstrained value). ``lam = 0.01`` matches the ``spams.lasso`` setting of
StainTools and the NASDM code; ``lam = 0.1`` is the dictionary-learning step of Vahadane.

Every pixel costs a few dozen flops, it vectorises over any batch on CPU or GPU, and it cannot produce NaN:
when the two vectors are (nearly) parallel the normal equations are skipped and only the one-stain faces are
used.
"""

from __future__ import annotations

import numpy as np
import torch

from pathgen.stain.optical import _like_input, as_tensor

#: Below this Gram determinant (1 - cos² of the angle; ~0.8° apart) the two stains are treated as parallel.
PARALLEL_DET = 1e-4


def nonneg_lasso_2(od, vectors, lam: float = 0.0):
    """Exact non-negative lasso concentrations for two stains.

    Parameters
    ----------
    od : array or tensor, (P, 3), float
        Optical densities.
    vectors : array or tensor, (2, 3)
        Stain vectors (rows); need not be unit norm but must be non-zero.
    lam : float
        L1 weight (>= 0).

    Returns
    -------
    c : same kind as ``od``, (P, 2), same float dtype, >= 0
    """
    x = as_tensor(od)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    v = as_tensor(vectors).to(dtype=x.dtype, device=x.device)
    c = _solve(x, v, float(lam))
    return _like_input(c, od)


def _solve(x: torch.Tensor, v: torch.Tensor, lam: float) -> torch.Tensor:
    g00 = float(v[0] @ v[0])
    g11 = float(v[1] @ v[1])
    g01 = float(v[0] @ v[1])
    det = g00 * g11 - g01 * g01
    b = x @ v.T  # (P, 2): V x
    if lam:
        b = b - lam
    b0, b1 = b[:, 0], b[:, 1]
    if det > PARALLEL_DET * g00 * g11 and g01 >= 0:
        # With G_01 >= 0 (always so for non-negative stain vectors) the KKT conditions give the solution in
        # closed form from the unconstrained one c_i: c_0 = max(c_i0 + G_01/G_00 min(c_i1, 0), 0) and
        # symmetrically for c_1 — the interior solution when both are >= 0, else the optimal one-stain face.
        c0 = (g11 * b0 - g01 * b1) / det
        c1 = (g00 * b1 - g01 * b0) / det
        m0, m1 = c0.clamp(max=0.0), c1.clamp(max=0.0)
        return torch.stack([(c0 + (g01 / g00) * m1).clamp_(min=0.0), (c1 + (g01 / g11) * m0).clamp_(min=0.0)], 1)
    # General case (parallel vectors, or vectors with negative components): compare the two faces.
    s0 = (b0 / g00).clamp_(min=0.0)
    s1 = (b1 / g11).clamp_(min=0.0)
    pick0 = (0.5 * g00 * s0 - b0) * s0 <= (0.5 * g11 * s1 - b1) * s1
    out = torch.stack([torch.where(pick0, s0, 0.0), torch.where(pick0, 0.0, s1)], dim=1)
    if det > PARALLEL_DET * g00 * g11:
        c0 = (g11 * b0 - g01 * b1) / det
        c1 = (g00 * b1 - g01 * b0) / det
        interior = (c0 >= 0) & (c1 >= 0)
        out = torch.where(interior[:, None], torch.stack([c0, c1], dim=1), out)
    return out


def concentration_percentiles(c: torch.Tensor | np.ndarray, percentile: float) -> np.ndarray:
    """Per-stain ``percentile`` of concentrations (P, 2) -> (2,) float64 (zeros when P == 0)."""
    t = as_tensor(c)
    if t.shape[0] == 0:
        return np.zeros(2)
    return np.percentile(t.detach().cpu().double().numpy(), percentile, axis=0)
