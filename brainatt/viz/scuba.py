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
    for name in ("captions.tsv", "synthesis.tsv"):
        if not (run / name).exists():
            raise BrainattError(f"{run / name}: missing: rerun the scuba rule for this subject")
    return pd.read_csv(run / "captions.tsv", sep="\t"), pd.read_csv(run / "synthesis.tsv", sep="\t")


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


def plot_caption_map(captions: pd.DataFrame, out: str | Path) -> Path:
    """2-D map of voxel captions (bag-of-words counts of repeat 0, first two principal components) by ROI."""
    first = captions[captions["repeat"] == 0]
    words = [c.lower().replace('"', "").split() for c in first["caption"]]
    vocab = {w: i for i, w in enumerate(sorted({w for ws in words for w in ws}))}
    x = np.zeros((len(words), max(1, len(vocab))))
    for r, ws in enumerate(words):
        for w in ws:
            x[r, vocab[w]] += 1
    x -= x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    xy = u[:, :2] * s[:2]
    jitter = np.random.default_rng(0).normal(0, 0.05 * (xy.std(0) + 1e-9), xy.shape)
    xy = xy + jitter
    fig, ax = plt.subplots(figsize=(6, 5))
    labels = first["roi"].to_numpy()
    colors = plt.get_cmap("tab20")
    for n, roi in enumerate(sorted(set(labels))):
        hit = labels == roi
        ax.scatter(xy[hit, 0], xy[hit, 1], s=4, label=roi, alpha=0.6, color=colors(n % 20))
    ax.set_xlabel("caption PC 1")
    ax.set_ylabel("caption PC 2")
    ax.legend(fontsize=6, markerscale=3, ncol=2)
    fig.tight_layout()
    return _save(fig, out)


def write_gallery(runs: Mapping[str, Path], tables: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], out: Path) -> None:
    """One page: per subject, each category's caption-driven images (from ``{run}/images``) with their prompts and
    scores, the images embedded (it opens from the file system and inside the report)."""
    parts = ["<!doctype html><meta charset='utf-8'><title>BrainSCUBA</title>",
             "<style>img{width:96px;image-rendering:pixelated}td{vertical-align:top;font:12px sans-serif}</style>",
             "<h1>BrainSCUBA: images drawn from voxel captions</h1>"]  # fmt: skip
    for subject, (_, synthesis) in tables.items():
        parts.append(f"<h2>{html.escape(subject)}</h2><table>")
        own = synthesis[synthesis["source"] == synthesis["target"]]
        for source, rows in own.groupby("source"):
            parts.append(f"<tr><th>{html.escape(str(source))}</th>")
            for _, row in rows.iterrows():
                src = png_data_uri(runs[subject] / "images" / f"{source}_{row['image']}.png")
                score = f"pred {row['predicted']:.2f}" + (f", true {row['true']:.2f}" if "true" in row else "")
                parts.append(f"<td><img src='{src}'><br>{html.escape(row['prompt'])}<br>{score}</td>")
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
) -> dict:
    """Noun table, synthesis table, figures and gallery over subjects; returns the headline numbers."""
    runs = [Path(r) for r in runs]
    subjects = [r.parent.name for r in runs]
    tables = {s: read_run(r) for s, r in zip(subjects, runs, strict=True)}
    cats = list(lexicon)
    noun_rows, synth_rows, headline = [], [], {}
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    for (subject, (captions, synthesis)), resp in zip(tables.items(), responses, strict=True):
        by_roi = noun_shares(captions, lexicon).assign(subject=subject, level="roi")
        by_cat = category_shares(captions, lexicon).assign(subject=subject, level="category")
        noun_rows += [by_roi, by_cat]
        synth_rows.append(synthesis.assign(subject=subject))
        agreement = repeat_agreement(captions, lexicon, min_nc)
        headline[subject] = {"repeat_agreement": agreement}
        plot_noun_shares(by_roi, cats, figures / f"{subject}_nouns_by_roi.png")
        plot_caption_map(captions, figures / f"{subject}_caption_map.png")
        if noun not in lexicon:
            raise BrainattError(f"scuba.noun {noun!r} is not a lexicon category ({', '.join(cats)})")
        named = named_categories(captions["caption"].tolist(), lexicon)[noun]
        share = captions.assign(share=named.to_numpy(float)).groupby("voxel", as_index=False)["share"].mean()
        plot_brain_maps({f"captions naming '{noun}'": share}, resp, figures / f"{subject}_{noun}_map.png",
                        value="share")  # fmt: skip
    write_tsv(pd.concat(noun_rows, ignore_index=True), nouns_out)
    write_tsv(pd.concat(synth_rows, ignore_index=True), synthesis_out)
    write_gallery(dict(zip(subjects, runs, strict=True)), tables, Path(gallery))
    (figures / "headline.json").write_text(json.dumps(headline, indent=1))
    return headline
