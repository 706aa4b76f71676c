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
from pathgen.errors import PathgenError

CLASS_NAMES = ("background", "neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")
NEUTROPHIL, EPITHELIAL, LYMPHOCYTE, PLASMA, EOSINOPHIL, CONNECTIVE = 1, 2, 3, 4, 5, 6

# Noise streams: one per independent random quantity.
_S_TISSUE, _S_GLANDFIELD, _S_INFLAM, _S_FIBRE_DENS, _S_WARP, _S_FINE = range(1, 7)
_S_GLAND, _S_GLAND_NUC, _S_NUC, _S_RBC, _S_ANGLE, _S_ACUTE, _S_LOOSE, _S_BREAKS, _S_CLEFTS = range(20, 29)

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
        Side of the grid cells that each hold at most one crypt (odd rows shifted by half a cell, like bricks,
        so crypts do not line up in columns).
    gland_probability : float
        Mean share of gland cells holding a crypt; modulated by a gland field.
    stroma_density : float
        Mean nuclei density in lamina propria before inflammation modulation.
    aggregate_quantile : float
        Inflammation-field quantile above which lymphoid aggregates form.
    ground_h, ground_e : float
        Multipliers of the haematoxylin and eosin densities of everything but nuclei (stroma, cytoplasm, lumen
        content). 1 is the generator's pale colon mucosa; real slides often show stroma and epithelium two to
        five times denser (deep red collagen, purple squamous cytoplasm), which a nucleus model must not read
        as nuclei.
    stroma_clefts : float
        0..1: how far clear clefts open between collagen bundles (dermis-like stroma: dark bundles on white).
    """

    tissue_fraction: float = 0.93
    tissue_scale_um: float = 600.0
    tissue_threshold: float | None = None
    extent_um: tuple[float, float] | None = None
    gland_cell_um: float = 100.0
    gland_probability: float = 0.75
    stroma_density: float = 4.5
    aggregate_quantile: float = 0.9
    ground_h: float = 1.0
    ground_e: float = 1.0
    stroma_clefts: float = 0.0

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
        """Boundary radius factor ``1 + Σ amp_k cos(k φ + phase_k)`` at polar angles ``phi``."""
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
        rho = np.hypot(u, v)
        # cos(kφ + p) from powers of (u + iv)/ρ: same as radius_factor(arctan2(v, u)), without the arctangent.
        inv = 1.0 / np.maximum(rho, 1e-12)
        c1, s1 = u * inv, v * inv
        c2, s2 = c1 * c1 - s1 * s1, 2.0 * c1 * s1
        c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
        c4, s4 = c2 * c2 - s2 * s2, 2.0 * c2 * s2
        r = 1.0
        for amp, ph, ck, sk in zip(self.amps, self.phases, (c2, c3, c4), (s2, s3, s4)):
            r = r + amp * (ck * math.cos(ph) - sk * math.sin(ph))
        return rho / r


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


def _clip(x, lo, hi):
    """``np.clip`` without its Python overhead (hot path: thousands of small arrays per tile)."""
    return np.minimum(np.maximum(x, lo), hi)


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
            raise PathgenError(f"mpp must be positive, got {mpp}")
        self.seed = int(seed)
        self.mpp = float(mpp)
        self.params = params or TissueParams()
        self.threshold = self.params.threshold()
        self._gland_cache: dict[tuple[int, int], _Gland | None] = {}
        self._cell_cache: dict[tuple[int, int], list[_Cell]] = {}
        self._gland_cell_cache: dict[tuple[int, int], list[_Cell]] = {}
        self._rbc_cache: dict[tuple[int, int], list[_Cell]] = {}
        self.fibre_angle = float(noise.hash_uniform(self.seed, _S_ANGLE, 0)) * math.pi
        self._infl_q = noise.fbm_quantile(self.params.aggregate_quantile, octaves=3)
        # Poisson CDF of the candidate count per nucleus cell (pmf by recurrence p_k = p_{k-1}·λ/k).
        lam = self._LAMBDA_MAX * self._NUC_CELL_UM ** 2 / 1000.0
        k = np.arange(1, int(lam + 12 * math.sqrt(lam) + 10))
        pmf = math.exp(-lam) * np.cumprod(np.r_[1.0, lam / k])
        self._poisson_cdf = np.cumsum(pmf)

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

    def tissue_field_lipschitz(self) -> float:
        """An upper bound on the tissue field's gradient magnitude (per µm).

        Value noise blended by the quintic smootherstep changes by at most 15/8 per cell along each axis; the
        fractal sum of 4 octaves (gain 1/2, cells halving) has the bound ``4 · 15/8 · √2 / cell / Σ gain^k``; the
        glass-margin fade adds ``1.2 / margin``.
        """
        octaves = 4
        weights = sum(0.5 ** k for k in range(octaves))
        bound = octaves * 1.875 * math.sqrt(2.0) / self.params.tissue_scale_um / weights
        if self.params.extent_um is not None:
            bound += 1.2 / (0.06 * min(self.params.extent_um))
        return bound

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
        return (c * y_um - s * x_um) / 7.0 + 8.0 * warp

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
        ccy, ccx = (gy + 0.5) * cell, (gx + 0.5 + 0.5 * (gy & 1)) * cell
        p = np.clip(self.params.gland_probability + 2.0 * (self._gland_field(ccy, ccx) - 0.5), 0.0, 0.97)
        present = (uu[:, 0] < p) & (self.tissue_field(ccy, ccx) > self.threshold + 0.01)
        for i, key in enumerate(todo):
            g = None
            if present[i]:
                u = uu[i]
                atypia = float(u[1] ** 2.5)
                amps = np.array([0.07 * u[2], 0.05 * u[3], 0.03 * u[4]]) * (1 + 1.5 * atypia)
                phases = 2 * math.pi * u[5:8]
                r_out = 24.0 + 14.0 * u[8] + 6.0 * atypia
                ratio = 0.45 + 0.55 * u[9] ** 0.7
                ext = r_out * (1 + amps.sum()) + 3.0
                if ext > cell / 2:  # shrink to stay inside the cell: glands never overlap
                    r_out *= (cell / 2) / ext
                    ext = cell / 2
                free = cell / 2 - ext
                thickness = 19.0 + 8.0 * u[10] - 4.0 * atypia
                inner = max(0.06, 1.0 - thickness / (r_out * ratio) * (0.85 + 0.3 * u[11]))
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
                for gx in range(math.floor(x0_um / cell - 0.5 * (gy & 1)),
                                math.floor(x1_um / cell - 0.5 * (gy & 1)) + 1)]
        self._ensure_glands(keys)
        return [g for g in (self._gland_cache[k] for k in keys) if g is not None]

    def in_gland(self, y_um: np.ndarray, x_um: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points lie inside a crypt's outer boundary scaled by ``1 + margin``."""
        cell = self.params.gland_cell_um
        y_um, x_um = np.asarray(y_um, float), np.asarray(x_um, float)
        out = np.zeros(y_um.shape, bool)
        gy = np.floor(y_um / cell).astype(np.int64)
        gx = np.floor(x_um / cell - 0.5 * (gy & 1)).astype(np.int64)
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
        spacing = 4.4 - 1.0 * g.atypia
        # Nuclei centres lie ~6 µm inside the outer boundary, on a shorter ring.
        ring = perimeter * max(0.3, 1.0 - 6.0 / math.sqrt(a * b))
        n = max(6, int(ring / spacing))
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
        half_short = 1.8 + 0.6 * u[:, 2] + 0.7 * at
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
        px = 1.0 / self.mpp
        # Per-nucleus values as plain Python floats (the loop below only packs them).
        amps = (np.array([0.03, 0.04, 0.02]) * u[:, 5:8] * (1 + 2 * at)).tolist()
        phases = (2 * math.pi * u[:, 8:11]).tolist()
        bend = (0.3 * (u[:, 11] - 0.5)).tolist()
        dens = (1.45 - 0.4 * at + 0.2 * u[:, 9]).tolist()
        has_nucleolus = (u[:, 12] < 0.25 + 0.6 * at).tolist()
        nucleolus_u = ((u[:, 13] - 0.5) * half_long * px).tolist()
        ang_l, hl_l, hs_l = normal_angle.tolist(), half_long.tolist(), half_short.tolist()
        ypx = (cy * px - 0.5).tolist()
        xpx = (cx * px - 0.5).tolist()
        marks_l = marks.tolist()
        nucleolus_r = (0.45 + 0.35 * at) * px
        cells = []
        for i in range(n):
            lobes = [(0.0, 0.0, hl_l[i] * px, hs_l[i] * px, ang_l[i], amps[i], phases[i], 0.0, bend[i])]
            nucleolus = None
            if has_nucleolus[i]:
                ny, nx = _rot(ang_l[i], nucleolus_u[i], 0.0)
                nucleolus = (ny, nx, nucleolus_r, 0.5)
            cells.append(_Cell(EPITHELIAL, ypx[i], xpx[i], marks_l[i], core=0.8 * hs_l[i], lobes=lobes,
                               density=dens[i], granularity=0.22 + 0.1 * at, margination=0.15 + 0.45 * at,
                               nucleolus=nucleolus, extent=(hl_l[i] + 1.5) * px))
        # Goblet vacuoles sit between the nuclei and the lumen; crowded atypical glands lose them.
        gob = rng.random((n, 6))
        sel = np.flatnonzero(gob[:, 0] <= 0.55 * (1.0 - at) ** 2)
        ra = 4.0 + 2.0 * gob[sel, 1]
        rb = 2.6 + 1.0 * gob[sel, 2]
        d = np.minimum(depth[sel] + half_long[sel] + ra * 0.8, band[sel] - ra * 0.7)
        gu, gv = bu[sel] - nu[sel] * d, bv[sel] - nv[sel] * d
        gx_ = (g.cx + ca * gu - sa * gv) * px - 0.5
        gy_ = (g.cy + sa * gu + ca * gv) * px - 0.5
        goblets = []
        for k, i in enumerate(sel.tolist()):
            goblets.append(_Cell(0, float(gy_[k]), float(gx_[k]), float(gob[i, 3]), core=0.0,
                                 cyto=[(0.0, 0.0, float(ra[k]) * px, float(rb[k]) * px, ang_l[i], (0.16, 0.06, 0.01),
                                        0.35, 0.0, None)], extent=(float(ra[k]) + 1) * px))
        return cells + goblets

    # ---- stroma cells ---------------------------------------------------------------------------------------
    _NUC_CELL_UM = 40.0
    _LAMBDA_MAX = 22.0  # per 1000 µm²; the modulated density is capped here (dense aggregates saturate)

    def _ensure_stroma(self, keys) -> None:
        """Generate (and cache) the stroma cells and red blood cells owned by nucleus grid cells ``keys``.

        Candidates form a Poisson process of intensity ``_LAMBDA_MAX`` per cell, thinned to the local density
        (tissue, outside crypts, inflammation, fibrosis, aggregates); all numbers are hashed from the cell and
        candidate index, so a cell's content never depends on which window asked for it.
        """
        if len(self._cell_cache) > 50000:  # bounded memory on huge slides; entries are cheap to rebuild
            self._cell_cache.clear()
            self._gland_cell_cache.clear()
            self._rbc_cache.clear()
        todo = [k for k in keys if k not in self._cell_cache]
        if not todo:
            return
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
            # Thin first on the cheap inflammation-driven density, then on tissue and crypts; the other fields
            # are only evaluated for the survivors.
            infl = self._inflammation(ys, xs)
            aggregate = np.clip((infl - self._infl_q) / 0.04, 0.0, 1.0)
            dens = self.params.stroma_density * (0.45 + 2.2 * np.clip(infl - 0.3, 0.0, None) / 0.4)
            dens = dens + 14.0 * aggregate
            keep = accept_u * self._LAMBDA_MAX < dens
            keep[keep] = self.tissue_field(ys[keep], xs[keep]) > self.threshold
            keep[keep] = ~self.in_gland(ys[keep], xs[keep], margin=0.06)
            idx = np.flatnonzero(keep)
            ys, xs, infl, aggregate = ys[idx], xs[idx], infl[idx], aggregate[idx]
            fib = self._fibre_density(ys, xs)
            acute = noise.fbm(self.seed, _S_ACUTE, ys, xs, 120.0, octaves=2)
            w = np.stack([
                0.05 + 0.25 * np.clip(acute - 0.6, 0, None) / 0.15,  # neutrophil
                np.zeros(len(idx)),  # epithelial: only in crypts
                0.30 + 0.5 * np.clip(infl - 0.5, 0, None) / 0.2 + 12.0 * aggregate,  # lymphocyte
                0.22 + 0.15 * np.clip(infl - 0.45, 0, None) / 0.2,  # plasma
                0.045 + 0.12 * np.clip(acute - 0.55, 0, None) / 0.2,  # eosinophil
                0.22 + 0.9 * np.clip(fib - 0.45, 0, None) / 0.25,  # connective
            ], axis=1)
            cum = np.cumsum(w, axis=1)
            types = 1 + np.sum(type_u[idx, None] * cum[:, -1:] > cum, axis=1)
            # Long fibroblasts keep clear of crypts (their centre test above is not enough).
            near = types == CONNECTIVE
            near[near] = self.in_gland(ys[near], xs[near], margin=0.3)
            if near.any():
                idx, ys, xs, types = idx[~near], ys[~near], xs[~near], types[~near]
            # Fibroblasts lie along the local collagen direction.
            direction = np.zeros(len(idx))
            spindle = types == CONNECTIVE
            direction[spindle] = self.fibre_direction(ys[spindle], xs[spindle])
            for k, (i, typ, yk, xk, dk) in enumerate(zip(idx.tolist(), types.tolist(), ys.tolist(), xs.tolist(),
                                                         direction.tolist())):
                per_cell[owner[i]].append(self._make_stroma_cell(typ, yk, xk, float(marks[i]), uni[i], dk))
        for key, cells in zip(todo, per_cell):
            self._cell_cache[key] = cells

    _RBC_CHAIN_UM = 8 * 6.4 + 5.0  # farthest a red cell of a chain lies from its owning cell (+ its radius)

    def _ensure_red_cells(self, keys) -> None:
        """Red blood cells: short bent chains in capillaries of some cells, drawn beneath the nuclei. A chain
        starts in its owning cell and may run up to ``_RBC_CHAIN_UM`` beyond it."""
        todo = [k for k in keys if k not in self._rbc_cache]
        if not todo:
            return
        cy = np.array([k[0] for k in todo], np.int64)
        cx = np.array([k[1] for k in todo], np.int64)
        per_cell: list[list[_Cell]] = [[] for _ in todo]
        self._add_red_cells(cy, cx, per_cell)
        for key, cells in zip(todo, per_cell):
            self._rbc_cache[key] = cells

    def _add_red_cells(self, cy: np.ndarray, cx: np.ndarray, per_cell: list[list[_Cell]]) -> None:
        size = self._NUC_CELL_UM
        n_max = 8
        ru = self._uniforms(_S_RBC, cy, cx, 5 + 4 * n_max)
        chains = np.flatnonzero(ru[:, 0] < 0.06)
        if not len(chains):
            return
        px = 1.0 / self.mpp
        u = ru[chains]
        v = u[:, 5:].reshape(len(chains), n_max, 4)
        steps = 5.2 + 1.2 * v[..., 0]
        angs = 2 * math.pi * u[:, 2:3] + np.cumsum((v[..., 1] - 0.5) * 0.7, axis=1)
        py = (cy[chains] + u[:, 3])[:, None] * size + np.cumsum(steps * np.sin(angs), axis=1)
        pxs = (cx[chains] + u[:, 4])[:, None] * size + np.cumsum(steps * np.cos(angs), axis=1)
        length = 3 + (6 * u[:, 1]).astype(int)
        use = np.arange(n_max)[None, :] < length[:, None]
        ok = np.zeros_like(use)
        ok[use] = (self.tissue_field(py[use], pxs[use]) > self.threshold) & ~self.in_gland(py[use], pxs[use],
                                                                                             margin=0.1)
        for k, j in zip(*np.nonzero(ok)):
            r = (3.3 + 0.5 * v[k, j, 2]) * px
            per_cell[chains[k]].append(_Cell(0, py[k, j] * px - 0.5, pxs[k, j] * px - 0.5, float(v[k, j, 3]),
                                             core=0.0, cyto=[(0.0, 0.0, r, r * (0.82 + 0.18 * v[k, j, 2]),
                                                              float(angs[k, j]), (0.02, 1.1, 0.55), 0.05, 0.35,
                                                              None)], extent=r + px))

    def _make_stroma_cell(self, cls: int, y_um: float, x_um: float, mark: float, u: np.ndarray,
                          direction: float) -> _Cell:
        px = 1.0 / self.mpp
        y, x = y_um * px - 0.5, x_um * px - 0.5
        amps = (0.04 * u[3], 0.03 * u[4], 0.02 * u[5])
        half_amps = tuple(0.5 * v for v in amps)
        u = u.tolist()
        phases = (2 * math.pi * u[6], 2 * math.pi * u[7], 2 * math.pi * u[8])
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
                         cyto=[(0.0, 0.0, ca * px, cb * px, ang, (0.5, 0.6, 0.04), 0.12, 0.0,
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
                              r_l * (0.75 + 0.2 * u[11]) * px, t + math.pi / 2, half_amps, phases, 0.0, 0.0))
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
                         cyto=[(0.0, 0.0, cr * px, cr * (0.8 + 0.2 * u[4]) * px, ang, (0.04, 0.7, 0.35), 0.35,
                                0.0, None)], extent=(cr + 0.8) * px)
        # connective: spindle along the collagen fibres, slightly bent
        a = 5.5 + 4.0 * u[0]
        b = 1.1 + 0.7 * u[1]
        ang = direction + 0.5 * (u[2] - 0.5)
        return _Cell(CONNECTIVE, y, x, mark, core=math.sqrt(a * b),
                     lobes=[(0.0, 0.0, a * px, b * px, ang, half_amps, phases, 0.55, 0.7 * (u[10] - 0.5))],
                     density=1.7 + 0.4 * u[9], granularity=0.15, extent=(a + 1.0) * px)

    # ---- candidates for a window ----------------------------------------------------------------------------
    def cells_for(self, y0: int, x0: int, h: int, w: int) -> list[_Cell]:
        """Surviving objects whose extent may touch the pixel window, in drawing order."""
        m = self.mpp
        reach = _MAX_EXTENT_UM + _MAX_INTERACT_UM + 1.0
        ya, xa = y0 * m - reach, x0 * m - reach
        yb, xb = (y0 + h) * m + reach, (x0 + w) * m + reach
        cands: list[_Cell] = []
        glands = self.glands_in(ya, xa, yb, xb)
        new = [g for g in glands if g.key not in self._gland_cell_cache]
        if new:
            made = [self._gland_cells(g) for g in new]
            flat = [c for cells in made for c in cells]
            # Crypts cut by the tissue edge lose what lies outside the tissue.
            inside = self.tissue_field(np.array([c.y for c in flat]) * m, np.array([c.x for c in flat]) * m)
            inside = iter((inside > self.threshold).tolist())
            for g, cells in zip(new, made):
                self._gland_cell_cache[g.key] = [c for c in cells if next(inside)]
        for g in glands:
            cands.extend(self._gland_cell_cache[g.key])
        size = self._NUC_CELL_UM
        keys = [(cy, cx) for cy in range(math.floor(ya / size), math.floor(yb / size) + 1)
                for cx in range(math.floor(xa / size), math.floor(xb / size) + 1)]
        self._ensure_stroma(keys)
        for key in keys:
            cands.extend(self._cell_cache[key])
        far = self._RBC_CHAIN_UM
        rbc_keys = [(cy, cx) for cy in range(math.floor((ya - far) / size), math.floor((yb + far) / size) + 1)
                    for cx in range(math.floor((xa - far) / size), math.floor((xb + far) / size) + 1)]
        self._ensure_red_cells(rbc_keys)
        for key in rbc_keys:
            cands.extend(self._rbc_cache[key])
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
        blur_sigma = 0.3 / m  # optical point-spread (µm), roughly a 20x/0.75 NA objective
        pad = int(4.0 * blur_sigma + 0.5) + 1
        cy0, cx0, ch, cw = y0 - pad, x0 - pad, h + 2 * pad, w + 2 * pad
        y_um = (np.arange(cy0, cy0 + ch) + 0.5) * m
        x_um = (np.arange(cx0, cx0 + cw) + 0.5) * m
        # Smooth fields on a coarse grid (every ~2 µm), interpolated; texture noise per pixel.
        step = max(1, int(round(2.0 / m)))

        def grid(fn):
            return noise.grid_sample(fn, cy0, cx0, ch, cw, m, step)

        tf = grid(self.tissue_field)
        tissue = np.clip((tf - self.threshold) / 0.004 + 0.5, 0.0, 1.0).astype(np.float32)
        fine, med, scan_h, scan_e = noise.filtered_noises(self.seed, _S_FINE, cy0, cx0, ch, cw,
                                                          (max(0.55, 0.3 / m), 1.2 / m, 0.0, 0.0))

        # Stroma: eosinophilic collagen fibres (domain-warped stripes at two scales, broken by noise).
        phase = grid(self._fibre_phase)
        f1 = (0.5 + 0.5 * np.cos(2 * np.pi * phase)).astype(np.float32)
        f2 = (0.5 + 0.5 * np.cos(2 * np.pi * 2.3 * phase + 1.3)).astype(np.float32)
        f1 = f1 * f1 * f1
        f2 = f2 * f2 * f2
        fibres = f1 + 0.5 * f2 * f2
        # Bundles fade in and out along their length instead of running as endless parallel stripes.
        breaks = grid(lambda y, x: noise.fbm(self.seed, _S_BREAKS, y, x, 14.0, octaves=2))
        fibres *= np.clip(2.2 * breaks - 0.55, 0.0, 1.2).astype(np.float32)
        fd = np.clip((grid(self._fibre_density) - 0.4) / 0.3, 0.1, 1.0).astype(np.float32)
        # Loose areoles and denser patches of ground substance.
        loose = np.clip((grid(lambda y, x: noise.fbm(self.seed, _S_LOOSE, y, x, 16.0, octaves=2)) - 0.3) / 0.4,
                        0.0, 1.0)
        conc = np.empty((ch, cw, 3), np.float32)
        conc[..., 0] = 0.06 + 0.05 * loose + 0.015 * med
        conc[..., 1] = 0.1 + 0.25 * loose + 0.55 * fibres * fd + 0.04 * med
        conc[..., 2] = 0.02
        if self.params.stroma_clefts > 0:
            # clear spaces between bundles: the troughs of the fibre stripes, opened where a noise field allows
            trough = (0.5 - 0.5 * np.cos(2 * np.pi * phase)).astype(np.float32) ** 6
            opened = np.clip(2.5 * grid(lambda y, x: noise.fbm(self.seed, _S_CLEFTS, y, x, 20.0, octaves=2)) - 0.9,
                             0.0, 1.0).astype(np.float32)
            conc[..., :2] *= (1.0 - self.params.stroma_clefts * np.clip(2.0 * trough * opened, 0.0, 1.0))[..., None]

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
        if self.params.ground_h != 1.0 or self.params.ground_e != 1.0:
            conc[..., 0] *= self.params.ground_h
            conc[..., 1] *= self.params.ground_e
        # Pass 2: nuclei add haematoxylin on top (overlaps look darker); later draws own the pixel.
        nuclei = [c for c in cells if c.cls]
        classes_of.extend(c.cls for c in nuclei)
        _draw_nuclei(conc, inst, nuclei, cy0, cx0, fine, med)

        # Optics: a slight blur, then scanner noise on the tissue only (blank glass stays exactly I0).
        for k in range(3):
            conc[..., k] = ndi.gaussian_filter(conc[..., k], blur_sigma, mode="nearest")
        conc[..., 0] += 0.012 * scan_h * tissue
        conc[..., 1] += 0.015 * scan_e * tissue
        np.maximum(conc, 0.0, out=conc)
        crop = (slice(pad, pad + h), slice(pad, pad + w))
        conc = np.ascontiguousarray(conc[crop])
        if not labels:
            return conc, None, None
        return conc, np.ascontiguousarray(inst[crop]), np.array(classes_of, np.uint8)

    @staticmethod
    def _bbox(y: float, x: float, r: float, cy0: int, cx0: int, shape):
        """Canvas slices and centred pixel offsets of the box of radius ``r`` px around ``(y, x)``, or None."""
        ia = max(0, int(math.floor(y - r)) - cy0)
        ib = min(shape[0], int(math.ceil(y + r)) - cy0 + 1)
        ja = max(0, int(math.floor(x - r)) - cx0)
        jb = min(shape[1], int(math.ceil(x + r)) - cx0 + 1)
        if ia >= ib or ja >= jb:
            return None
        yy = (np.arange(ia, ib) + cy0 - y)[:, None]
        xx = (np.arange(ja, jb) + cx0 - x)[None, :]
        return slice(ia, ib), slice(ja, jb), yy, xx

    @staticmethod
    def _ellipse_s(yy, xx, dy, dx, a, b, angle, amps=None, phases=None, taper=0.0, bend=0.0, want_uv=False):
        """Normalised radius ``s`` of a (possibly lobed, tapered, bent) ellipse: < 1 inside, 0 at the centre.

        The boundary is ``s = 1`` with radius factor ``1 + Σ amp_k cos(k φ + phase_k)`` (k = 2, 3, 4), the
        harmonics evaluated from powers of ``(u + iv) / |u + iv|`` rather than an arctangent.
        """
        ca, sa = math.cos(angle), math.sin(angle)
        y, x = yy - dy, xx - dx
        u = (ca * x + sa * y) * (1.0 / a)
        v = (-sa * x + ca * y) * (1.0 / b)
        if bend:
            v = v - bend * u * u
        if taper:
            v = v / np.maximum(1.0 - taper * np.minimum(u * u, 1.0), 0.05)
        s = np.hypot(u, v)
        if amps is not None:
            inv = 1.0 / np.maximum(s, 1e-9)
            c1, s1 = u * inv, v * inv
            c2, s2 = c1 * c1 - s1 * s1, 2.0 * c1 * s1
            c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
            c4, s4 = c2 * c2 - s2 * s2, 2.0 * c2 * s2
            r = 1.0
            for amp, ph, ck, sk in zip(amps, phases, (c2, c3, c4), (s2, s3, s4)):
                r = r + amp * (ck * math.cos(ph) - sk * math.sin(ph))
            s = s / r
        if want_uv:
            return s, u, v
        return s

    def _draw_cyto(self, conc, c: _Cell, cyto, cy0, cx0, fine, med):
        dy, dx, a, b, angle, cc, tex_gain, pallor, hof = cyto
        box = self._bbox(c.y + dy, c.x + dx, max(a, b) + 1.5, cy0, cx0, conc.shape)
        if box is None:
            return
        si, sj, yy, xx = box
        s = self._ellipse_s(yy, xx, 0.0, 0.0, a, b, angle)
        beta = _clip((1.0 - s) * (0.8 * min(a, b)) + 0.5, 0.0, 1.0)
        if not beta.any():
            return
        tex = fine[si, sj] if tex_gain >= 0.3 or not c.cls else med[si, sj]
        mod = _clip(1.0 + tex_gain * tex, 0.2, 2.5)
        if pallor:
            mod = mod * (1.0 - pallor + pallor * np.minimum(s, 1.0) ** 2)
        if hof is not None:
            hs = self._ellipse_s(yy, xx, hof[0] - dy, hof[1] - dx, hof[2], hof[2], 0.0)
            mod = mod * (1.0 - 0.3 * _clip((1.0 - hs) * hof[2] * 0.5 + 0.5, 0.0, 1.0))
        region = conc[si, sj]
        keep = 1.0 - beta
        for k in range(3):
            region[..., k] = keep * region[..., k] + beta * (cc[k] * mod)


