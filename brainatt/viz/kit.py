"""The kit's sample figure: captions of held-out scenes and images generated per category prompt."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from brainatt.io import atomic_path


def plot_kit_samples(samples: dict, figure_path: str | Path) -> Path:
    """``samples`` as `models.kit_eval.evaluate_kit` returns them: 12 scenes with their true and generated captions,
    and the images generated per category (``samples["diffusion"]``, possibly empty)."""
    generated = samples["diffusion"]
    n_gen = min([6, *(len(v) for v in generated.values())]) if generated else 0
    fig = plt.figure(figsize=(10, 10 + 1.7 * len(generated) * bool(n_gen)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[10, 1.7 * len(generated) + 1e-3] if n_gen else [1, 1e-3])
    axes = top.subplots(3, 4)
    for ax, im, true, gen in zip(axes.flat, samples["images"], samples["captions"], samples["generated"], strict=True):
        ax.imshow(im)
        ax.set_title("\n".join([*textwrap.wrap(f"true: {true}", 42), *textwrap.wrap(f"kit: {gen}", 42)]), fontsize=6)
        ax.axis("off")
    if n_gen:
        bottom.suptitle("kit diffusion: generated from category prompts (rows)", fontsize=9)
        grid = bottom.subplots(len(generated), n_gen, squeeze=False)
        for row, (cat, images) in zip(grid, generated.items(), strict=True):
            for j, ax in enumerate(row):
                ax.imshow(images[j].permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(cat, fontsize=8)
    with atomic_path(figure_path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(figure_path).suffix.lstrip("."))
    plt.close(fig)
    return Path(figure_path)
