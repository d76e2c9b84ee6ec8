"""The BrainSCUBA run for one subject: voxel encoder → K projections per voxel → captions → caption-driven images.

Writes into ``out`` (atomically, as a folder): ``captions.tsv`` (one row per voxel × repeat: voxel, i, j, k, hemi,
roi, category, repeat, caption, r, nc, nc_norm), ``caption_embeddings.npy`` (the CLIP text embedding of each
captions.tsv row, unit length), ``synthesis.tsv`` (one row per generated image × scored ROI: source category,
image, prompt, kept, target category, predicted and, on nsd-synth, true mean response), ``natural.tsv`` (the same for
each category's top natural test images by predicted response), ``images/{category}_{n}.png``,
``images/natural_{category}_{n}.png`` and ``summary.json`` (settings, counts, timings).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from brainatt.contracts.candidates import Candidates
from brainatt.contracts.features import FeatureCache
from brainatt.contracts.responses import read_responses
from brainatt.contracts.stimuli import Stimuli
from brainatt.encoding.data import SubjectData
from brainatt.images import images_to_tensor
from brainatt.io import BrainattError, atomic_path
from brainatt.models.diffusion import sample
from brainatt.models.loading import ClipModel, load_captioner, load_clip, load_diffusion
from brainatt.models.spec import ModelSpec
from brainatt.scuba.encoder import VoxelEncoder, fit_subject
from brainatt.scuba.projection import BETA, CandidateChunks, project_stream, subset_labels, unit_candidates

log = logging.getLogger(__name__)

ROI_CATEGORIES = {
    "floc-faces": "face",
    "floc-bodies": "body",
    "floc-places": "place",
    "floc-words": "word",
    "floc-food": "food",
}
# The true response of generated images: images (B, 3, H, W) in [0, 1] → (B, V) for the subject's voxels.
TrueResponse = Callable[[torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class ScubaConfig:
    """Settings of the ``scuba`` config section (see the schema for their meaning)."""

    beta: float = BETA
    repeats: int = 5
    top_k: int | None = None
    chunk: int = 65536
    seed: int = 0
    num_beams: int = 5
    max_new_tokens: int = 40
    caption_batch: int = 256
    voxels_per_roi: int | None = None
    caption_min_nc: float = 0.0
    synth_voxels: int = 8
    synth_pool: int | None = None
    synth_steps: int = 50
    scheduler: str = "ddim"
    guidance_scale: float = 3.0
    roi_categories: dict[str, str] = field(default_factory=lambda: dict(ROI_CATEGORIES))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ScubaConfig:
        known = set(cls.__dataclass_fields__)
        unknown = (
            set(cfg) - known - {"candidates", "lexicon", "noun", "min_nc", "train_captioner", "in_all", "subjects"}
        )
        if unknown:
            raise BrainattError(f"scuba: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: v for k, v in cfg.items() if k in known})


def voxel_categories(responses: str | Path, roi_categories: Mapping[str, str]) -> np.ndarray:
    """Each voxel's category (the category atlas labelling it, mapped by ``roi_categories``), or ``""``."""
    vox = read_responses(responses, betas=False).voxels
    out = np.full(vox.n, "", dtype=object)
    for atlas, cat in roi_categories.items():
        if atlas in vox.rois:
            out[(out == "") & (vox.rois[atlas] > 0)] = cat
    if not (out != "").any():
        raise BrainattError(
            f"{responses}: no voxel carries any of the atlases {sorted(roi_categories)}: "
            "preprocess with those atlases or set scuba.roi_categories"
        )
    return out.astype(str)


def candidate_chunks(
    path: str | Path, clip_features: str | Path, repeats: int, seed: int, chunk: int
) -> tuple[CandidateChunks, int]:
    """The candidate file streamed for the projection: unit directions, norms and repeat labels per chunk, and
    the number of candidates. Candidates embedded by another CLIP model than the encoder's features are refused."""
    cands = Candidates(path)
    spec = FeatureCache(clip_features).spec
    if cands.model_spec and ModelSpec.from_json(cands.model_spec) != spec:
        raise BrainattError(
            f"{path}: candidates embedded by {ModelSpec.from_json(cands.model_spec).name}, the encoder's features "
            f"({clip_features}) by {spec.name}: re-embed the candidates with the CLIP role's model"
        )
    labels = subset_labels(len(cands), repeats, seed)

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for start, raw in cands.chunks(chunk):
            dirs, norms = unit_candidates(raw, str(path))
            yield dirs, norms, labels[start : start + len(raw)]

    return chunks, len(cands)


def caption_embeddings(captioner: Any, embeddings: np.ndarray, cfg: ScubaConfig) -> list[str]:
    """Captions of raw CLIP embeddings, ``cfg.caption_batch`` at a time (beam search with the KV cache)."""
    device = next(captioner.parameters()).device
    out: list[str] = []
    for i in tqdm(range(0, len(embeddings), cfg.caption_batch), desc="captions", unit="batch", mininterval=5):
        x = torch.as_tensor(embeddings[i : i + cfg.caption_batch], device=device)
        out += captioner.generate(x, num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens)
    return out


