"""Run ensembling, the digest's claim 8: what each added seed buys the demo's transformer.

Not a timing. Per subject it refits the demo's transformer (its settings, every cached layer) with seeds
0 … K−1 (``ablations.fit_one``, the pipeline's ``fit.train_member``), and for k = 1 … K scores the ensemble the
pipeline builds with ``seeds: [0, …, k−1]``: every layer × seed member, per-voxel softmax(τ·r_val) weights from the
validation images, test images scored with `evaluate.voxel_scores`. The claim: accuracy rises with k, with
diminishing returns. Fits run in ``--workers`` processes of one thread each.

    python bench/seeds.py                      # after make demo; --no-record prints only
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import pandas as pd
from ablations import COLUMNS, demo_layers, demo_settings, describe, family_scores, fit_one
from common import DEMO_HEADING, code_version, demo_arguments, pool_map, report

from brainatt.encoding.evaluate import NC_MIN
from brainatt.encoding.train import ensemble_predict


def section(table: pd.DataFrame, subjects: list[str], workers: int) -> str:
    """The RESULTS.md subsection: one row per number of seeds, means over subjects and the gain of that seed."""
    lines = [
        "### Run ensembling (test images of the demo, `bench/seeds.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(('brainatt',))}; "
        f"subjects {', '.join(subjects)}; the demo's transformer settings, every cached layer, {workers} workers",
        f"- NC-normalised test accuracy (voxels with NC ≥ {NC_MIN:g} %) of the ensemble over seeds 0 … k−1 × layers, "
        "mean over subjects; in brackets\n  the gain over k − 1 seeds: mean, lowest subject; r truth: mean r against "
        "the noise-free responses, all voxels",
        "",
        "| seeds | " + " | ".join(COLUMNS) + " | r truth |",
        "|---:|" + "---:|" * (len(COLUMNS) + 1),
    ]
    previous = None
    for k, rows in table.groupby("seeds"):
        rows = rows.set_index("subject")
        cells = []
        for column in (*COLUMNS, "r_truth"):
            gain = "" if previous is None else rows[column] - previous[column]
            change = "" if previous is None else f" ({gain.mean():+.4f}, {gain.min():+.4f})"
            cells.append(f"{rows[column].mean():.4f}{change}")
        lines.append(f"| {k} | {' | '.join(cells)} |")
        previous = rows
    return "\n".join(lines) + "\n"


def main() -> None:
    p = demo_arguments(__doc__, subjects=("subj01", "subj02"))
    p.add_argument("--seeds", type=int, default=4, help="K: seeds 0 … K−1")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    jobs = [(s, layer, seed) for seed in range(args.seeds) for s in args.subjects for layer in demo_layers(args, s)]
    jobs = [(args.results, args.features, s, "", layer, seed) for s, layer, seed in jobs]
    members = pool_map(fit_one, jobs, args.workers, describe)
    rows = []
    for subject in args.subjects:
        tau = demo_settings(args.results, subject)["ensemble_temperature"]
        for k in range(1, args.seeds + 1):
            chosen = [m for m in members if m["subject"] == subject and m["seed"] < k]
            _, pred = ensemble_predict(
                np.stack([m["val_r"] for m in chosen]), np.stack([m["pred"] for m in chosen]), tau
            )
            rows.append(family_scores(args.results, subject, "", pred) | {"seeds": k})
    table = pd.DataFrame(rows)
    print(table.to_string())
    text = section(table, args.subjects, args.workers)
    report(args, DEMO_HEADING, text, "Run ensembling")


if __name__ == "__main__":
    main()
