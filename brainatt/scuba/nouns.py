"""Caption nouns → categories through a lexicon, and the per-ROI tables BrainSCUBA reports.

A lexicon maps each category to the words that name it (``{"face": ["face"], "place": ["kitchen", ...]}``); a
caption names a category when one of its words occurs as a whole word (case-insensitive, plural ``s`` allowed).
A caption's *category noun* is the category named first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from brainatt.io import BrainattError

NONE = "none"


def _patterns(lexicon: Mapping[str, Sequence[str]]) -> dict[str, re.Pattern[str]]:
    if not lexicon or any(not words for words in lexicon.values()):
        raise BrainattError("scuba.lexicon: every category needs at least one word")
    return {
        cat: re.compile(r"\b(" + "|".join(re.escape(w.lower()) for w in words) + r")s?\b")
        for cat, words in lexicon.items()
    }


def named_categories(captions: Sequence[str], lexicon: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One boolean column per category (does the caption name it) and ``first``: the category named first."""
    pats = _patterns(lexicon)
    rows = []
    for text in captions:
        low = text.lower()
        hits = {cat: p.search(low) for cat, p in pats.items()}
        found = {cat: m.start() for cat, m in hits.items() if m}
        rows.append({**{cat: cat in found for cat in pats}, "first": min(found, key=found.get) if found else NONE})
    return pd.DataFrame(rows, columns=[*pats, "first"])


def noun_shares(captions: pd.DataFrame, lexicon: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Per ROI: voxels, and for each category the share of its captions (all voxels × repeats) naming it."""
    named = named_categories(captions["caption"].tolist(), lexicon)
    cats = list(lexicon)
    table = pd.concat([captions[["roi"]].reset_index(drop=True), named[cats].astype(float)], axis=1)
    out = table.groupby("roi")[cats].mean()
    out.insert(0, "n_voxels", captions.groupby("roi")["voxel"].nunique())
    return out.reset_index()


def repeat_agreement(
    captions: pd.DataFrame, lexicon: Mapping[str, Sequence[str]], min_nc: float, seed: int = 0
) -> dict[str, float | int]:
    """How often a voxel's repeats (captions from disjoint candidate sets) agree, over voxels with NC ≥ ``min_nc`` %.

    ``shared``: some category is named by every repeat's caption; ``same_set``: every repeat names the same set of
    categories; ``first``: every repeat names the same category first (captions that list several objects may list
    them in any order). ``shared_chance``: ``shared`` when each voxel's repeat-k caption is replaced by repeat k of
    a random other scored voxel (one permutation per repeat, ``seed``): the agreement captions reach without
    coming from the same voxel. NaN without such voxels.
    """
    named = named_categories(captions["caption"].tolist(), lexicon)
    cats = list(lexicon)
    df = pd.concat([captions[["voxel", "repeat", "nc"]].reset_index(drop=True), named], axis=1)
    df = df[df["nc"] >= min_nc]
    if df.empty:
        return {"shared": float("nan"), "same_set": float("nan"), "first": float("nan"),
                "shared_chance": float("nan"), "n_voxels": 0}  # fmt: skip
    df = df.assign(names=df[cats].apply(lambda r: "|".join(c for c in cats if r[c]), axis=1))
    grouped = df.groupby("voxel")
    shared = grouped[cats].all().any(axis=1)
    rng = np.random.default_rng(seed)
    shuffled = []
    for _, rep in df.sort_values(["repeat", "voxel"]).groupby("repeat"):
        rep = rep.iloc[rng.permutation(len(rep))]
        shuffled.append(rep[cats].reset_index(drop=True).assign(slot=np.arange(len(rep))))
    chance = pd.concat(shuffled).groupby("slot")[cats].all().any(axis=1)
    return {
        "shared": float(shared.mean()),
        "same_set": float((grouped["names"].nunique() == 1).mean()),
        "first": float((grouped["first"].nunique() == 1).mean()),
        "shared_chance": float(chance.mean()),
        "n_voxels": len(shared),
    }
