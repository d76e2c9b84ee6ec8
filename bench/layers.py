"""Layer ensembling, the digest's claim 7, checked on a finished demo's torch encoders.

Not a timing. Per subject and torch encoder it rebuilds the ensemble members and their ensemble weights from
``model.safetensors`` (`fit.load_members`), predicts the test images with each member alone, and scores every
member and the written ensemble (``test_pred.h5``) with `evaluate.voxel_scores`, the pipeline's scoring:
NC-normalised accuracy per ROI family. The ensemble weights were chosen on validation images only; the test
images are only scored here. The claim: the per-voxel softmax(τ·r_val) ensemble is at least as good as its best
single layer, and early-visual (retinotopic) voxels weight the earlier layer more than category voxels do.

    python bench/layers.py                   # after make demo; --no-record prints only
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import DEMO_HEADING, code_version, demo_arguments, report

from brainatt.encoding.data import FAMILIES, load_subject
from brainatt.encoding.evaluate import NC_MIN, load_test_predictions, load_truth, summarize, voxel_scores
from brainatt.encoding.fit import load_members
from brainatt.encoding.train import predict
from brainatt.features.cache import FeatureCache

ENCODERS = ("transformer", "factorized")


def subject_rows(results: Path, subject: str, encoder: str, cache: FeatureCache) -> pd.DataFrame:
    """Family rows of each single member and of the ensemble, with the mean ensemble weight of each member."""
    folder = results / "encoding" / subject / encoder
    sub = load_subject(results / "prep" / subject / "responses.h5")
    truth = load_truth(results / "nsd-synth" / "ground_truth" / f"{subject}.h5", sub)
    width = cache.tokens(cache.layers[0], sub.test_ids[:1]).shape[-1]
    torch.set_num_threads(1)
    info, models = load_members(folder, sub, width)
    _, ensemble = load_test_predictions(folder / "test_pred.h5")
    runs = [("ensemble", ensemble, None)]
    for member, model in zip(info["members"], models, strict=True):
        pred = predict(model, torch.from_numpy(cache.tokens(member["layer"], sub.test_ids)))
        runs.append((f"layer {member['layer']}, seed {member['seed']}", pred, member["ensemble_weights"]))
    rows = []
    for name, pred, weight in runs:
        scores = voxel_scores(sub, pred, truth)
        table = summarize(scores, subject, encoder).set_index("roi")
        ok = scores["nc"].to_numpy() >= NC_MIN
        for family in FAMILIES:
            row = {"subject": subject, "encoder": encoder, "run": name, "family": family}
            row["nc_norm"] = table.loc[f"family:{family}", "nc_norm"]
            in_family = ok & (sub.family == family)
            row["weight"] = float(weight[in_family].mean()) if weight is not None else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def section(table: pd.DataFrame, subjects: list[str], results: Path) -> str:
    """The RESULTS.md subsection: per encoder and family, single members against the ensemble."""
    lines = [
        "### Layer ensembling (test images of the demo, `bench/layers.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(('brainatt',))}; "
        f"demo outputs in `{results}` for {', '.join(subjects)}",
        f"- NC-normalised test accuracy (voxels with NC ≥ {NC_MIN:g} %), mean over subjects (lowest subject); "
        "weight: the member's mean\n  ensemble weight over the family's voxels, mean (range) over subjects; "
        "ensemble ≥ best member: subjects where the\n  ensemble scores at least its best single member",
        "",
        "| encoder | family | run | NC-normalised | weight | ensemble ≥ best member |",
        "|---|---|---|---:|---:|---:|",
    ]
    for (encoder, family), group in table.groupby(["encoder", "family"], sort=False):
        per_subject = group.pivot_table("nc_norm", "subject", "run")
        best_member = per_subject.drop(columns="ensemble").max(axis=1)
        wins = int((per_subject["ensemble"] >= best_member).sum())
        for run, rows in group.groupby("run", sort=False):
            weight = rows["weight"]
            cell = "" if weight.isna().all() else f"{weight.mean():.2f} ({weight.min():.2f}–{weight.max():.2f})"
            mark = f"{wins} / {len(per_subject)}" if run == "ensemble" else ""
            lines.append(
                f"| {encoder} | {family} | {run} | {rows['nc_norm'].mean():.3f} ({rows['nc_norm'].min():.3f}) | "
                f"{cell} | {mark} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = demo_arguments(__doc__)
    args = p.parse_args()
    cache = FeatureCache(args.results / "features" / args.features)
    table = pd.concat(
        [subject_rows(args.results, s, e, cache) for e in ENCODERS for s in args.subjects], ignore_index=True
    )
    text = section(table, args.subjects, args.results)
    report(args, DEMO_HEADING, text, "Layer ensembling")


if __name__ == "__main__":
    main()
