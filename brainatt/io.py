"""Shared I/O: atomic writes, the attributes every output file carries, and the error type (from `errors`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from brainatt import __version__
from brainatt.errors import BrainattError as BrainattError  # re-exported: the home most modules import it from

log = logging.getLogger(__name__)


def config_hash(config: Any) -> str:
    """Stable short hash of a JSON-able configuration (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stamp(f: h5py.File | h5py.Group, config: Any, units: str) -> None:
    """Write the attributes every brainatt HDF5 output carries."""
    f.attrs["brainatt_version"] = __version__
    f.attrs["config_hash"] = config_hash(config)
    f.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    f.attrs["units"] = units


TMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask: from /proc where there is one (no window where another thread sees a different one)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_pattern(path: Path) -> re.Pattern[str]:
    """Names of ``path``'s temporaries: ``.NAME.<8 random characters>.tmp`` (as `tempfile` makes them)."""
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(TMP_SUFFIX)}")


def stale_temporaries(path: str | Path) -> list[Path]:
    """Hidden temporaries of ``path`` left by a job killed before it could clean up (SIGKILL, the OOM killer)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _tmp_pattern(path)
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _prepare_parent(path: Path) -> None:
    """Create ``path``'s folder, or stop with one line saying why it cannot hold the output."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file stands where a folder of the path should be
        blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), parent)
        raise BrainattError(
            f"{blocker}: is a file, so the output {path} cannot be written under it: move it away or choose "
            "another output path"
        ) from None
    except OSError as e:
        raise BrainattError(
            f"{parent}: cannot create the output folder ({e.strerror}): fix its permissions or choose another "
            "output path"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BrainattError(
            f"{parent}: the output folder is not writable: fix its permissions or choose another output path"
        )


def _tmp_sibling(path: Path, directory: bool) -> Path:
    """A new hidden temporary next to ``path``, with the mode a plain ``open``/``mkdir`` would give it."""
    if path.is_dir() and not directory:
        raise BrainattError(f"{path}: the output path is a folder: remove it or choose another output path")
    if path.exists() and not path.is_dir() and directory:
        raise BrainattError(f"{path}: the output path is a file, a folder is written there: remove it")
    _prepare_parent(path)
    for stale in stale_temporaries(path):  # a rerun cleans what a killed run left
        log.info("removing %s, left by an earlier run that was killed", stale)
        _remove(stale)
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700 whatever the umask
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600 whatever the umask
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise BrainattError(
            f"{path.parent}: cannot write in the output folder ({e.strerror}): fix its permissions or choose "
            "another output path"
        ) from None
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    A failed or interrupted job (any exception, Ctrl-C, or SIGTERM turned into an exception by the CLI) leaves
    nothing that looks complete and removes its temporary; a job killed outright leaves it, and the next write of
    ``path`` removes it. The output gets the modes the umask gives, like any file or folder the user creates.
    """
    path = Path(path)
    tmp = _tmp_sibling(path, directory)
    try:
        yield tmp
        if path.is_dir() and directory:
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_h5(path: str | Path, config: Any, units: str) -> Iterator[h5py.File]:
    """Open a new HDF5 file that appears at ``path`` only when the block completes."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        stamp(f, config, units)
        yield f


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


@contextlib.contextmanager
def open_h5(path: str | Path, what: str, fix: str) -> Iterator[h5py.File]:
    """An HDF5 file that a stage reads, open for the block: a missing, truncated or corrupt file (found on opening or
    on reading its data inside the block) is one `BrainattError` naming it and the ``fix`` (e.g. "rerun the X
    rule"). The block must only read the file."""
    path = Path(path)
    if not path.exists():
        raise BrainattError(f"{path}: {what} missing: {fix}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BrainattError(
            f"{path}: not a readable HDF5 file ({_one_line(e)}): it is truncated or corrupt; {fix}"
        ) from None
    try:
        with f:
            yield f
    except (OSError, KeyError) as e:  # a cut or damaged dataset: h5py raises these on reading it
        raise BrainattError(
            f"{path}: cannot read its data ({_one_line(e)}): the file is truncated or corrupt; {fix}"
        ) from None


def read_by_nsd_id(path: str | Path, dataset: str, nsd_ids: np.ndarray, where: str, fix: str) -> np.ndarray:
    """Rows of ``dataset`` for ``nsd_ids``, in the order asked, from an HDF5 file whose ``nsd_ids`` names its rows.

    A missing id is an error naming the file, ``where`` the ids were looked for and the ``fix``.
    """
    with open_h5(path, "file", fix) as f:
        row = {int(k): i for i, k in enumerate(f["nsd_ids"][()])}
        missing = [int(k) for k in nsd_ids if int(k) not in row]
        if missing:
            raise BrainattError(f"{path}: {len(missing)} images (e.g. nsd id {missing[0]}) are not in {where}: {fix}")
        data = f[dataset]
        rows, back = np.unique(np.array([row[int(k)] for k in nsd_ids], dtype=np.int64), return_inverse=True)
        if not len(rows):
            return np.zeros((0, *data.shape[1:]), data.dtype)
        return data[rows][back]  # h5py reads increasing indices only
