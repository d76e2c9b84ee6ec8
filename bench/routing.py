"""How to combine the transformer's attention heads into one map per ROI query, compared on a demo's validation images.

Not a timing: the science check behind `AttentionRoutingEncoder.head_importance`, reproducible from a finished
``make demo`` (``results/``). Per subject it rebuilds the transformer's ensemble members from ``model.safetensors``
and ``model.json``, takes the pipeline's validation images (training images the fit held out; the test images
stay as ``routing.tsv`` scored them), and computes each member's last-layer per-head maps and per-image head
importance (the ablation's mean over these same images). The heads are combined five ways, averaged over members
as the pipeline does, and scored by `routing.routing_scores`, the function that writes ``routing.tsv``:

- ``head mean``: the reference's maps;
- ``one weighting``: each query's per-image weights averaged over the images, the same weights for every image;
- ``per image``: what ``attention.h5``'s ``maps`` hold;
- ``per image, shuffled``: each image gets another image's weights (a fixed permutation): the same weights, not
  this image's;
- ``per image, other queries``: a category query's heads weighted by the weights of each query of another
  category (same image, same member), then averaged: this image's weights, not this query's.

If the per-image weights find the heads that carry each image's response of each query, ``per image`` beats all
four; if they merely pick whichever head looks at the image's most salient object, ``other queries`` scores as
well as ``per image``. The table replaces the "Head weightings" subsection of the encoding section of RESULTS.md.

    python bench/routing.py                  # after make demo; --no-record prints only
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from common import DEMO_HEADING, code_version, demo_arguments, report

from brainatt.encoding.data import load_subject, validation_split
from brainatt.encoding.fit import load_members
from brainatt.encoding.routing import routing_scores
from brainatt.encoding.transformer import combine_heads
from brainatt.features.cache import FeatureCache

WEIGHTINGS = ("head mean", "one weighting", "per image", "per image, shuffled", "per image, other queries")
CATEGORY_KINDS = ("face", "body", "food", "word")


def subject_rows(results: Path, subject: str, cache: FeatureCache) -> pd.DataFrame:
    """`routing_scores` rows of every weighting of ``subject``'s validation-image maps."""
    folder = results / "encoding" / subject / "transformer"
    sub = load_subject(results / "prep" / subject / "responses.h5")
    info, models = load_members(folder, sub, cache.tokens(cache.layers[0], sub.train_ids[:1]).shape[-1])
    if info["arch"].get("queries", "roi") != "roi":  # rows below are queries, one per ROI
        raise SystemExit(f"{folder}: bench/routing.py compares head weightings of ROI queries only (queries: roi)")
    _, val_idx = validation_split(len(sub.train_ids), info["encoding"]["val_fraction"], info["encoding"]["split_seed"])
    ids = sub.train_ids[val_idx]
    members = []  # per member: per-head maps (N, H, Q, gh, gw) and per-image importance (N, H, Q)
    for member, model in zip(info["members"], models, strict=True):
        x = torch.from_numpy(cache.tokens(member["layer"], ids))
        members.append((model.head_maps(x), model.head_importance(x)))
    shuffle = torch.from_numpy(np.random.default_rng(0).permutation(len(ids)))
    combine = {
        "head mean": lambda per_head, w: combine_heads(per_head),
        "one weighting": lambda per_head, w: combine_heads(per_head, w.mean(0)),
        "per image": combine_heads,
        "per image, shuffled": lambda per_head, w: combine_heads(per_head, w[shuffle]),
    }
    scores = pd.read_csv(folder / "voxel_scores.tsv", sep="\t")
    truth = results / "nsd-synth" / "ground_truth"

    def rows(name: str, weigh) -> pd.DataFrame:  # members' maps combined by ``weigh``, averaged as in attention.h5
        maps = torch.stack([weigh(per_head, w) for per_head, w in members]).mean(0).transpose(0, 1).double()
        return score(maps.numpy(), info["queries"], ids, scores, truth, subject).assign(weighting=name)

    table = [rows(name, weigh) for name, weigh in combine.items()]
    kinds = table[0]["truth"].to_numpy()
    category = np.isin(kinds, CATEGORY_KINDS)

    def other_queries(per_head: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Each category query's heads weighted by the mean weights of the other categories' queries."""
        donors = torch.from_numpy((category[None, :] & (kinds[None, :] != kinds[:, None])).astype(np.float32))
        donated = w @ (donors / donors.sum(1, keepdim=True).clamp_min(1)).T  # (N, H, Q)
        return combine_heads(per_head, torch.where(torch.from_numpy(category), donated, w))

    table.append(rows(WEIGHTINGS[-1], other_queries))
    return pd.concat(table, ignore_index=True)


def score(maps: np.ndarray, queries: list[str], ids: np.ndarray, scores: pd.DataFrame, truth: Path, subject: str):
    """`routing_scores` of maps ``(Q, N, gh, gw)`` on images ``ids``, through a temporary attention file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "attention.h5"
        with h5py.File(path, "w") as f:
            f["queries"] = np.array(queries, dtype="S")
            f["nsd_ids"] = ids
            f["maps"] = maps
            f.attrs["grid"] = list(maps.shape[-2:])
        return routing_scores(path, scores, truth, subject)


def section(table: pd.DataFrame, subjects: list[str], results: Path) -> str:
    cat = table[table["family"] == "category"]
    ratio = cat.pivot_table("mass_ratio", "weighting", "truth", aggfunc="mean").reindex(WEIGHTINGS)
    lowest = cat.pivot_table("mass_ratio", "weighting", "truth", aggfunc="min").reindex(WEIGHTINGS)
    retino = table[table["family"] == "retinotopic"].groupby("weighting")["distance"].mean().reindex(WEIGHTINGS)
    uniform = table.loc[table["family"] == "retinotopic", "distance_uniform"].mean()
    own = cat[cat["weighting"] == "per image"].set_index(["subject", "query"])["mass_ratio"]
    lines = [
        "### Head weightings of the attention maps (validation images of the demo, `bench/routing.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(('brainatt',))}; "
        f"demo outputs in `{results}` for {', '.join(subjects)};\n  maps averaged over each subject's members, as in "
        "`attention.h5`",
        "- category queries: mass ratio on the target objects, mean over queries (lowest); retinotopic queries:\n"
        f"  centroid distance to the true pRF centre in image widths (uniform map: {uniform:.3f}); per image wins:\n"
        "  the category queries whose per-image maps score higher than this row's",
        "",
        "| weighting | " + " | ".join(CATEGORY_KINDS) + " | retinotopic distance | per image wins |",
        "|---|" + "---:|" * (len(CATEGORY_KINDS) + 2),
    ]
    for name in WEIGHTINGS:
        cells = [f"{ratio.loc[name, k]:.2f} ({lowest.loc[name, k]:.2f})" for k in CATEGORY_KINDS]
        other = cat[cat["weighting"] == name].set_index(["subject", "query"])["mass_ratio"]
        wins = "" if name == "per image" else f"{int((own > other.reindex(own.index)).sum())} / {len(own)}"
        distance = "—" if name == WEIGHTINGS[-1] else f"{retino[name]:.3f}"  # only category queries re-weighted
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {distance} | {wins} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = demo_arguments(__doc__)
    args = p.parse_args()
    cache = FeatureCache(args.results / "features" / args.features)
    table = pd.concat([subject_rows(args.results, s, cache) for s in args.subjects], ignore_index=True)
    text = section(table, args.subjects, args.results)
    report(args, DEMO_HEADING, text, "Head weightings of the attention maps")


if __name__ == "__main__":
    main()
