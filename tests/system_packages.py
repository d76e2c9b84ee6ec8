"""Debian packages the tests need at run time (SLURM, a browser), installed with apt-get when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

APT = ["apt-get", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def missing_reason(binaries: Mapping[str, str]) -> str | None:
    """Installs the Debian packages whose programs are missing (``{program: package}``); returns why they could
    not be installed, or None once every program is on PATH."""
    missing = sorted({package for program, package in binaries.items() if shutil.which(program) is None})
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"needs the Debian packages {' '.join(missing)} and this system has no apt-get"
    if os.geteuid() != 0:
        return f"needs the Debian packages {' '.join(missing)}: installing them needs root"
    install = _run([*APT, "install", *missing])
    if install.returncode != 0:  # stale package lists: refresh once
        _run(["apt-get", "-q", "update"])
        install = _run([*APT, "install", *missing])
    still = sorted(program for program in binaries if shutil.which(program) is None)
    if still:
        tail = (install.stderr or install.stdout).strip().splitlines()[-1:] or [""]
        return f"apt-get install {' '.join(missing)} failed, {' '.join(still)} missing: {tail[0]}"
    return None
