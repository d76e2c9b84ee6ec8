"""Feature caches per model role, through the CLI as the features rule calls it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from brainatt.cli import main
from brainatt.contracts.features import FeatureCache
from brainatt.contracts.stimuli import stimuli_writer
from brainatt.images import images_to_tensor
from brainatt.models.loading import load_clip
from brainatt.models.spec import ModelSpec


def test_clip_role_caches_raw_image_embeddings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    stimuli = tmp_path / "images.h5"
    with stimuli_writer(stimuli, {}, np.array([1, 2, 4, 7, 9]), images.shape[1:]) as w:
        w.images[:] = images
    out = tmp_path / "clip/kit-clip.h5"
    model = json.dumps({"name": "kit:clip", "source": "open_clip"})
    argv = [
        "features",
        "--role",
        "clip",
        "--stimuli",
        str(stimuli),
        "--model",
        model,
        "--batch",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    with h5py.File(out) as f:
        assert sorted(f) == ["nsd_ids", "pooled"]  # no tokens
    cache = FeatureCache(out)
    assert cache.layers == [] and cache.spec is not None and cache.spec.role == "clip"
    with torch.no_grad():
        expected = load_clip(ModelSpec(role="clip", name="kit:clip")).encode_image(images_to_tensor(images[[1, 3]]))
    got = cache.pooled(np.array([2, 7]))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1)  # raw, not normalised
