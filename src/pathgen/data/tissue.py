"""A procedural plane of colon-like tissue, rendered window by window as stain densities and nuclei labels.

The plane is defined in micrometres and is a pure function of its seed: tissue/background from a fractal noise
field; colonic crypts (one candidate per 100 µm grid cell, lumen, epithelial band, basement membrane, goblet
vacuoles, radially oriented epithelial nuclei); lamina propria with wavy eosinophilic collagen fibres, spindle
fibroblast nuclei aligned with the fibres, and inflammatory cells (lymphocytes — dense aggregates where an
inflammation field is high — plasma cells, neutrophils, eosinophils); red blood cells in short capillary chains.

Every random choice is drawn from a generator owned by one grid cell (seeded by ``(seed, stream, cell)``) or
hashed from global coordinates, and nuclei are thinned by a Matérn type-II rule (a candidate dies if a
candidate with a lower mark lies within the interaction distance) that only looks at nearby candidates. So the
pixels of any window are the same whether it is rendered alone or inside a larger window: slide tiles are
seamless. Label post-processing (one connected component per instance) is per window.

Nucleus classes follow Lizard: 0 background, 1 neutrophil, 2 epithelial, 3 lymphocyte, 4 plasma, 5 eosinophil,
6 connective. Sizes at 0.5 µm/px: lymphocyte nuclei 5.4–7.2 µm across, plasma 5–7 µm in an eccentric
cytoplasm, neutrophils 3–5 lobes of ~3 µm, eosinophils two lobes in a ~12 µm granular pink cell, epithelial
nuclei 8–13 × 3.6–5 µm (larger when atypical), fibroblasts 11–19 × 2.2–3.6 µm spindles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from pathgen.data import noise

CLASS_NAMES = ("background", "neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")
NEUTROPHIL, EPITHELIAL, LYMPHOCYTE, PLASMA, EOSINOPHIL, CONNECTIVE = 1, 2, 3, 4, 5, 6

# Noise streams: one per independent random quantity.
_S_TISSUE, _S_GLANDFIELD, _S_INFLAM, _S_FIBRE_DENS, _S_WARP, _S_FINE, _S_MED, _S_SCAN_H, _S_SCAN_E = range(1, 10)
_S_GLAND, _S_GLAND_NUC, _S_NUC, _S_RBC, _S_ANGLE, _S_ACUTE = range(20, 26)

# Extents that bound how far any object reaches from its centre and how far nuclei interact (µm).
_MAX_EXTENT_UM = 11.0
_MAX_INTERACT_UM = 10.0
_KAPPA = 0.9  # Matérn distance factor on core radii: < 1 lets nuclei touch and overlap
_N_UNIFORMS = 12  # uniforms drawn per nucleus candidate, whatever its type, so draws never shift


@dataclass(frozen=True)
class TissueParams:
    """Knobs of the procedural tissue. Lengths in µm, densities in nuclei per 1000 µm².

    Attributes
    ----------
    tissue_fraction : float
        Expected share of the plane covered by tissue (the rest is blank glass).
    tissue_scale_um : float
        Lattice spacing of the coarsest tissue-field octave: the size of tissue blobs and holes.
    tissue_threshold : float, optional
        Explicit threshold on the tissue field; overrides ``tissue_fraction`` (slides compute it from their own
        low-resolution field).
    extent_um : (height, width), optional
        If set, tissue fades out within 6 % of the edges of this rectangle (a slide's glass margin).
    gland_cell_um : float
        Side of the grid cells that each hold at most one crypt.
    gland_probability : float
        Mean share of gland cells holding a crypt; modulated by a gland field.
    stroma_density : float
        Mean nuclei density in lamina propria before inflammation modulation.
    aggregate_quantile : float
        Inflammation-field quantile above which lymphoid aggregates form.
    """

    tissue_fraction: float = 0.93
    tissue_scale_um: float = 600.0
    tissue_threshold: float | None = None
    extent_um: tuple[float, float] | None = None
    gland_cell_um: float = 100.0
    gland_probability: float = 0.6
    stroma_density: float = 4.5
    aggregate_quantile: float = 0.9

    def threshold(self) -> float:
        if self.tissue_threshold is not None:
            return float(self.tissue_threshold)
        return noise.fbm_quantile(1.0 - float(self.tissue_fraction), octaves=4)


@dataclass
class _Gland:
    cy: float
    cx: float  # centre, µm
    a: float
    b: float  # outer semi-axes, µm
    angle: float
    amps: np.ndarray
    phases: np.ndarray  # boundary harmonics k = 2, 3, 4
    inner: float  # lumen boundary as a fraction of the outer one
    atypia: float  # 0 normal crypt .. 1 crowded, enlarged, stratified
    key: tuple

    def radius_factor(self, phi: np.ndarray) -> np.ndarray:
        r = np.ones_like(phi)
        for k, (amp, ph) in enumerate(zip(self.amps, self.phases), start=2):
            r = r + amp * np.cos(k * phi + ph)
        return r

    def s(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside the outer boundary, < ``inner`` in the lumen (``y``, ``x`` in µm)."""
        dy, dx = y - self.cy, x - self.cx
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (c * dx + s * dy) / self.a
        v = (-s * dx + c * dy) / self.b
        return np.hypot(u, v) / self.radius_factor(np.arctan2(v, u))


@dataclass
class _Cell:
    """One object to draw. Coordinates in global pixels; lobes and cytoplasm relative to the centre, in px."""

    cls: int  # nucleus class 1..6; 0 for objects without a nucleus (red blood cells, goblet vacuoles)
    y: float
    x: float
    mark: float  # Matérn priority; lower marks win and are drawn later (on top)
    core: float  # interaction radius, µm
    lobes: list = field(default_factory=list)  # (dy, dx, a, b, angle, amps, phases, taper, bend)
    density: float = 1.0
    granularity: float = 0.2
    margination: float = 0.0
    nucleolus: tuple | None = None  # (dy, dx, r, extra)
    clock: tuple | None = None  # (k, phase, amplitude)
    cyto: list = field(default_factory=list)  # (dy, dx, a, b, angle, conc, tex_gain, pallor, hof)
    extent: float = 0.0  # px


def _rot(angle: float, u: float, v: float) -> tuple[float, float]:
    """Rotate a vector given along (long axis u, short axis v) into (dy, dx)."""
    c, s = math.cos(angle), math.sin(angle)
    return s * u + c * v, c * u - s * v


class TissuePlane:
    """The infinite procedural tissue for one seed, sampled at ``mpp`` µm per pixel.

    Parameters
    ----------
    seed : int
    mpp : float
        Pixel size in µm (0.5 ≈ 20×, 0.25 ≈ 40×).
    params : TissueParams, optional
    """

    def __init__(self, seed: int = 0, mpp: float = 0.5, params: TissueParams | None = None):
        if not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        self.seed = int(seed)
        self.mpp = float(mpp)
        self.params = params or TissueParams()
        self.threshold = self.params.threshold()
        self._gland_cache: dict[tuple[int, int], _Gland | None] = {}
        self._cell_cache: dict[tuple[int, int], list[_Cell]] = {}
        self.fibre_angle = float(noise.hash_uniform(self.seed, _S_ANGLE, 0)) * math.pi
        self._infl_q = noise.fbm_quantile(self.params.aggregate_quantile, octaves=3)
        from scipy.stats import poisson

        lam = self._LAMBDA_MAX * self._NUC_CELL_UM ** 2 / 1000.0
        self._poisson_cdf = poisson.cdf(np.arange(int(lam + 12 * math.sqrt(lam) + 10)), lam)

    # ---- fields (µm coordinates, broadcastable) -------------------------------------------------------------
    def tissue_field(self, y_um, x_um) -> np.ndarray:
        """Tissue field; tissue where it exceeds ``self.threshold``."""
        f = noise.fbm(self.seed, _S_TISSUE, y_um, x_um, self.params.tissue_scale_um, octaves=4)
        if self.params.extent_um is not None:
            h, w = self.params.extent_um
            margin = 0.06 * min(h, w)
            d = np.minimum(np.minimum(y_um, h - y_um), np.minimum(x_um, w - x_um))
            f = f - 0.6 * np.clip(1.0 - d / margin, 0.0, 1.0) ** 2
        return f

    def _gland_field(self, y_um, x_um):
        return noise.fbm(self.seed, _S_GLANDFIELD, y_um, x_um, 300.0, octaves=2)

    def _inflammation(self, y_um, x_um):
        return noise.fbm(self.seed, _S_INFLAM, y_um, x_um, 140.0, octaves=3)

    def _fibre_density(self, y_um, x_um):
        return noise.fbm(self.seed, _S_FIBRE_DENS, y_um, x_um, 180.0, octaves=2)

    def _fibre_phase(self, y_um, x_um):
        """Phase (in fibre periods) of the domain-warped stripes that draw collagen fibres."""
        c, s = math.cos(self.fibre_angle), math.sin(self.fibre_angle)
        warp = noise.fbm(self.seed, _S_WARP, y_um, x_um, 70.0, octaves=2) - 0.5
        return (c * y_um - s * x_um) / 7.0 + 12.0 * warp

    def fibre_direction(self, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
        """Local fibre direction (radians, image axes: 0 along +x, π/2 along +y) at points."""
        e = 0.5
        gy = (self._fibre_phase(y_um + e, x_um) - self._fibre_phase(y_um - e, x_um)) / (2 * e)
        gx = (self._fibre_phase(y_um, x_um + e) - self._fibre_phase(y_um, x_um - e)) / (2 * e)
        # Fibres run along the stripes, perpendicular to the phase gradient.
        return np.arctan2(gy, gx) + math.pi / 2

    # ---- glands ---------------------------------------------------------------------------------------------
    def _uniforms(self, stream: int, cy: np.ndarray, cx: np.ndarray, n: int) -> np.ndarray:
        """``n`` hashed uniforms per grid cell, shape (len(cy), n): the cell's own random numbers."""
        return noise.hash_uniform(self.seed, stream, np.asarray(cy)[:, None], np.asarray(cx)[:, None],
                                  np.arange(n)[None, :])

    def _ensure_glands(self, keys) -> None:
        todo = [k for k in keys if k not in self._gland_cache]
        if not todo:
            return
        cell = self.params.gland_cell_um
        gy = np.array([k[0] for k in todo], np.int64)
        gx = np.array([k[1] for k in todo], np.int64)
        uu = self._uniforms(_S_GLAND, gy, gx, 16)
        ccy, ccx = (gy + 0.5) * cell, (gx + 0.5) * cell
        p = np.clip(self.params.gland_probability + 2.0 * (self._gland_field(ccy, ccx) - 0.5), 0.0, 0.97)
        present = (uu[:, 0] < p) & (self.tissue_field(ccy, ccx) > self.threshold + 0.01)
        for i, key in enumerate(todo):
            g = None
            if present[i]:
                u = uu[i]
                atypia = float(u[1] ** 2.5)
                amps = np.array([0.07 * u[2], 0.05 * u[3], 0.03 * u[4]]) * (1 + 1.5 * atypia)
                phases = 2 * math.pi * u[5:8]
                r_out = 27.0 + 14.0 * u[8] + 6.0 * atypia
                ratio = 0.62 + 0.38 * u[9]
                ext = r_out * (1 + amps.sum()) + 3.0
                if ext > cell / 2:  # shrink to stay inside the cell: glands never overlap
                    r_out *= (cell / 2) / ext
                    ext = cell / 2
                free = cell / 2 - ext
                thickness = 15.0 + 7.0 * u[10] + 5.0 * atypia
                inner = max(0.07, 1.0 - thickness / (r_out * ratio) * (0.85 + 0.3 * u[11]))
                g = _Gland(float(ccy[i] + (2 * u[12] - 1) * free), float(ccx[i] + (2 * u[13] - 1) * free), r_out,
                           r_out * ratio, math.pi * u[14], amps, phases, inner, atypia, key)
            self._gland_cache[key] = g

    def gland(self, gy: int, gx: int) -> _Gland | None:
        """The crypt owned by gland cell ``(gy, gx)``, or None."""
        self._ensure_glands([(gy, gx)])
        return self._gland_cache[(gy, gx)]

    def glands_in(self, y0_um, x0_um, y1_um, x1_um) -> list[_Gland]:
        """Crypts owned by the gland cells that meet the rectangle (µm)."""
        cell = self.params.gland_cell_um
        keys = [(gy, gx) for gy in range(math.floor(y0_um / cell), math.floor(y1_um / cell) + 1)
                for gx in range(math.floor(x0_um / cell), math.floor(x1_um / cell) + 1)]
        self._ensure_glands(keys)
        return [g for g in (self._gland_cache[k] for k in keys) if g is not None]

    def in_gland(self, y_um: np.ndarray, x_um: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points lie inside a crypt's outer boundary scaled by ``1 + margin``."""
        cell = self.params.gland_cell_um
        y_um, x_um = np.asarray(y_um, float), np.asarray(x_um, float)
        out = np.zeros(y_um.shape, bool)
        gy = np.floor(y_um / cell).astype(np.int64)
        gx = np.floor(x_um / cell).astype(np.int64)
        keys = set(zip(gy.tolist(), gx.tolist()))
        self._ensure_glands(keys)
        for key in keys:
            g = self._gland_cache[key]
            if g is None:
                continue
            sel = (gy == key[0]) & (gx == key[1])
            out[sel] = g.s(y_um[sel], x_um[sel]) < 1.0 + margin
        return out

    def _gland_cells(self, g: _Gland) -> list[_Cell]:
        """Epithelial nuclei and goblet vacuoles of a crypt, in palisade around the lumen."""
        rng = np.random.default_rng(noise.cell_seed(self.seed, _S_GLAND_NUC, *g.key))
        a, b = g.a, g.b
        perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
        spacing = 5.2 - 1.4 * g.atypia
        n = max(6, int(perimeter / spacing))
        u = rng.random((n, 14))
        marks = rng.random(n)
        t = 2 * math.pi * (np.arange(n) + 0.35 * (u[:, 0] - 0.5)) / n
        rf = g.radius_factor(t)
        bu, bv = rf * a * np.cos(t), rf * b * np.sin(t)  # outer boundary point, gland frame
        nu, nv = np.cos(t) / a, np.sin(t) / b  # outward normal
        nn = np.hypot(nu, nv)
        nu, nv = nu / nn, nv / nn
        band = (1.0 - g.inner) * np.hypot(bu, bv)  # local epithelial thickness along the normal (approx.)
        at = g.atypia
        half_long = 3.6 + 1.8 * u[:, 1] + 2.6 * at
        half_short = 1.7 + 0.6 * u[:, 2] + 0.7 * at
        half_long = np.minimum(half_long, 0.45 * band)
        half_short = np.minimum(half_short, half_long * 0.95)
        depth = half_long + 0.8 + (1.5 + 5.0 * at) * u[:, 3]
        depth = np.minimum(depth, np.maximum(band - half_long - 0.5, half_long + 0.3))
        cu, cv = bu - nu * depth, bv - nv * depth
        ca, sa = math.cos(g.angle), math.sin(g.angle)
        # gland frame (u, v) -> image: x = ca*u - sa*v, y = sa*u + ca*v
        cx = g.cx + ca * cu - sa * cv
        cy = g.cy + sa * cu + ca * cv
        normal_angle = np.arctan2(sa * nu + ca * nv, ca * nu - sa * nv) + 0.25 * (u[:, 4] - 0.5)
        cells = []
        px = 1.0 / self.mpp
        for i in range(n):
            lobes = [(0.0, 0.0, half_long[i] * px, half_short[i] * px, float(normal_angle[i]),
                      np.array([0.03, 0.04, 0.02]) * u[i, 5:8] * (1 + 2 * at), 2 * math.pi * u[i, 8:11], 0.0,
                      0.3 * (u[i, 11] - 0.5))]
            nucleolus = None
            if u[i, 12] < 0.25 + 0.6 * at:
                ny, nx = _rot(float(normal_angle[i]), (u[i, 13] - 0.5) * half_long[i] * px, 0.0)
                nucleolus = (ny, nx, (0.45 + 0.35 * at) * px, 0.5)
            cells.append(_Cell(
                EPITHELIAL, float(cy[i]) * px - 0.5, float(cx[i]) * px - 0.5, float(marks[i]),
                core=1.05 * float(half_short[i]), lobes=lobes, density=1.45 - 0.4 * at + 0.2 * u[i, 9],
                granularity=0.22 + 0.1 * at, margination=0.15 + 0.45 * at, nucleolus=nucleolus,
                extent=(half_long[i] + 1.5) * px))
        # Goblet vacuoles sit between the nuclei and the lumen; crowded atypical glands lose them.
        gob = rng.random((n, 6))
        goblets = []
        for i in range(n):
            if gob[i, 0] > 0.5 * (1.0 - at) ** 2:
                continue
            ra = 3.0 + 1.5 * gob[i, 1]
            rb = 2.0 + 1.0 * gob[i, 2]
            d = min(depth[i] + half_long[i] + ra * 0.9, band[i] - ra * 0.6)
            gu, gv = bu[i] - nu[i] * d, bv[i] - nv[i] * d
            gx_, gy_ = g.cx + ca * gu - sa * gv, g.cy + sa * gu + ca * gv
            conc = (0.17, 0.07, 0.01)
            goblets.append(_Cell(0, gy_ * px - 0.5, gx_ * px - 0.5, float(gob[i, 3]), core=0.0,
                                 cyto=[(0.0, 0.0, ra * px, rb * px, float(normal_angle[i]), conc, 0.35, 0.0, None)],
                                 extent=(ra + 1) * px))
        return cells + goblets

    # ---- stroma cells ---------------------------------------------------------------------------------------
    _NUC_CELL_UM = 40.0
    _LAMBDA_MAX = 22.0  # per 1000 µm²; upper bound of the modulated density

    def _ensure_stroma(self, keys) -> None:
        """Generate (and cache) the stroma cells and red blood cells owned by nucleus grid cells ``keys``.

        Candidates form a Poisson process of intensity ``_LAMBDA_MAX`` per cell, thinned to the local density
        (tissue, outside crypts, inflammation, fibrosis, aggregates); all numbers are hashed from the cell and
        candidate index, so a cell's content never depends on which window asked for it.
        """
        todo = [k for k in keys if k not in self._cell_cache]
        if not todo:
            return
        if len(self._cell_cache) > 50000:
            self._cell_cache.clear()
        size = self._NUC_CELL_UM
        cy = np.array([k[0] for k in todo], np.int64)
        cx = np.array([k[1] for k in todo], np.int64)
        head = self._uniforms(_S_NUC, cy, cx, 1)[:, 0]
        counts = np.searchsorted(self._poisson_cdf, head, side="right")
        k_max = max(int(counts.max()), 1)
        n_attr = 5 + _N_UNIFORMS
        uu = noise.hash_uniform(self.seed, _S_NUC + 100, cy[:, None, None], cx[:, None, None],
                                np.arange(k_max)[None, :, None], np.arange(n_attr)[None, None, :])
        valid = np.arange(k_max)[None, :] < counts[:, None]
        owner = np.broadcast_to(np.arange(len(todo))[:, None], valid.shape)[valid]
        u = uu[valid]  # (n, n_attr)
        ys = (cy[owner] + u[:, 0]) * size
        xs = (cx[owner] + u[:, 1]) * size
        per_cell: list[list[_Cell]] = [[] for _ in todo]
        if len(u):
            marks, accept_u, type_u, uni = u[:, 2], u[:, 3], u[:, 4], u[:, 5:]
            infl = self._inflammation(ys, xs)
            fib = self._fibre_density(ys, xs)
            acute = noise.fbm(self.seed, _S_ACUTE, ys, xs, 120.0, octaves=2)
            aggregate = np.clip((infl - self._infl_q) / 0.04, 0.0, 1.0)
            dens = self.params.stroma_density * (0.45 + 2.2 * np.clip(infl - 0.3, 0.0, None) / 0.4)
            dens = dens * (1.0 - 0.4 * np.clip(fib - 0.5, 0, None) / 0.3) + 14.0 * aggregate
            keep = accept_u * self._LAMBDA_MAX < dens
            keep[keep] = self.tissue_field(ys[keep], xs[keep]) > self.threshold
            keep[keep] = ~self.in_gland(ys[keep], xs[keep], margin=0.06)
            w = np.stack([
                0.05 + 0.25 * np.clip(acute - 0.6, 0, None) / 0.15,  # neutrophil
                np.zeros(len(u)),  # epithelial: only in crypts
                0.30 + 0.5 * np.clip(infl - 0.5, 0, None) / 0.2,  # lymphocyte
                0.22 + 0.15 * np.clip(infl - 0.45, 0, None) / 0.2,  # plasma
                0.07 + 0.15 * np.clip(acute - 0.55, 0, None) / 0.2,  # eosinophil
                0.22 + 0.9 * np.clip(fib - 0.45, 0, None) / 0.25,  # connective
            ], axis=1)
            w[:, 2] += 12.0 * aggregate
            cum = np.cumsum(w, axis=1)
            types = 1 + np.sum(type_u[:, None] * cum[:, -1:] > cum, axis=1)
            idx = np.flatnonzero(keep)
            direction = self.fibre_direction(ys[idx], xs[idx])
            for i, d in zip(idx, direction):
                per_cell[owner[i]].append(self._make_stroma_cell(int(types[i]), ys[i], xs[i], float(marks[i]),
                                                                 uni[i], float(d)))
        self._add_red_cells(cy, cx, per_cell)
        for key, cells in zip(todo, per_cell):
            self._cell_cache[key] = cells

    def _add_red_cells(self, cy: np.ndarray, cx: np.ndarray, per_cell: list[list[_Cell]]) -> None:
        """Red blood cells: short bent chains in capillaries of some cells, drawn beneath the nuclei."""
        size = self._NUC_CELL_UM
        n_max = 8
        ru = self._uniforms(_S_RBC, cy, cx, 5 + 4 * n_max)
        chains = np.flatnonzero(ru[:, 0] < 0.1)
        px = 1.0 / self.mpp
        for c in chains:
            u = ru[c]
            k = 3 + int(6 * u[1])
            v = u[5:].reshape(n_max, 4)[:k]
            ang = 2 * math.pi * u[2]
            steps = 5.4 + 1.2 * v[:, 0]
            angs = ang + np.cumsum((v[:, 1] - 0.5) * 0.7)
            py = (cy[c] + u[3]) * size + np.cumsum(steps * np.sin(angs))
            pxs = (cx[c] + u[4]) * size + np.cumsum(steps * np.cos(angs))
            ok = (self.tissue_field(py, pxs) > self.threshold) & ~self.in_gland(py, pxs, margin=0.1)
            for j in np.flatnonzero(ok):
                r = (3.3 + 0.5 * v[j, 2]) * px
                per_cell[c].append(_Cell(0, py[j] * px - 0.5, pxs[j] * px - 0.5, float(v[j, 3]), core=0.0,
                                         cyto=[(0.0, 0.0, r, r * (0.82 + 0.18 * v[j, 2]), float(angs[j]),
                                                (0.02, 1.3, 0.45), 0.05, 0.4, None)], extent=r + px))

    def _make_stroma_cell(self, cls: int, y_um: float, x_um: float, mark: float, u: np.ndarray,
                          direction: float) -> _Cell:
        px = 1.0 / self.mpp
        y, x = y_um * px - 0.5, x_um * px - 0.5
        amps = np.array([0.04, 0.03, 0.02]) * u[3:6]
        phases = 2 * math.pi * u[6:9]
        if cls == LYMPHOCYTE:
            r = 2.7 + 0.9 * u[0]
            ratio = 0.85 + 0.15 * u[1]
            return _Cell(cls, y, x, mark, core=r, lobes=[(0.0, 0.0, r * px, r * ratio * px, math.pi * u[2], amps,
                                                          phases, 0.0, 0.0)],
                         density=2.1 + 0.5 * u[9], granularity=0.25, margination=0.1,
                         cyto=[(0.0, 0.0, 1.22 * r * px, 1.22 * r * ratio * px, math.pi * u[2], (0.2, 0.3, 0.02),
                                0.1, 0.0, None)], extent=1.3 * r * px)
        if cls == PLASMA:
            r = 2.5 + 0.8 * u[0]
            ang = 2 * math.pi * u[2]
            ca, cb = (1.9 + 0.3 * u[10]) * r, 1.35 * r
            off = ca - 1.05 * r  # nucleus pushed to one end of the cell
            ny, nx = _rot(ang, off, 0.0)
            hy, hx = _rot(ang, off - 1.25 * r, 0.0)  # perinuclear hof on the cytoplasm side
            return _Cell(cls, y, x, mark, core=1.1 * r,
                         lobes=[(ny * px, nx * px, r * px, r * (0.85 + 0.15 * u[1]) * px, ang, amps, phases, 0.0,
                                 0.0)],
                         density=1.8 + 0.4 * u[9], granularity=0.2, margination=0.2,
                         clock=(6 + int(3 * u[11]), 2 * math.pi * u[11], 0.35),
                         cyto=[(0.0, 0.0, ca * px, cb * px, ang, (0.45, 0.42, 0.03), 0.12, 0.0,
                                (hy * px, hx * px, 0.7 * r * px))],
                         extent=(ca + 0.8) * px)
        if cls == NEUTROPHIL:
            n_lobes = 3 + int(2.99 * u[0])
            r_l = 1.3 + 0.35 * u[1]
            arc_r = 2.0 + 0.6 * u[10]
            step = 1.5 * r_l / arc_r  # adjacent lobes overlap: one connected nucleus
            start = 2 * math.pi * u[2]
            lobes = []
            for k in range(n_lobes):
                t = start + k * step
                lobes.append((arc_r * math.sin(t) * px, arc_r * math.cos(t) * px, r_l * px,
                              r_l * (0.75 + 0.2 * u[11]) * px, t + math.pi / 2, amps * 0.5, phases, 0.0, 0.0))
            cr = 4.6 + 0.8 * u[9]
            return _Cell(cls, y, x, mark, core=3.2, lobes=lobes, density=2.1, granularity=0.15,
                         cyto=[(0.0, 0.0, cr * px, cr * (0.85 + 0.15 * u[4]) * px, 0.0, (0.08, 0.42, 0.03), 0.2,
                                0.0, None)], extent=(cr + 0.8) * px)
        if cls == EOSINOPHIL:
            la, lb = 2.1 + 0.5 * u[0], 1.6 + 0.35 * u[1]
            ang = math.pi * u[2]
            sep = 1.65 * lb  # lobes side by side along their short axes, overlapping a little
            dy, dx = _rot(ang, 0.0, 0.5 * sep)
            lobes = [(dy * px, dx * px, la * px, lb * px, ang + 0.2 * (u[10] - 0.5), amps, phases, 0.0, 0.0),
                     (-dy * px, -dx * px, la * px, lb * px, ang - 0.2 * (u[10] - 0.5), amps, phases[::-1], 0.0,
                      0.0)]
            cr = 5.4 + 1.2 * u[9]
            return _Cell(cls, y, x, mark, core=3.6, lobes=lobes, density=1.8, granularity=0.18,
                         cyto=[(0.0, 0.0, cr * px, cr * (0.8 + 0.2 * u[4]) * px, ang, (0.05, 1.2, 0.25), 0.5,
                                0.0, None)], extent=(cr + 0.8) * px)
        # connective: spindle along the collagen fibres, slightly bent
        a = 5.5 + 4.0 * u[0]
        b = 1.1 + 0.7 * u[1]
        ang = direction + 0.5 * (u[2] - 0.5)
        return _Cell(CONNECTIVE, y, x, mark, core=math.sqrt(a * b),
                     lobes=[(0.0, 0.0, a * px, b * px, ang, amps * 0.5, phases, 0.55, 0.7 * (u[10] - 0.5))],
                     density=1.7 + 0.4 * u[9], granularity=0.15, extent=(a + 1.0) * px)

    # ---- candidates for a window ----------------------------------------------------------------------------
    def cells_for(self, y0: int, x0: int, h: int, w: int) -> list[_Cell]:
        """Surviving objects whose extent may touch the pixel window, in drawing order."""
        m = self.mpp
        reach = _MAX_EXTENT_UM + _MAX_INTERACT_UM + 1.0
        ya, xa = y0 * m - reach, x0 * m - reach
        yb, xb = (y0 + h) * m + reach, (x0 + w) * m + reach
        cands: list[_Cell] = []
        for g in self.glands_in(ya, xa, yb, xb):
            cands.extend(self._gland_cells(g))
        size = self._NUC_CELL_UM
        keys = [(cy, cx) for cy in range(math.floor(ya / size), math.floor(yb / size) + 1)
                for cx in range(math.floor(xa / size), math.floor(xb / size) + 1)]
        self._ensure_stroma(keys)
        for key in keys:
            cands.extend(self._cell_cache[key])
        nuclei = [c for c in cands if c.cls]
        others = [c for c in cands if not c.cls]
        alive = np.ones(len(nuclei), bool)
        if len(nuclei) > 1:
            pts = np.array([[c.y, c.x] for c in nuclei]) * m  # µm
            core = np.array([c.core for c in nuclei])
            marks = np.array([c.mark for c in nuclei])
            pairs = cKDTree(pts).query_pairs(r=_KAPPA * 2 * core.max(), output_type="ndarray")
            if len(pairs):
                i, j = pairs[:, 0], pairs[:, 1]
                d = np.hypot(*(pts[i] - pts[j]).T)
                clash = d < _KAPPA * (core[i] + core[j])
                loser = np.where(marks[i] > marks[j], i, j)[clash]
                alive[loser] = False
        # Keep what can reach the window.
        def reaches(c: _Cell) -> bool:
            return (c.y + c.extent >= y0 - 1 and c.y - c.extent <= y0 + h and
                    c.x + c.extent >= x0 - 1 and c.x - c.extent <= x0 + w)

        others = sorted((c for c in others if reaches(c)), key=lambda c: (c.cls, -c.mark, c.y, c.x))
        nuclei = sorted((c for c, a in zip(nuclei, alive) if a and reaches(c)), key=lambda c: (-c.mark, c.y, c.x))
        return others + nuclei

    # ---- rendering ------------------------------------------------------------------------------------------
    def render(self, y0: int, x0: int, h: int, w: int, labels: bool = True):
        """Render the pixel window ``[y0, y0 + h) × [x0, x0 + w)``.

        Returns
        -------
        concentrations : ndarray (h, w, 3) float32
            Stain densities (haematoxylin, eosin, residual), ≥ 0.
        instances : ndarray (h, w) int32 or None
            Raw instance ids (1-based draw index, later draws occlude) before per-window clean-up.
        classes_of : ndarray (n + 1,) uint8 or None
            Class of each raw id (index 0 = background).
        """
        m = self.mpp
        blur_sigma = 0.35 / m
        pad = int(4.0 * blur_sigma + 0.5) + 1
        cy0, cx0, ch, cw = y0 - pad, x0 - pad, h + 2 * pad, w + 2 * pad
        y_um = (np.arange(cy0, cy0 + ch) + 0.5) * m
        x_um = (np.arange(cx0, cx0 + cw) + 0.5) * m
        Y, X = y_um[:, None], x_um[None, :]

        tf = self.tissue_field(Y, X)
        tissue = np.clip((tf - self.threshold) / 0.004 + 0.5, 0.0, 1.0).astype(np.float32)
        fine = noise.filtered_noise(self.seed, _S_FINE, cy0, cx0, ch, cw, max(0.55, 0.3 / m))
        med = noise.filtered_noise(self.seed, _S_MED, cy0, cx0, ch, cw, 1.2 / m)

        # Stroma: eosinophilic collagen fibres (domain-warped stripes at two scales, broken by noise).
        phase = self._fibre_phase(Y, X)
        fibres = ((0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 3 +
                  0.45 * (0.5 + 0.5 * np.cos(2 * np.pi * 2.3 * phase + 1.3)) ** 4).astype(np.float32)
        fibres *= np.clip(0.65 + 0.45 * med, 0.0, 1.6)
        fd = np.clip((self._fibre_density(Y, X) - 0.3) / 0.35, 0.15, 1.0).astype(np.float32)
        conc = np.empty((ch, cw, 3), np.float32)
        conc[..., 0] = 0.11 + 0.02 * med
        conc[..., 1] = 0.3 + 0.55 * fibres * fd + 0.04 * med
        conc[..., 2] = 0.02

        # Crypts: epithelial band, lumen, basement membrane.
        glands = self.glands_in(y_um[0] - 1, x_um[0] - 1, y_um[-1] + 1, x_um[-1] + 1)
        for g in glands:
            ext = max(g.a, g.b) * (1 + g.amps.sum()) + 2.0
            ia = max(0, int((g.cy - ext) / m - 0.5) - cy0)
            ib = min(ch, int((g.cy + ext) / m + 0.5) - cy0 + 1)
            ja = max(0, int((g.cx - ext) / m - 0.5) - cx0)
            jb = min(cw, int((g.cx + ext) / m + 0.5) - cx0 + 1)
            if ia >= ib or ja >= jb:
                continue
            s = g.s(y_um[ia:ib, None], x_um[None, ja:jb])
            r_px = min(g.a, g.b) / m
            epi = np.clip((1.0 - s) * r_px + 0.5, 0.0, 1.0).astype(np.float32)
            lumen = np.clip((g.inner - s) * r_px + 0.5, 0.0, 1.0).astype(np.float32)
            bm = np.exp(-(((s - 1.0) * min(g.a, g.b)) / 0.7) ** 2).astype(np.float32)
            # Apical cytoplasm (towards the lumen) is a little more eosinophilic than the basal part.
            apical = np.clip((1.0 - s) / max(1.0 - g.inner, 1e-3), 0.0, 1.0).astype(np.float32)
            f = fine[ia:ib, ja:jb]
            md = med[ia:ib, ja:jb]
            region = conc[ia:ib, ja:jb]
            epi_c = np.stack([0.22 + 0.03 * f, 0.4 + 0.18 * apical + 0.05 * f, np.full_like(f, 0.02)], -1)
            lum_c = np.stack([0.02 + 0.01 * np.abs(md), 0.04 + 0.05 * np.clip(md, 0, None),
                              np.full_like(f, 0.005)], -1)
            inner = (1.0 - lumen)[..., None] * epi_c + lumen[..., None] * lum_c
            region[:] = (1.0 - epi)[..., None] * region + epi[..., None] * inner
            region[..., 1] += 0.3 * bm * (1.0 - lumen)

        # Blank glass outside tissue.
        conc *= tissue[..., None]

        cells = self.cells_for(cy0, cx0, ch, cw)
        inst = np.zeros((ch, cw), np.int32) if labels else None
        classes_of = [0]
        # Pass 1: cytoplasm, goblets and red cells replace what lies beneath.
        for c in cells:
            for cyto in c.cyto:
                self._draw_cyto(conc, c, cyto, cy0, cx0, fine, med)
        # Pass 2: nuclei add haematoxylin on top (overlaps look darker); later draws own the pixel.
        for c in cells:
            if not c.cls:
                continue
            classes_of.append(c.cls)
            self._draw_nucleus(conc, inst, len(classes_of) - 1, c, cy0, cx0, fine, med)

        # Optics: a slight blur, then scanner noise on the tissue only (blank glass stays exactly I0).
        for k in range(3):
            conc[..., k] = ndi.gaussian_filter(conc[..., k], blur_sigma, mode="nearest")
        sh = noise.filtered_noise(self.seed, _S_SCAN_H, cy0, cx0, ch, cw, 0.0)
        se = noise.filtered_noise(self.seed, _S_SCAN_E, cy0, cx0, ch, cw, 0.0)
        conc[..., 0] += 0.012 * sh * tissue
        conc[..., 1] += 0.015 * se * tissue
        np.maximum(conc, 0.0, out=conc)
        crop = (slice(pad, pad + h), slice(pad, pad + w))
        conc = np.ascontiguousarray(conc[crop])
        if not labels:
            return conc, None, None
        return conc, np.ascontiguousarray(inst[crop]), np.array(classes_of, np.uint8)

    @staticmethod
    def _bbox(c: _Cell, cy0: int, cx0: int, shape) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        r = c.extent + 1.0
        ia = max(0, int(math.floor(c.y - r)) - cy0)
        ib = min(shape[0], int(math.ceil(c.y + r)) - cy0 + 1)
        ja = max(0, int(math.floor(c.x - r)) - cx0)
        jb = min(shape[1], int(math.ceil(c.x + r)) - cx0 + 1)
        if ia >= ib or ja >= jb:
            return None
        yy = (np.arange(ia, ib) + cy0 - c.y)[:, None]
        xx = (np.arange(ja, jb) + cx0 - c.x)[None, :]
        return slice(ia, ib), slice(ja, jb), yy, xx

    @staticmethod
    def _ellipse_s(yy, xx, dy, dx, a, b, angle, amps=None, phases=None, taper=0.0, bend=0.0):
        """Normalised radius of a (possibly lobed, tapered, bent) ellipse and its polar angle."""
        ca, sa = math.cos(angle), math.sin(angle)
        y, x = yy - dy, xx - dx
        u = (ca * x + sa * y) / a
        v = (-sa * x + ca * y) / b
        if bend:
            v = v - bend * u * u
        if taper:
            v = v / np.maximum(1.0 - taper * np.minimum(u * u, 1.0), 0.05)
        phi = np.arctan2(v, u)
        s = np.hypot(u, v)
        if amps is not None:
            r = 1.0
            for k, (amp, ph) in enumerate(zip(amps, phases), start=2):
                r = r + amp * np.cos(k * phi + ph)
            s = s / r
        return s, phi

    def _draw_cyto(self, conc, c: _Cell, cyto, cy0, cx0, fine, med):
        box = self._bbox(c, cy0, cx0, conc.shape)
        if box is None:
            return
        si, sj, yy, xx = box
        dy, dx, a, b, angle, cc, tex_gain, pallor, hof = cyto
        s, _ = self._ellipse_s(yy, xx, dy, dx, a, b, angle)
        beta = np.clip((1.0 - s) * min(a, b) * 0.8 + 0.5, 0.0, 1.0).astype(np.float32)
        if not beta.any():
            return
        tex = fine[si, sj] if tex_gain >= 0.3 or not c.cls else med[si, sj]
        mod = np.clip(1.0 + tex_gain * tex, 0.2, 2.5)
        if pallor:
            mod = mod * (1.0 - pallor + pallor * np.clip(s, 0, 1) ** 2)
        if hof is not None:
            hs, _ = self._ellipse_s(yy, xx, hof[0], hof[1], hof[2], hof[2], 0.0)
            mod = mod * (1.0 - 0.55 * np.clip((1.0 - hs) * hof[2] * 0.5 + 0.5, 0.0, 1.0))
        region = conc[si, sj]
        for k in range(3):
            region[..., k] = (1.0 - beta) * region[..., k] + beta * (cc[k] * mod)

    def _draw_nucleus(self, conc, inst, ident, c: _Cell, cy0, cx0, fine, med):
        box = self._bbox(c, cy0, cx0, conc.shape)
        if box is None:
            return
        si, sj, yy, xx = box
        alpha = None
        s_min = None
        phi_min = None
        for (dy, dx, a, b, angle, amps, phases, taper, bend) in c.lobes:
            s, phi = self._ellipse_s(yy, xx, dy, dx, a, b, angle, amps, phases, taper, bend)
            al = np.clip((1.0 - s) * min(a, b) + 0.5, 0.0, 1.0)
            if alpha is None:
                alpha, s_min, phi_min = al, s, phi
            else:
                closer = s < s_min
                alpha = np.maximum(alpha, al)
                s_min = np.where(closer, s, s_min)
                phi_min = np.where(closer, phi, phi_min)
        if not (alpha > 0).any():
            return
        tex = fine[si, sj] + 0.6 * med[si, sj]
        d = c.density * np.clip(1.0 + c.granularity * tex, 0.3, 2.0)
        if c.margination:
            sc = np.clip(s_min, 0.0, 1.0)
            d = d * ((1.0 - c.margination) + 1.6 * c.margination * sc * sc)
        if c.clock is not None:
            k, ph, amp = c.clock
            ring = np.clip((s_min - 0.35) / 0.4, 0.0, 1.0)
            d = d * (1.0 + amp * ring * np.cos(k * phi_min + ph))
        if c.nucleolus is not None:
            ny, nx, nr, extra = c.nucleolus
            dist = np.hypot(yy - ny, xx - nx)
            d = d + extra * np.clip(nr - dist + 0.5, 0.0, 1.0)
        region = conc[si, sj]
        region[..., 0] += (alpha * d).astype(np.float32)
        region[..., 1] += (0.1 * alpha).astype(np.float32)
        if inst is not None:
            inst[si, sj][alpha >= 0.5] = ident


def clean_instances(instances: np.ndarray, classes_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make every instance one 4-connected component with consecutive ids; derive the class map.

    Occlusion can cut an earlier nucleus into pieces. The largest piece keeps the id; a smaller piece joins the
    instance it touches most (its occluder) or becomes background if it touches none.

    Parameters
    ----------
    instances : ndarray (H, W) int32
        Raw ids, 0 background.
    classes_of : ndarray (n + 1,) uint8
        Class of each raw id.

    Returns
    -------
    instances : ndarray (H, W) int32
        Ids 1..N in order of the raw ids, 0 background.
    classes : ndarray (H, W) uint8
    """
    from skimage.measure import label

    comp, ncomp = label(instances, background=0, connectivity=1, return_num=True)
    if ncomp == 0:
        return np.zeros_like(instances, dtype=np.int32), np.zeros(instances.shape, np.uint8)
    flat_c = comp.ravel()
    comp_id = np.zeros(ncomp + 1, np.int64)
    comp_id[flat_c] = instances.ravel()
    sizes = np.bincount(flat_c, minlength=ncomp + 1)
    order = np.lexsort((-sizes[1:], comp_id[1:])) + 1  # by id, largest component first
    first = np.ones(len(order), bool)
    first[1:] = comp_id[order[1:]] != comp_id[order[:-1]]
    keeper = np.zeros(ncomp + 1, bool)
    keeper[order[first]] = True
    final_comp = comp_id.copy()  # component -> final raw id
    fragments = np.flatnonzero(~keeper[1:]) + 1
    if len(fragments):
        slices = ndi.find_objects(comp)
        struct = ndi.generate_binary_structure(2, 1)
        for f in fragments:
            sl = slices[f - 1]
            grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
            sub = comp[grown]
            mask = sub == f
            ring = ndi.binary_dilation(mask, struct) & ~mask
            neigh = sub[ring]
            neigh = neigh[(neigh > 0) & keeper[neigh]]
            if len(neigh):
                final_comp[f] = comp_id[np.bincount(neigh).argmax()]
            else:
                final_comp[f] = 0
    raw = final_comp[comp]
    present = np.unique(raw)
    present = present[present > 0]
    lut = np.zeros(int(comp_id.max()) + 1, np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    out = lut[raw]
    cls_lut = np.zeros(len(lut), np.uint8)
    cls_lut[present] = classes_of[present]
    return out, cls_lut[raw]
