"""BrainSCUBA's tables, figures and gallery over subjects' runs (``results/scuba/{subject}/run``)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from brainatt.encoding.summary import write_tsv
from brainatt.images import png_data_uri
from brainatt.io import BrainattError, atomic_path
from brainatt.scuba.nouns import named_categories, noun_shares, repeat_agreement
from brainatt.viz.encoding import _save, plot_brain_maps


def read_run(run: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run folder's captions and synthesis tables."""
    run = Path(run)
    for name in ("captions.tsv", "synthesis.tsv", "summary.json"):
        if not (run / name).exists():
            raise BrainattError(f"{run / name}: missing: rerun the scuba rule for this subject")
    return pd.read_csv(run / "captions.tsv", sep="\t"), pd.read_csv(run / "synthesis.tsv", sep="\t")


def category_wins(by_roi: pd.DataFrame, roi_categories: Mapping[str, str], captions: pd.DataFrame) -> dict:
    """Per category ROI: the share of its captions naming its category, the highest share among the ROIs of other
    categories or of none (and which), and whether the ROI's share is strictly the highest. ``specificity``: the
    share naming its category minus the mean share naming each other lexicon category, with the same comparison
    (it separates ROIs whose captions all name the category but name other categories at different rates)."""
    shares = by_roi.set_index("roi")
    cats = [c for c in shares.columns if c not in ("n_voxels", "subject", "level")]
    roi_cat = captions.drop_duplicates("roi").set_index("roi")["category"].fillna("").astype(str)
    out = {}
    for roi, cat in roi_cat.items():
        if cat not in cats or cat not in roi_categories.values():
            continue
        others = shares.loc[[r for r in shares.index if roi_cat.get(r, "") != cat]]
        spec = shares[cat] - shares[[c for c in cats if c != cat]].mean(axis=1)
        own, own_spec, rival = float(shares.loc[roi, cat]), float(spec.loc[roi]), spec[others.index]
        out[roi] = {"category": cat, "share": own, "best_other": str(others[cat].idxmax()),
                    "best_other_share": float(others[cat].max()), "strict_win": bool(own > others[cat].max()),
                    "specificity": round(own_spec, 4), "best_other_specificity": round(float(rival.max()), 4),
                    "best_other_by_specificity": str(rival.idxmax()),
                    "specificity_win": bool(own_spec > rival.max())}  # fmt: skip
    return out


def kept_images(synthesis: pd.DataFrame) -> pd.DataFrame:
    """The rows of the images kept (all of them when the run kept every image it drew)."""
    return synthesis[synthesis["kept"].astype(bool)] if "kept" in synthesis else synthesis


def synthesis_wins(synthesis: pd.DataFrame) -> dict:
    """Per value (predicted, true): the category ROIs whose own captions' images drive them more than any other
    category's captions' images do."""
    out = {}
    for value in ("predicted", "true"):
        if value not in synthesis:
            continue
        m = synthesis_matrix(synthesis, value)
        wins = [t for t in m.columns if t in m.index and m.loc[t, t] > m[t].drop(index=t).max()]
        out[value] = {"wins": wins, "n": len(wins), "of": int(sum(t in m.index for t in m.columns))}
    return out


