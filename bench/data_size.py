"""Data efficiency, the digest's claim 5: the transformer's lead over flattened-token ridge as training data shrink.

Not a timing. Per subject, encoder and fraction f, it keeps a fixed random f of the subject's training images
(seed 0; the validation split is then carved from those, as the pipeline does) and fits the encoder exactly as the
pipeline does (`fit.fit_predict` with the demo's ``encoding`` settings: the transformer's layer × seed ensemble;
``ridge_tokens``: PCA on the kept training images, `RidgeCV` per layer, the best layer per voxel by CV). The test
images are the same in every fit and only scored (`evaluate.voxel_scores`). f = 1 is the demo's own fits. The
claim: the ROI-query model should gain more over a linear map of all tokens when there are few training images,
and the gap should shrink as they grow. (The digest's linear map is the full flattened 961·768 tokens; the
pipeline's ``ridge_tokens`` first reduces them by PCA, 512 components or one fewer than the training images.)
Fits run in ``--workers`` processes of one thread each.

    python bench/data_size.py                      # after make demo; --no-record prints only
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from ablations import COLUMNS, demo_settings, family_scores
from common import code_version, demo_arguments, pool_map, record

from brainatt.encoding.data import load_subject
from brainatt.encoding.evaluate import NC_MIN
from brainatt.encoding.fit import EncodingConfig, fit_predict
from brainatt.features.cache import FeatureCache

ENCODERS = ("transformer", "ridge_tokens")
FRACTIONS = (0.25, 0.5)


def fit_one(results: Path, features: str, subject: str, encoder: str, fraction: float) -> dict:
    """``encoder`` fitted on a fixed ``fraction`` of ``subject``'s training images (1: the demo's fit), scored."""
    torch.set_num_threads(1)
    sub = load_subject(results / "prep" / subject / "responses.h5")
    if fraction == 1:
        with h5py.File(results / "encoding" / subject / encoder / "test_pred.h5", "r") as f:
            pred = f["pred"][()]
    else:
        keep = np.sort(np.random.default_rng(0).permutation(len(sub.train_ids))[: round(fraction * len(sub.train_ids))])
        sub = dataclasses.replace(sub, train_ids=sub.train_ids[keep], train_y=sub.train_y[keep])
        cfg = EncodingConfig.from_config(demo_settings(results, subject))
        pred = fit_predict(encoder, sub, FeatureCache(results / "features" / features), cfg, "cpu")["pred"]
    row = family_scores(results, subject, encoder, pred)
    return row | {"encoder": encoder, "fraction": fraction, "n_train": len(sub.train_ids)}


def section(table: pd.DataFrame, subjects: list[str], workers: int) -> str:
    """The RESULTS.md subsection: per fraction, both encoders and the transformer's lead, means over subjects."""
    lines = [
        "### Data efficiency (test images of the demo, `bench/data_size.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(('brainatt',))}; "
        f"subjects {', '.join(subjects)}; fraction 1: the demo's own fits; {workers} one-thread workers",
        f"- NC-normalised test accuracy (voxels with NC ≥ {NC_MIN:g} %), mean over subjects; lead: transformer − "
        "ridge_tokens, mean (lowest subject)",
        "",
        "| fraction | training images | family | transformer | ridge_tokens | lead |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for fraction, rows in table.groupby("fraction"):
        by = {enc: rows[rows["encoder"] == enc].set_index("subject") for enc in ENCODERS}
        n_train = f"{by['transformer']['n_train'].min()}–{by['transformer']['n_train'].max()}"
        for column in COLUMNS:
            lead = by["transformer"][column] - by["ridge_tokens"][column]
            lines.append(
                f"| {fraction:g} | {n_train} | {column} | {by['transformer'][column].mean():.3f} | "
                f"{by['ridge_tokens'][column].mean():.3f} | {lead.mean():+.3f} ({lead.min():+.3f}) |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = demo_arguments(__doc__)
    p.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS), help="below 1; 1 is always added")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    fractions = sorted({*args.fractions, 1.0})
    jobs = [(s, enc, f) for enc in ENCODERS for f in reversed(fractions) for s in args.subjects]  # slow ones first
    jobs = [(args.results, args.features, *job) for job in jobs]
    rows = pool_map(fit_one, jobs, args.workers, lambda row: json.dumps(row, default=float))
    table = pd.DataFrame(rows)
    print(table.to_string())
    text = section(table, args.subjects, args.workers)
    print(text)
    if not args.no_record:
        record("## encoding accuracy on the nsd-synth demo", text, subsection="Data efficiency")


if __name__ == "__main__":
    main()
