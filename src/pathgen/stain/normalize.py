"""`StainNormalizer`: fit a target and a source once, transform batches of tiles in torch (CPU or CUDA).

Model (METHODS.md §1.1): ``OD = C V``. The source's stain matrix ``V_src`` and concentration percentiles
``p_src`` are fitted once, from pixels pooled over a whole image or slide (:meth:`StainNormalizer.fit_source`,
:meth:`StainNormalizer.fit_source_pixels`), so every tile of a slide is transformed with the same numbers and
the stitched result has no seams. Per tile:

1. ``OD = max(ln I0_src - ln max(I, 1), 0)`` through a 256-entry lookup table per channel (brightness
   standardisation ``rgb_p90`` is folded into the same table);
2. concentrations ``C`` by the exact two-stain non-negative lasso of :mod:`pathgen.stain.concentrations`
   (``lasso_lambda``, 0.01 by default; 0 gives exact non-negative least squares) — never negative, never NaN;
3. with ``rescale`` each stain is scaled by ``p_tgt / p_src`` (the ``percentile``-th, 99th by default, of the
   concentrations over tissue pixels; the SOURCE's percentile is the slide-level one, not the tile's, unless
   per-tile mode is asked for). A source stain whose percentile is below ``MIN_SOURCE_PERCENTILE`` (the stain is
   absent) is not scaled (ratio 1), which avoids the division blow-ups of StainTools #33 and TIAToolbox #289;
4. ``I = I0_tgt exp(-C V_tgt)``, rounded, clipped to [0, 255], uint8.

Background (OD ≈ 0) gets zero concentrations and comes out at the target background ``I0_tgt`` — unchanged when
both I0 are equal (e.g. ``i0=255``). Inputs are never written to. A source without tissue (blank tiles, empty
slides) is recorded as such (``fit.has_tissue`` is False) and ``transform`` returns the input unchanged.

``method="reinhard"`` uses CIELAB mean/std transfer instead (:mod:`pathgen.stain.reinhard`).

Brightness standardisation (METHODS.md §1.3, for the NASDM variant of Vahadane): ``"rgb_p90"`` scales RGB so
that the 90th percentile of all values (all pixels, all channels) maps to 255 — StainTools 1.x
``standardize_brightness``, applied to target and source; ``"lab_l_p95"`` scales CIELAB L so that its 95th
percentile maps to 100 (StainTools 2.x ``LuminosityStandardizer``). The NASDM variant is
``StainNormalizer("vahadane", rescale=False, brightness="rgb_p90")``; the StainTools 2.x/SAASN one is
``StainNormalizer("vahadane")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathgen.errors import PathgenError, require_file
from pathgen.stain.concentrations import PARALLEL_DET, _solve, concentration_percentiles
from pathgen.stain.macenko import BETA_RULES, MIN_FIT_PIXELS, NoTissueError, fit_macenko
from pathgen.stain.matrix import StainFit
from pathgen.stain.optical import (_check_rgb, as_tensor, estimate_i0, lab_to_rgb, parse_i0, rgb_to_lab,
                                   rgb_to_od, sample_pixels, single_thread, tissue_mask)
from pathgen.stain.reinhard import lab_statistics, reinhard_transfer
from pathgen.stain.vahadane import fit_vahadane

METHODS = ("macenko", "vahadane", "reinhard")
BRIGHTNESS = ("none", "rgb_p90", "lab_l_p95")
#: Below this source concentration percentile a stain counts as absent and is not rescaled.
MIN_SOURCE_PERCENTILE = 0.05
NORMALIZER_FORMAT = "pathgen.stain-normalizer/1"


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device of a name (``auto`` → CUDA when available, else CPU), checked once by the engine's rule."""
    from pathgen.engine import resolve_device as engine_device

    return torch.device(engine_device(str(device)))


