"""HoVer-Net checkpoints: ``model.safetensors`` + ``config.json`` in a folder; no pickle.

A checkpoint folder is self-describing: ``config.json`` holds the architecture (:class:`HoVerNetConfig`), the
type names and the model's mpp, the post-processing settings that go with the weights (when tuned), plus
whatever the writer adds (training summary, metrics). The safetensors
file repeats the architecture in its metadata, so the weights file alone is loadable too.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from pathgen.errors import PathgenError
from pathgen.io.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, load_state_into, read_config, resolve_checkpoint,
                                   save_model)
from pathgen.segment.hovernet import HoVerNet, HoVerNetConfig

FORMAT = "pathgen-hovernet"

__all__ = ["FORMAT", "CONFIG_NAME", "WEIGHTS_NAME", "save_checkpoint", "read_checkpoint_config", "load_model"]


def save_checkpoint(model: HoVerNet, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save ``model`` into ``folder`` (created if missing) as ``model.safetensors`` + ``config.json``.

    Parameters
    ----------
    model : HoVerNet
    folder : path
    extra : dict, optional
        JSON-able information stored in ``config.json`` next to the architecture (e.g. training summary).

    Returns
    -------
    Path of the folder.
    """
    header = {}
    if getattr(model, "postprocess", None) is not None:
        header["postprocess"] = dataclasses.asdict(model.postprocess)
    return save_model(folder, model.state_dict(), FORMAT, model.config.to_dict(), extra=extra, header=header)


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The JSON description of a checkpoint folder (or of the folder holding a ``model.safetensors``)."""
    return read_config(path, fmt=FORMAT)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> HoVerNet:
    """Load a HoVer-Net checkpoint (folder or ``.safetensors`` file) in eval mode.

    Needs only this module and :mod:`pathgen.segment.hovernet` (no training code or state).
    """
    weights, _ = resolve_checkpoint(path)
    data = read_checkpoint_config(path)
    model = HoVerNet(HoVerNetConfig.from_dict(data["model"]))
    load_state_into(model, weights)
    if data.get("postprocess"):
        from pathgen.segment.postprocess import PostProcessConfig

        try:
            model.postprocess = PostProcessConfig(**data["postprocess"])
        except TypeError as exc:
            raise PathgenError(f"bad postprocess settings in the checkpoint ({exc})", weights) from exc
    return model.to(device).eval()
