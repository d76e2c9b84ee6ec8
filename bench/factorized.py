"""Settings of the factorized space × feature readout, compared on a demo's validation split.

Not a timing: the check behind the factorized encoder's defaults and the digest's claim 2 (a static receptive
field per voxel should match the transformer on retinotopic voxels, not on category ones). Per subject and cached
layer, each arm trains one factorized model as the pipeline trains its members (``fit.train_member``, seed 0,
the validation split of the training images that the demo's fit used) and scores it on that split; the test
images are never touched. An arm is a set of ``encoding.factorized`` settings, e.g.
``maps=voxel,lr=0.005``; the first arm is the reference of the paired columns. Fits run in ``--workers`` processes
of one thread each.

    python bench/factorized.py                      # after make demo; --no-record prints only
    python bench/factorized.py --subjects subj03 subj04 --arms maps=roi maps=roi,lr=0.005 --no-record
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import DEMO_HEADING, code_version, demo_arguments, parse_arm, pool_map, report

from brainatt.encoding.data import FAMILIES, load_subject, validation_split
from brainatt.encoding.fit import split_settings, train_member
from brainatt.features.cache import FeatureCache

ARMS = ("maps=roi", "maps=roi,lr=0.005", "maps=roi,epochs=96", "maps=voxel", "maps=voxel,lr=0.005")


def fit_one(results: Path, features: str, subject: str, arm: str, layer: int) -> dict:
    """One pipeline member (seed 0) of ``arm`` on ``subject``'s ``layer``, scored on the demo's validation split."""
    torch.set_num_threads(1)
    sub = load_subject(results / "prep" / subject / "responses.h5")
    cache = FeatureCache(results / "features" / features)
    settings = parse_arm(arm)
    _, train = split_settings(settings, "factorized")
    demo = json.loads((results / "encoding" / subject / "factorized" / "model.json").read_text())["encoding"]
    split = validation_split(len(sub.train_ids), demo["val_fraction"], demo["split_seed"])
    x = torch.from_numpy(cache.tokens(layer, sub.train_ids))
    _, r, history, _ = train_member("factorized", settings, sub, cache.grid, x, split, seed=0)
    best = int(np.argmax([h["val_r"] for h in history]))
    row = {"subject": subject, "arm": arm, "layer": layer, "all": float(r.mean()), "epochs": len(history)}
    row |= {family: float(r[sub.family == family].mean()) for family in FAMILIES}
    seconds = float(np.median([h["s"] for h in history]))
    stopped = len(history) - 1 - best >= train.patience  # early stopping ended it (possibly at the last epoch)
    row |= {"at_cap": not stopped, "best_epoch": best, "s_epoch": seconds}
    return row


def section(table: pd.DataFrame, arms: list[str], subjects: list[str], workers: int) -> str:
    """The RESULTS.md subsection: one row per arm, means over the models, paired against the first arm."""
    columns = ["all", *FAMILIES]
    ref = table[table["arm"] == arms[0]].set_index(["subject", "layer"])
    lines = [
        "### Factorized readout settings (validation split of the demo, `bench/factorized.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(('brainatt',))}; "
        f"subjects {', '.join(subjects)}, every cached layer, seed 0: {len(ref)} models per arm",
        f"- mean validation r per family; Δ all and wins: paired against `{arms[0]}` (members with a higher mean r);"
        "\n  at cap: models the epoch cap stopped before early stopping did; s/epoch: median, "
        f"{workers} one-thread workers side by side",
        "",
        "| arm | " + " | ".join(columns) + " | Δ all | wins | epochs | at cap | s/epoch |",
        "|---|" + "---:|" * (len(columns) + 5),
    ]
    for arm in arms:
        rows = table[table["arm"] == arm].set_index(["subject", "layer"])
        delta = rows["all"] - ref["all"].reindex(rows.index)
        means = " | ".join(f"{rows[c].mean():.4f}" for c in columns)
        paired = "" if arm == arms[0] else f"{delta.mean():+.4f} | {int((delta > 0).sum())} / {len(delta)}"
        lines.append(
            f"| `{arm}` | {means} | {paired or ' | '} | {rows['epochs'].mean():.1f} | "
            f"{int(rows['at_cap'].sum())} / {len(rows)} | {rows['s_epoch'].median():.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = demo_arguments(__doc__, subjects=("subj01", "subj02"))
    p.add_argument("--arms", nargs="+", default=list(ARMS), help="encoding.factorized settings, key=value,...")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    layers = FeatureCache(args.results / "features" / args.features).layers
    jobs = [(s, arm, layer) for arm in args.arms for s in args.subjects for layer in layers]
    jobs.sort(key=lambda job: "voxel" not in job[1])  # the slow per-voxel maps first, so the workers end together
    rows = pool_map(fit_one, [(args.results, args.features, *job) for job in jobs], args.workers)
    text = section(pd.DataFrame(rows), args.arms, args.subjects, args.workers)
    report(args, DEMO_HEADING, text, "Factorized readout settings")


if __name__ == "__main__":
    main()
