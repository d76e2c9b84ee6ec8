"""Shared I/O: the project's error type, atomic writes and the attributes every output file carries."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from brainatt import __version__


class BrainattError(Exception):
    """Bad input or configuration: the message names the file and what to do; the CLI prints it as one line."""


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


def _tmp_sibling(path: Path, directory: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    A failed job therefore leaves nothing that looks complete (and removes its temporary).
    """
    path = Path(path)
    tmp = _tmp_sibling(path, directory)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    if path.is_dir() and directory:
        shutil.rmtree(path)
    os.replace(tmp, path)


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
