"""Helpers shared by benchmark scripts: timing child processes, peak RSS, appending to RESULTS.md."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"  # generated inputs (gitignored)
RESULTS = HERE / "RESULTS.md"


def run_measured(cmd: list[str], env: dict | None = None, cpu: bool = False):
    """Run ``cmd``; return (wall seconds, peak RSS in MB) — and CPU seconds (user + system) with ``cpu=True``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({code}): {err[-2000:]}")
    if cpu:
        return wall, ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime
    return wall, ru.ru_maxrss / 1024.0


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def append_results(title: str, lines: list[str]) -> None:
    """Append a dated section (title, machine, command, figures) to RESULTS.md."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by the script named in it.\n")
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], HERE.parent)] + sys.argv[1:])
    text = [f"\n## {title} — {time.strftime('%Y-%m-%d %H:%M')}", "", f"- machine: {machine()}",
            f"- command: `{cmd}`", ""] + lines + [""]
    with RESULTS.open("a") as fh:
        fh.write("\n".join(text))
    print("\n".join(text))
