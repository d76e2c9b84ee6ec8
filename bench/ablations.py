"""What the transformer's accuracy rests on: the digest's claims 4 (position codes) and 6 (query granularity).

Not a timing. Each arm changes one thing in the demo's transformer and refits it as the pipeline does (every cached
layer, seed 0 unless ``--seed``, ``fit.train_member`` on the demo's validation split, the per-voxel softmax(τ·r_val)
layer ensemble), then scores the test images with `evaluate.voxel_scores`, the pipeline's scoring, always by the
voxels' true ROI families. The reference is the demo's own transformer (its ``test_pred.h5``), so every arm is
paired with it per subject; with ``--seed N`` (N > 0) every arm and the reference, the demo's settings refitted, use
seed N, so an arm's change can be checked against seed noise. Arms are ``encoding.transformer`` settings, plus
``rois=shuffled`` (each hemisphere's voxels get their ROI labels in random order, ROI sizes kept, so a query serves
voxels that route differently):

- ``positions=false``: keys without position codes. Claim 4: that should hurt retinotopic voxels much more than
  category ones (which route by content wherever the object is).
- ``queries=hemisphere``: one query per hemisphere, every ROI sharing one routing. Claim 6: the worst for ROIs
  whose voxels route differently, the category ROIs.
- ``rois=shuffled``: claim 6, shuffling the voxel → ROI assignment should cost accuracy.

Fits run in ``--workers`` processes of one thread each.

    python bench/ablations.py                      # after make demo; --no-record prints only
    python bench/ablations.py --subjects subj01 --arms positions=false --no-record
    python bench/ablations.py --subjects subj01 --arms queries=retinotopic-voxel --seed 1 --no-record
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import DEMO_HEADING, code_version, demo_arguments, parse_arm, pool_map, report

from brainatt.encoding.data import FAMILIES, SubjectData, load_subject, validation_split
from brainatt.encoding.evaluate import NC_MIN, load_test_predictions, load_truth, summarize, voxel_scores
from brainatt.encoding.fit import train_member
from brainatt.encoding.train import ensemble_predict, predict
from brainatt.features.cache import FeatureCache

ARMS = ("positions=false", "queries=hemisphere", "rois=shuffled")
COLUMNS = ("all", *FAMILIES)


def shuffled_rois(sub: SubjectData, seed: int = 0) -> SubjectData:
    """``sub`` with each hemisphere's ROI labels permuted over its voxels (families, responses and NC unchanged)."""
    rng = np.random.default_rng(seed)
    roi = sub.roi.copy()
    for hemi in np.unique(sub.hemi):
        voxels = np.flatnonzero(sub.hemi == hemi)
        roi[voxels] = roi[rng.permutation(voxels)]
    return dataclasses.replace(sub, roi=roi)


def demo_settings(results: Path, subject: str) -> dict:
    """The ``encoding`` section the demo's transformer of ``subject`` was fitted with (one seed: the arms are fitted
    with one, so a reference with more would not be paired)."""
    settings = json.loads((results / "encoding" / subject / "transformer" / "model.json").read_text())["encoding"]
    if list(settings["seeds"]) != [0]:
        raise SystemExit(f"{results}: the demo's transformer has seeds {settings['seeds']}; these benches need [0]")
    return settings


def demo_layers(args: argparse.Namespace, subject: str) -> list[int]:
    """The cached layers the demo's transformer of ``subject`` ensembles (``encoding.layers``, default all)."""
    return (
        demo_settings(args.results, subject)["layers"] or FeatureCache(args.results / "features" / args.features).layers
    )


def fit_one(results: Path, features: str, subject: str, arm: str, layer: int, seed: int = 0) -> dict:
    """One member of ``arm`` (``""``: the demo's settings) on ``subject``'s ``layer``: its validation r and test
    predictions."""
    torch.set_num_threads(1)
    sub = load_subject(results / "prep" / subject / "responses.h5")
    cache = FeatureCache(results / "features" / features)
    demo = demo_settings(results, subject)
    settings = demo["transformer"] | (parse_arm(arm) if arm else {})
    rois = settings.pop("rois", "atlas")
    if rois not in ("atlas", "shuffled"):
        raise SystemExit(f"arm {arm!r}: rois must be 'shuffled' (or left out for the atlas ROIs)")
    if rois == "shuffled":
        sub = shuffled_rois(sub)
    split = validation_split(len(sub.train_ids), demo["val_fraction"], demo["split_seed"])
    x = torch.from_numpy(cache.tokens(layer, sub.train_ids))
    model, r, history, queries = train_member("transformer", settings, sub, cache.grid, x, split, seed)
    pred = predict(model, torch.from_numpy(cache.tokens(layer, sub.test_ids)))
    seconds = float(np.median([h["s"] for h in history]))
    member = {"subject": subject, "arm": arm, "layer": layer, "seed": seed, "val_r": r, "pred": pred}
    return member | {"epochs": len(history), "s_epoch": seconds, "n_queries": len(queries)}


@functools.lru_cache(maxsize=4)
def held_out(results: Path, subject: str) -> tuple[SubjectData, np.ndarray]:
    """A subject's responses and noise-free test responses, read once per process (every arm scores them)."""
    sub = load_subject(results / "prep" / subject / "responses.h5")
    return sub, load_truth(results / "nsd-synth" / "ground_truth" / f"{subject}.h5", sub)


