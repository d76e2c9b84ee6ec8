"""Feature files per model role (``results/features/{role}/{model}.h5``, written through
`brainatt.contracts.features`): a frozen model run once over the images the subjects saw.

Role ``backbone``: patch tokens of the configured layers and pooled embeddings; encoders then train from the cached
tokens for as many epochs, seeds and layers as they like (the reference code re-ran the backbone every epoch).
Role ``clip``: the CLIP model's image embeddings as ``pooled`` (raw, not normalised), no tokens.
`extract_text_features`: the CLIP model's text embeddings of each image's captions, in the same layout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from brainatt.contracts.features import features_writer
from brainatt.contracts.stimuli import Stimuli
from brainatt.images import images_to_tensor
from brainatt.io import BrainattError
from brainatt.models.loading import default_device, load_backbone, load_clip, weights_fingerprint
from brainatt.models.spec import ModelSpec

log = logging.getLogger(__name__)


def _model(
    spec: ModelSpec, device: str, kit_dir: str | Path | None
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], dict[str | int, torch.Tensor]], tuple[int, int] | None]:
    """The module to fingerprint, the function images → features, and the token grid (None: pooled only)."""
    if spec.role == "clip":
        clip = load_clip(spec, device=device, kit_dir=kit_dir)
        return clip.model, lambda x: {"pooled": clip.encode_image(x)}, None
    backbone = load_backbone(spec, device=device, kit_dir=kit_dir)
    return backbone, backbone, backbone.grid


@torch.no_grad()
def extract_features(
    stimuli: str | Path,
    spec: ModelSpec,
    out: str | Path,
    batch: int = 64,
    device: str | None = None,
    kit_dir: str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Run the model over every image in ``stimuli`` (images.h5) and write the feature file to ``out``.

    ``spec.role`` ``backbone``: patch tokens of ``spec.layers`` and pooled embeddings; ``clip``: the CLIP image
    embeddings only (``pooled``).
    """
    device = device or default_device()
    source = Stimuli(stimuli)
    model, run, grid = _model(spec, device, kit_dir)
    t0 = time.time()
    config = config or {spec.role: spec.__dict__}
    with features_writer(out, config, source.nsd_ids, spec, grid, weights_fingerprint(model), kit_dir) as w:
        progress = tqdm(total=len(source), desc=f"features {spec.name}", unit="img", mininterval=5)
        start = 0
        for _, images in source.batches(batch):
            feats = run(images_to_tensor(images).to(device))
            w.write(start, {key: value.float().cpu().numpy() for key, value in feats.items()})
            start += len(images)
            progress.update(len(images))
        progress.close()
    log.info("cached %s features of %d images in %.1f s → %s", spec.name, len(source), time.time() - t0, out)
    return Path(out)


@torch.no_grad()
def extract_text_features(
    stimuli: str | Path,
    spec: ModelSpec,
    out: str | Path,
    batch: int = 256,
    device: str | None = None,
    kit_dir: str | Path | None = None,
) -> Path:
    """CLIP text embeddings of every image's captions (the mean of its captions' raw embeddings) → ``pooled``.

    Each distinct caption is embedded once (nsd-synth's templated captions repeat across images).

    Written as a feature file of the ``clip`` role's model (``stimuli`` must hold captions).
    """
    device = device or default_device()
    source = Stimuli(stimuli)
    captions = source.captions(source.nsd_ids)
    clip = load_clip(spec, device=device, kit_dir=kit_dir)
    if any(not caps for caps in captions):
        raise BrainattError(f"{source.path}: some images have no caption: rerun the stimuli rule with captions")
    unique = sorted({c for caps in captions for c in caps})  # templated captions repeat: embed each text once
    t0 = time.time()
    starts = tqdm(range(0, len(unique), batch), desc="text features", mininterval=5)
    emb = torch.cat([clip.encode_text(unique[i : i + batch]).float().cpu() for i in starts])
    row = {c: i for i, c in enumerate(unique)}
    sums = torch.stack([emb[[row[c] for c in caps]].sum(0) for caps in captions])
    counts = torch.tensor([len(c) for c in captions], dtype=torch.float32)[:, None]
    config = {"text": spec.__dict__}
    with features_writer(out, config, source.nsd_ids, spec, None, weights_fingerprint(clip.model), kit_dir) as w:
        w.write(0, {"pooled": (sums / counts).numpy()})
    log.info(
        "cached text features of %d images (%d distinct captions) in %.1f s → %s",
        len(source),
        len(unique),
        time.time() - t0,
        out,
    )
    return Path(out)