def category_shares(captions: pd.DataFrame, lexicon: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Per voxel category (the ROI's category; ``rest`` elsewhere): the share of its captions naming each category."""
    df = captions.assign(roi=captions["category"].fillna("").replace("", "other"))
    return noun_shares(df, lexicon)


def synthesis_matrix(synthesis: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean ``value`` response of each target ROI category (columns) to images drawn from each source's captions."""
    return synthesis.pivot_table(index="source", columns="target", values=value, aggfunc="mean")


def plot_noun_shares(shares: pd.DataFrame, categories: Sequence[str], out: str | Path) -> Path:
    """Heatmap: rows ROIs, columns categories, cells the share of captions naming the category."""
    data = shares.set_index("roi")[list(categories)]
    fig, ax = plt.subplots(figsize=(1.0 * len(categories) + 2, 0.35 * len(data) + 1.2))
    im = ax.imshow(data.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(categories)), categories)
    ax.set_yticks(range(len(data)), data.index)
    for (i, j), v in np.ndenumerate(data.to_numpy()):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    ax.set_xlabel("category named in the voxel's captions")
    fig.colorbar(im, ax=ax, label="share of captions")
    fig.tight_layout()
    return _save(fig, out)


def plot_caption_map(captions: pd.DataFrame, embeddings: np.ndarray, out: str | Path) -> Path:
    """2-D map of voxel caption embeddings (each voxel's mean unit CLIP text embedding over its repeats, first two
    principal components), one colour per ROI; category ROIs drawn on top."""
    df = captions[["voxel", "roi", "category"]].reset_index(drop=True)
    mean = pd.DataFrame(embeddings).groupby(df["voxel"].to_numpy()).mean()
    info = df.drop_duplicates("voxel").set_index("voxel").loc[mean.index]
    x = mean.to_numpy() - mean.to_numpy().mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    xy = u[:, :2] * s[:2]
    share = s[:2] ** 2 / max((s**2).sum(), 1e-12)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    colors = plt.get_cmap("tab20")
    labels = info["roi"].to_numpy()
    on_top = set(info.loc[info["category"].fillna("").astype(str) != "", "roi"])
    for n, roi in enumerate(sorted(set(labels), key=lambda r: (r in on_top, r))):
        hit = labels == roi
        ax.scatter(xy[hit, 0], xy[hit, 1], s=8 if roi in on_top else 4, label=roi, alpha=0.7, color=colors(n % 20),
                   marker="o" if roi in on_top else ".")  # fmt: skip
    ax.set_xlabel(f"caption embedding PC 1 ({share[0]:.0%} of variance)")
    ax.set_ylabel(f"caption embedding PC 2 ({share[1]:.0%})")
    ax.set_title("voxels by their captions' CLIP text embedding", fontsize=9)
    ax.legend(fontsize=6, markerscale=2, ncol=2)
    fig.tight_layout()
    return _save(fig, out)


def read_embeddings(run: str | Path, n_rows: int) -> np.ndarray:
    """A run's caption embeddings (one row per captions.tsv row)."""
    path = Path(run) / "caption_embeddings.npy"
    if not path.exists():
        raise BrainattError(f"{path}: missing: rerun the scuba rule for this subject")
    emb = np.load(path)
    if len(emb) != n_rows:
        raise BrainattError(f"{path}: {len(emb)} rows for {n_rows} captions: rerun the scuba rule for this subject")
    return emb


def braindive_for(braindive: pd.DataFrame | None, subject: str, roi_categories: Mapping[str, str]) -> pd.DataFrame:
    """BrainDiVE's kept images of ``subject`` with the scuba category of their target ROI (``category``) and their
    true (else predicted) standardised activation of it (``score``, ``score_kind``); empty without BrainDiVE."""
    cols = ["category", "image", "score", "score_kind"]
    if braindive is None or braindive.empty:
        return pd.DataFrame(columns=cols)
    rows = braindive[(braindive["subject"] == subject) & braindive["kept"].astype(bool)]
    out = []
    for _, row in rows.iterrows():
        cat = roi_categories.get(f"floc-{row['target']}") or roi_categories.get(str(row["target"]))
        if cat is None:
            continue
        kind = "true" if f"true_{row['target']}" in row and pd.notna(row[f"true_{row['target']}"]) else "pred"
        out.append({"category": cat, "image": row["image"], "score": float(row[f"{kind}_{row['target']}"]),
                    "score_kind": kind})  # fmt: skip
    return pd.DataFrame(out, columns=cols)


def compare_sets(synthesis: pd.DataFrame, natural: pd.DataFrame | None) -> pd.DataFrame:
    """Per category ROI: its mean predicted (and true) response to the images from its own captions and to its
    top natural test images (by predicted response), and the best other ROI's captions."""
    rows = []
    for target, rows_t in synthesis.groupby("target"):
        own = rows_t[rows_t["source"] == target]
        others = rows_t[rows_t["source"] != target].groupby("source")
        row = {"target": target}
        for value in ("predicted", "true"):
            if value not in rows_t:
                continue
            row[f"captions_{value}"] = own[value].mean()
            row[f"best_other_captions_{value}"] = others[value].mean().max()
            if natural is not None and value in natural:
                nat = natural[(natural["source"] == f"natural:{target}") & (natural["target"] == target)]
                row[f"natural_top_{value}"] = nat[value].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def _img(image: Path, caption: str) -> str:
    """A table cell with the PNG inlined (the page is one file)."""
    return f"<td><img src='{png_data_uri(image)}'><br>{caption}</td>"


def write_gallery(
    runs: Mapping[str, Path],
    tables: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]],
    out: Path,
    naturals: Mapping[str, pd.DataFrame | None] | None = None,
    divers: Mapping[str, pd.DataFrame] | None = None,
) -> None:
    """One page: per subject, each category's caption-driven images (from ``{run}/images``) with their prompts and
    scores, beside its top natural test images and BrainDiVE's kept images where given; the images embedded (it
    opens from the file system and inside the report)."""
    naturals = naturals or {}
    divers = divers or {}
    parts = ["<!doctype html><meta charset='utf-8'><title>BrainSCUBA</title>",
             "<style>img{width:96px;image-rendering:pixelated}td{vertical-align:top;font:11px sans-serif;"
             "max-width:110px}th{text-align:left;font:bold 12px sans-serif}</style>",
             "<h1>BrainSCUBA: images drawn from voxel captions</h1>",
             "<p>Per category ROI: images drawn from the captions of its best-predicted voxels (prompt, then the "
             "ROI's mean predicted and true response), its top natural test images by predicted response, and "
             "BrainDiVE's kept images of the same ROI where BrainDiVE ran (BrainDiVE's own standardised score: "
             "1 = one SD above the average natural image).</p>"]  # fmt: skip
    for subject, (_, synthesis) in tables.items():
        parts.append(f"<h2>{html.escape(subject)}</h2>")
        kept = kept_images(synthesis)
        comparison = compare_sets(kept, naturals.get(subject))
        parts.append(comparison.round(3).to_html(index=False, na_rep=""))
        parts.append("<table>")
        own = kept[kept["source"] == kept["target"]]
        natural = naturals.get(subject)
        for source, rows in own.groupby("source"):
            parts.append(f"<tr><th colspan=8>{html.escape(str(source))}: from its captions</th></tr><tr>")
            for _, row in rows.iterrows():
                score = f"pred {row['predicted']:.2f}" + (f", true {row['true']:.2f}" if "true" in row else "")
                parts.append(
                    _img(
                        runs[subject] / "images" / f"{source}_{row['image']}.png",
                        f"{html.escape(row['prompt'])}<br>{score}",
                    )
                )
            parts.append("</tr>")
            if natural is not None:
                nat = natural[(natural["source"] == f"natural:{source}") & (natural["target"] == source)]
                parts.append(f"<tr><th colspan=8>{html.escape(str(source))}: top natural test images</th></tr><tr>")
                for _, row in nat.iterrows():
                    score = f"pred {row['predicted']:.2f}" + (f", true {row['true']:.2f}" if "true" in row else "")
                    src = runs[subject] / "images" / f"natural_{source}_{row['image']}.png"
                    parts.append(_img(src, f"stimulus {row['nsd_id']}<br>{score}"))
                parts.append("</tr>")
            dive = divers.get(subject, pd.DataFrame(columns=["category"]))
            dive = dive[dive["category"] == source]
            if len(dive):
                parts.append(f"<tr><th colspan=8>{html.escape(str(source))}: BrainDiVE (kept)</th></tr><tr>")
                for _, row in dive.head(8).iterrows():
                    parts.append(_img(Path(row["image"]), f"BrainDiVE {row['score_kind']} {row['score']:.2f} SD"))
                parts.append("</tr>")
        parts.append("</table>")
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts))


