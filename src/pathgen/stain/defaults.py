"""The built-in default target stain, used when no ``--target`` is given.

Stain vectors and concentration percentiles (Macenko, Veta and colleagues' reference MATLAB implementation
``normalizeStaining.m``, the same numbers torchstain ships as ``HERef`` / ``maxCRef``):

- haematoxylin OD vector (0.5626, 0.7201, 0.4062), eosin (0.2159, 0.8012, 0.5581) — both unit norm;
- 99th-percentile concentrations (1.9705, 1.0308).

The reference code measures OD against I0 = 240; pathgen outputs against I0 = 255 so that background stays
white. The difference is an OD offset of ln(255/240) = 0.06 per channel, far below the spread of the
percentiles, so the published percentiles are used unchanged.

CIELAB statistics for Reinhard (mean L, a, b = 48.89, 32.19, -14.17; standard deviations 13.98, 5.48, 6.23):
computed by pathgen (:func:`pathgen.stain.reinhard.lab_statistics`) over the tissue pixels (L/100 < 0.8, 91.7 %)
of TIAToolbox's sample H&E image ``target_image.png`` (tiatoolbox 2.1.3 wheel, SHA-256 23c1e65f…).
"""

from __future__ import annotations

import numpy as np

from pathgen.stain.matrix import StainFit, StainMatrix

DEFAULT_VECTORS = np.array([[0.5626, 0.7201, 0.4062],
                            [0.2159, 0.8012, 0.5581]])
DEFAULT_PERCENTILES = np.array([1.9705, 1.0308])
DEFAULT_I0 = np.array([255.0, 255.0, 255.0])
DEFAULT_LAB_MEAN = np.array([48.88735051, 32.18972447, -14.1669274])
DEFAULT_LAB_STD = np.array([13.98306773, 5.47653294, 6.23175368])


def default_target() -> StainFit:
    """A fresh :class:`StainFit` holding the built-in target (usable by Macenko, Vahadane and Reinhard)."""
    matrix = StainMatrix(DEFAULT_VECTORS.copy(), "default",
                         {"source": "Macenko reference implementation normalizeStaining.m (HERef, maxCRef)"})
    return StainFit(method="default", matrix=matrix, concentration_percentiles=DEFAULT_PERCENTILES.copy(),
                    percentile=99.0, i0=DEFAULT_I0.copy(), tissue_pixels=0, lab_mean=DEFAULT_LAB_MEAN.copy(),
                    lab_std=DEFAULT_LAB_STD.copy(),
                    params={"source": "built-in default target (pathgen.stain.defaults)"})
