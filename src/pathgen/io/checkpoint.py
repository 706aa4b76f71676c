"""Checkpoints: safetensors weights + a JSON description in a folder; never pickle.

One module for every model family (HoVer-Net, SAASN, NASDM, MaskGen, the renal LDM and its autoencoder):

* a model folder holds ``model.safetensors`` (or another weights name, e.g. SAASN's ``generator.safetensors``)
  and ``config.json``: ``format`` (the model family, ``pathgen-…``), ``format_version``, the architecture
  (``model``) and whatever the writer adds (schedule, training summary, data statistics), plus library versions.
  The weights' safetensors header repeats the ``pathgen`` description, so the weights file alone is loadable;
* writes are atomic (temporary file beside the target, then rename; the temporary file is removed if anything
  fails) and get the usual permissions (``0666 & ~umask``, not the owner-only mode of temporary files);
* the sha256 of the weights identifies a checkpoint in run records and synthesis manifests;
* optimizer state for resumable training is flattened into tensors (safetensors) plus JSON parameter groups.
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write tensors to ``path`` as safetensors, atomically; tensors are made contiguous on CPU.

    Nothing is left at ``path`` or beside it if the write fails.
    """
    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(f".{p.name}.part")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (``PathgenError`` if it is missing or not a safetensors file)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise PathgenError("no such weights file", p)
    try:
        return load_file(str(p), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type is not public in every version
        raise PathgenError(f"not a readable safetensors file ({exc})", p) from exc


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_checkpoint(path: str | os.PathLike, weights_name: str = WEIGHTS_NAME) -> tuple[Path, Path | None]:
    """(weights file, ``config.json`` or None) of a checkpoint folder, run folder or weights file."""
    p = Path(path)
    if p.is_dir():
        w = p / weights_name
        if not w.is_file():
            raise PathgenError(f"checkpoint folder has no {weights_name}", p)
        c = p / CONFIG_NAME
        return w, (c if c.is_file() else None)
    if p.is_file():
        c = p.with_name(CONFIG_NAME)
        return p, (c if c.is_file() else None)
    raise PathgenError("no such checkpoint", p)


def checkpoint_sha256(path: str | os.PathLike, weights_name: str = WEIGHTS_NAME) -> str:
    """sha256 of a checkpoint's weights file (identifies the exact weights used)."""
    weights, _ = resolve_checkpoint(path, weights_name)
    return sha256_file(weights)


def save_model(folder: str | os.PathLike, state: dict[str, torch.Tensor], fmt: str, model: dict,
               extra: dict | None = None, weights_name: str = WEIGHTS_NAME, header: dict | None = None,
               write_config: bool = True) -> Path:
    """Save weights and their description into ``folder`` (created if missing).

    Parameters
    ----------
    folder : path
    state : dict of tensors
        The weights (a ``state_dict``).
    fmt : str
        Model family, e.g. ``pathgen-nasdm``.
    model : dict
        JSON-able architecture.
    extra : dict, optional
        More JSON-able information for ``config.json`` only (training summary, data statistics).
    weights_name : str
        File name of the weights inside ``folder``.
    header : dict, optional
        More JSON-able information repeated in the weights' own header (what loading needs, e.g. a schedule).
    write_config : bool
        Write ``config.json`` too (False when several weights files share one config written afterwards).
    """
    from pathgen.io.records import to_jsonable, versions, write_json_atomic

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    head = {"format": fmt, "format_version": FORMAT_VERSION, "model": to_jsonable(model),
            **to_jsonable(header or {})}
    save_tensors(state, out / weights_name, metadata={"pathgen": json.dumps(head)})
    if write_config:
        write_json_atomic(out / CONFIG_NAME, {**head, **to_jsonable(extra or {}), "versions": versions()})
    return out


def weights_header(weights: str | os.PathLike) -> dict | None:
    """The ``pathgen`` description stored in a safetensors header, or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001
        raise PathgenError(f"not a readable safetensors file ({exc})", weights) from exc
    return json.loads(meta["pathgen"]) if "pathgen" in meta else None


def read_config(path: str | os.PathLike, fmt: str | None = None, weights_name: str = WEIGHTS_NAME) -> dict:
    """The description of a checkpoint: ``config.json`` if present (and of the right family), else the weights'
    own header.

    ``fmt`` checks the model family (``PathgenError`` on a mismatch, e.g. a MaskGen run given as NASDM).
    """
    weights, cfg_path = resolve_checkpoint(path, weights_name)
    data = None
    if cfg_path is not None:
        try:
            data = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise PathgenError(f"unreadable checkpoint config ({exc})", cfg_path) from exc
        if not isinstance(data, dict) or "format" not in data or (
                fmt is not None and data.get("format") != fmt and Path(path).is_file()):
            data = None  # not a checkpoint description, or an unrelated one beside a weights file: use the header
    if data is None:
        data = weights_header(weights)
        if data is None:
            raise PathgenError(f"weights carry no pathgen description and no {CONFIG_NAME} is next to them",
                               weights)
    if fmt is not None and data.get("format") != fmt:
        raise PathgenError(f"checkpoint is {data.get('format')!r}, expected {fmt!r}", path)
    if "model" not in data:
        raise PathgenError("checkpoint description has no architecture ('model')", cfg_path or weights)
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise PathgenError(f"checkpoint format version {data['format_version']} is newer than this pathgen "
                           f"supports ({FORMAT_VERSION})", path)
    return data


def load_state_into(module: torch.nn.Module, path: str | os.PathLike, weights_name: str = WEIGHTS_NAME,
                    device: str | torch.device = "cpu") -> None:
    """Load a checkpoint's weights into ``module`` (strict; ``PathgenError`` on an architecture mismatch)."""
    weights, _ = resolve_checkpoint(path, weights_name)
    state = load_tensors(weights, device)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PathgenError(f"weights do not match the described architecture ({first})", weights) from exc


# ---------------------------------------------------------------------------------------------------------------
# Optimizer state (resumable training)


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "") -> tuple[dict[str, torch.Tensor],
                                                                                     list[dict]]:
    """Flatten ``optimizer.state_dict()``: per-parameter state as ``"{prefix}{param_id}.{name}"`` tensors
    (scalars become 0-d tensors) and the parameter groups as JSON-ready dicts (tuples as lists)."""
    sd = optimizer.state_dict()
    tensors = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            tensors[f"{prefix}{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict],
                   prefix: str = "") -> None:
    """Inverse of :func:`optimizer_tensors`: tensors without ``prefix`` (and an ``"_empty"`` placeholder) are
    ignored, so several optimizers can share one file."""
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key == "_empty" or not key.startswith(prefix):
            continue
        pid, name = key[len(prefix):].split(".", 1)
        if not pid.isdigit():
            continue
        per_param.setdefault(int(pid), {})[name] = value
    fixed = []
    for g in groups:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        fixed.append(g)
    optimizer.load_state_dict({"state": per_param, "param_groups": fixed})


# ---------------------------------------------------------------------------------------------------------------
# Foreign weights (pretrained encoders, Inception): read without unpickling


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch file (``.pth``/``.pt``, loaded with ``weights_only=True``).

    A torch file holding a dict with a ``"state_dict"``, ``"model"`` or ``"desc"`` entry (common training
    scripts' layouts) is unwrapped; ``module.`` prefixes (DataParallel) are dropped.
    """
    from pathgen.errors import require_file

    p = Path(require_file(path))
    if p.suffix == ".safetensors":
        state = load_tensors(p)
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable weights file is a user error
            raise PathgenError(f"cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                               p) from None
        for key in ("state_dict", "model", "desc"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PathgenError("weights file does not hold a flat dict of tensors", p)
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
