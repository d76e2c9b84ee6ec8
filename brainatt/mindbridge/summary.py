"""The regimes side by side: ``mindbridge.tsv`` (subject, regime, n_images, scores) and accuracy against N."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from brainatt.io import BrainattError, atomic_path


def _concat(folders: list[str | Path], what: str) -> pd.DataFrame:
    parts = []
    for folder in folders:
        path = Path(folder) / "scores.tsv"
        if not path.exists():
            raise BrainattError(f"{path}: missing: rerun the mindbridge {what} rule that writes {folder}")
        parts.append(pd.read_csv(path, sep="\t"))
    return pd.concat(parts, ignore_index=True)


def write_recon_table(galleries: list[str | Path], table: str | Path) -> pd.DataFrame:
    """The galleries' reconstruction scores in one table."""
    df = _concat(galleries, "reconstruction")
    with atomic_path(table) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    return df


def write_summary(runs: list[str | Path], table: str | Path, figure: str | Path) -> pd.DataFrame:
    """Concatenate the runs' ``scores.tsv``; plot image retrieval against the target's training images."""
    df = _concat(runs, "regime").sort_values(["subject", "regime", "n_images"])
    with atomic_path(table) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    limited = df[df["regime"].isin(["reset", "scratch", "finetune"])]
    for regime, group in limited.groupby("regime"):
        g = group.sort_values("n_images")
        ax.plot(g["n_images"], 100 * g["image_retrieval"], marker="o", label=regime)
    for regime, style in (("single", ":"), ("bridge", "--")):
        full = df[(df["regime"] == regime) & df["subject"].isin(limited["subject"])]
        for value in full["image_retrieval"]:
            ax.axhline(100 * value, ls=style, color="grey", label=f"{regime} (all data)")
    if len(df):
        ax.axhline(100 * df["chance"].iloc[0], color="k", lw=0.5, label="chance")
    ax.set_xlabel("training images of the new subject")
    ax.set_ylabel("image retrieval top-1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(figure) as tmp:
        fig.savefig(tmp, format=Path(figure).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return df
