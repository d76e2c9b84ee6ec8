"""MindBridge reconstructions scored by nsd-synth's ground-truth brain.

For each reconstructed test image, the subject's noise-free response to the reconstruction is compared with its
response to the image it saw: ``true_r`` (mean over images of the Pearson correlation across voxels),
``true_r_shuffled`` (the same against the other images' responses: the baseline) and ``true_two_way`` (two-way
identification in the true-response space; chance 0.5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainatt.images import images_to_tensor
from brainatt.io import BrainattError
from brainatt.metrics import pixel_correlation, two_way_identification
from brainatt.synth.world import load_brain


@torch.no_grad()
def true_response_scores(recon_dir: str | Path, ground_truth: str | Path, subject: str) -> dict[str, float]:
    """Scores of a reconstruction folder's ``recon.npz`` against the subject's ground-truth brain."""
    path = Path(recon_dir) / "recon.npz"
    if not path.exists():
        raise BrainattError(f"{path}: missing: rerun the mindbridge reconstruction rule")
    with np.load(path) as f:
        seen, recon = f["seen"], f["recon"]
    brain = load_brain(Path(ground_truth), subject)
    r_seen = brain(images_to_tensor(seen)).numpy()
    r_recon = brain(images_to_tensor(recon)).numpy()
    n = len(seen)
    matched = pixel_correlation(r_recon, r_seen)
    shuffled = pixel_correlation(r_recon, np.roll(r_seen, 1, axis=0)) if n > 1 else np.full(n, np.nan)
    return {
        "true_r": float(matched.mean()),
        "true_r_shuffled": float(shuffled.mean()),
        "true_two_way": two_way_identification(r_recon, r_seen) if n > 1 else float("nan"),
    }


def add_truth_scores(recon_dir: str | Path, ground_truth: str | Path, subject: str) -> pd.DataFrame:
    """Append the ground-truth columns to the folder's ``scores.tsv`` (rewritten in place) and return it."""
    path = Path(recon_dir) / "scores.tsv"
    table = pd.read_csv(path, sep="\t")
    for key, value in true_response_scores(recon_dir, ground_truth, subject).items():
        table[key] = value
    tmp = path.with_suffix(".tsv.tmp")
    table.to_csv(tmp, sep="\t", index=False)
    tmp.replace(path)
    return table
