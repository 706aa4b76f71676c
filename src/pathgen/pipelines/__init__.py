"""Batch pipelines: typed configurations (dataclasses) read from TOML files in the top-level ``pipelines/``
folder, each composing library calls. ``pathgen run CONFIG.toml`` runs one; the file names the pipeline::

    pipeline = "demo"
    output_dir = "out/demo"
    ...

Unknown keys are errors (a typo must not silently fall back to a default). Paths of the form
``sample:NAME`` resolve to the bundled sample data (:func:`pathgen.data.fetch.sample_path`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tomllib
from pathlib import Path
from typing import Any

from pathgen.errors import PathgenError

PIPELINES = {"demo": "pathgen.pipelines.demo"}


def resolve_path(value: str, base: Path | None = None) -> Path:
    """``sample:NAME`` → the cached sample file; a relative path is taken from ``base`` (the config's folder's
    parent project, i.e. the current directory by default)."""
    if value.startswith("sample:"):
        from pathgen.data.fetch import sample_path

        return sample_path(value.split(":", 1)[1])
    p = Path(value)
    return p if p.is_absolute() or base is None else base / p


def build_config(cls, data: dict[str, Any], path: str | os.PathLike):
    """Instantiate dataclass ``cls`` from a TOML table, refusing unknown keys and converting nested tables."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PathgenError(f"unknown setting(s) {', '.join(unknown)} for pipeline config {cls.__name__}", path)
    kwargs = {}
    for key, value in data.items():
        f = names[key]
        if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                kwargs[key] = build_config(type(default), value, path)
                continue
        kwargs[key] = value
    return cls(**kwargs)


def load(path: str | os.PathLike):
    """Read a pipeline TOML file; returns (module, config)."""
    from pathgen.errors import require_file

    require_file(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PathgenError(f"not valid TOML ({exc})", path) from None
    name = data.pop("pipeline", None)
    if name not in PIPELINES:
        raise PathgenError(f"'pipeline' must be one of {', '.join(sorted(PIPELINES))}, got {name!r}", path)
    module = importlib.import_module(PIPELINES[name])
    return module, build_config(module.Config, data, path)


def run(path: str | os.PathLike) -> Any:
    module, config = load(path)
    return module.run(config)
