"""What MindBridge trains on: per-subject single trials (train) and repeat averages (test), and CLIP targets.

Targets are the CLIP image embeddings of the stimuli (the ``pooled`` embedding of a feature file of the CLIP model:
the ``clip`` role's, or the ``backbone`` role's when both roles are the same model; with ``tokens``, the file's last
cached token grid instead) and the CLIP text embeddings of their captions (`features.cache.extract_text_features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainatt.contracts.features import FeatureCache
from brainatt.contracts.responses import read_responses, read_trials
from brainatt.io import BrainattError


@dataclass
class SubjectData:
    """One subject's decoding data: training trials and repeat-averaged test responses."""

    subject: str
    trials: np.ndarray  # (n_trials, V) float32, training images only
    trial_ids: np.ndarray  # (n_trials,) nsd id of each trial
    trial_session: np.ndarray  # (n_trials,)
    test: np.ndarray  # (n_test, V) float32
    test_ids: np.ndarray

    @property
    def n_voxels(self) -> int:
        return self.trials.shape[1]

    def train_images(self) -> np.ndarray:
        """The training images in the order they were first shown (chronological by session, then trial)."""
        _, first = np.unique(self.trial_ids, return_index=True)
        return self.trial_ids[np.sort(first)]

    def limit(self, n_images: int) -> SubjectData:
        """Only the trials of the first ``n_images`` training images shown (taken chronologically)."""
        order = self.train_images()
        if n_images > len(order):
            raise BrainattError(f"{self.subject}: {n_images} training images asked, it has {len(order)}")
        keep = np.isin(self.trial_ids, order[:n_images])
        return SubjectData(
            self.subject, self.trials[keep], self.trial_ids[keep], self.trial_session[keep], self.test, self.test_ids
        )


def load_subject(path: str | Path, subject: str | None = None) -> SubjectData:
    """A subject's decoding data from its ``responses.h5``: single trials of the training images, test averages."""
    responses = read_responses(path)
    trials = read_trials(path)
    keep = np.isin(trials.nsd_ids, responses.train.nsd_ids)
    if not keep.any():
        raise BrainattError(f"{path}: no single trials of training images: MindBridge trains on single trials")
    betas = trials.betas[keep].astype(np.float32)
    if not np.isfinite(betas).all():
        raise BrainattError(f"{path}: trials/betas holds NaN or infinite values: rerun the preprocess rule")
    return SubjectData(
        subject=subject or responses.subject,
        trials=betas,
        trial_ids=trials.nsd_ids[keep].astype(np.int64),
        trial_session=trials.session[keep].astype(np.int64),
        test=responses.test.betas,
        test_ids=responses.test.nsd_ids,
    )


@dataclass
class Targets:
    """CLIP targets by nsd id: image (N, T_i, D_i) and text (N, T_t, D_t) embeddings, float32."""

    nsd_ids: np.ndarray
    image: np.ndarray
    text: np.ndarray

    def rows(self, nsd_ids: np.ndarray) -> np.ndarray:
        index = {int(k): i for i, k in enumerate(self.nsd_ids)}
        missing = [int(k) for k in nsd_ids if int(k) not in index]
        if missing:
            raise BrainattError(f"nsd id {missing[0]} has no CLIP target: rerun the features rules")
        return np.array([index[int(k)] for k in nsd_ids], dtype=np.int64)


def _embeddings(cache: FeatureCache, nsd_ids: np.ndarray, tokens: bool) -> np.ndarray:
    """(N, T, D): the last cached token grid flattened to tokens, or the pooled embedding as 1 token."""
    if tokens:
        if not cache.layers:
            raise BrainattError(f"{cache.path}: no token grid for mindbridge.image_tokens: use a backbone feature file")
        grid = cache.tokens(cache.layers[-1], nsd_ids).astype(np.float32)
        return grid.reshape(len(nsd_ids), -1, grid.shape[-1])
    return cache.pooled(nsd_ids).astype(np.float32)[:, None]


def load_targets(
    image_features: str | Path, text_features: str | Path, nsd_ids: np.ndarray, tokens: bool = False
) -> Targets:
    """CLIP image (pooled, or with ``tokens`` the token grid) and text targets of ``nsd_ids`` from their files.

    Both files must come from the same CLIP model (their recorded model names, or kit folders' names, and tags).
    """
    nsd_ids = np.unique(np.asarray(nsd_ids, np.int64))
    image_cache, text_cache = FeatureCache(image_features), FeatureCache(text_features)
    models = [(Path(c.spec.name).name, c.spec.pretrained) for c in (image_cache, text_cache)]
    if models[0] != models[1]:
        raise BrainattError(
            f"{image_features}: image features of {models[0]}, text features ({text_features}) of {models[1]}: "
            "MindBridge's targets need one CLIP model; rerun the mindbridge rules"
        )
    return Targets(nsd_ids, _embeddings(image_cache, nsd_ids, tokens), _embeddings(text_cache, nsd_ids, False))
