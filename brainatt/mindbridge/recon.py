"""Reconstructions: the diffusion model conditioned on the decoded embedding, and how alike they are to the seen images.

The diffusion model must be conditioned on the CLIP role's pooled embedding space (the kit's); it is conditioned on
the *predicted text* embedding (its training conditioning) and, with several samples per image, the sample kept is
the one whose CLIP image embedding is closest to the *predicted image* embedding, never to the seen image (the
reference code chose by the seen image, which leaks the test answer into every metric).

Scores (`reconstruct`): pixel correlation, SSIM (grey), CLIP two-way identification of the reconstructions against
the seen images, and 5-way category agreement: the kit CLIP's zero-shot category of each reconstruction against
that of its seen image.
"""

from __future__ import annotations

import html
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from brainatt.contracts.stimuli import Stimuli
from brainatt.images import images_to_tensor, png_data_uri
from brainatt.io import BrainattError, atomic_path
from brainatt.metrics import pixel_correlation, ssim, two_way_identification
from brainatt.models.diffusion import sample
from brainatt.models.loading import ClipModel, default_device, load_clip, load_diffusion
from brainatt.models.spec import ModelSpec

log = logging.getLogger(__name__)
# nsd-synth's five categories, as zero-shot prompt ensembles for the kit CLIP.
CATEGORY_PROMPTS: dict[str, list[str]] = {
    "face": ["a face", "a face in the center"],
    "body": ["a body", "a body in the center"],
    "place": ["an empty scene of a kitchen", "an empty scene of a field", "an empty scene of a street"],
    "word": ['the word "stop"', 'the word "hello"', 'the word "exit"'],
    "food": ["a plate of food", "an apple", "a pizza"],
}


@torch.no_grad()
def categories(clip: ClipModel, images: torch.Tensor) -> np.ndarray:
    """Zero-shot category index (into `CATEGORY_PROMPTS`) of each image (B,3,H,W) in [0,1]."""
    classes = torch.stack(
        [
            torch.nn.functional.normalize(clip.encode_text(p, normalize=True).mean(0), dim=0)
            for p in CATEGORY_PROMPTS.values()
        ]
    )
    emb = clip.encode_image(images, normalize=True)
    return (emb @ classes.T).argmax(1).cpu().numpy()


def load_predictions(run: str | Path, subject: str) -> dict[str, np.ndarray]:
    path = Path(run) / f"pred_{subject}.npz"
    if not path.exists():
        raise BrainattError(f"{path}: no test predictions of {subject}: rerun the mindbridge rule that makes {run}")
    with np.load(path) as f:
        return {k: f[k] for k in ("nsd_ids", "image", "text")}


def _label(run: Path) -> str:
    """The run's regime as its scores name it (``bridge``, ``reset``, ``scratch``…), with ``/p47`` for limited data."""
    scores = run / "scores.tsv"
    regime = str(pd.read_csv(scores, sep="\t")["regime"].iloc[0]) if scores.exists() else run.name
    return f"{regime}/{run.name}" if run.name != regime and run.name.startswith("p") else regime


