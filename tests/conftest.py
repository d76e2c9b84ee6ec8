"""Shared fixtures: small nsd-synth worlds written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainatt.synth.world import WorldSpec
from brainatt.synth.writer import write_world

TINY = WorldSpec(
    seed=3,
    n_subjects=2,
    n_train=60,
    n_shared=20,
    image_size=32,
    trials_per_session=48,
    sessions_kept=(1.0, 0.8),
    voxel_mm=6.0,
)


@pytest.fixture(scope="session")
def tiny_spec() -> WorldSpec:
    return TINY


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-subject world (~80 images each) as an NSD tree; tests must not modify it."""
    return write_world(TINY, tmp_path_factory.mktemp("synth") / "nsd")