def _draw_nuclei(conc: np.ndarray, inst: np.ndarray | None, nuclei: list[_Cell], cy0: int, cx0: int,
                 fine: np.ndarray, med: np.ndarray) -> None:
    """Draw all nuclei at once: add haematoxylin (and a little eosin) to ``conc`` and, if given, write raw ids
    ``1..len(nuclei)`` into ``inst`` (a later nucleus owns the pixels it shares with an earlier one).

    Every lobe is a primitive with its own box; the pixels of all boxes are enumerated in flat arrays, shapes
    are evaluated in one pass, lobes of one nucleus are merged (max coverage, min normalised radius), and the
    per-pixel sums are scattered with ``bincount``. Per-pixel results depend only on the nuclei covering the
    pixel and their order, so adjacent windows agree.
    """
    if not nuclei:
        return
    ch, cw = conc.shape[:2]
    rows = []  # one per lobe: obj, y, x, a, b, cos, sin, amp2..4, ph2..4, taper, bend
    for o, c in enumerate(nuclei):
        for (dy, dx, a, b, angle, amps, phases, taper, bend) in c.lobes:
            rows.append((o, c.y + dy, c.x + dx, a, b, math.cos(angle), math.sin(angle), *amps, *phases, taper,
                         bend))
    P = np.array(rows, np.float64)
    obj = P[:, 0].astype(np.int64)
    ly, lx, a, b, ca, sa = P[:, 1], P[:, 2], P[:, 3], P[:, 4], P[:, 5], P[:, 6]
    amps, phases, taper, bend = P[:, 7:10], P[:, 10:13], P[:, 13], P[:, 14]
    # Tight axis-aligned box of each rotated lobe (bent lobes widened by the bend).
    grow = 1.0 + amps.sum(1)
    b_eff = b * (1.0 + np.abs(bend))
    reach_x = np.sqrt((a * ca) ** 2 + (b_eff * sa) ** 2) * grow + 1.5
    reach_y = np.sqrt((a * sa) ** 2 + (b_eff * ca) ** 2) * grow + 1.5
    ia = np.maximum(np.floor(ly - reach_y).astype(np.int64) - cy0, 0)
    ib = np.minimum(np.ceil(ly + reach_y).astype(np.int64) - cy0 + 1, ch)
    ja = np.maximum(np.floor(lx - reach_x).astype(np.int64) - cx0, 0)
    jb = np.minimum(np.ceil(lx + reach_x).astype(np.int64) - cx0 + 1, cw)
    hh = np.maximum(ib - ia, 0)
    ww = np.maximum(jb - ja, 0)
    counts = hh * ww
    total = int(counts.sum())
    if total == 0:
        return
    prim = np.repeat(np.arange(len(P)), counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    wp = ww[prim]
    py = ia[prim] + local // wp
    px = ja[prim] + local % wp
    # Per-pixel shape evaluation in float32 (the flat arrays hold every pixel of every lobe box).
    f32 = np.float32
    y = ((py + cy0) - ly[prim]).astype(f32)
    x = ((px + cx0) - lx[prim]).astype(f32)
    cap, sap = ca.astype(f32)[prim], sa.astype(f32)[prim]
    u = (cap * x + sap * y) * (1.0 / a).astype(f32)[prim]
    v = (cap * y - sap * x) * (1.0 / b).astype(f32)[prim]
    if np.any(bend):
        v -= bend.astype(f32)[prim] * u * u
    if np.any(taper):
        v /= np.maximum(f32(1.0) - taper.astype(f32)[prim] * np.minimum(u * u, f32(1.0)), f32(0.05))
    rho = np.hypot(u, v)
    inv = f32(1.0) / np.maximum(rho, f32(1e-9))
    c1, s1 = u * inv, v * inv
    c2, s2 = c1 * c1 - s1 * s1, f32(2.0) * c1 * s1
    c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
    c4, s4 = c2 * c2 - s2 * s2, f32(2.0) * c2 * s2
    # amp_k cos(kφ + p_k) = (amp_k cos p_k) cos kφ - (amp_k sin p_k) sin kφ
    ac = (amps * np.cos(phases)).astype(f32)
    as_ = (amps * np.sin(phases)).astype(f32)
    r = f32(1.0) + ac[prim, 0] * c2 - as_[prim, 0] * s2
    r += ac[prim, 1] * c3 - as_[prim, 1] * s3
    r += ac[prim, 2] * c4 - as_[prim, 2] * s4
    s_norm = rho / r
    alpha = np.minimum(np.maximum((f32(1.0) - s_norm) * np.minimum(a, b).astype(f32)[prim] + f32(0.5), f32(0.0)),
                       f32(1.0))
    keep = alpha > 0
    pix = (py * cw + px)[keep]
    o = obj[prim[keep]]
    alpha, s_norm, u, v = alpha[keep], s_norm[keep], u[keep], v[keep]
    if not len(pix):
        return
    single = np.bincount(obj, minlength=len(nuclei)) == 1
    if not single.all():
        # Merge the lobes of multi-lobed nuclei: one entry per (nucleus, pixel).
        key = o * (ch * cw) + pix
        order = np.argsort(key, kind="stable")
        key, alpha, s_norm, u, v = key[order], alpha[order], s_norm[order], u[order], v[order]
        start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        alpha = np.maximum.reduceat(alpha, start)
        s_norm = np.minimum.reduceat(s_norm, start)
        u, v = u[start], v[start]
        key = key[start]
        o = key // (ch * cw)
        pix = key % (ch * cw)
    # Chromatin: granular texture, margination (pale centre, dark rim), plasma clock face, nucleoli.
    dens = np.array([c.density for c in nuclei])[o]
    gran = np.array([c.granularity for c in nuclei])[o]
    marg = np.array([c.margination for c in nuclei])[o]
    tex = fine.ravel()[pix] + 0.6 * med.ravel()[pix]
    d = dens * np.minimum(np.maximum(1.0 + gran * tex, 0.3), 2.0)
    sc = np.minimum(s_norm, 1.0)
    d *= (1.0 - marg) + 1.6 * marg * sc * sc
    clock = np.array([c.clock if c.clock is not None else (0, 0.0, 0.0) for c in nuclei], np.float64)
    amp = clock[o, 2]
    has_clock = amp > 0
    if has_clock.any():
        ring = np.minimum(np.maximum((s_norm[has_clock] - 0.35) / 0.4, 0.0), 1.0)
        ang = np.arctan2(v[has_clock], u[has_clock])
        d[has_clock] *= 1.0 + amp[has_clock] * ring * np.cos(clock[o[has_clock], 0] * ang + clock[o[has_clock], 1])
    nuc = np.array([(c.y + c.nucleolus[0], c.x + c.nucleolus[1], c.nucleolus[2], c.nucleolus[3])
                    if c.nucleolus is not None else (0.0, 0.0, 0.0, 0.0) for c in nuclei])
    extra = nuc[o, 3]
    has_nuc = extra > 0
    if has_nuc.any():
        gy = pix[has_nuc] // cw + cy0
        gx = pix[has_nuc] % cw + cx0
        dist = np.hypot(gy - nuc[o[has_nuc], 0], gx - nuc[o[has_nuc], 1])
        d[has_nuc] += extra[has_nuc] * np.minimum(np.maximum(nuc[o[has_nuc], 2] - dist + 0.5, 0.0), 1.0)
    n_pix = ch * cw
    conc[..., 0] += np.bincount(pix, weights=alpha * d, minlength=n_pix).reshape(ch, cw).astype(np.float32)
    conc[..., 1] += np.bincount(pix, weights=0.1 * alpha, minlength=n_pix).reshape(ch, cw).astype(np.float32)
    if inst is not None:
        owned = alpha >= 0.5
        flat = inst.reshape(-1)
        np.maximum.at(flat, pix[owned], (o[owned] + 1).astype(np.int32))


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