def captioned_voxels(sub: SubjectData, r: np.ndarray, per_roi: int | None, min_nc: float = 0.0) -> np.ndarray:
    """The voxels to caption: those with noise ceiling ≥ ``min_nc`` (%), all of them or the ``per_roi``
    best-predicted (test r) of each ROI."""
    ok = sub.nc >= min_nc
    if not ok.any():
        raise BrainattError(f"scuba.caption_min_nc {min_nc}: no voxel has that noise ceiling; lower it")
    if per_roi is None:
        return np.flatnonzero(ok)
    keep = []
    for roi in np.unique(sub.roi):
        cand = np.flatnonzero((sub.roi == roi) & ok)
        keep.append(cand[np.argsort(-r[cand], kind="stable")[:per_roi]])
    return np.sort(np.concatenate(keep))


def _captions_table(
    sub: SubjectData, enc: VoxelEncoder, cats: np.ndarray, v: np.ndarray, captions: list[list[str]]
) -> pd.DataFrame:
    ijk = sub.ijk[v] if sub.ijk is not None else np.full((len(v), 3), -1)
    voxel = {"voxel": v, "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2], "hemi": sub.hemi[v], "roi": sub.roi[v],
             "category": cats[v]}  # fmt: skip
    scores = {"r": enc.r[v].round(4), "nc": sub.nc[v].round(2), "nc_norm": np.round(enc.nc_norm[v], 4)}
    frames = [pd.DataFrame({**voxel, "repeat": rep, "caption": caps, **scores}) for rep, caps in enumerate(captions)]
    return pd.concat(frames, ignore_index=True)


def _categories(cats: np.ndarray, cfg: ScubaConfig) -> list[str]:
    return [c for c in dict.fromkeys(cfg.roi_categories.values()) if (cats == c).any()]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@torch.inference_mode()
def caption_text_embeddings(clip: ClipModel, captions: list[str], batch: int = 512) -> np.ndarray:
    """Unit CLIP text embeddings of ``captions`` (each distinct caption encoded once)."""
    unique = list(dict.fromkeys(captions))
    emb = torch.cat([clip.encode_text(unique[i : i + batch], normalize=True) for i in range(0, len(unique), batch)])
    index = {c: n for n, c in enumerate(unique)}
    return emb.float().numpy()[[index[c] for c in captions]]


