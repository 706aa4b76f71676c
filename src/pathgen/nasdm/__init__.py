"""NASDM: nuclei-aware semantic diffusion — H&E tiles synthesised from nuclei instance + type masks."""

from pathgen.nasdm.conditioning import conditioning_tensor, instance_edges
from pathgen.nasdm.pipeline import NASDMPipeline, load_nasdm
from pathgen.nasdm.unet import NASDMConfig, NASDMUNet, preset_config

__all__ = ["NASDMConfig", "NASDMPipeline", "NASDMUNet", "conditioning_tensor", "instance_edges", "load_nasdm",
           "preset_config"]
