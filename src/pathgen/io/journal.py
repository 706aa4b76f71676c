"""Work folders of resumable slide jobs: what a killed run had finished, kept so the same command goes on.

A slide job writing ``OUTPUT`` keeps its unfinished work in one hidden folder beside it, ``.OUTPUT.job/``::

    job.json            what the job is: a fingerprint of the input file, the method and every setting that
                        shapes the output. A rerun with another fingerprint (or ``resume=False``) starts over.
    lock                held (``flock``) while a process works on the job: two runs never write one output.
    bands/NNNNNN.bin    finished bands of level-0 pyramid tiles: each tile as written (JPEG bytes, or the raw
                        tile LZ4-compressed for lossless codecs), its 2× reduction for the next level, and the
                        method's streaming state at that point (e.g. the instance renumbering table).
    records/NNNNNN.jsonl side records of engine window row NNNNNN (e.g. nucleus polygons).
    out.*               the output being assembled; renamed onto ``OUTPUT`` when complete.

Bands are written atomically (temporary name, then rename), so a band file is either whole or absent, and a run
killed at any point (``kill -9`` included) resumes from its last whole band. Replaying the stored bytes and
reductions gives a pyramid identical to an uninterrupted run's. When the job succeeds the folder is removed; a
stale folder or leftover temporary files of a dead run (``.OUTPUT.*.part``, ``.OUTPUT.levels.*``) are cleaned up by
the next run on the same output.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pathgen.errors import PathgenError
from pathgen.io.atomic import write_text

FORMAT = "pathgen-slide-job"
FORMAT_VERSION = 1


def job_folder(output: str | os.PathLike) -> Path:
    """The hidden work folder of the job writing ``output``."""
    out = Path(output)
    return out.with_name(f".{out.name}.job")


def fingerprint(data: dict) -> str:
    """Stable sha256 of a JSON-able description (keys sorted)."""
    from pathgen.io.records import to_jsonable

    text = json.dumps(to_jsonable(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def input_identity(path: str | os.PathLike) -> dict:
    """What identifies an input file without reading it all: resolved path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def remove_orphans(output: str | os.PathLike) -> list[Path]:
    """Delete temporary files a dead run left beside ``output`` (``.NAME.*.part`` files, ``.NAME.levels.*`` and
    ``.NAME.*.part`` folders); returns what was removed. Call only while holding the job's lock."""
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    removed = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        name = entry.name
        if not name.startswith(f".{out.name}."):
            continue
        if name.endswith(".part") or f".{out.name}.levels." in name:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------------------------------
# Band files: a JSON header and binary blobs, no pickle


def _pack(header: dict, blobs: list[bytes]) -> bytes:
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _unpack(data: bytes, path) -> tuple[dict, list[bytes]]:
    try:
        (n,) = struct.unpack_from("<Q", data, 0)
        header = json.loads(data[8:8 + n])
        blobs, off = [], 8 + n
        for size in header.pop("blobs"):
            blobs.append(data[off:off + size])
            off += size
        if off != len(data):
            raise ValueError("trailing bytes")
    except (struct.error, ValueError, KeyError) as exc:
        raise PathgenError(f"damaged job band file ({exc})", path) from None
    return header, blobs


def encode_array(arr: np.ndarray) -> tuple[dict, bytes]:
    """An array as (description, LZ4 bytes)."""
    import imagecodecs

    arr = np.ascontiguousarray(arr)
    return {"shape": list(arr.shape), "dtype": arr.dtype.str}, imagecodecs.lz4_encode(arr.tobytes(), header=True)


def decode_array(desc: dict, data: bytes) -> np.ndarray:
    import imagecodecs

    raw = imagecodecs.lz4_decode(data, header=True)
    return np.frombuffer(raw, np.dtype(desc["dtype"])).reshape(desc["shape"])


