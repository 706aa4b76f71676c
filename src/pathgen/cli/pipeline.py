"""`pathgen run CONFIG.toml [MORE.toml ...]`: run batch pipelines from their configuration files."""

from __future__ import annotations

from pathlib import Path

import typer


def run_pipeline(configs: list[Path] = typer.Argument(..., help="Pipeline configurations (TOML), e.g. "
                                                              "pipelines/normalize_cohort.toml; run in order.")
                 ) -> None:
    """Run the pipelines TOML files name (see the pipelines/ folder); each resumes what a killed run finished."""
    from pathgen.pipelines import run

    run(*configs)


def register(app: typer.Typer) -> None:
    app.command("run")(run_pipeline)