def scuba_summary(
    runs: Sequence[str | Path],
    responses: Sequence[str | Path],
    lexicon: Mapping[str, Sequence[str]],
    noun: str,
    min_nc: float,
    nouns_out: str | Path,
    synthesis_out: str | Path,
    figures: str | Path,
    gallery: str | Path,
    braindive: str | Path | None = None,
) -> dict:
    """Noun table, synthesis table, figures and gallery over subjects; returns the headline numbers.

    ``braindive``: BrainDiVE's image table (braindive_images.tsv), whose kept images the gallery shows beside
    the caption images of the same ROI."""
    if noun not in lexicon:
        raise BrainattError(f"scuba.noun {noun!r} is not a lexicon category ({', '.join(lexicon)})")
    runs = [Path(r) for r in runs]
    subjects = [r.parent.name for r in runs]
    tables = {s: read_run(r) for s, r in zip(subjects, runs, strict=True)}
    dive = pd.read_csv(braindive, sep="\t") if braindive else None
    cats = list(lexicon)
    noun_rows, synth_rows, headline, naturals, divers = [], [], {}, {}, {}
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    for (subject, (captions, synthesis)), resp, run in zip(tables.items(), responses, runs, strict=True):
        roi_categories = json.loads((run / "summary.json").read_text())["config"]["roi_categories"]
        natural = pd.read_csv(run / "natural.tsv", sep="\t") if (run / "natural.tsv").exists() else None
        naturals[subject] = natural
        divers[subject] = braindive_for(dive, subject, roi_categories)
        by_roi = noun_shares(captions, lexicon).assign(subject=subject, level="roi")
        by_cat = category_shares(captions, lexicon).assign(subject=subject, level="category")
        noun_rows += [by_roi, by_cat]
        synth_rows.append(synthesis.assign(subject=subject))
        kept = kept_images(synthesis)
        headline[subject] = {
            "repeat_agreement": repeat_agreement(captions, lexicon, min_nc),
            "category_rois": category_wins(by_roi, roi_categories, captions),
            "synthesis": synthesis_wins(kept),
            "synthesis_all_drawn": synthesis_wins(synthesis),
            "synthesis_vs_natural": compare_sets(kept, natural).round(4).to_dict("records"),
        }
        plot_noun_shares(by_roi, cats, figures / f"{subject}_nouns_by_roi.png")
        plot_caption_map(captions, read_embeddings(run, len(captions)), figures / f"{subject}_caption_map.png")
        named = named_categories(captions["caption"].tolist(), lexicon)[noun]
        share = captions.assign(share=named.to_numpy(float)).groupby("voxel", as_index=False)["share"].mean()
        plot_brain_maps({f"captions naming '{noun}'": share}, resp, figures / f"{subject}_{noun}_map.png",
                        value="share")  # fmt: skip
    write_tsv(pd.concat(noun_rows, ignore_index=True), nouns_out)
    write_tsv(pd.concat(synth_rows, ignore_index=True), synthesis_out)
    write_gallery(dict(zip(subjects, runs, strict=True)), tables, Path(gallery), naturals, divers)
    (figures / "headline.json").write_text(json.dumps(headline, indent=1))
    return headline
