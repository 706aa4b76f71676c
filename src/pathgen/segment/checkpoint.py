"""HoVer-Net checkpoints: ``model.safetensors`` + ``config.json`` in a folder; no pickle.

A checkpoint folder is self-describing: ``config.json`` holds the architecture (:class:`HoVerNetConfig`), the
type names and the model's mpp, the post-processing settings that go with the weights (when tuned), plus
whatever the writer adds (training summary, metrics). The safetensors
file repeats the architecture in its metadata, so the weights file alone is loadable too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from pathgen.errors import PathgenError
from pathgen.segment.hovernet import HoVerNet, HoVerNetConfig

FORMAT = "pathgen-hovernet"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _write_json(path: Path, data: dict) -> None:
    from pathgen.config import write_json_atomic

    write_json_atomic(path, data)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write tensors to ``path`` atomically (temporary file + rename); tensors are made contiguous on CPU."""
    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(f".{p.name}.part")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the writer creates owner-only files; give it the usual permissions
    os.replace(tmp, p)


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
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": cfg}
    if getattr(model, "postprocess", None) is not None:
        header["postprocess"] = dataclasses.asdict(model.postprocess)
    state = {k: v for k, v in model.state_dict().items()}
    save_safetensors(state, out / WEIGHTS_NAME, metadata={"pathgen": json.dumps(header)})
    from pathgen.config import versions

    _write_json(out / CONFIG_NAME, {**header, **(extra or {}), "versions": versions()})
    return out


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The JSON description of a checkpoint folder (or of the folder holding a ``model.safetensors``)."""
    weights, cfg_path = _resolve(path)
    data = None
    if cfg_path.exists():
        try:
            data = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PathgenError(f"not valid JSON ({exc})", cfg_path) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            data = None  # an unrelated config.json beside a weights file: use the embedded description
    if data is None:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
        if "pathgen" not in meta:
            raise PathgenError(f"no {CONFIG_NAME} beside it and no pathgen metadata inside", weights)
        data = json.loads(meta["pathgen"])
    if data.get("format") != FORMAT or "model" not in data:
        raise PathgenError(f"not a {FORMAT} checkpoint description", weights)
    return data


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        weights = p / WEIGHTS_NAME
        if not weights.exists():
            raise PathgenError(f"checkpoint folder has no {WEIGHTS_NAME}", p)
    elif p.exists():
        weights = p
    else:
        raise PathgenError("no such checkpoint", p)
    return weights, weights.with_name(CONFIG_NAME)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> HoVerNet:
    """Load a HoVer-Net checkpoint (folder or ``.safetensors`` file) in eval mode.

    Needs only this module and :mod:`pathgen.segment.hovernet` (no training code or state).
    """
    from safetensors.torch import load_file

    weights, _ = _resolve(path)
    data = read_checkpoint_config(path)
    cfg = HoVerNetConfig.from_dict(data["model"])
    model = HoVerNet(cfg)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - any parse error is a bad file
        raise PathgenError(f"not a readable safetensors file ({exc})", weights) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PathgenError(f"weights do not match the described architecture ({first})", weights) from exc
    if data.get("postprocess"):
        from pathgen.segment.postprocess import PostProcessConfig

        try:
            model.postprocess = PostProcessConfig(**data["postprocess"])
        except TypeError as exc:
            raise PathgenError(f"bad postprocess settings in the checkpoint ({exc})", weights) from exc
    return model.to(device).eval()