@torch.no_grad()
def reconstruct(
    run: str | Path,
    subject: str,
    stimuli: str | Path,
    clip_spec: ModelSpec,
    diffusion_spec: ModelSpec,
    out: str | Path,
    n_images: int = 12,
    samples: int = 1,
    steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 0,
    kit_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Reconstruct the first ``n_images`` test images of ``subject`` from a regime folder's predictions.

    Writes the folder ``out``: ``index.html`` (seen image beside reconstruction, opens from the file system),
    the PNGs, ``recon.npz`` (``nsd_ids``, ``seen`` and ``recon`` uint8) and ``scores.tsv`` (one row).
    """
    t0 = time.time()
    device = default_device()
    pred = load_predictions(run, subject)
    if pred["image"].shape[1] != 1 or pred["text"].shape[1] != 1:
        raise BrainattError(f"{run}: token-grid predictions: this diffusion model takes one pooled embedding")
    take = slice(0, min(n_images, len(pred["nsd_ids"])))
    ids = pred["nsd_ids"][take]
    clip = load_clip(clip_spec, device=device, kit_dir=kit_dir)
    model = load_diffusion(diffusion_spec, device=device, kit_dir=kit_dir)
    seen = Stimuli(stimuli).images(ids)
    seen_t = images_to_tensor(seen).to(device)
    size = seen.shape[1]
    text = torch.from_numpy(pred["text"][take, 0]).to(device)
    target = torch.nn.functional.normalize(torch.from_numpy(pred["image"][take, 0]).to(device), dim=-1)
    best, best_sim = None, None
    for k in range(samples):
        images = sample(
            model, [], steps=steps, guidance_scale=guidance_scale, seed=seed + k, image_size=size, embeddings=text
        )
        sim = (clip.encode_image(images, normalize=True) * target).sum(-1)
        if best is None:
            best, best_sim = images, sim
        else:
            better = sim > best_sim
            best[better], best_sim = images[better], torch.maximum(sim, best_sim)
    recon = (best.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    recon_emb = clip.encode_image(best, normalize=True).cpu().numpy()
    seen_emb = clip.encode_image(seen_t, normalize=True).cpu().numpy()
    cat_recon, cat_seen = categories(clip, best), categories(clip, seen_t)
    grey = np.array([0.299, 0.587, 0.114])
    scores = {
        "subject": subject,
        "run": _label(Path(run)),
        "n_images": len(ids),
        "samples": samples,
        "pixcorr": float(pixel_correlation(recon / 255, seen / 255).mean()),
        "ssim": float(ssim((recon / 255) @ grey, (seen / 255) @ grey).mean()),
        "clip_two_way": two_way_identification(recon_emb, seen_emb) if len(ids) > 1 else float("nan"),
        "category_match": float((cat_recon == cat_seen).mean()),
        # agreement expected if reconstructions drew categories independently with the seen images' frequencies
        "category_chance": float(sum(np.mean(cat_seen == c) ** 2 for c in range(len(CATEGORY_PROMPTS)))),
    }
    names = list(CATEGORY_PROMPTS)
    with atomic_path(out, directory=True) as tmp:
        for i, nsd in enumerate(ids):
            Image.fromarray(seen[i]).save(tmp / f"{nsd}_seen.png")
            Image.fromarray(recon[i]).save(tmp / f"{nsd}_recon.png")
        title = f"MindBridge reconstructions: {subject}, {Path(run).name}"
        cats = [f"{names[s]} / {names[r]}" for s, r in zip(cat_seen, cat_recon, strict=True)]
        write_page(tmp / "index.html", title, scores, ids, seen, recon, cats)
        np.savez(tmp / "recon.npz", nsd_ids=ids, seen=seen, recon=recon)
        table = pd.DataFrame([scores])
        table.to_csv(tmp / "scores.tsv", sep="\t", index=False)
    log.info("reconstructed %d images of %s in %.1f s → %s", len(ids), subject, time.time() - t0, out)
    return table


def write_page(
    out: Path,
    title: str,
    scores: dict,
    ids: np.ndarray,
    seen: np.ndarray,
    recon: np.ndarray,
    categories: list[str],
) -> None:
    """The gallery page: the scores, then each seen image beside its reconstruction and their categories, the
    images embedded (the page opens from the file system and inside the report)."""
    rows = [
        f"<tr><td>{nsd}</td><td><img src='{png_data_uri(s)}' width=128></td>"
        f"<td><img src='{png_data_uri(r)}' width=128></td><td>{html.escape(c)}</td></tr>"
        for nsd, s, r, c in zip(ids, seen, recon, categories, strict=True)
    ]
    summary = html.escape(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))
    out.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
        f"<p>{summary}</p><table><tr><th>nsd id</th><th>seen</th><th>reconstruction</th>"
        "<th>category seen / recon</th></tr>" + "".join(rows) + "</table>"
    )
