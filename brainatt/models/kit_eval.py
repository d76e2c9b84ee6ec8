"""Kit quality on held-out nsd-synth scenes (drawn with a seed the kit never trained on).

- CLIP zero-shot 5-way category accuracy on scenes that hold exactly one category (prompt ensembles per class);
- CLIP image→caption retrieval top-1 among 100 pairs (mean over disjoint sets of 100);
- captioner: fraction of images whose generated caption names a category present, and the precision of the
  categories it names.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from brainatt.io import atomic_path
from brainatt.models.kit import MANIFEST, kit_scenes
from brainatt.models.loading import ModelSpec, load_captioner, load_clip
from brainatt.synth.scenes import CATEGORIES, CATEGORY_WORDS, FOODS, PLACES
from brainatt.synth.world import images_to_tensor

EVAL_SEED = 987_654
PROMPTS: dict[str, list[str]] = {
    "face": ["a face", "a face in the center"],
    "body": ["a body", "a body in the center"],
    "place": [f"an empty scene of a {p}" for p in PLACES],
    "word": ['the word "stop"', 'the word "hello"', 'the word "exit"'],
    "food": list(FOODS),
}
THRESHOLDS = {"clip_zero_shot_5way": 0.90, "clip_retrieval_top1_of_100": 0.50, "captioner_names_present": 0.80}


def named_categories(text: str) -> set[str]:
    return {c for c, words in CATEGORY_WORDS.items() if any(w in text for w in words)}


@torch.no_grad()
def evaluate_kit(kit_dir: str | Path, n_images: int = 600, image_size: int = 64) -> tuple[pd.DataFrame, dict]:
    kit_dir = Path(kit_dir)
    clip = load_clip(ModelSpec(role="clip", name=str(kit_dir / "clip")))
    images, captions, scenes = kit_scenes(n_images, EVAL_SEED, image_size)
    x = images_to_tensor(images)
    img = torch.cat([clip.encode_image(x[i : i + 256], normalize=True) for i in range(0, len(x), 256)])

    classes = torch.stack([clip.encode_text(PROMPTS[c], normalize=True).mean(0) for c in CATEGORIES])
    single = np.array([len(s.categories()) == 1 for s in scenes])
    truth = np.array(
        [CATEGORIES.index(next(iter(s.categories()))) if ok else -1 for s, ok in zip(scenes, single, strict=True)]
    )
    pred = (img @ classes.T).argmax(1).numpy()
    zero_shot = float(np.mean(pred[single] == truth[single]))

    txt = torch.cat([clip.encode_text(captions[i : i + 256], normalize=True) for i in range(0, len(captions), 256)])
    hits = []
    for start in range(0, n_images - 99, 100):
        sim = img[start : start + 100] @ txt[start : start + 100].T
        hits.append((sim.argmax(1) == torch.arange(100)).float().mean().item())
    retrieval = float(np.mean(hits))

    captioner = load_captioner(ModelSpec(role="captioner", name=str(kit_dir / "captioner")))
    raw = torch.cat([clip.encode_image(x[i : i + 256]) for i in range(0, len(x), 256)])
    generated = captioner.generate(raw, num_beams=3)
    named = [named_categories(g) for g in generated]
    present = [s.categories() for s in scenes]
    names_present = float(np.mean([bool(n & p) for n, p in zip(named, present, strict=True)]))
    precision = float(sum(len(n & p) for n, p in zip(named, present, strict=True)) / max(1, sum(map(len, named))))

    rows = [
        ("clip_zero_shot_5way", zero_shot, int(single.sum())),
        ("clip_retrieval_top1_of_100", retrieval, len(hits) * 100),
        ("captioner_names_present", names_present, n_images),
        ("captioner_category_precision", precision, n_images),
    ]
    table = pd.DataFrame(rows, columns=["metric", "value", "n"])
    table["threshold"] = table.metric.map(THRESHOLDS)
    table["passes"] = np.where(table.threshold.isna(), "", np.where(table.value >= table.threshold, "yes", "no"))
    return table, {"images": images[:12], "captions": captions[:12], "generated": generated[:12]}


def write_kit_quality(kit_dir: str | Path, table_path: str | Path, figure_path: str | Path) -> pd.DataFrame:
    cfg = json.loads((Path(kit_dir) / MANIFEST).read_text())["config"]
    table, samples = evaluate_kit(kit_dir, n_images=cfg.get("eval_images", 600), image_size=cfg["image_size"])
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    fig, axes = plt.subplots(3, 4, figsize=(10, 10), layout="constrained")
    for ax, im, true, gen in zip(axes.flat, samples["images"], samples["captions"], samples["generated"], strict=True):
        ax.imshow(im)
        ax.set_title("\n".join([*textwrap.wrap(f"true: {true}", 42), *textwrap.wrap(f"kit: {gen}", 42)]), fontsize=6)
        ax.axis("off")
    with atomic_path(figure_path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(figure_path).suffix.lstrip("."))
    plt.close(fig)
    return table
