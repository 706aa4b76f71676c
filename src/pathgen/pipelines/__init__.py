"""Batch pipelines: typed configurations (dataclasses) read from TOML files in the top-level ``pipelines/``
folder, each composing library calls. ``pathgen run CONFIG.toml [MORE.toml ...]`` runs them in order; the file
names the pipeline::

    pipeline = "normalize_cohort"       # demo | normalize_cohort | synthesize_dataset
    output_dir = "out/cohort"
    scheduler = "tcp://10.0.0.5:8786"  # optional: tiles run on an existing dask.distributed cluster
    then = ["pipelines/other.toml"]    # optional: pipelines to run after this one (a chain)
    ...

Unknown keys are errors (a typo must not silently fall back to a default). Paths of the form
``sample:NAME`` resolve to the bundled sample data (:func:`pathgen.data.fetch.sample_path`). Every pipeline is
resumable: run again, it reuses what a killed run finished (slide jobs from their last band of tiles, datasets
sample by sample) and ends with a summary.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tomllib
from pathlib import Path
from typing import Any

from pathgen.errors import PathgenError

PIPELINES = {"demo": "pathgen.pipelines.demo", "normalize_cohort": "pathgen.pipelines.cohort",
             "synthesize_dataset": "pathgen.pipelines.dataset"}


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
    """Read a pipeline TOML file; returns (module, config, the configs to run after it)."""
    from pathgen.errors import require_file

    require_file(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PathgenError(f"not valid TOML ({exc})", path) from None
    name = data.pop("pipeline", None)
    if name not in PIPELINES:
        raise PathgenError(f"'pipeline' must be one of {', '.join(sorted(PIPELINES))}, got {name!r}", path)
    then = data.pop("then", [])
    if isinstance(then, str) or not all(isinstance(t, str) for t in then):
        raise PathgenError("'then' must be a list of pipeline files", path)
    module = importlib.import_module(PIPELINES[name])
    return module, build_config(module.Config, data, path), [Path(t) for t in then]


def run(*paths: str | os.PathLike) -> list[Any]:
    """Run pipeline files in order, each followed by the pipelines its ``then`` names; returns their summaries."""
    results = []
    for path in paths:
        module, config, then = load(path)
        results.append(module.run(config))
        if then:
            results.extend(run(*then))
    return results


def engine_options(cfg) -> "EngineConfig":  # noqa: F821 - imported lazily
    """The engine options of a pipeline config's shared fields (``tile_size``, ``overlap``, ``batch_size``,
    ``threads``, ``workers``, ``scheduler``, ``device``; 0 / "" / -1 mean the default)."""
    from pathgen.engine import EngineConfig
    from pathgen.engine.job import resolve_engine

    overlap = getattr(cfg, "overlap", -1)
    return resolve_engine(EngineConfig(tile_size=cfg.tile_size, batch_size=cfg.batch_size,
                                       overlap=None if overlap is None or overlap < 0 else overlap,
                                       threads=cfg.threads or None, workers=cfg.workers or None,
                                       scheduler=cfg.scheduler or None, device=cfg.device))


def expand(values: list[str], base: Path | None = None) -> list[Path]:
    """Files named by paths, folders, glob patterns or ``sample:NAME``, in order, without repeats."""
    from pathgen.io.image import expand_inputs

    seen: dict[Path, None] = {}
    for value in values:
        for p in ([resolve_path(value, base)] if value.startswith("sample:") else expand_inputs(value)):
            seen.setdefault(Path(p), None)
    return list(seen)