class StainNormalizer:
    """Stain normaliser with a slide-level (or image-level) source fit and batched torch transform.

    Parameters
    ----------
    method : {"macenko", "vahadane", "reinhard"}
    percentile : float
        Percentile of the concentrations used for scaling (99).
    i0 : None, float, (3,) or "R,G,B"
        Background intensity for both source and target; None estimates it from each image / slide
        (:func:`pathgen.stain.optical.estimate_i0`; 255 when there is no background to measure).
    lasso_lambda : float
        L1 weight of the concentration solve (0.01; 0 = non-negative least squares).
    rescale : bool
        Scale concentrations to the target percentile (False for the NASDM Vahadane variant).
    brightness : {"none", "rgb_p90", "lab_l_p95"}
        Brightness standardisation applied before fitting and transforming.
    device : "cpu", "cuda" or "auto"
        Where the transform (and fit) run.
    seed : int
        Seed of the pixel sampling and of Vahadane's subsampling.
    luminosity_threshold : float
        Tissue is ``L/100 < luminosity_threshold`` (0.8).
    beta, alpha : float
        Macenko OD threshold and angular percentile (percent).
    beta_rule : {"norm", "any_channel"}
        How ``beta`` drops transparent pixels (:func:`pathgen.stain.macenko.fit_macenko`).
    lambda1, n_iter : float, int
        Vahadane sparsity and fixed iteration budget.
    max_fit_pixels : int
        Pixels sampled for a fit (tissue sample and all-pixel sample, each); 50 000 keeps the 99th percentile
        within about 1 % and the fit under a few tens of milliseconds on one CPU thread.
    chunk_pixels : int
        Pixels transformed at once (bounds memory).
    """

    def __init__(self, method: str = "macenko", percentile: float = 99.0, i0=None, lasso_lambda: float = 0.01,
                 rescale: bool = True, brightness: str = "none", device: str = "cpu", seed: int = 0,
                 luminosity_threshold: float = 0.8, beta: float = 0.15, alpha: float = 1.0,
                 beta_rule: str = "norm", lambda1: float = 0.1, n_iter: int = 100, max_fit_pixels: int = 50_000,
                 chunk_pixels: int = 1 << 18):
        if method not in METHODS:
            raise PathgenError(f"unknown method {method!r} (choose {', '.join(METHODS)})")
        if brightness not in BRIGHTNESS:
            raise PathgenError(f"unknown brightness mode {brightness!r} (choose {', '.join(BRIGHTNESS)})")
        if not 0.0 < percentile <= 100.0:
            raise PathgenError(f"percentile must lie in (0, 100], got {percentile}")
        if lasso_lambda < 0:
            raise PathgenError(f"lasso_lambda must be >= 0, got {lasso_lambda}")
        if not 0.0 < luminosity_threshold <= 1.0:
            raise PathgenError(f"luminosity_threshold must lie in (0, 1], got {luminosity_threshold}")
        self.method = method
        self.percentile = float(percentile)
        self.i0 = None if i0 is None else parse_i0(i0)
        self.lasso_lambda = float(lasso_lambda)
        self.rescale = bool(rescale)
        self.brightness = brightness
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.luminosity_threshold = float(luminosity_threshold)
        self.beta = float(beta)
        self.alpha = float(alpha)
        if beta_rule not in BETA_RULES:
            raise PathgenError(f"unknown beta_rule {beta_rule!r} (choose {', '.join(BETA_RULES)})")
        self.beta_rule = beta_rule
        self.lambda1 = float(lambda1)
        self.n_iter = int(n_iter)
        self.max_fit_pixels = int(max_fit_pixels)
        self.chunk_pixels = int(chunk_pixels)
        self.target: StainFit | None = None
        self.source: StainFit | None = None

    # ------------------------------------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        """The constructor arguments, JSON-ready (device as a string)."""
        return {"method": self.method, "percentile": self.percentile,
                "i0": None if self.i0 is None else self.i0.tolist(), "lasso_lambda": self.lasso_lambda,
                "rescale": self.rescale, "brightness": self.brightness, "device": str(self.device),
                "seed": self.seed, "luminosity_threshold": self.luminosity_threshold, "beta": self.beta,
                "beta_rule": self.beta_rule, "alpha": self.alpha, "lambda1": self.lambda1, "n_iter": self.n_iter,
                "max_fit_pixels": self.max_fit_pixels}

    def _fit_params(self) -> dict[str, Any]:
        params = {"luminosity_threshold": self.luminosity_threshold, "lasso_lambda": self.lasso_lambda,
                  "brightness": self.brightness, "seed": self.seed, "concentration_solver": "nonneg_lasso_2"}
        if self.method == "macenko":
            params.update(beta=self.beta, beta_rule=self.beta_rule, alpha=self.alpha)
        elif self.method == "vahadane":
            params.update(lambda1=self.lambda1, n_iter=self.n_iter)
        return params

    # -------------------------------------------------------------------------------------------- brightness
    def _brightness_reference(self, pixels: np.ndarray) -> float | None:
        if self.brightness == "none" or pixels.shape[0] == 0:
            return None
        if self.brightness == "rgb_p90":
            return float(max(1.0, np.percentile(pixels, 90)))
        lightness = rgb_to_lab(as_tensor(pixels)).select(-1, 0)
        return float(max(1.0, np.percentile(lightness.cpu().numpy(), 95)))

    def _standardize(self, pixels: torch.Tensor, reference: float | None) -> torch.Tensor:
        """Brightness standardisation of uint8 pixels (P, 3) with a fixed reference; returns uint8."""
        if reference is None:
            return pixels
        if self.brightness == "rgb_p90":
            return _rgb_p90_lut(reference, pixels.device)[pixels.long()]
        lab = rgb_to_lab(pixels)
        lab[:, 0] = (lab[:, 0] * (100.0 / reference)).clamp(0.0, 100.0)
        return lab_to_rgb(lab)

    # ----------------------------------------------------------------------------------------------- fitting
    def fit_pixels(self, tissue_rgb, all_rgb=None, i0=None, _tissue_selected: bool = False) -> StainFit:
        """Fit stain statistics from pixel samples; does not change the normaliser's state.

        Parameters
        ----------
        tissue_rgb : (N, 3) uint8
            Pixels to fit the stains on; those that are not tissue (luminosity) are dropped here.
        all_rgb : (M, 3) uint8, optional
            A uniform sample of all pixels, background included, for I0 and brightness; defaults to
            ``tissue_rgb`` (then I0 falls back to 255 unless given).
        i0 : optional
            Background intensity; overrides the normaliser's ``i0`` and the estimate.

        Returns
        -------
        StainFit
            ``tissue_pixels == 0`` (and no statistics) when there are fewer than ``MIN_FIT_PIXELS`` stained
            tissue pixels.
        """
        with single_thread(self.device):
            return self._fit_pixels(tissue_rgb, all_rgb, i0, _tissue_selected)

    def _fit_pixels(self, tissue_rgb, all_rgb, i0, _tissue_selected: bool) -> StainFit:
        tissue = np.asarray(as_tensor(tissue_rgb).cpu()).reshape(-1, 3)
        everything = tissue if all_rgb is None else np.asarray(as_tensor(all_rgb).cpu()).reshape(-1, 3)
        _check_rgb(tissue, "pixels")
        _check_rgb(everything, "pixels")
        reference = self._brightness_reference(everything)
        if reference is not None:
            tissue = self._standardize(torch.from_numpy(tissue), reference).numpy()
            everything = self._standardize(torch.from_numpy(everything), reference).numpy()
        if i0 is not None:
            i0_arr = parse_i0(i0)
        elif self.i0 is not None:
            i0_arr = self.i0.copy()
        else:
            i0_arr = estimate_i0(everything)
        if not (_tissue_selected and reference is None):
            tissue = tissue[tissue_mask(tissue, self.luminosity_threshold)]
        params = self._fit_params()
        empty = StainFit(self.method, None, None, self.percentile, i0_arr, 0, brightness_reference=reference,
                         params=params)
        if tissue.shape[0] < MIN_FIT_PIXELS:
            empty.params["no_tissue_reason"] = f"{tissue.shape[0]} tissue pixels (< {MIN_FIT_PIXELS})"
            return empty
        lab_mean, lab_std = lab_statistics(tissue) if self.method == "reinhard" else (None, None)
        matrix, percentiles = None, None
        if self.method in ("macenko", "vahadane"):
            od = as_tensor(rgb_to_od(torch.from_numpy(tissue).to(self.device), i0_arr)).double()
            try:
                if self.method == "macenko":
                    matrix = fit_macenko(od, beta=self.beta, alpha=self.alpha, beta_rule=self.beta_rule)
                else:
                    matrix = fit_vahadane(od, lambda1=self.lambda1, n_iter=self.n_iter, seed=self.seed)
            except NoTissueError as exc:
                empty.params["no_tissue_reason"] = exc.problem
                return empty
            v = torch.as_tensor(matrix.vectors, dtype=torch.float64, device=od.device)
            percentiles = concentration_percentiles(_solve(od, v, self.lasso_lambda), self.percentile)
        return StainFit(self.method, matrix, percentiles, self.percentile, i0_arr, int(tissue.shape[0]),
                        lab_mean=lab_mean, lab_std=lab_std, brightness_reference=reference, params=params)

    def fit_images(self, images) -> StainFit:
        """Fit stain statistics pooled over images/tiles (one array, a batch, or an iterable); no state change."""
        tissue, everything = sample_pixels(images, n=self.max_fit_pixels, seed=self.seed,
                                           luminosity_threshold=self.luminosity_threshold)
        if self.brightness != "none":
            # Standardisation can move pixels across the tissue threshold: select after it, from everything.
            tissue = everything
        return self.fit_pixels(tissue, everything, _tissue_selected=self.brightness == "none")

    def fit_target(self, target=None) -> "StainNormalizer":
        """Fit (or load) the target.

        Parameters
        ----------
        target : None, "default", StainFit, path, (H, W, 3) / (N, H, W, 3) uint8, or iterable of images
            None / "default": the built-in target (:mod:`pathgen.stain.defaults`). A path may be a saved stain
            JSON, an image file, or a folder of images (pooled into one target domain). A list/iterable of
            images is pooled too.

        Raises
        ------
        PathgenError
            The target has no tissue, or lacks what this method needs (a Reinhard-only file for Macenko).
        """
        from pathgen.stain.defaults import default_target

        source_name = None
        if target is None or (isinstance(target, str) and target == "default"):
            fit = default_target()
        elif isinstance(target, StainFit):
            fit = target
        elif isinstance(target, (str, os.PathLike)):
            source_name = os.fspath(target)
            fit = self._fit_target_path(Path(target))
        else:
            fit = self.fit_images(target)
        if not fit.has_tissue:
            raise NoTissueError("the target has no tissue to fit stains on "
                                f"(luminosity < {self.luminosity_threshold})", source_name)
        if self.method == "reinhard" and (fit.lab_mean is None or fit.lab_std is None):
            raise PathgenError("this stain file has no CIELAB statistics, which Reinhard needs", source_name)
        if self.method != "reinhard" and (fit.matrix is None or fit.concentration_percentiles is None):
            raise PathgenError(f"this stain file has no stain vectors, which {self.method} needs", source_name)
        self.target = fit
        return self

    def _fit_target_path(self, path: Path) -> StainFit:
        from pathgen.io.image import is_slide, list_images, read_image

        if path.is_dir():
            files = list_images(path)
            if not files:
                raise PathgenError("folder holds no PNG/JPEG/TIFF images", path)
            return self.fit_images(read_image(f) for f in files)
        require_file(path)
        if path.suffix.lower() == ".json":
            return StainFit.load(path)
        if is_slide(path):
            from pathgen.stain.slide import fit_slide  # slide-level sampling lives with the slide engine

            return fit_slide(path, self)
        return self.fit_images(read_image(path))

    def fit_source(self, images) -> "StainNormalizer":
        """Fit the source once from images or tiles (pooled), e.g. tiles sampled across a slide."""
        self.source = self.fit_images(images)
        return self

    def fit_source_pixels(self, rgb_pixels, i0=None) -> "StainNormalizer":
        """Fit the source from pooled pixels (N, 3) uint8 (tissue only, or any pixels incl. background).

        Non-tissue pixels are dropped before the stain fit. I0 is ``i0`` if given, else the normaliser's
        ``i0``, else estimated from ``rgb_pixels`` (255 when they contain no background).
        """
        px = np.asarray(as_tensor(rgb_pixels).cpu()).reshape(-1, 3)
        self.source = self.fit_pixels(px, px, i0=i0)
        return self

    # --------------------------------------------------------------------------------------------- transform
    def transform(self, images, per_tile: bool = False, source: StainFit | None = None):
        """Normalise images or a batch of tiles.

        Parameters
        ----------
        images : ndarray or tensor, (H, W, 3) or (N, H, W, 3) (any (..., 3)), uint8
            Not modified.
        per_tile : bool
            Fit the source on each (H, W, 3) tile separately instead of using the fitted source (for
            comparison: per-tile fitting makes stitched slides inconsistent).
        source : StainFit, optional
            Source statistics to use instead of ``self.source`` (e.g. one fit per image in a folder run).

        Returns
        -------
        Same kind (numpy/torch), shape and device as ``images``, uint8. Inputs without tissue (or a source fit
        without tissue) come back unchanged.
        """
        if self.target is None:
            raise PathgenError("no target fitted: call fit_target() first")
        if isinstance(images, (list, tuple)):
            images = np.stack([np.asarray(a) for a in images])
        _check_rgb(images)
        is_tensor = isinstance(images, torch.Tensor)
        if per_tile:
            if images.ndim not in (3, 4):
                raise PathgenError(f"per-tile mode needs (H, W, 3) or (N, H, W, 3), got {tuple(images.shape)}")
            tiles = images[None] if images.ndim == 3 else images
            out = [self._transform_flat(as_tensor(t).reshape(-1, 3), self.fit_images(t)).reshape(t.shape)
                   for t in tiles]
            result = torch.stack(out) if out else as_tensor(tiles).clone()
            result = result[0] if images.ndim == 3 else result
        else:
            source = source if source is not None else self.source
            if source is None:
                raise PathgenError("no source fitted: call fit_source() or fit_source_pixels() first, "
                                   "or use per_tile=True")
            t = as_tensor(images)
            result = self._transform_flat(t.reshape(-1, 3), source).reshape(t.shape)
        if is_tensor:
            return result.to(images.device)
        return result.cpu().numpy()

    def _transform_flat(self, pixels: torch.Tensor, source: StainFit) -> torch.Tensor:
        """Transform (P, 3) uint8 with a given source fit; returns a new (P, 3) uint8 tensor (CPU or device)."""
        if not source.has_tissue or pixels.shape[0] == 0:
            return pixels.to(self.device).clone()
        out = torch.empty(pixels.shape, dtype=torch.uint8, device=self.device)
        with torch.no_grad():
            if self.method == "reinhard":
                for start in range(0, pixels.shape[0], self.chunk_pixels):
                    px = pixels[start:start + self.chunk_pixels].to(self.device)
                    px = self._standardize(px, source.brightness_reference)
                    out[start:start + px.shape[0]] = reinhard_transfer(
                        px, source.lab_mean, source.lab_std, self.target.lab_mean, self.target.lab_std,
                        self.luminosity_threshold)
                return out
            kernel = self._stain_kernel(source)
            for start in range(0, pixels.shape[0], self.chunk_pixels):
                px = pixels[start:start + self.chunk_pixels].to(self.device)
                if self.brightness == "lab_l_p95":
                    px = self._standardize(px, source.brightness_reference)
                out[start:start + px.shape[0]] = kernel(px)
        return out

    def _stain_kernel(self, source: StainFit):
        """The per-pixel transform for one (source, target) pair: (P, 3) uint8 -> (P, 3) uint8.

        Concentrations are the exact non-negative lasso of :mod:`pathgen.stain.concentrations`, written
        branch-free. With ``c_i = G^-1 (V od - lam)`` the unconstrained solution (G = V V^T, V >= 0 so
        G_01 >= 0) the KKT conditions give ``c_0 = max(c_i0 + (G_01/G_00) min(c_i1, 0), 0)`` and
        ``c_1 = max(c_i1 + (G_01/G_11) min(c_i0, 0), 0)``: the interior solution when both are >= 0, else the
        optimal one-stain face. ``c_i`` is linear in OD, hence a sum of one 256-entry table per channel, so a
        pixel costs six table look-ups and a dozen multiply-adds plus three exponentials.
        """
        od_lut, v_src, w_out, i0_out = self._stain_tables(source)
        v = v_src.double()
        gram = v @ v.T
        det = float(gram[0, 0] * gram[1, 1] - gram[0, 1] ** 2)
        if det <= PARALLEL_DET * float(gram[0, 0] * gram[1, 1]):  # (near-)parallel stains: general solver
            offsets = torch.arange(3, device=self.device) * 256

            def general(px: torch.Tensor) -> torch.Tensor:
                c = _solve(od_lut[px.long() + offsets], v_src, self.lasso_lambda)
                rgb = torch.exp_(-(c @ w_out)).mul_(i0_out)
                return rgb.round_().clamp_(0.0, 255.0).to(torch.uint8)

            return general
        proj = torch.linalg.inv(gram) @ v  # (2, 3): c_i = proj @ od - shift
        shift = self.lasso_lambda * torch.linalg.inv(gram).sum(dim=1)
        lut = od_lut.reshape(3, 256).double()
        tables = [(proj[k][:, None] * lut).to(torch.float32).contiguous() for k in range(2)]  # (3, 256) per stain
        for k in range(2):
            tables[k][0] -= float(shift[k])
        rho0 = float(gram[0, 1] / gram[0, 0])
        rho1 = float(gram[0, 1] / gram[1, 1])
        w = w_out.double().cpu().numpy()
        log_i0 = torch.log(i0_out.double()).cpu().numpy()
        t0, t1 = tables

        def kernel(px: torch.Tensor) -> torch.Tensor:
            r, g, b = px[:, 0].long(), px[:, 1].long(), px[:, 2].long()
            c0 = t0[0].index_select(0, r)  # index_select: several times faster than t[idx] on CPU
            c0 += t0[1].index_select(0, g)
            c0 += t0[2].index_select(0, b)
            c1 = t1[0].index_select(0, r)
            c1 += t1[1].index_select(0, g)
            c1 += t1[2].index_select(0, b)
            m0 = torch.clamp(c0, max=0.0)
            m1 = torch.clamp(c1, max=0.0)
            c0.add_(m1, alpha=rho0).clamp_(min=0.0)
            c1.add_(m0, alpha=rho1).clamp_(min=0.0)
            out = torch.empty(px.shape, dtype=torch.uint8, device=px.device)
            for j in range(3):
                e = torch.mul(c0, -float(w[0, j]))
                e.add_(c1, alpha=-float(w[1, j])).add_(float(log_i0[j]))
                out[:, j] = e.exp_().round_().clamp_(0.0, 255.0)
            return out

        return kernel

    def _stain_tables(self, source: StainFit):
        """OD lookup table (768,) of the source, its matrix, the output matrix with scaling, and I0_tgt."""
        tgt = self.target
        values = torch.arange(256, dtype=torch.float64)
        if self.brightness == "rgb_p90" and source.brightness_reference is not None:
            values = _rgb_p90_lut(source.brightness_reference, "cpu").double()
        i0_src = torch.as_tensor(source.i0, dtype=torch.float64)
        od_lut = (torch.log(i0_src)[None, :] - torch.log(values.clamp(min=1.0))[:, None]).clamp(min=0.0)
        od_lut = od_lut.T.reshape(-1).to(torch.float32).to(self.device)  # index = channel * 256 + value
        ratio = np.ones(2)
        if self.rescale:
            p_src, p_tgt = np.asarray(source.concentration_percentiles), np.asarray(tgt.concentration_percentiles)
            ok = p_src >= MIN_SOURCE_PERCENTILE
            ratio[ok] = p_tgt[ok] / p_src[ok]
        v_src = torch.as_tensor(source.matrix.vectors, dtype=torch.float32, device=self.device)
        w_out = torch.as_tensor(ratio[:, None] * tgt.matrix.vectors, dtype=torch.float32, device=self.device)
        i0_out = torch.as_tensor(tgt.i0, dtype=torch.float32, device=self.device)
        return od_lut, v_src, w_out, i0_out

    def concentrations(self, images, fit: StainFit | None = None) -> np.ndarray:
        """Unscaled H and E concentrations (..., 2) float32 of uint8 images (..., 3) under ``fit`` (source)."""
        fit = fit or self.source
        if fit is None or fit.matrix is None:
            raise PathgenError("no stain vectors fitted")
        t = as_tensor(images).to(self.device)
        od = as_tensor(rgb_to_od(t.reshape(-1, 3), fit.i0))
        v = torch.as_tensor(fit.matrix.vectors, dtype=torch.float32, device=self.device)
        return _solve(od, v, self.lasso_lambda).reshape(*t.shape[:-1], 2).cpu().numpy()

    # ------------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"format": NORMALIZER_FORMAT, "settings": self.settings(),
                "target": None if self.target is None else self.target.to_dict(),
                "source": None if self.source is None else self.source.to_dict()}

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write settings, target and source fits as JSON (atomically)."""
        from pathgen.io.records import versions
        from pathgen.io.atomic import atomic_path

        data = self.to_dict()
        data["versions"] = versions()
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> "StainNormalizer":
        """Rebuild a normaliser saved by :meth:`save` (optionally on another device)."""
        p = require_file(path)
        try:
            data = json.loads(Path(p).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PathgenError(f"not valid JSON ({exc.__class__.__name__})", p) from None
        if not isinstance(data, dict) or data.get("format") != NORMALIZER_FORMAT:
            raise PathgenError(f"not a saved pathgen stain normaliser (\"format\": \"{NORMALIZER_FORMAT}\")", p)
        settings = dict(data.get("settings") or {})
        if device is not None:
            settings["device"] = device
        try:
            norm = cls(**settings)
        except TypeError as exc:
            raise PathgenError(f"invalid normaliser settings: {exc}", p) from None
        norm.target = None if data.get("target") is None else StainFit.from_dict(data["target"], p)
        norm.source = None if data.get("source") is None else StainFit.from_dict(data["source"], p)
        return norm


def _rgb_p90_lut(reference: float, device) -> torch.Tensor:
    """uint8 table of StainTools 1.x brightness standardisation: clip(v * 255 / p90) truncated to uint8."""
    values = torch.arange(256, dtype=torch.float64) * (255.0 / reference)
    return values.clamp(0.0, 255.0).to(torch.uint8).to(device)


def fit_stain(images, method: str = "macenko", **kwargs) -> StainFit:
    """Fit stain statistics of images (one array, a batch, or an iterable pooled into one domain).

    ``kwargs`` are :class:`StainNormalizer` parameters (percentile, i0, seed, luminosity_threshold, ...).
    """
    return StainNormalizer(method, **kwargs).fit_images(images)


__all__ = ["StainNormalizer", "fit_stain", "resolve_device", "METHODS", "BRIGHTNESS", "MIN_SOURCE_PERCENTILE"]
