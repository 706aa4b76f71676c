"""Vahadane stain vectors: sparse non-negative dictionary learning in torch (no spams).

Objective (METHODS.md §1.3, the ``spams.trainDL`` setting of StainTools and the NASDM code: K = 2, λ1 = 0.1,
mode 2, modeD 0, posD, posAlpha), with X the (N, 3) OD samples, D the (2, 3) dictionary of stain atoms and A the
(N, 2) codes (concentrations):

    min_{D >= 0, ||d_k|| <= 1, A >= 0}  1/2 ||X - A D||_F^2 + λ1 ||A||_1

Solved by alternating minimisation with a fixed iteration budget (``n_iter``), never a time limit, so the result
does not depend on the machine's speed or thread count (spams' ``trainDL`` stops after about a second):

- **codes**: the exact non-negative lasso of :mod:`pathgen.stain.concentrations` — with K = 2 each pixel's
  problem is solved in closed form, so this step is the true minimiser, not a few ISTA/FISTA steps;
- **dictionary**: one sweep of block-coordinate descent over the atoms (Mairal et al., JMLR 2010, Algorithm 2):
  ``d_k <- d_k + (X^T a_k - D^T (A^T a_k)) / (a_k^T a_k)``, projected onto the non-negative orthant and the unit
  ball. An atom that loses all its pixels is re-seeded with the worst-reconstructed pixel.

Each step cannot increase the objective, so the objective is monotone. The dictionary starts from the Macenko
angular extremes of the samples (robust to outliers and deterministic); ``seed`` drives the subsampling to
``max_pixels``. Same inputs and seed give the same matrix. Atoms are unit-normalised and ordered H first by
:func:`pathgen.stain.matrix.order_he`.
"""

from __future__ import annotations

import numpy as np
import torch

from pathgen.errors import PathgenError
from pathgen.stain.concentrations import _solve
from pathgen.stain.macenko import MIN_FIT_PIXELS, NoTissueError, _angular_extremes, _as_od, stain_plane
from pathgen.stain.matrix import StainMatrix, normalize_rows, order_he
from pathgen.stain.optical import single_thread


def dictionary_objective(x: torch.Tensor, d: torch.Tensor, a: torch.Tensor, lambda1: float) -> float:
    """``1/2 ||X - A D||_F^2 + λ1 ||A||_1`` divided by the number of samples."""
    r = x - a @ d
    return float((0.5 * (r * r).sum() + lambda1 * a.sum()) / max(1, x.shape[0]))


def _initial_dictionary(x: torch.Tensor) -> torch.Tensor:
    strong = x[torch.linalg.vector_norm(x, dim=1) >= 0.15]
    ref = strong if strong.shape[0] >= MIN_FIT_PIXELS else x
    init = _angular_extremes(ref, stain_plane(ref), 1.0)
    init = np.clip(init, 0.0, None) + 1e-3  # keep every component able to move
    return torch.as_tensor(normalize_rows(init), dtype=x.dtype, device=x.device)


def fit_vahadane(od_pixels, lambda1: float = 0.1, n_iter: int = 100, seed: int = 0,
                 max_pixels: int = 100_000) -> StainMatrix:
    """Vahadane (sparse NMF) stain vectors from pooled OD samples.

    Parameters
    ----------
    od_pixels : ndarray or tensor, (N, 3), float
        Optical densities of tissue pixels (e.g. pooled over a slide).
    lambda1 : float
        Sparsity weight of the codes (0.1 as in the reference implementations).
    n_iter : int
        Number of alternating (codes, dictionary) iterations: a fixed budget.
    seed : int
        Seed of the subsampling to ``max_pixels``.
    max_pixels : int
        Samples used by the dictionary learning.

    Returns
    -------
    StainMatrix
        Rows (H, E), unit norm, non-negative; ``params`` records λ1, iterations, seed, pixels and the final
        objective per sample.

    Raises
    ------
    NoTissueError
        Fewer than ``MIN_FIT_PIXELS`` samples carry any optical density.
    """
    if n_iter < 1:
        raise PathgenError(f"n_iter must be at least 1, got {n_iter}")
    if lambda1 < 0:
        raise PathgenError(f"lambda1 must be >= 0, got {lambda1}")
    x = _as_od(od_pixels)
    x = x[torch.linalg.vector_norm(x, dim=1) > 1e-6]
    if x.shape[0] < MIN_FIT_PIXELS:
        raise NoTissueError(f"only {x.shape[0]} stained pixels; at least {MIN_FIT_PIXELS} are needed to fit stains")
    if x.shape[0] > max_pixels:
        gen = torch.Generator().manual_seed(int(seed))
        x = x[torch.randperm(x.shape[0], generator=gen)[:max_pixels].to(x.device)]
    with single_thread(x.device):
        return _learn(x, lambda1, n_iter, seed)


def _learn(x: torch.Tensor, lambda1: float, n_iter: int, seed: int) -> StainMatrix:
    d = _initial_dictionary(x)
    for _ in range(int(n_iter)):
        a = _solve(x, d, lambda1)
        gram = a.T @ a  # (2, 2)
        xta = x.T @ a  # (3, 2)
        for k in range(2):
            if gram[k, k] <= 1e-12:
                resid = torch.linalg.vector_norm(x - a @ d, dim=1)
                u = x[int(resid.argmax())].clone()
            else:
                u = d[k] + (xta[:, k] - d.T @ gram[:, k]) / gram[k, k]
            u = u.clamp(min=0.0)
            norm = torch.linalg.vector_norm(u)
            if norm <= 1e-12:
                continue
            d[k] = u / torch.clamp(norm, min=1.0)
    a = _solve(x, d, lambda1)
    objective = dictionary_objective(x, d, a, lambda1)
    vectors = order_he(normalize_rows(d.cpu().numpy()))
    return StainMatrix(vectors, "vahadane",
                       {"lambda1": float(lambda1), "n_iter": int(n_iter), "seed": int(seed),
                        "pixels": int(x.shape[0]), "objective": objective})
