"""Data efficiency, the digest's claim 5: the transformer's lead over flattened-token ridge as training data shrink.

Not a timing. Per subject, encoder and fraction f, it keeps a fixed random f of the subject's training images
(seed 0; the validation split is then carved from those, as the pipeline does) and fits the encoder exactly as the
pipeline does (`fit.fit_predict` with the demo's ``encoding`` settings: the transformer's layer × seed ensemble;
``ridge_tokens``: PCA on the kept training images, `RidgeCV` per layer, the best layer per voxel by CV). The test
images are the same in every fit and only scored (`evaluate.voxel_scores`). f = 1 is the demo's own fits. The
claim: the ROI-query model should gain more over a linear map of all tokens when there are few training images,
and the gap should shrink as they grow. The digest's linear map is the full flattened tokens (961·768 there):
``ridge_full`` here. The pipeline's ``ridge_tokens`` first reduces them by PCA to at most 512 components.
Fits run in ``--workers`` processes of one thread each.

    python bench/data_size.py                      # after make demo; --no-record prints only
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ablations import COLUMNS, demo_settings, family_scores
from common import DEMO_HEADING, code_version, demo_arguments, pool_map, report

from brainatt.encoding.data import load_subject
from brainatt.encoding.evaluate import NC_MIN, load_test_predictions
from brainatt.encoding.fit import EncodingConfig, fit_predict
from brainatt.features.cache import FeatureCache

ENCODERS = ("transformer", "ridge_tokens", "ridge_full")  # ridge_full: ridge_tokens keeping every PCA component
FRACTIONS = (0.25, 0.5)


def fit_one(results: Path, features: str, subject: str, encoder: str, fraction: float) -> dict:
    """``encoder`` fitted on a fixed ``fraction`` of ``subject``'s training images (1: the demo's fit), scored.

    ``ridge_full`` is ``ridge_tokens`` with as many PCA components as the training images allow (n − 1): ridge's
    solution lies in the span of the centred training tokens, so that is ridge on all the flattened tokens.
    """
    torch.set_num_threads(1)
    sub = load_subject(results / "prep" / subject / "responses.h5")
    if fraction == 1 and encoder != "ridge_full":  # the demo fitted it
        _, pred = load_test_predictions(results / "encoding" / subject / encoder / "test_pred.h5")
    else:
        n_keep = round(fraction * len(sub.train_ids))
        keep = np.sort(np.random.default_rng(0).permutation(len(sub.train_ids))[:n_keep])
        sub = dataclasses.replace(sub, train_ids=sub.train_ids[keep], train_y=sub.train_y[keep])
        cfg = EncodingConfig.from_config(demo_settings(results, subject))
        if encoder == "ridge_full":
            cfg = dataclasses.replace(cfg, ridge=cfg.ridge | {"pca": len(keep)})
        cache = FeatureCache(results / "features" / features)
        pred = fit_predict(encoder.replace("ridge_full", "ridge_tokens"), sub, cache, cfg, "cpu")["pred"]
    row = family_scores(results, subject, encoder, pred)
    return row | {"encoder": encoder, "fraction": fraction, "n_train": len(sub.train_ids)}


def section(table: pd.DataFrame, subjects: list[str], workers: int) -> str:
    """The RESULTS.md subsection: per fraction, the encoders and the transformer's leads, means over subjects."""
    lines = [
        "### Data efficiency (test images of the demo, `bench/data_size.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(('brainatt',))}; "
        f"subjects {', '.join(subjects)}; fraction 1: the demo's own fits (ridge_full fitted here); {workers} "
        "one-thread workers",
        f"- NC-normalised test accuracy (voxels with NC ≥ {NC_MIN:g} %), mean over subjects; ridge_tokens: the "
        "pipeline's (≤ 512 PCA components),\n  ridge_full: every component (n − 1: ridge on all the flattened "
        "tokens); leads: transformer − each, mean (lowest subject)",
        "",
        "| fraction | training images | family | transformer | ridge_tokens | ridge_full | lead over ridge_tokens | "
        "lead over ridge_full |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for fraction, rows in table.groupby("fraction"):
        by = {enc: rows[rows["encoder"] == enc].set_index("subject") for enc in ENCODERS}
        n_train = f"{by['transformer']['n_train'].min()}–{by['transformer']['n_train'].max()}"
        for column in COLUMNS:
            leads = [by["transformer"][column] - by[enc][column] for enc in ENCODERS[1:]]
            scores = " | ".join(f"{by[enc][column].mean():.3f}" for enc in ENCODERS)
            lines.append(
                f"| {fraction:g} | {n_train} | {column} | {scores} | "
                + " | ".join(f"{lead.mean():+.3f} ({lead.min():+.3f})" for lead in leads)
                + " |"
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
    report(args, DEMO_HEADING, text, "Data efficiency")


if __name__ == "__main__":
    main()
