"""Atomic outputs: write to a temporary file beside the target, rename on success."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from pathgen.errors import PathgenError


def check_output(target: str | os.PathLike, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Validate an output path before any work starts.

    Refuses an existing file unless ``overwrite``, any path equal to an input (inputs are never written), a
    missing or unwritable parent folder.
    """
    t = Path(target)
    for src in inputs:
        if src is not None and Path(src).exists() and t.exists() and os.path.samefile(src, t):
            raise PathgenError("output would overwrite the input", t)
    if t.is_dir():
        raise PathgenError("output path is a directory", t)
    if t.exists() and not overwrite:
        raise PathgenError("output exists", t, param="overwrite")
    parent = t.parent if str(t.parent) else Path(".")
    if not parent.exists():
        raise PathgenError("output folder does not exist", parent)
    if not os.access(parent, os.W_OK):
        raise PathgenError("output folder is not writable", parent)
    return t


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = False, inputs: tuple = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only if the block succeeds.

    On any exception the temporary file is removed and nothing is left at ``target``.
    """
    t = check_output(target, overwrite=overwrite, inputs=inputs)
    fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".part", dir=t.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_path, t)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp_path.is_dir():
                import shutil

                shutil.rmtree(tmp_path)
            else:
                tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory output (e.g. OME-Zarr)."""
    import shutil

    t = Path(target)
    if t.exists() and not overwrite:
        raise PathgenError("output exists", t, param="overwrite")
    parent = t.parent
    if not parent.exists():
        raise PathgenError("output folder does not exist", parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{t.name}.", suffix=".part", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if t.exists():
            shutil.rmtree(t) if t.is_dir() else t.unlink()
        os.replace(tmp, t)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Replace ``target`` with ``text`` atomically (temporary file beside it, then rename; usual permissions)."""
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_csv(target: str | os.PathLike, rows: list[dict], columns: list[str] | tuple[str, ...]) -> Path:
    """Replace ``target`` with a CSV of ``rows`` (``columns`` in order; missing values empty), atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return write_text(target, buf.getvalue())
