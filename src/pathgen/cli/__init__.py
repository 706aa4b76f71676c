"""pathgen command line: a thin typer layer over the library, one module per command group.

Every module exposes ``register(app)``. ``main`` turns :class:`pathgen.PathgenError` (and the usual OS errors)
into a one-line message and a non-zero exit; ``--debug`` anywhere on the line shows the traceback instead,
``--quiet`` anywhere turns progress bars off.
"""

from __future__ import annotations

import importlib
import sys

import typer

from pathgen import __version__

GROUPS = ("slide", "data", "normalize", "stain", "qc", "eval", "segment", "train", "saasn", "synth", "pipeline")

app = typer.Typer(
    name="pathgen",
    help="Whole-slide stain normalisation, nuclei segmentation, annotated-data synthesis and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

STATE = {"debug": False, "quiet": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pathgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors (may appear anywhere)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (may appear anywhere)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """pathgen: a digital-pathology toolkit with a whole-slide-aware CLI."""


for _name in GROUPS:
    importlib.import_module(f"pathgen.cli.{_name}").register(app)


def _wire_train_commands() -> None:
    """NASDM and MaskGen training commands join the `train` sub-app the HoVer-Net module created."""
    from pathgen.cli.synth import add_train_commands

    for group in app.registered_groups:
        if group.name == "train" and group.typer_instance is not None:
            add_train_commands(group.typer_instance)


_wire_train_commands()


#: Library parameters whose command-line option has another name.
PARAM_ALIASES = {"slide_mpp": "mpp", "skip_background": "no_skip"}


def _flag_for(param: str, args: list[str]) -> str:
    """The command-line option of library parameter ``param`` in the command ``args`` invoke (``--tile-size`` for
    ``tile_size``); the library never names flags itself."""
    cmd = typer.main.get_command(app)
    for token in args:
        commands = getattr(cmd, "commands", None)
        if commands is not None and token in commands:
            cmd = commands[token]
        elif token.startswith("-"):
            break
    options = {p.name: p for p in getattr(cmd, "params", ()) if any(o.startswith("-") for o in p.opts)}
    option = options.get(param) or options.get(PARAM_ALIASES.get(param, ""))
    if option is not None:
        return max(option.opts, key=len)
    return "--" + param.replace("_", "-")


def _one_line(exc: BaseException, args: list[str] | None = None) -> str:
    from pathgen.errors import PathgenError

    if isinstance(exc, PathgenError):
        param = getattr(exc, "param", None)
        return f"{exc} ({_flag_for(param, args or [])})" if param else str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {msg}"


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Global flags are accepted anywhere on the line (users add them at the end).
    STATE["debug"] = "--debug" in args
    STATE["quiet"] = "--quiet" in args or "-q" in args
    args = [a for a in args if a not in ("--debug", "--quiet", "-q")]
    from pathgen import progress

    progress.QUIET = STATE["quiet"]
    try:
        app(args=args, prog_name="pathgen", standalone_mode=False)
    except SystemExit as exc:  # typer.Exit / click exits
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("pathgen: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI boundary
        import click

        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            print("pathgen: aborted", file=sys.stderr)
            return 1
        if STATE["debug"]:
            raise
        print(f"pathgen: error: {_one_line(exc, args)}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    sys.exit(main())