class JobJournal:
    """The work folder of one slide job (see the module docstring).

    Parameters
    ----------
    output : path
        The job's final output (file or folder).
    description : dict
        JSON-able description of the job; its fingerprint decides whether earlier work can be reused.
    resume : bool
        Reuse matching earlier work (default). False discards it.
    """

    def __init__(self, output: str | os.PathLike, description: dict, resume: bool = True):
        self.output = Path(output)
        self.folder = job_folder(output)
        self.key = fingerprint(description)
        self.description = description
        self.resumed_bands = 0
        self._lock_fh = None
        parent = self.folder.parent if str(self.folder.parent) else Path(".")
        if not parent.is_dir():
            raise PathgenError("output folder does not exist", parent)
        self.folder.mkdir(exist_ok=True)
        self._lock()
        remove_orphans(self.output)
        meta = self.folder / "job.json"
        reuse = False
        if resume and meta.is_file():
            try:
                reuse = json.loads(meta.read_text()).get("fingerprint") == self.key
            except (OSError, ValueError):
                reuse = False
        if not reuse:
            self._clear()
            write_text(meta, json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                         "fingerprint": self.key, "job": _jsonable(description)}, indent=2) + "\n")
        (self.folder / "bands").mkdir(exist_ok=True)
        (self.folder / "records").mkdir(exist_ok=True)
        for stale in self.folder.rglob(".*.part"):  # a band or record being written when the run died
            stale.unlink(missing_ok=True)
        self.resumed_bands = self.completed_bands()

    # -- locking and lifetime --------------------------------------------------------------------------------

    def _lock(self) -> None:
        self._lock_fh = open(self.folder / "lock", "a+")
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            raise PathgenError("another pathgen run is writing this output right now", self.output) from None

    def _clear(self) -> None:
        for entry in self.folder.iterdir():
            if entry.name == "lock":
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def close(self) -> None:
        """Release the lock; the folder stays (an interrupted job resumes from it)."""
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def finish(self) -> None:
        """The job succeeded: remove the work folder."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def path(self, name: str) -> Path:
        """A file of the work folder (e.g. the output being assembled)."""
        return self.folder / name

    # -- bands -------------------------------------------------------------------------------------------------

    def _band_file(self, k: int) -> Path:
        return self.folder / "bands" / f"{k:06d}.bin"

    def completed_bands(self) -> int:
        """Number of consecutive whole bands from the first."""
        k = 0
        while self._band_file(k).is_file():
            k += 1
        return k

    def write_band(self, k: int, tiles: list[tuple[dict, bytes]], pieces: list[tuple[dict, bytes] | None],
                   state: Any = None) -> None:
        """Store band ``k``: each tile as (description, bytes), its reduction (or None), and the streaming state."""
        blobs, tile_desc, piece_desc = [], [], []
        for desc, data in tiles:
            tile_desc.append(desc)
            blobs.append(data)
        for entry in pieces:
            if entry is None:
                piece_desc.append(None)
            else:
                piece_desc.append(entry[0])
                blobs.append(entry[1])
        payload = _pack({"band": k, "tiles": tile_desc, "pieces": piece_desc, "state": _jsonable(state)}, blobs)
        target = self._band_file(k)
        tmp = target.with_name(f".{target.name}.part")
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    def read_band(self, k: int) -> tuple[list[tuple[dict, bytes]], list[tuple[dict, bytes] | None], Any]:
        """(tiles, pieces, state) of a stored band."""
        path = self._band_file(k)
        header, blobs = _unpack(path.read_bytes(), path)
        it = iter(blobs)
        tiles = [(d, next(it)) for d in header["tiles"]]
        pieces = [None if d is None else (d, next(it)) for d in header["pieces"]]
        return tiles, pieces, header.get("state")

    def band_states(self, upto: int) -> list[Any]:
        """The streaming states stored with bands ``0 .. upto-1``."""
        return [self.read_band(k)[2] for k in range(upto)]

    # -- side records ------------------------------------------------------------------------------------------

    def write_records(self, row: int, records: list[dict]) -> None:
        """Store the side records of engine window row ``row`` (JSON lines, atomically)."""
        write_text(self.folder / "records" / f"{row:06d}.jsonl",
                   "".join(json.dumps(_jsonable(r)) + "\n" for r in records))

    def iter_records(self, rows: int) -> Iterator[dict]:
        """Every stored record of window rows ``0 .. rows-1``, in order."""
        for row in range(rows):
            path = self.folder / "records" / f"{row:06d}.jsonl"
            if not path.is_file():
                raise PathgenError(f"job records of window row {row} are missing", self.folder)
            with open(path) as fh:
                for line in fh:
                    yield json.loads(line)


def _jsonable(obj: Any) -> Any:
    from pathgen.io.records import to_jsonable

    return to_jsonable(obj)


@contextlib.contextmanager
def open_journal(output: str | os.PathLike, description: dict, resume: bool = True) -> Iterator[JobJournal]:
    """A :class:`JobJournal` whose lock is released when the block ends (its folder stays unless finished)."""
    journal = JobJournal(output, description, resume=resume)
    try:
        yield journal
    finally:
        journal.close()
