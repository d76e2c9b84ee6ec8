"""Backbone feature cache: run a frozen model once over the stimuli (``results/features/…h5``, written through
`brainatt.contracts.features`).

Encoders then train from the cached patch tokens for as many epochs, seeds and layers as they like (the reference
code re-ran the backbone every epoch).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from brainatt.contracts.features import features_writer
from brainatt.contracts.stimuli import Stimuli
from brainatt.images import images_to_tensor
from brainatt.models.loading import default_device, load_backbone, weights_fingerprint
from brainatt.models.spec import ModelSpec

log = logging.getLogger(__name__)


def backbone_slug(name: str) -> str:
    """A file-name-safe backbone name: ``kit:clip`` → ``kit-clip``, ``org/model`` → ``org-model``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


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
    """Run the backbone over every image in ``stimuli`` (images.h5) and write the feature cache to ``out``."""
    device = device or default_device()
    source = Stimuli(stimuli)
    backbone = load_backbone(spec, device=device, kit_dir=kit_dir)
    t0 = time.time()
    config = config or {"backbone": spec.__dict__}
    fingerprint = weights_fingerprint(backbone)
    with features_writer(out, config, source.nsd_ids, spec, backbone.grid, fingerprint, kit_dir) as w:
        progress = tqdm(total=len(source), desc=f"features {spec.name}", unit="img", mininterval=5)
        start = 0
        for _, images in source.batches(batch):
            feats = backbone(images_to_tensor(images).to(device))
            w.write(start, {key: value.float().cpu().numpy() for key, value in feats.items()})
            start += len(images)
            progress.update(len(images))
        progress.close()
    log.info("cached %s features of %d images in %.1f s → %s", spec.name, len(source), time.time() - t0, out)
    return Path(out)
