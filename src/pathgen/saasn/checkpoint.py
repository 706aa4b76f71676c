"""SAASN checkpoints as safetensors + JSON (never pickle).

Generator-only checkpoint (what inference needs), in a folder::

    generator.safetensors      the X→Y generator (the normaliser), spectral norm baked into plain weights
    generator_y2x.safetensors  optional: the reverse generator (evaluation of the Y→X direction)
    config.json                format, architecture (:class:`SAASNConfig`), what the model maps, training summary

A training run folder holds the same files (the latest epoch), so ``--checkpoint RUN`` works for a run and for a
shipped model alike. The full training state, for resuming, is ``state/training.safetensors`` (all four networks
with their spectral-norm vectors and BatchNorm statistics, both optimisers' moments, the replay buffers' images,
torch's RNG state) plus ``state/training.json`` (epoch, configurations, optimiser hyper-parameters, the numpy
generators' states).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pathgen.errors import PathgenError
from pathgen.io.checkpoint import (CONFIG_NAME, FORMAT_VERSION, load_optimizer, load_tensors, optimizer_tensors,
                                   read_config, save_model, save_tensors)
from pathgen.saasn.networks import SAASNConfig, UNetGenerator, baked_copy

FORMAT = "pathgen-saasn-generator"
WEIGHTS = {"x2y": "generator.safetensors", "y2x": "generator_y2x.safetensors"}
STATE_DIR = "state"
STATE_TENSORS = "training.safetensors"
STATE_JSON = "training.json"
STATE_FORMAT = "pathgen-saasn-training-state"


def _inference_config(config: SAASNConfig) -> SAASNConfig:
    data = config.to_dict()
    data["spectral_norm"] = False  # baked into the weights
    return SAASNConfig.from_dict(data)


def save_generators(folder: str | os.PathLike, g_x2y: UNetGenerator, g_y2x: UNetGenerator | None = None,
                    extra: dict | None = None) -> Path:
    """Save a generator-only checkpoint into ``folder`` (created if missing).

    Parameters
    ----------
    folder : path
    g_x2y : UNetGenerator
        The normaliser (source sites → target stain). Copied; the module passed in is not changed.
    g_y2x : UNetGenerator, optional
        The reverse generator, saved as ``generator_y2x.safetensors``.
    extra : dict, optional
        JSON-able information stored in ``config.json`` (training summary, data, mpp).

    Returns
    -------
    Path of the folder.
    """
    from pathgen.io.records import versions, write_json_atomic

    out = Path(folder)
    model_cfg = _inference_config(g_x2y.config).to_dict()
    saved = []
    for direction, gen in (("x2y", g_x2y), ("y2x", g_y2x)):
        if gen is None:
            continue
        save_model(out, baked_copy(gen).cpu().state_dict(), FORMAT, model_cfg, weights_name=WEIGHTS[direction],
                   header={"direction": direction}, write_config=False)
        saved.append(direction)
    if g_y2x is None and (out / WEIGHTS["y2x"]).exists():
        (out / WEIGHTS["y2x"]).unlink()  # a stale reverse generator would not match this one
    write_json_atomic(out / CONFIG_NAME, {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_cfg,
                                          "generators": {d: WEIGHTS[d] for d in saved}, "normalizes": "x2y",
                                          **(extra or {}), "versions": versions()})
    return out


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """``config.json`` of a generator checkpoint folder (or of the folder holding a ``generator.safetensors``)."""
    folder = _folder_of(path)
    if not (folder / CONFIG_NAME).is_file():
        raise PathgenError(f"no {CONFIG_NAME} beside the generator weights", folder)
    return read_config(folder, fmt=FORMAT, weights_name=WEIGHTS["x2y"])


def _folder_of(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file():
        return p.parent
    if p.is_dir():
        return p
    raise PathgenError("no such checkpoint file or folder", p)


def load_generator(path: str | os.PathLike, direction: str = "x2y", device: str | torch.device = "cpu"
                   ) -> tuple[UNetGenerator, dict]:
    """Load a generator from a checkpoint folder (or its ``generator.safetensors``) in eval mode.

    Parameters
    ----------
    path : path
        A run folder, a shipped model folder, or the weights file inside one.
    direction : {"x2y", "y2x"}
        The normaliser (default) or the reverse generator.
    device : str or torch.device

    Returns
    -------
    generator : UNetGenerator, in eval mode, on ``device``
    info : dict
        The checkpoint's ``config.json``.
    """
    if direction not in WEIGHTS:
        raise PathgenError(f"unknown direction {direction!r} (choose x2y or y2x)")
    info = read_checkpoint_config(path)
    folder = _folder_of(path)
    weights = folder / WEIGHTS[direction]
    if not weights.is_file():
        raise PathgenError(f"checkpoint has no {direction} generator ({WEIGHTS[direction]})", folder)
    config = SAASNConfig.from_dict(info["model"])
    generator = UNetGenerator(config)
    state = load_tensors(weights)
    missing, unexpected = generator.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PathgenError(f"weights do not match the architecture in {CONFIG_NAME} "
                           f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)", weights)
    return generator.to(device).eval(), info


# ---------------------------------------------------------------------------------------------------------------
# Full training state (resume)


def save_training_state(folder: str | os.PathLike, model, opt_g, opt_d, buffers: dict, rngs: dict,
                        meta: dict) -> Path:
    """Write ``folder/state/training.{safetensors,json}`` (see the module docstring).

    Parameters
    ----------
    model : SAASN
    opt_g, opt_d : torch.optim.Optimizer
    buffers : dict of name → ReplayBuffer
    rngs : dict of name → numpy.random.Generator
    meta : dict
        JSON-able run information (epoch completed, configurations); stored as is.
    """
    from pathgen.io.records import write_json_atomic

    out = Path(folder) / STATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    t_g, j_g = optimizer_tensors(opt_g, prefix="opt_g.")
    t_d, j_d = optimizer_tensors(opt_d, prefix="opt_d.")
    tensors.update(t_g)
    tensors.update(t_d)
    buffer_json = {}
    for name, buf in buffers.items():
        bt, bj = buf.state()
        tensors.update({f"buffer.{name}.{k}": v for k, v in bt.items()})
        buffer_json[name] = bj
    tensors["rng.torch"] = torch.get_rng_state()
    save_tensors(tensors, out / STATE_TENSORS)
    write_json_atomic(out / STATE_JSON, {
        "format": STATE_FORMAT, "format_version": FORMAT_VERSION, **meta,
        "optimizers": {"g": j_g, "d": j_d}, "buffers": buffer_json,
        "rngs": {name: g.bit_generator.state for name, g in rngs.items()},
    })
    return out


def read_training_meta(folder: str | os.PathLike) -> dict:
    """``state/training.json`` of a run folder."""
    path = Path(folder) / STATE_DIR / STATE_JSON
    if not path.is_file():
        raise PathgenError("no training state to resume from (state/training.json missing)", folder)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PathgenError(f"not valid JSON ({exc})", path) from exc
    if meta.get("format") != STATE_FORMAT:
        raise PathgenError("not a SAASN training state", path)
    return meta


def load_training_state(folder: str | os.PathLike, model, opt_g, opt_d, buffers: dict, rngs: dict,
                        device: str | torch.device = "cpu") -> dict:
    """Restore what :func:`save_training_state` wrote, in place; returns the JSON metadata."""
    meta = read_training_meta(folder)
    tensors = load_tensors(Path(folder) / STATE_DIR / STATE_TENSORS)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise PathgenError(f"saved networks do not match the run's architecture (missing {len(missing)}, "
                           f"unexpected {len(unexpected)} tensors)", folder)
    model.to(device)
    load_optimizer(opt_g, tensors, meta["optimizers"]["g"], prefix="opt_g.")
    load_optimizer(opt_d, tensors, meta["optimizers"]["d"], prefix="opt_d.")
    for name, buf in buffers.items():
        prefix = f"buffer.{name}."
        bt = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        buf.load_state(bt, meta["buffers"][name], device=device)
    for name, gen in rngs.items():
        gen.bit_generator.state = meta["rngs"][name]
    torch.set_rng_state(tensors["rng.torch"])
    return meta
