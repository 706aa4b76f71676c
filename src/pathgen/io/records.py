"""Run records: the typed configuration saved next to every output, with the versions, seed and command used."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
    """Versions of pathgen and the libraries that shape its outputs."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    import importlib.metadata as md

    for name in ("pathgen", "torch", "numpy", "tifffile", "zarr", "dask", "openslide-python", "openslide-bin",
                 "scikit-image", "diffusers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temporary file and rename."""
    from pathgen.io.atomic import write_text

    write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")


def save_run_config(output: str | os.PathLike, config: Any, seed: int | None = None,
                    extra: dict | None = None, json_path: str | os.PathLike | None = None) -> Path:
    """Save ``config`` (a dataclass or dict) as ``<output>.json`` beside a file output, or ``config.json`` in a
    folder output (or at ``json_path``), with pathgen's and its libraries' versions, the seed and the command
    line."""
    out = Path(output)
    target = Path(json_path) if json_path else out / "config.json" if out.is_dir() else \
        out.with_name(out.name + ".json")
    data = {
        "config": to_jsonable(config),
        "seed": seed,
        "versions": versions(),
        "command": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        data.update(to_jsonable(extra))
    write_json_atomic(target, data)
    return target