def family_scores(results: Path, subject: str, arm: str, pred: np.ndarray) -> dict:
    """NC-normalised test accuracy per family (voxels with NC ≥ NC_MIN) and mean r against the truth, all voxels."""
    sub, truth = held_out(results, subject)
    table = summarize(voxel_scores(sub, pred, truth), subject, "transformer").set_index("roi")
    row = {"subject": subject, "arm": arm, "all": table.loc["all", "nc_norm"], "r_truth": table.loc["all", "r_truth"]}
    return row | {family: table.loc[f"family:{family}", "nc_norm"] for family in FAMILIES}


def ensemble_rows(results: Path, members: list[dict]) -> pd.DataFrame:
    """One row per subject × arm: the arm's layer ensemble (weights from validation r) and the reference: the
    members of arm ``""`` (the demo's settings refitted) where there are any, else the demo's own fit."""
    rows = []
    for (subject, arm), group in pd.DataFrame(members).groupby(["subject", "arm"], sort=False):
        tau = demo_settings(results, subject)["ensemble_temperature"]
        _, pred = ensemble_predict(np.stack(group["val_r"].tolist()), np.stack(group["pred"].tolist()), tau)
        row = family_scores(results, subject, arm or "reference", pred)
        row |= {"epochs": group["epochs"].mean(), "s_epoch": group["s_epoch"].median()}
        rows.append(row | {"n_queries": int(group["n_queries"].iloc[0])})
    if any(m["arm"] == "" for m in members):
        return pd.DataFrame(rows)
    for subject in dict.fromkeys(m["subject"] for m in members):
        _, pred = load_test_predictions(results / "encoding" / subject / "transformer" / "test_pred.h5")
        info = json.loads((results / "encoding" / subject / "transformer" / "model.json").read_text())
        row = family_scores(results, subject, "reference", pred)
        epochs = np.mean([m["epochs"] for m in info["members"]])
        rows.append(row | {"epochs": epochs, "s_epoch": np.nan, "n_queries": len(info["queries"])})
    return pd.DataFrame(rows)


def section(table: pd.DataFrame, args: argparse.Namespace) -> str:
    """The RESULTS.md subsection: per arm, means over subjects and the change paired against the reference."""
    ref = table[table["arm"] == "reference"].set_index("subject")
    code = code_version(("brainatt", "bench/ablations.py"))
    reference = (
        f"the demo's settings refitted; every arm seed {args.seed}"
        if args.seed
        else f"the demo's transformer in `{args.results}`"
    )
    lines = [
        "### Routing ablations (test images of the demo, `bench/ablations.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code}; "
        f"subjects {', '.join(args.subjects)}; reference: {reference}",
        f"- NC-normalised test accuracy (voxels with NC ≥ {NC_MIN:g} %) of each arm's layer ensemble, mean over "
        "subjects, and in brackets the change\n  against the reference: mean, worst subject; r truth: mean r "
        "against the noise-free responses, all voxels; epochs: mean\n  over members; s/epoch: median, "
        f"{args.workers} one-thread workers side by side",
        "",
        "| arm | queries | " + " | ".join(COLUMNS) + " | r truth | epochs | s/epoch |",
        "|---|---:|" + "---:|" * (len(COLUMNS) + 3),
    ]
    for arm in ["reference", *args.arms]:
        rows = table[table["arm"] == arm].set_index("subject")
        cells = []
        for column in (*COLUMNS, "r_truth"):
            delta = rows[column] - ref[column].reindex(rows.index)
            change = "" if arm == "reference" else f" ({delta.mean():+.3f}, {delta.min():+.3f})"
            cells.append(f"{rows[column].mean():.3f}{change}")
        seconds = "" if rows["s_epoch"].isna().all() else f"{rows['s_epoch'].median():.1f}"
        low, high = rows["n_queries"].min(), rows["n_queries"].max()
        queries = f"{low}" if low == high else f"{low}–{high}"
        lines.append(f"| `{arm}` | {queries} | {' | '.join(cells)} | {rows['epochs'].mean():.1f} | {seconds} |")
    return "\n".join(lines) + "\n"


def describe(m: dict) -> str:
    """A fitted member in one line, for the progress log."""
    return (
        f"{m['subject']} {m['arm'] or 'demo'} layer {m['layer']} seed {m['seed']}: val r {m['val_r'].mean():.4f}, "
        f"{m['epochs']} epochs, {m['s_epoch']:.1f} s/epoch"
    )


def main() -> None:
    p = demo_arguments(__doc__)
    p.add_argument("--arms", nargs="+", default=list(ARMS), help="encoding.transformer settings, key=value,...")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0, help="every arm's seed; > 0 refits the reference with it too")
    args = p.parse_args()
    arms = ["", *args.arms] if args.seed else args.arms
    jobs = [(s, arm, layer, args.seed) for arm in arms for s in args.subjects for layer in demo_layers(args, s)]
    members = pool_map(fit_one, [(args.results, args.features, *job) for job in jobs], args.workers, describe)
    table = ensemble_rows(args.results, members)
    print(table.to_string())
    text = section(table, args)
    report(args, DEMO_HEADING, text, "Routing ablations")


if __name__ == "__main__":
    main()
