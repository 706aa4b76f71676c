"""`pathgen run CONFIG.toml`: run a batch pipeline from its configuration file."""

from __future__ import annotations

from pathlib import Path

import typer


def run_pipeline(config: Path = typer.Argument(..., help="Pipeline configuration (TOML), e.g. pipelines/demo.toml.")
                 ) -> None:
    """Run the pipeline a TOML file names (see the pipelines/ folder)."""
    from pathgen.pipelines import run

    run(config)


def register(app: typer.Typer) -> None:
    app.command("run")(run_pipeline)
