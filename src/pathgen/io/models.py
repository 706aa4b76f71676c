"""Where the small models shipped under ``sample_data/models/`` live, so commands work out of the box."""

from __future__ import annotations

import os
from pathlib import Path

from pathgen.errors import PathgenError

SHIPPED = {"hovernet": "hovernet_small", "saasn": "saasn_small", "nasdm": "nasdm_small", "maskgen": "maskgen_small"}


def models_dir() -> Path:
    """``$PATHGEN_MODELS`` if set, else the repository's ``sample_data/models`` (editable/source installs)."""
    env = os.environ.get("PATHGEN_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "sample_data" / "models"


def shipped_model(kind: str) -> Path:
    """Path of the shipped checkpoint folder for ``kind`` (hovernet, saasn, nasdm, maskgen)."""
    if kind not in SHIPPED:
        raise PathgenError(f"no shipped model of kind {kind!r} (have: {', '.join(SHIPPED)})")
    path = models_dir() / SHIPPED[kind]
    if not path.is_dir():
        raise PathgenError(f"the shipped {kind} model is missing; give a checkpoint or set PATHGEN_MODELS", path,
                          param="checkpoint")
    return path
