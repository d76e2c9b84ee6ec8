"""Runs that repeat and resume: the same config and seed give byte-identical tables, and a run killed during the
transformer's training and restarted with the same command redoes no finished job and resumes the training from
its last checkpoint (ending with the same tables as the uninterrupted run)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# One subject at 64 px (the shipped kit, no kit training); 150 transformer epochs without early stopping leave a
# window of seconds to stop the run in.
CONFIG = {
    "dataset": {"root": "results/nsd-synth", "subjects": ["subj01"], "atlases": ["prf-visualrois", "nsdgeneral"]},
    "synth": {
        "seed": 1,
        "n_subjects": 1,
        "n_train": 40,
        "n_shared": 12,
        "image_size": 64,
        "trials_per_session": 52,
        "voxel_mm": 6.0,
    },
    "models": {"backbone": {"name": "kit:clip", "source": "open_clip", "layers": [-1]}},
    "encoding": {
        "encoders": ["transformer", "ridge_pooled"],
        "seeds": [0],
        "transformer": {"epochs": 150, "patience": 150, "heads": 2, "ff": 32},
        "ridge": {"folds": 3, "n_alphas": 5},
    },
}
TARGETS = ("results/tables/prep.tsv", "results/tables/encoding.tsv")
CHECKPOINTS = "results/encoding/subj01/transformer.ckpt"


def _command(workdir: Path) -> list[str]:
    snakefile = str(REPO / "Snakefile")
    config = str(workdir / "config.yaml")
    return [sys.executable, "-m", "snakemake", "-s", snakefile, "--directory", str(workdir), "--configfile", config]


def _run(workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [*_command(workdir), "--cores", "2", *TARGETS]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


def _saved_epoch(workdir: Path) -> int | None:
    files = sorted((workdir / CHECKPOINTS).glob("*.pt"))
    return torch.load(files[0], weights_only=True)["epoch"] if files else None


def _outputs(workdir: Path) -> dict[str, int]:
    """Every finished output file under results/ (checkpoints aside) → its modification time in ns."""
    files = (p for p in (workdir / "results").rglob("*") if p.is_file() and ".ckpt" not in str(p))
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in files}


def _tables(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "results/tables").glob("*.tsv"))}


@pytest.mark.slow
def test_same_seed_same_tables_and_a_killed_run_resumes_its_training(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for workdir in (first, second):
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))

    run = _run(first)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (first / CHECKPOINTS).exists()  # removed once the encoder's folder is complete

    # Second run: stopped as a scheduler stops a job (SIGTERM to the process group, SIGKILL if it lingers) once
    # the transformer has saved a few epochs.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [*_command(second), "--cores", "2", *TARGETS]
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(cmd, cwd=second, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    while (_saved_epoch(second) or 0) < 3:
        assert proc.poll() is None, (
            f"the run ended before training was stopped: {(tmp_path / 'killed.log').read_text()[-2000:]}"
        )
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    time.sleep(1)  # let the killed jobs' processes go
    saved = _saved_epoch(second)
    assert saved is not None and 3 <= saved < 150, saved
    before = _outputs(second)
    assert "results/prep/subj01/responses.h5" in before and "results/features/backbone/kit-clip.h5" in before
    assert not (second / "results/encoding/subj01/transformer").exists()

    run = _run(second)  # the same command again
    assert run.returncode == 0, run.stderr[-3000:]
    rerun = set(re.findall(r"^(?:local)?rule (\w+):", run.stdout + run.stderr, re.M))
    assert "encode" in rerun and not rerun & {"synthesize", "preprocess", "stimuli", "features"}, rerun
    after = _outputs(second)
    assert {k: after.get(k) for k in before} == before  # nothing finished before the stop was rewritten
    trained = (second / "logs/encode/subj01/transformer.log").read_text()
    assert re.search(rf"resumed from \S+ at epoch {saved}\b", trained), trained[-2000:]
    assert f"epoch {saved - 1}:" not in trained and f"epoch {saved}:" in trained  # no finished epoch redone
    assert not (second / CHECKPOINTS).exists()

    tables = _tables(first)
    assert {"prep.tsv", "encoding.tsv", "routing.tsv"} <= set(tables)
    assert _tables(second) == tables  # byte-identical, the resumed training included
