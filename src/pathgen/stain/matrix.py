"""Stain matrices, fitted stain statistics, the H/E ordering rule, and their JSON form.

A :class:`StainMatrix` is two unit-norm, non-negative OD vectors, haematoxylin in row 0 and eosin in row 1.
A :class:`StainFit` is everything a normaliser learns from one image, folder of images or slide: the matrix,
the concentration percentiles used for scaling, the background intensity I0, CIELAB statistics (Reinhard),
the brightness reference, how many tissue pixels it saw and with which parameters.

H/E ordering rule
-----------------
Fitted vectors come out of the decomposition in no particular order. Rules in use elsewhere and how they fail
(ANCHORS.md §3): "larger red OD is H" (StainTools, torchstain, TIAToolbox) decides on one channel and flips when
a site's haematoxylin is bluer or its eosin redder than usual; matching each vector to a reference on its own
(HistomicsTK, #556) can give both vectors the same label; comparing two channels of one atom (PathML) is not a
comparison of the two stains at all; rules based on which stain is more abundant flip on eosin-dominant tiles.

pathgen treats it as an assignment: of the two ways to label (v_a, v_b) as (H, E) it picks the one with the
larger total cosine similarity to the Ruifrok–Johnston reference vectors (H = (0.650, 0.704, 0.286),
E = (0.072, 0.990, 0.105); Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 23:291, 2001). That reduces to a sign
test, ``(v_a - v_b) · (h_ref - e_ref) >= 0  =>  v_a is H``: it uses the direction of the vectors only (never
their amounts), always gives two different labels, and weighs red (+0.58) against green (-0.29) and blue
(+0.18), so it is still right when the red components are close.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathgen.errors import PathgenError, require_file

#: Ruifrok & Johnston (2001) haematoxylin and eosin OD vectors (unit-normalised below).
RUIFROK_H = np.array([0.650, 0.704, 0.286])
RUIFROK_E = np.array([0.072, 0.990, 0.105])
_H_MINUS_E = RUIFROK_H / np.linalg.norm(RUIFROK_H) - RUIFROK_E / np.linalg.norm(RUIFROK_E)

STAIN_NAMES = ("hematoxylin", "eosin")
FORMAT = "pathgen.stain/1"


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Clip negative components to 0 and scale each row to unit L2 norm; (2, 3) float64 in and out."""
    v = np.clip(np.asarray(vectors, dtype=np.float64), 0.0, None)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if np.any(norms <= 1e-12):
        raise PathgenError("a stain vector is zero after removing negative components")
    return v / norms


def order_he(vectors: np.ndarray) -> np.ndarray:
    """Return the two stain vectors with haematoxylin first (see the module docstring for the rule).

    Parameters
    ----------
    vectors : ndarray, (2, 3)
        Two OD vectors in any order.

    Returns
    -------
    ndarray, (2, 3) float64, rows (H, E).
    """
    v = np.asarray(vectors, dtype=np.float64)
    if (v[0] - v[1]) @ _H_MINUS_E >= 0:
        return v.copy()
    return v[::-1].copy()


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in degrees between two vectors (0 when either is zero)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return math.degrees(math.acos(float(np.clip(a @ b / (na * nb), -1.0, 1.0))))


@dataclass(frozen=True)
class StainMatrix:
    """Two stain OD vectors, rows (haematoxylin, eosin), unit L2 norm, non-negative.

    Attributes
    ----------
    vectors : ndarray, (2, 3) float64
        Row 0 haematoxylin, row 1 eosin; columns R, G, B optical density.
    method : str
        "macenko", "vahadane", "default" or "given".
    params : dict
        Parameters of the fit (β, α, λ1, iterations, number of pixels, ...).
    """

    vectors: np.ndarray
    method: str = "given"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        v = np.asarray(self.vectors, dtype=np.float64)
        if v.shape != (2, 3) or not np.all(np.isfinite(v)):
            raise PathgenError(f"a stain matrix is 2x3 finite numbers, got shape {v.shape}")
        object.__setattr__(self, "vectors", normalize_rows(v))

    @property
    def hematoxylin(self) -> np.ndarray:
        return self.vectors[0]

    @property
    def eosin(self) -> np.ndarray:
        return self.vectors[1]

    @property
    def separation_deg(self) -> float:
        """Angle between the H and E vectors; near 0 means the two stains could not be told apart."""
        return angle_deg(self.vectors[0], self.vectors[1])

    def angles_to(self, other: "StainMatrix") -> tuple[float, float]:
        """Angles in degrees between this matrix's H and E vectors and ``other``'s."""
        return angle_deg(self.vectors[0], other.vectors[0]), angle_deg(self.vectors[1], other.vectors[1])


