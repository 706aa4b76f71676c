"""Shared diffusion core: noise schedules and samplers (diffusers), classifier-free guidance, the hybrid loss,
a resumable training loop, the sampling loop with seam-free large canvases, and safetensors checkpoints.

Used by NASDM (:mod:`pathgen.nasdm`), MaskGen (:mod:`pathgen.maskgen`) and later models.
"""

from pathgen.diffusion.guidance import combine_guidance, guided_denoiser
from pathgen.diffusion.schedulers import SCHEDULERS, NoiseSchedule, make_scheduler

__all__ = ["SCHEDULERS", "NoiseSchedule", "combine_guidance", "guided_denoiser", "make_scheduler"]
