"""Options shared by every command that runs the tile engine."""

from __future__ import annotations

from typing import Optional

import typer

from pathgen.engine import EngineConfig

WORKERS = typer.Option(None, "--workers", help="Run tiles on a local dask cluster of N processes.")
SCHEDULER = typer.Option(None, "--scheduler", help="Address of an existing dask.distributed scheduler.")
DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda[:N].")
BATCH = typer.Option(8, "--batch-size", help="Tiles per call of the tile function.")
THREADS = typer.Option(None, "--threads", help="Threads of the default local pool (default: CPU count).")
NO_RESUME = typer.Option(False, "--no-resume", help="Start an interrupted slide job over instead of going on from "
                                                    "its last finished tiles.")


def engine_config(workers: Optional[int] = None, scheduler: Optional[str] = None, device: str = "auto",
                  batch_size: int = 8, threads: Optional[int] = None, **kw) -> EngineConfig:
    """An :class:`EngineConfig` from the shared CLI options plus command-specific fields."""
    from pathgen.engine.job import resolve_engine

    return resolve_engine(EngineConfig(workers=workers, scheduler=scheduler, device=device, batch_size=batch_size,
                                       threads=threads, **kw))
