"""What every benchmark here shares: the machine line, the code version it timed, and writing its RESULTS.md part."""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
ROOT = Path(__file__).resolve().parents[1]


def machine(versions: str) -> str:
    """CPU, cores, memory, OS and Python, then ``versions`` (the libraries that matter to this benchmark)."""
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    mem_kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return (
        f"{cpu.group(1) if cpu else platform.processor()}, {len(os.sched_getaffinity(0))} cores (nproc), "
        f"{mem_kb / 2**20:.1f} GiB RAM; Linux {platform.release()}; Python {platform.python_version()}, {versions}"
    )


def code_version(timed: tuple[str, ...]) -> str:
    """The commit the timed code is at, and which of its files (``timed``, repo-relative) had uncommitted edits."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *timed],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown (no git)"
    edited = [line[3:] for line in dirty.stdout.splitlines()]
    return head.stdout.strip() + (f" + uncommitted edits to {' '.join(edited)}" if edited else "")


def record(heading: str, text: str, subsection: str | None = None) -> None:
    """Write ``text`` into RESULTS.md under ``heading`` (``## name``), leaving other benchmarks' sections alone.

    With ``subsection`` (the start of a ``### …`` title) only that subsection is replaced or added; without it
    ``text`` (which starts with the heading) replaces the whole section. The file is read right before writing.
    """
    doc = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    head = re.search(rf"^{heading}\b.*$", doc, flags=re.M)
    if head is None:
        doc = doc.rstrip("\n") + "\n\n" + (text if subsection is None else f"{heading}\n\n{text}")
        RESULTS.write_text(doc.rstrip("\n") + "\n")
        return
    end = doc.find("\n## ", head.end())
    end = len(doc) if end < 0 else end + 1
    if subsection is None:
        section = text
    else:
        section = doc[head.start() : end]
        sub = re.search(rf"^### {re.escape(subsection)}.*?(?=^### |\Z)", section, flags=re.S | re.M)
        body = text.rstrip("\n") + "\n\n"
        section = section[: sub.start()] + body + section[sub.end() :] if sub else section.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(doc[: head.start()] + section.rstrip("\n") + "\n" + ("\n" + doc[end:] if end < len(doc) else ""))


def report(args: argparse.Namespace, heading: str, text: str, subsection: str | None = None) -> None:
    """Print a bench's ``text`` and, unless ``args.no_record``, write it into RESULTS.md (`record`)."""
    print(text)
    if not args.no_record:
        record(heading, text, subsection)
