"""HoVer-Net-style nucleus segmentation and typing.

Modules: :mod:`.hovernet` (network, presets, encoder weights), :mod:`.targets` (NP / HV / TP targets),
:mod:`.losses` (CE + Dice, MSE + MSGE), :mod:`.postprocess` (HV energy, marker-controlled watershed, type vote),
:mod:`.data` (datasets, augmentation), :mod:`.train` (two-phase training, validation, resume),
:mod:`.checkpoint` (safetensors + JSON), :mod:`.infer` (:func:`~pathgen.segment.infer.segment_tile_batch`).
"""
