"""The tile engine and the one job path every slide method runs through.

* :mod:`pathgen.engine.core`: tile geometry (:class:`TileGrid`), seam-free blending, execution on threads,
  processes or a dask cluster, streaming of stitched rows or tiles.
* :mod:`pathgen.engine.tissue`: tissue masks of slide overviews (which windows hold tissue).
* :mod:`pathgen.engine.job`: the one slide-job path (:func:`~pathgen.engine.job.run_slide_job`): every method
  that turns a slide into a slide runs through it, resumably.
"""

from pathgen.engine.core import (BLENDS, ArraySource, EngineConfig, RunReport, SlideSource, Stitcher, TileFn,
                                 TileGrid, identity, iter_core_tiles, iter_stitched_rows, process_array, ramp,
                                 resolve_device)

__all__ = ["BLENDS", "ArraySource", "EngineConfig", "RunReport", "SlideSource", "Stitcher", "TileFn", "TileGrid",
           "identity", "iter_core_tiles", "iter_stitched_rows", "process_array", "ramp", "resolve_device"]
