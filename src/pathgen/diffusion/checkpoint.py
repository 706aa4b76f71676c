"""Diffusion checkpoints: ``model.safetensors`` + ``config.json`` in a folder; never pickle.

``config.json`` holds ``format`` (which model family: ``pathgen-nasdm``, ``pathgen-maskgen``, …), the
architecture (``model``), the noise schedule (``schedule``) and whatever the writer adds (training summary,
data statistics), plus library versions. The safetensors header repeats format, architecture and schedule, so the
weights file alone is loadable. The sha256 of the weights file identifies a checkpoint in synthesis manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from pathgen.errors import PathgenError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write tensors to ``path`` as safetensors, atomically (temporary file + rename), contiguous on CPU."""
    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(f".{p.name}.part")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, p)
    return p


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (``PathgenError`` if missing or unreadable)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise PathgenError("no such weights file", p)
    try:
        return load_file(str(p), device=str(device))
    except Exception as exc:  # noqa: BLE001 - any parse error is a bad file
        raise PathgenError(f"not a readable safetensors file ({exc})", p) from exc


def save_model(folder: str | os.PathLike, state: dict[str, torch.Tensor], fmt: str, model: dict,
               schedule: dict, extra: dict | None = None) -> Path:
    """Save weights and description into ``folder`` (created if missing).

    Parameters
    ----------
    folder : path
    state : dict of tensors
        The weights (a ``state_dict``; for diffusion models the EMA weights).
    fmt : str
        Model family, e.g. ``pathgen-nasdm``.
    model, schedule : dict
        JSON-able architecture and noise schedule.
    extra : dict, optional
        More JSON-able information for ``config.json``.
    """
    from pathgen.config import to_jsonable, versions, write_json_atomic

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": fmt, "format_version": FORMAT_VERSION, "model": to_jsonable(model),
              "schedule": to_jsonable(schedule)}
    save_tensors(state, out / WEIGHTS_NAME, metadata={"pathgen": json.dumps(header)})
    write_json_atomic(out / CONFIG_NAME, {**header, **to_jsonable(extra or {}), "versions": versions()})
    return out


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights file, config file or None) of a checkpoint folder, run folder or weights file."""
    p = Path(path)
    if p.is_dir():
        w = p / WEIGHTS_NAME
        if not w.is_file():
            raise PathgenError(f"checkpoint folder has no {WEIGHTS_NAME}", p)
        c = p / CONFIG_NAME
        return w, (c if c.is_file() else None)
    if p.is_file():
        c = p.with_name(CONFIG_NAME)
        return p, (c if c.is_file() else None)
    raise PathgenError("no such checkpoint", p)


def read_config(path: str | os.PathLike, fmt: str | None = None) -> dict:
    """The description of a checkpoint: ``config.json`` if present, else the safetensors header.

    ``fmt`` checks the model family (``PathgenError`` on a mismatch, e.g. a MaskGen run given as NASDM).
    """
    weights, cfg_path = resolve_checkpoint(path)
    data = None
    if cfg_path is not None:
        try:
            data = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise PathgenError(f"unreadable checkpoint config ({exc})", cfg_path) from exc
    if data is None or "model" not in data:
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:  # noqa: BLE001
            raise PathgenError(f"not a readable safetensors file ({exc})", weights) from exc
        if "pathgen" not in meta:
            raise PathgenError("weights carry no pathgen description and no config.json is next to them", weights)
        data = json.loads(meta["pathgen"])
    if fmt is not None and data.get("format") != fmt:
        raise PathgenError(f"checkpoint is {data.get('format')!r}, expected {fmt!r}", path)
    return data


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint's weights file (identifies the exact weights used)."""
    weights, _ = resolve_checkpoint(path)
    return sha256_file(weights)


def load_state_into(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint's weights into ``module`` (strict; ``PathgenError`` on an architecture mismatch)."""
    weights, _ = resolve_checkpoint(path)
    state = load_tensors(weights)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PathgenError(f"weights do not match the described architecture ({first})", weights) from exc