@dataclass
class StainFit:
    """Stain statistics of one image, image domain or slide.

    Attributes
    ----------
    method : str
        Method that produced it: "macenko", "vahadane", "reinhard" or "default".
    matrix : StainMatrix or None
        Stain vectors (None for Reinhard or when there is no tissue).
    concentration_percentiles : ndarray (2,) float64 or None
        The ``percentile``-th percentile of the H and E concentrations over tissue pixels.
    percentile : float
        Which percentile (99 by default).
    i0 : ndarray (3,) float64
        Background intensity per channel used for OD.
    tissue_pixels : int
        Number of tissue pixels the fit used (0 for the built-in default, which was not fitted here, and for a
        fit that found no tissue: then ``matrix``, ``concentration_percentiles`` and ``lab_*`` are None).
    lab_mean, lab_std : ndarray (3,) float64 or None
        CIELAB mean and standard deviation of tissue pixels (Reinhard).
    brightness_reference : float or None
        The brightness statistic of the brightness standardisation used (None when off).
    params : dict
        Everything else that shaped the fit (β, α, λ, luminosity threshold, seed, brightness mode, ...).
    """

    method: str
    matrix: StainMatrix | None
    concentration_percentiles: np.ndarray | None
    percentile: float
    i0: np.ndarray
    tissue_pixels: int
    lab_mean: np.ndarray | None = None
    lab_std: np.ndarray | None = None
    brightness_reference: float | None = None
    params: dict = field(default_factory=dict)

    @property
    def has_tissue(self) -> bool:
        """True when the fit holds statistics (stain vectors or CIELAB statistics) to normalise with."""
        return self.matrix is not None or self.lab_mean is not None

    @property
    def vectors(self) -> np.ndarray | None:
        return None if self.matrix is None else self.matrix.vectors

    # -------------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        def arr(a):
            return None if a is None else [float(x) for x in np.asarray(a).ravel()]

        return {
            "format": FORMAT,
            "method": self.method,
            "stains": list(STAIN_NAMES),
            "vectors": None if self.matrix is None else [arr(r) for r in self.matrix.vectors],
            "vector_method": None if self.matrix is None else self.matrix.method,
            "vector_params": {} if self.matrix is None else _jsonable(self.matrix.params),
            "percentile": float(self.percentile),
            "concentration_percentiles": arr(self.concentration_percentiles),
            "i0": arr(self.i0),
            "tissue_pixels": int(self.tissue_pixels),
            "lab_mean": arr(self.lab_mean),
            "lab_std": arr(self.lab_std),
            "brightness_reference": None if self.brightness_reference is None else float(self.brightness_reference),
            "params": _jsonable(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "StainFit":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PathgenError(f"not a pathgen stain file (expected \"format\": \"{FORMAT}\")", source)
        try:
            vectors = data.get("vectors")
            matrix = None if vectors is None else StainMatrix(np.asarray(vectors, dtype=np.float64),
                                                              data.get("vector_method") or data["method"],
                                                              dict(data.get("vector_params") or {}))

            def opt(key, n):
                v = data.get(key)
                if v is None:
                    return None
                a = np.asarray(v, dtype=np.float64)
                if a.shape != (n,) or not np.all(np.isfinite(a)):
                    raise ValueError(f"{key} must be {n} finite numbers")
                return a

            fit = cls(method=str(data["method"]), matrix=matrix,
                      concentration_percentiles=opt("concentration_percentiles", 2),
                      percentile=float(data.get("percentile", 99.0)), i0=opt("i0", 3),
                      tissue_pixels=int(data.get("tissue_pixels", 0)), lab_mean=opt("lab_mean", 3),
                      lab_std=opt("lab_std", 3), brightness_reference=data.get("brightness_reference"),
                      params=dict(data.get("params") or {}))
        except PathgenError as exc:
            raise PathgenError(exc.problem, source) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise PathgenError(f"invalid stain file: {exc}", source) from None
        if fit.i0 is None:
            raise PathgenError("invalid stain file: i0 missing", source)
        if fit.concentration_percentiles is not None and np.any(fit.concentration_percentiles < 0):
            raise PathgenError("invalid stain file: negative concentration percentile", source)
        return fit

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write this fit as JSON (atomically; an existing file is refused unless ``overwrite``)."""
        from pathgen.io.records import versions
        from pathgen.io.atomic import atomic_path

        data = self.to_dict()
        data["versions"] = versions()
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StainFit":
        """Read a fit written by :meth:`save`; a one-line :class:`PathgenError` if it is not one."""
        p = require_file(path)
        try:
            data = json.loads(Path(p).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PathgenError(f"not valid JSON ({exc.__class__.__name__})", p) from None
        return cls.from_dict(data, source=p)


def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
