"""Routing across images, the digest's claim 3, from a finished demo's ``results/tables/routing.tsv``.

Not a timing, and nothing is fitted: it summarises the columns `routing.routing_scores` writes for the demo's
transformer on the test images. The claims: category attention follows the object from image to image (it beats
any fixed map), retinotopic attention stays nearly the same in every image and on the true pRFs, and mixed ROIs
(nsd-synth's OFA / OWFA, category voxels that keep a spatial preference) show both.

    python bench/tracking.py                      # after make demo; --no-record prints only
"""

from __future__ import annotations

import datetime

import pandas as pd
from common import DEMO_HEADING, code_version, demo_arguments, report

COLUMNS = {
    "variability": "variability, maps",
    "variability_head_mean": "variability, head mean",
    "truth_variability": "variability, truth",
    "mass_ratio": "mass ratio",
    "mass_ratio_static": "mass ratio, mean map fixed",
    "mass_ratio_best_static": "mass ratio, best fixed patch",
}

ORDER = ("retinotopic", "face", "face, mixed", "body", "food", "word", "word, mixed", "place", "unlabelled")


def kinds(table: pd.DataFrame) -> pd.Series:
    """Each row's group: ``retinotopic``, a category with ``, mixed`` where its voxels are mostly ``:mixed``, or
    the ROI's truth (``place``, ``unlabelled``)."""
    kind = table["truth"].where(table["family"] != "retinotopic", "retinotopic")
    mixed = table["mixed"] & (table["family"] == "category")
    return kind.where(~mixed, kind + ", mixed")


def cell(values: pd.Series) -> str:
    if values.isna().all():
        return ""
    return f"{values.mean():.3f} ({values.min():.3f}–{values.max():.3f})"


def mixed_pairs(table: pd.DataFrame, column: str) -> tuple[int, int, float, float]:
    """Per subject × hemisphere, each mixed category ROI against the unmixed ROI of its category: how many vary less
    in ``column``, out of how many, and the smallest and largest difference (unmixed − mixed)."""
    rows = table[table["family"] == "category"].assign(hemi=table["query"].str.split(".").str[0])
    wide = rows.pivot_table(column, ["subject", "hemi", "truth"], "mixed")
    gaps = (wide[False] - wide[True]).dropna()
    return int((gaps > 0).sum()), len(gaps), float(gaps.min()), float(gaps.max())


def section(table: pd.DataFrame, results: str) -> str:
    """The RESULTS.md subsection: the table by ROI group, then the numbers the claims rest on."""
    table = table.assign(kind=kinds(table))
    subjects = sorted(table["subject"].unique())
    lines = [
        "### Routing across images (test images of the demo, `bench/tracking.py`; the digest's claim 3)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: "
        f"{code_version(('brainatt', 'bench/tracking.py'))}; `{results}/tables/routing.tsv` of {', '.join(subjects)}",
        "- mean (min–max) over the ROI × hemisphere rows. variability: mean over test images of the total-variation "
        "distance between\n  the image's map and the ROI's mean map (0 = one map for every image); maps: heads "
        "weighted per image by importance (the\n  demo's `maps`); head mean: the reference's maps; truth: nsd-synth's "
        "own pooling weights (a retinotopic voxel's pRF is fixed: 0).\n  mass ratio: attention on the category's "
        "object patches over their share; mean map fixed: the ROI's maps averaged over the other\n  test images, the "
        "same map for every image; best fixed patch: all attention on the patch most often on the category's "
        "objects\n  in the world's scenes outside the test set",
        "",
        "| ROIs | rows | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    groups = sorted(table["kind"].unique(), key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))
    for kind in groups:
        rows = table[table["kind"] == kind]
        cells = [cell(rows[c]) if c in rows else "" for c in COLUMNS]
        lines.append(f"| {kind} | {len(rows)} | " + " | ".join(cells) + " |")
    cat, ret = table[table["family"] == "category"], table[table["family"] == "retinotopic"]
    beats = (cat["mass_ratio"] > cat["mass_ratio_best_static"]).sum()
    over = cat["mass_ratio"] / cat["mass_ratio_best_static"]
    lines += [
        "",
        f"- per-image maps above the best fixed patch in {beats} of {len(cat)} category rows, by "
        f"{over.min():.2f}–{over.max():.2f}×",
    ]
    for column in ("variability", "variability_head_mean"):
        bounds = {
            s: (g.loc[g["family"] == "retinotopic", column].max(), g.loc[g["family"] == "category", column].min())
            for s, g in table.groupby("subject")
        }
        verdict = "every" if all(high < low for high, low in bounds.values()) else "not every"
        per_subject = "; ".join(f"{s} {high:.3f} vs {low:.3f}" for s, (high, low) in bounds.items())
        lines.append(
            f"- {column}, retinotopic max vs category min ({verdict} subject has each retinotopic row below every "
            f"category row): {per_subject}; means {ret[column].mean():.3f} vs {cat[column].mean():.3f}"
        )
    for column in ("variability", "variability_head_mean", "truth_variability"):
        less, n, low, high = mixed_pairs(table, column)
        lines.append(
            f"- {column}: mixed ROI below the unmixed ROI of its category in {less} of {n} subject × hemisphere "
            f"pairs (difference {low:+.3f} … {high:+.3f})"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = demo_arguments(__doc__)
    args = p.parse_args()
    table = pd.read_csv(args.results / "tables" / "routing.tsv", sep="\t")
    table = table[table["subject"].isin(args.subjects)]
    report(args, DEMO_HEADING, section(table, str(args.results)), "Routing across images")


if __name__ == "__main__":
    main()
