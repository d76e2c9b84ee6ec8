"""BrainDiVE figures and galleries: cross-activation matrices, activation against γ, and HTML pages of the kept
images that open from the file system and inside the report (images embedded in each page)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from brainatt.braindive.evaluate import cross_activation
from brainatt.braindive.pipeline import UNGUIDED, DiveConfig, load_png
from brainatt.images import png_data_uri
from brainatt.io import atomic_path
from brainatt.viz.encoding import _save

FIGURES = {"cross": "braindive_cross_activation.png", "gamma": "braindive_gamma.png"}


def plot_cross_activation(summary: pd.DataFrame, cfg: DiveConfig, out: str | Path) -> Path:
    """Targets × ROIs heatmaps of the kept images' mean activation (predicted; true where known), in SD."""
    kinds = [k for k in ("pred", "true") if f"{k}_{cfg.rois[0]}" in summary]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        m = cross_activation(summary, cfg, kind).to_numpy()
        lim = np.nanmax(np.abs(m)) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, fontweight="bold" if i == j else None)
        ax.set_xticks(range(len(cfg.rois)), cfg.rois, rotation=45, ha="right")
        ax.set_yticks(range(len(cfg.rois)), cfg.rois)
        ax.set_xlabel("ROI j (activation, SD over natural test images)")
        ax.set_ylabel("images made for ROI k")
        ax.set_title({"pred": "predicted (encoder)", "true": "true (ground-truth brain)"}[kind])
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return _save(fig, out)


def plot_gamma(summary: pd.DataFrame, cfg: DiveConfig, out: str | Path) -> Path:
    """Mean target activation (all images of each γ; γ = 0: the unguided images) against γ, per target."""
    kinds = [k for k in ("pred", "true") if f"{k}_{cfg.rois[0]}" in summary]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False)
    rows = summary[summary["set"].isin(["unguided", "guided"])]
    for ax, kind in zip(axes[0], kinds, strict=True):
        for target in cfg.rois:
            curve = rows[rows["target"] == target].groupby("gamma")[f"{kind}_{target}"].mean()
            ax.plot(curve.index, curve.to_numpy(), marker="o", label=target)
        ax.set_xlabel("γ")
        ax.set_ylabel(f"{kind} activation of the target (SD)")
        ax.axhline(0, color="0.7", lw=0.8)
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def _grid(paths: list[str], out: Path, columns: int = 8) -> None:
    images = [load_png(Path(p)) for p in paths]
    h, w, _ = images[0].shape
    rows = -(-len(images) // columns)
    canvas = np.full((rows * (h + 2), min(columns, len(images)) * (w + 2), 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = im
    from PIL import Image

    Image.fromarray(canvas).save(out)


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} img{{image-rendering:pixelated}} td,th{{padding:2px 6px;
font-size:12px;text-align:right}} .cell{{display:inline-block;margin:4px;text-align:center;font-size:11px}}</style>
</head><body><h1>{title}</h1>{body}</body></html>
"""


def _table(rows: pd.DataFrame) -> str:
    return rows.to_html(index=False, float_format=lambda v: f"{v:.2f}", border=0)


def write_galleries(images: pd.DataFrame, summary: pd.DataFrame, cfg: DiveConfig, out_dir: str | Path) -> Path:
    """``{out_dir}/{subject}/{roi}/`` (grid.png, index.html) and ``{out_dir}/index.html``, pages with their images
    embedded (they open from the file system and inside the report); the folder is written whole, atomically."""
    with atomic_path(out_dir, directory=True) as tmp:
        _write_galleries(images, summary, cfg, tmp)
    return Path(out_dir) / "index.html"


def _write_galleries(images: pd.DataFrame, summary: pd.DataFrame, cfg: DiveConfig, out_dir: Path) -> None:
    links = []
    columns = ["seed", "gamma", *[c for c in images if c.startswith(("pred_", "true_"))]]
    columns += ["category"] if "category" in images else []
    for (subject, target), rows in images[images["target"] != UNGUIDED].groupby(["subject", "target"], sort=False):
        kept = rows[rows["kept"].astype(bool) & (rows["gamma"] == rows["gamma"].max())]
        page = out_dir / subject / target
        page.mkdir(parents=True)
        _grid(list(kept["image"]), page / "grid.png")
        cells = []
        for _, row in kept.iterrows():
            cells.append(
                f'<div class="cell"><img src="{png_data_uri(row["image"])}" width="128"><br>seed {row["seed"]}, '
                f"pred {row[f'pred_{target}']:.2f}"
                + (f", true {row[f'true_{target}']:.2f}" if f"true_{target}" in row else "")
                + "</div>"
            )
        stats = summary[(summary["subject"] == subject) & (summary["target"] == target)]
        body = (
            f"<p>Kept images (top {cfg.keep:.0%} by predicted activation) of {html.escape(target)}, "
            f"{html.escape(subject)}: γ = {rows['gamma'].max():g}, {cfg.steps} {cfg.scheduler} steps, encoder "
            f"{html.escape(cfg.encoder)}. Activations in SD over the natural test images.</p>"
            f'<p><img src="{png_data_uri(page / "grid.png")}"></p>{"".join(cells)}<h2>Image sets</h2>{_table(stats)}'
            f"<h2>Kept images</h2>{_table(kept[columns])}"
            '<p><a href="../../index.html">all galleries</a></p>'
        )
        (page / "index.html").write_text(PAGE.format(title=f"BrainDiVE {subject} {target}", body=body))
        links.append(
            f'<div class="cell"><a href="{subject}/{target}/index.html"><img src="{png_data_uri(page / "grid.png")}" '
            f'height="72"><br>{html.escape(subject)} {html.escape(target)}</a></div>'
        )
    body = "<p>Brain-guided images per subject × ROI (kept images).</p>" + "".join(links)
    (out_dir / "index.html").write_text(PAGE.format(title="BrainDiVE galleries", body=body))
