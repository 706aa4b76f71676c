"""Evaluation metrics: one canonical implementation of each score pathgen reports.

* Instances (:mod:`.instance`): :func:`dice1`, :func:`dice2`, :func:`aji`, :func:`aji_plus`, :func:`pq`,
  :func:`instance_scores`, computed from one pass over the pixels.
* Typed nuclei (:mod:`.typed`): :func:`mpq_pannuke` (mPQ, bPQ), :func:`mpq_plus_conic` (mPQ+),
  :func:`detection_scores` (centroid-paired F1).
* Semantic maps (:mod:`.semantic`): :func:`dice_masks`, :func:`iou_masks`, :func:`semantic_scores`.
* Images (:mod:`.image`): :func:`ssim_gray` (SAASN), :func:`ssim_rgb`, :func:`psnr`.
* Colours (:mod:`.colour`): :func:`colour_distance` (sliced W1 of tissue colours in CIELAB to a reference set).
* Image sets (:mod:`.fid`): :func:`fid_from_features`, :func:`kid_from_features`, the FID Inception-v3 in plain
  torch, pluggable extractors.
* Files (:mod:`.formats`), dataset reports (:mod:`.report`), class tables (:mod:`.classes`).

Every definition follows ANCHORS.md §2 and METHODS.md §6; the module docstrings state each convention. A ratio
0/0 (for example PQ with no instance on either side) is NaN; nothing raises ZeroDivisionError.
"""

from pathgen.nucleus_types import NUCLEUS_TYPES, PANNUKE_TYPES, NucleusType
from pathgen.metrics.colour import ColourDistanceConfig, colour_distance, sliced_wasserstein
from pathgen.metrics.image import psnr, ssim_gray, ssim_map, ssim_rgb, to_gray
from pathgen.metrics.instance import (Overlap, PQResult, aji, aji_plus, dice1, dice2, instance_scores,
                                      pairwise_overlap, pq, remap_label)
from pathgen.metrics.semantic import SemanticResult, dice_masks, iou_masks, semantic_scores
from pathgen.metrics.typed import (ConicResult, DetectionResult, PanNukeResult, centroids_and_types,
                                   detection_scores, mpq_pannuke, mpq_plus_conic, pair_centroids, pannuke_binarize,
                                   to_pannuke_channels)

__all__ = [
    "NUCLEUS_TYPES", "PANNUKE_TYPES", "NucleusType",
    "Overlap", "PQResult", "pairwise_overlap", "remap_label", "pq", "aji", "aji_plus", "dice1", "dice2",
    "instance_scores",
    "PanNukeResult", "ConicResult", "DetectionResult", "mpq_pannuke", "mpq_plus_conic", "detection_scores",
    "centroids_and_types", "pair_centroids", "pannuke_binarize", "to_pannuke_channels",
    "SemanticResult", "dice_masks", "iou_masks", "semantic_scores",
    "ssim_gray", "ssim_rgb", "ssim_map", "psnr", "to_gray",
    "ColourDistanceConfig", "colour_distance", "sliced_wasserstein",
    "fid_from_features", "kid_from_features", "frechet_distance", "KIDResult", "InceptionV3Pool3",
    "InceptionExtractor", "ModuleExtractor", "load_inception",
]

# FID / KID live in a torch-based module; import it only when one of its names is used.
_FID_NAMES = {"fid_from_features", "kid_from_features", "frechet_distance", "KIDResult", "InceptionV3Pool3",
              "InceptionExtractor", "ModuleExtractor", "load_inception"}


def __getattr__(name: str):
    if name in _FID_NAMES:
        from pathgen.metrics import fid

        return getattr(fid, name)
    raise AttributeError(f"module 'pathgen.metrics' has no attribute {name!r}")
