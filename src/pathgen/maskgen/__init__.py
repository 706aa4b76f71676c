"""MaskGen: diffusion over nuclei masks conditioned on which nucleus types to include — instance-aware (an
interior-distance channel decoded by watershed gives every nucleus its own id)."""

from pathgen.maskgen.encoding import decode_mask, encode_mask, parse_types, presence_vector
from pathgen.maskgen.pipeline import MaskGenPipeline, load_maskgen

__all__ = ["MaskGenPipeline", "decode_mask", "encode_mask", "load_maskgen", "parse_types", "presence_vector"]
