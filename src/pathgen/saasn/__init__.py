"""SAASN: many-to-one self-attentive adversarial stain normalisation (METHODS.md §2).

Train on unpaired tiles or slides of K source sites and one target site, then normalise images and whole slides
with the X→Y generator. Modules:

* :mod:`~pathgen.saasn.networks` — U-Net generator, PatchGAN discriminator, SAGAN self-attention, ``SAASNConfig``;
* :mod:`~pathgen.saasn.losses` — every loss term, boundary control included, ``LossConfig``;
* :mod:`~pathgen.saasn.ssim` — differentiable grayscale SSIM (equal to :func:`pathgen.metrics.image.ssim_gray`);
* :mod:`~pathgen.saasn.buffer` — the 50-image replay buffer;
* :mod:`~pathgen.saasn.data` — unpaired site sampling from tile folders or slides;
* :mod:`~pathgen.saasn.train` — the resumable training loop;
* :mod:`~pathgen.saasn.checkpoint` — safetensors + JSON checkpoints;
* :mod:`~pathgen.saasn.infer` — :class:`SaasnNormalizer`, :func:`normalize_image_saasn`,
  :func:`normalize_slide_saasn`;
* :mod:`~pathgen.saasn.stainmap` — the stain-map mode: one linear map of optical density per slide, fitted to the
  generator's output on sampled tissue (``StainMap``, ``fit_stain_map``);
* :mod:`~pathgen.saasn.evaluate` — the Table 4.1 protocol plus a colour-distribution distance.

Heavy imports (torch) happen when a submodule is imported.
"""

from __future__ import annotations

__all__ = ["SAASNConfig", "LossConfig", "TrainConfig", "DataConfig", "SaasnNormalizer", "normalize_image_saasn",
           "normalize_slide_saasn", "StainMap", "fit_stain_map", "train_saasn", "evaluate_stain", "load_generator",
           "save_generators", "default_model_path"]

_WHERE = {
    "SAASNConfig": "networks", "LossConfig": "losses", "TrainConfig": "train", "DataConfig": "data",
    "SaasnNormalizer": "infer", "normalize_image_saasn": "infer", "normalize_slide_saasn": "infer",
    "default_model_path": "infer", "train_saasn": "train", "evaluate_stain": "evaluate",
    "load_generator": "checkpoint", "save_generators": "checkpoint", "StainMap": "stainmap",
    "fit_stain_map": "stainmap",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"pathgen.saasn.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'pathgen.saasn' has no attribute {name!r}")
