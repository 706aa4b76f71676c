"""One error type for everything a user can get wrong.

The CLI prints ``PathgenError`` as a single line (``path: problem``) and exits non-zero; library users catch it
like any exception.
"""

from __future__ import annotations

import os


class PathgenError(Exception):
    """A user-facing error: bad input, bad option, unwritable output.

    Parameters
    ----------
    problem : str
        What is wrong, as a short phrase ("not a supported slide format").
    path : str or os.PathLike, optional
        The file the problem is about; printed first.
    param : str, optional
        The library parameter at fault (``"tile_size"``, ``"device"``): the command line names its own option
        for it, so library messages never name command-line flags.
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None, param: str | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        self.param = param
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def require_file(path: str | os.PathLike) -> str:
    """Return ``path`` as str if it names a readable, non-empty regular file, else raise ``PathgenError``."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise PathgenError("no such file", p)
    if os.path.isdir(p):
        raise PathgenError("is a directory, expected a file", p)
    if not os.access(p, os.R_OK):
        raise PathgenError("permission denied", p)
    if os.path.getsize(p) == 0:
        raise PathgenError("file is empty", p)
    return p
