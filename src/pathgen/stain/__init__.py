"""Stain normalisation: Macenko, Vahadane (torch sparse NMF, no spams), Reinhard; slide-level fits.

Main entry points:

- :class:`StainNormalizer` — fit a target (image, folder/domain, stain JSON, built-in default) and a source (once
  per slide from pooled pixels, or per tile), then transform batches of tiles in torch on CPU or CUDA;
- :func:`fit_macenko`, :func:`fit_vahadane` — stain matrices (rows H, E) from pooled OD samples;
- :func:`sample_tissue_pixels`, :class:`PixelReservoir`, :func:`estimate_i0`, :func:`rgb_to_od` — the pieces a
  slide engine needs to pool pixels across tiles;
- :class:`StainMatrix`, :class:`StainFit` — results, with JSON save/load.
"""

from pathgen.stain.concentrations import nonneg_lasso_2
from pathgen.stain.defaults import default_target
from pathgen.stain.macenko import NoTissueError, fit_macenko
from pathgen.stain.matrix import StainFit, StainMatrix, order_he
from pathgen.stain.normalize import METHODS, StainNormalizer, fit_stain
from pathgen.stain.optical import (PixelReservoir, estimate_i0, luminosity, od_to_rgb, rgb_to_od, sample_pixels,
                                   sample_tissue_pixels, tissue_mask)
from pathgen.stain.vahadane import fit_vahadane

__all__ = ["METHODS", "NoTissueError", "PixelReservoir", "StainFit", "StainMatrix", "StainNormalizer",
           "default_target", "estimate_i0", "fit_macenko", "fit_stain", "fit_vahadane", "luminosity",
           "nonneg_lasso_2", "od_to_rgb", "order_he", "rgb_to_od", "sample_pixels", "sample_tissue_pixels",
           "tissue_mask"]
