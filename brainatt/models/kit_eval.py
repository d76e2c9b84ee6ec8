"""Kit quality on held-out nsd-synth scenes (drawn with a seed the kit never trained on).

- CLIP zero-shot 5-way category accuracy on scenes that hold exactly one category (prompt ensembles per class);
- CLIP image→caption retrieval top-1 among 100 pairs (mean over disjoint sets of 100);
- captioner: fraction of images whose generated caption names a category present, and the precision of the
  categories it names;
- diffusion: images generated from per-category prompts (worded like the generator's captions) are zero-shot
  classified as that category by the kit CLIP, and drive the ground-truth brain's matching category ROI above
  every other category ROI. The brains are those of a small fresh nsd-synth world (same generator, same
  brain model; 2 subjects); an ROI's response is the mean over its category-selective voxels (kind exactly
  the category, not the ':mixed' retinotopic ones) of the standardised noise-free response.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainatt.images import images_to_tensor
from brainatt.io import atomic_path
from brainatt.models.kit import MANIFEST, DiffusionConfig, kit_scenes
from brainatt.models.loading import ClipModel, load_captioner, load_clip, load_diffusion
from brainatt.models.spec import ModelSpec
from brainatt.synth.brain import SynthBrain, VisualSystem
from brainatt.synth.scenes import CATEGORIES, CATEGORY_WORDS, FOODS, PLACES
from brainatt.synth.world import WorldSpec, build_world

EVAL_SEED = 987_654
PROMPTS: dict[str, list[str]] = {
    "face": ["a face", "a face in the center"],
    "body": ["a body", "a body in the center"],
    "place": [f"an empty scene of a {p}" for p in PLACES],
    "word": ['the word "stop"', 'the word "hello"', 'the word "exit"'],
    "food": list(FOODS),
}
# Generation prompts: "a {category}" worded as the generator's captions of single-category scenes.
DIFFUSION_PROMPTS: dict[str, list[str]] = {
    "face": ["a face in the center on a plain background", "a large face in the center on a plain background"],
    "body": ["a body in the center on a plain background"],
    "place": [f"an empty scene of a {p}" for p in PLACES],
    "word": [f'the word "{w}" in the center on a plain background' for w in ("stop", "exit", "hello")],
    "food": [f"{f} in the center on a plain background" for f in FOODS],
}
THRESHOLDS = {
    "clip_zero_shot_5way": 0.90,
    "clip_retrieval_top1_of_100": 0.50,
    "captioner_names_present": 0.80,
    "diffusion_zero_shot_5way": 0.70,
    "diffusion_gt_roi_wins": 1.0,
}


def named_categories(text: str) -> set[str]:
    return {c for c, words in CATEGORY_WORDS.items() if any(w in text for w in words)}


def ground_truth_brains(image_size: int) -> list[tuple[SynthBrain, np.ndarray]]:
    """The noise-free brains (and per-voxel ROI kinds) of a small fresh nsd-synth world's two subjects."""
    spec = WorldSpec(seed=EVAL_SEED, n_subjects=2, n_train=220, n_shared=20, image_size=image_size)
    world = build_world(spec)
    visual = VisualSystem()
    return [(SynthBrain(visual, s.readout).eval(), s.kind) for s in world.subjects]


@torch.no_grad()
def evaluate_diffusion(
    kit_dir: Path, clip: ClipModel, classes: torch.Tensor, cfg: DiffusionConfig, image_size: int
) -> tuple[list[tuple[str, float, int]], dict]:
    """Zero-shot accuracy of generated images and the ground-truth brain's category-ROI margins."""
    from brainatt.models.diffusion import sample

    model = load_diffusion(ModelSpec(role="diffusion", name=str(kit_dir / "diffusion"), source="diffusers"))
    brains = ground_truth_brains(image_size)
    n = cfg.eval_per_category
    generated, hits, rows, wins = {}, [], [], []
    for k, cat in enumerate(CATEGORIES):
        prompts = [DIFFUSION_PROMPTS[cat][i % len(DIFFUSION_PROMPTS[cat])] for i in range(n)]
        images = sample(
            model,
            prompts,
            clip,
            steps=cfg.sample_steps,
            guidance_scale=cfg.guidance_scale,
            seed=EVAL_SEED + k,
            image_size=image_size,
        )
        generated[cat] = images
        hits.append((clip.encode_image(images, normalize=True) @ classes.T).argmax(1).eq(k).float())
        margins = []
        for brain, kind in brains:
            response = brain(images)
            roi = {c: response[:, torch.from_numpy(kind == c)].mean().item() for c in CATEGORIES}
            margins.append(roi[cat] - max(v for c, v in roi.items() if c != cat))
        wins += [m > 0 for m in margins]
        rows.append((f"diffusion_gt_margin_{cat}", float(np.mean(margins)), n * len(brains)))
    zero_shot = float(torch.cat(hits).mean())
    rows = [
        ("diffusion_zero_shot_5way", zero_shot, n * len(CATEGORIES)),
        ("diffusion_gt_roi_wins", float(np.mean(wins)), len(wins)),
        *rows,
    ]
    return rows, generated


@torch.no_grad()
def evaluate_kit(
    kit_dir: str | Path, n_images: int = 600, image_size: int = 64, diffusion: DiffusionConfig | None = None
) -> tuple[pd.DataFrame, dict]:
    """The kit-quality table (metric, value, n, threshold, passes) and samples for the figure.

    ``diffusion`` (the kit's recorded diffusion settings) adds the diffusion rows; without it they are skipped.
    """
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
    samples = {"images": images[:12], "captions": captions[:12], "generated": generated[:12], "diffusion": {}}
    if diffusion is not None:
        diffusion_rows, samples["diffusion"] = evaluate_diffusion(kit_dir, clip, classes, diffusion, image_size)
        rows += diffusion_rows
    table = pd.DataFrame(rows, columns=["metric", "value", "n"])
    table["threshold"] = table.metric.map(THRESHOLDS)
    table["passes"] = np.where(table.threshold.isna(), "", np.where(table.value >= table.threshold, "yes", "no"))
    return table, samples


def write_kit_quality(kit_dir: str | Path, table_path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Score the kit and write the table; returns it with the samples `viz.kit.plot_kit_samples` draws."""
    cfg = json.loads((Path(kit_dir) / MANIFEST).read_text())["config"]
    diffusion = None
    if "diffusion" in cfg:
        diffusion = DiffusionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["diffusion"].items()})
    table, samples = evaluate_kit(
        kit_dir, n_images=cfg.get("eval_images", 600), image_size=cfg["image_size"], diffusion=diffusion
    )
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    return table, samples
