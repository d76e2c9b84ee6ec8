"""Shared fixtures: small nsd-synth worlds written once per test session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import pytest

from brainatt.synth.world import WorldSpec
from brainatt.synth.writer import write_world

if TYPE_CHECKING:
    from browser import Browser

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
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Debian's chromium, headless (tests/browser.py), installed with apt-get when missing; skipped, with the
    reason, where it cannot be installed."""
    import browser

    reason = browser.unavailable()
    if reason:
        pytest.skip(f"no browser: {reason}")
    with browser.Browser(tmp_path_factory.mktemp("chromium")) as b:
        yield b


@pytest.fixture(scope="session")
def tiny_spec() -> WorldSpec:
    return TINY


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-subject world (~80 images each) as an NSD tree; tests must not modify it."""
    return write_world(TINY, tmp_path_factory.mktemp("synth") / "nsd")


def rewrite_betas(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace an HDF5 session's ``betas`` by ``change(betas)`` (a damaged or altered download)."""
    with h5py.File(path) as f:
        data = f["betas"][()]
    path.unlink()
    with h5py.File(path, "w") as f:
        f["betas"] = change(data)


def write_tiny_latent_diffusion(root: Path, cond_dim: int) -> Path:
    """A random-weight latent diffusion folder (unet/, vae/, scheduler/, brainatt.json) saved by diffusers,
    conditioned on ``cond_dim``-wide CLIP vectors."""
    import json

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler

    from brainatt.models.diffusion import build_unet, make_train_scheduler

    torch.manual_seed(0)
    build_unet((16, 32), 1, in_channels=4, sample_size=8, cond_dim=cond_dim).save_pretrained(root / "unet")
    AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(root / "vae")
    DDIMScheduler.from_config(make_train_scheduler().config).save_pretrained(root / "scheduler")
    (root / "brainatt.json").write_text(json.dumps({"conditioning": "clip", "embedding": "pooled"}))
    return root