@torch.inference_mode()
def natural_top(
    enc: VoxelEncoder,
    sub: SubjectData,
    cats: np.ndarray,
    cfg: ScubaConfig,
    clip_features: str | Path,
    stimuli: str | Path,
    true_response: TrueResponse | None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Each category's ``synth_voxels`` natural test images with the highest predicted mean response of its ROI
    (the voxel encoder on their CLIP embeddings), scored like the caption images (predicted and true response of
    every category ROI). Returns the table (source ``natural:{category}``) and each category's images (uint8)."""
    pred = enc.predict(FeatureCache(clip_features).pooled(sub.test_ids))
    categories = _categories(cats, cfg)
    rows, images = [], {}
    for cat in categories:
        top = np.argsort(-pred[:, cats == cat].mean(1), kind="stable")[: cfg.synth_voxels]
        ids = sub.test_ids[top]
        images[cat] = Stimuli(stimuli).images(ids)
        true = true_response(images_to_tensor(images[cat])) if true_response is not None else None
        for target in categories:
            cols = cats == target
            for b, nsd_id in enumerate(ids):
                row = {"source": f"natural:{cat}", "image": b, "nsd_id": int(nsd_id), "target": target,
                       "predicted": float(pred[top[b], cols].mean())}  # fmt: skip
                if true is not None:
                    row["true"] = float(true[b, cols].mean())
                rows.append(row)
    return pd.DataFrame(rows), images


def synthesize(
    enc: VoxelEncoder,
    table: pd.DataFrame,
    cats: np.ndarray,
    cfg: ScubaConfig,
    clip: ClipModel,
    diffusion_spec: ModelSpec,
    kit_dir: str | Path | None,
    true_response: TrueResponse | None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Images from the captions of each category's best-predicted voxels (repeat 0), scored by every category
    ROI's mean predicted (and true) response. Returns the score table and each category's images (uint8).

    With ``cfg.synth_pool``, images come from that many voxels' captions and the ``cfg.synth_voxels`` with the
    highest *predicted* contrast (the category ROI's mean predicted response minus the mean over the other
    category ROIs) are ``kept``; otherwise every image is kept. The true response plays no part in the choice."""
    model = load_diffusion(diffusion_spec, kit_dir=kit_dir)
    size = int(model.info.get("image_size", 0)) or None  # the model's own size; the true brain resizes
    first = table[table["repeat"] == 0]
    categories = _categories(cats, cfg)
    rows, images = [], {}
    for n_cat, cat in enumerate(categories):
        top = first[first["category"] == cat].nlargest(cfg.synth_pool or cfg.synth_voxels, "r")
        prompts = top["caption"].tolist()
        with torch.inference_mode():
            x = sample(model, prompts, clip, steps=cfg.synth_steps, guidance_scale=cfg.guidance_scale,
                       seed=cfg.seed + n_cat, scheduler=cfg.scheduler, image_size=size)  # fmt: skip
            pred = enc.predict(clip.encode_image(x).numpy())
            true = true_response(x) if true_response is not None else None
        images[cat] = _to_uint8(x)
        means = {c: pred[:, cats == c].mean(1) for c in categories}
        others = [means[c] for c in categories if c != cat]
        contrast = means[cat] - (np.mean(others, axis=0) if others else 0.0)
        kept = set(np.argsort(-contrast, kind="stable")[: cfg.synth_voxels].tolist())
        for target in categories:
            cols = cats == target
            for b, prompt in enumerate(prompts):
                row = {"source": cat, "image": b, "voxel": int(top["voxel"].iloc[b]), "prompt": prompt,
                       "kept": b in kept, "target": target, "predicted": float(pred[b, cols].mean())}  # fmt: skip
                if true is not None:
                    row["true"] = float(true[b, cols].mean())
                rows.append(row)
    return pd.DataFrame(rows), images


def run_scuba(
    responses: str | Path,
    clip_features: str | Path,
    candidates: str | Path,
    out: str | Path,
    cfg: ScubaConfig,
    models: Mapping[str, ModelSpec],
    kit_dir: str | Path | None = None,
    true_response: Callable[[np.ndarray], TrueResponse] | None = None,
    stimuli: str | Path | None = None,
) -> Path:
    """Run BrainSCUBA for one subject into the folder ``out``.

    ``models`` holds the ``clip``, ``captioner`` and ``diffusion`` specs; ``true_response`` (nsd-synth) builds
    the ground-truth response function from the voxels' ``ijk``; ``stimuli`` (the images.h5 the subject saw)
    adds each category's top natural test images for comparison.
    """
    times: dict[str, float] = {}
    t = time.time()
    sub, enc = fit_subject(responses, clip_features)
    cats = voxel_categories(responses, cfg.roi_categories)
    times["encoder"] = time.time() - t

    t = time.time()
    chunks, n_candidates = candidate_chunks(candidates, clip_features, cfg.repeats, cfg.seed, cfg.chunk)
    v = captioned_voxels(sub, enc.r, cfg.voxels_per_roi, cfg.caption_min_nc)
    projections = project_stream(enc.weights[v], chunks, cfg.repeats, cfg.beta, top_k=cfg.top_k)
    times["projection"] = time.time() - t
    log.info("projected %d voxels onto %d × %d candidates in %.1f s", len(v), cfg.repeats,
             n_candidates // cfg.repeats, times["projection"])  # fmt: skip

    t = time.time()
    captioner = load_captioner(models["captioner"], kit_dir=kit_dir)
    captions = caption_embeddings(captioner, np.concatenate(projections), cfg)
    per_repeat = [captions[i * len(v) : (i + 1) * len(v)] for i in range(cfg.repeats)]
    table = _captions_table(sub, enc, cats, v, per_repeat)
    times["captions"] = time.time() - t
    log.info("%d captions in %.1f s (%.0f voxels/s)", len(captions), times["captions"],
             len(captions) / times["captions"])  # fmt: skip

    t = time.time()
    clip = load_clip(models["clip"], kit_dir=kit_dir)
    text_emb = caption_text_embeddings(clip, table["caption"].tolist())
    truth = true_response(sub.ijk) if true_response is not None else None
    scores, images = synthesize(enc, table, cats, cfg, clip, models["diffusion"], kit_dir, truth)
    times["synthesis"] = time.time() - t
    natural, natural_images = (
        natural_top(enc, sub, cats, cfg, clip_features, stimuli, truth) if stimuli is not None else (None, {})
    )

    with atomic_path(out, directory=True) as tmp:
        table.to_csv(tmp / "captions.tsv", sep="\t", index=False)
        scores.to_csv(tmp / "synthesis.tsv", sep="\t", index=False)
        (tmp / "images").mkdir()
        np.save(tmp / "caption_embeddings.npy", text_emb)
        if natural is not None:
            natural.to_csv(tmp / "natural.tsv", sep="\t", index=False)
        for prefix, sets in (("", images), ("natural_", natural_images)):
            for cat, imgs in sets.items():
                for b, img in enumerate(imgs):
                    Image.fromarray(img).save(tmp / "images" / f"{prefix}{cat}_{b}.png")
        summary = {
            "config": asdict(cfg), "n_voxels": sub.n_voxels, "n_captioned": len(v), "n_candidates": n_candidates,
            "seconds": times,
        }  # fmt: skip
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return Path(out)
