"""BrainSCUBA's voxel-wise encoder: one linear map per voxel on the unit-norm CLIP image embedding.

Fitted with `RidgeCV` (one α per voxel by 5-fold CV) on the training images only; scored on the shared test
images with `brainatt.metrics` (r, and NC-normalised accuracy against the test noise ceiling).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainatt.contracts.features import FeatureCache
from brainatt.encoding.data import SubjectData, load_subject
from brainatt.encoding.ridge import RidgeCV
from brainatt.io import BrainattError
from brainatt.metrics import nc_normalized, pearson_r

log = logging.getLogger(__name__)

ALPHAS = np.logspace(-3, 5, 17)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (CLIP embeddings as BrainSCUBA's encoder sees them)."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(n).all() or (n <= 0).any():
        raise BrainattError("CLIP embeddings with zero or non-finite rows: rerun the features rule for the clip role")
    return x / n


@dataclass
class VoxelEncoder:
    """Per-voxel weights ``(V, D)`` on unit CLIP embeddings, intercepts, and test scores."""

    weights: np.ndarray
    intercept: np.ndarray
    alphas: np.ndarray
    r: np.ndarray
    nc_norm: np.ndarray

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Predicted responses ``(N, V)`` to raw CLIP image embeddings ``(N, D)``."""
        return unit_rows(embeddings) @ self.weights.T + self.intercept


def fit_voxel_encoder(subject: SubjectData, clip_features: str | Path, cv: int = 5) -> VoxelEncoder:
    """Fit the voxel-wise linear encoder on ``subject``'s training images and score it on the test images."""
    cache = FeatureCache(clip_features)
    if cache.layers:
        raise BrainattError(f"{cache.path}: a backbone feature file; BrainSCUBA reads the clip role's features")
    t0 = time.time()
    x_train = unit_rows(cache.pooled(subject.train_ids))
    x_test = unit_rows(cache.pooled(subject.test_ids))
    ridge = RidgeCV(ALPHAS, cv=cv).fit(x_train, subject.train_y)
    pred = ridge.predict(x_test)
    r = pearson_r(subject.test_y, pred)
    enc = VoxelEncoder(
        weights=np.ascontiguousarray(ridge.coef_.T, np.float32),
        intercept=np.asarray(ridge.intercept_, np.float32),
        alphas=np.asarray(ridge.alphas_),
        r=r,
        nc_norm=nc_normalized(r, subject.nc),
    )
    log.info(
        "voxel encoder: %d voxels on %d-d CLIP, %d train images; median test r %.3f in %.1f s",
        len(r), x_train.shape[1], len(x_train), float(np.median(r)), time.time() - t0,
    )  # fmt: skip
    return enc


def fit_subject(responses: str | Path, clip_features: str | Path) -> tuple[SubjectData, VoxelEncoder]:
    """Load a subject's ``responses.h5`` and fit its voxel encoder."""
    subject = load_subject(responses)
    return subject, fit_voxel_encoder(subject, clip_features)
