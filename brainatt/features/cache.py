"""Feature caches per model role (``results/features/{role}/{model}.h5``).

A frozen model is run once over the images the subjects saw. Role ``backbone``: encoders then train from the cached
patch tokens for as many epochs, seeds and layers as they like (the reference code re-ran the backbone every epoch).
Layout: ``nsd_ids (N,)``, ``pooled (N,D) float32``, ``tokens/<layer> (N,gh,gw,C) float16`` chunked one image
per chunk row block, attrs ``grid``, ``layers``, ``backbone`` (the spec's name), ``model_spec`` (the whole
`ModelSpec` as JSON, its name resolved to the directory loaded when local) and ``model_fingerprint`` (a hash of the
weights, `models.loading.weights_fingerprint`), so a saved encoder can rebuild and verify its backbone.
Role ``clip``: the CLIP model's image embeddings as ``pooled (N,D) float32`` (raw, not normalised), no tokens
(``layers`` and ``grid`` empty), the same other attrs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from brainatt.io import BrainattError, atomic_h5, read_by_nsd_id
from brainatt.models.loading import ModelSpec, load_backbone, load_clip, resolved_spec, weights_fingerprint
from brainatt.synth.world import images_to_tensor

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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
    """Run the model over every image in ``stimuli`` (images.h5) and write the feature cache to ``out``.

    ``spec.role`` ``backbone``: patch tokens of ``spec.layers`` and pooled embeddings; ``clip``: the CLIP image
    embeddings only (``pooled``).
    """
    device = device or default_device()
    if spec.role == "clip":
        clip = load_clip(spec, device=device, kit_dir=kit_dir)

        def run(x: torch.Tensor) -> dict[str | int, torch.Tensor]:
            return {"pooled": clip.encode_image(x)}

        model, layers, grid = clip.model, [], []
    else:
        backbone = load_backbone(spec, device=device, kit_dir=kit_dir)
        model, layers, grid, run = backbone, list(spec.layers), list(backbone.grid), backbone
    with h5py.File(stimuli, "r") as f:
        if "images" not in f or "nsd_ids" not in f:
            raise BrainattError(f"{stimuli}: no 'images'/'nsd_ids' datasets: rerun the stimuli rule")
        nsd_ids = f["nsd_ids"][()]
        images = f["images"]
        n = len(nsd_ids)
        t0 = time.time()
        with atomic_h5(out, config or {spec.role: spec.__dict__}, "tokens: backbone activations") as h:
            h["nsd_ids"] = nsd_ids
            h.attrs["backbone"] = spec.name
            h.attrs["layers"] = layers
            h.attrs["grid"] = grid
            h.attrs["model_spec"] = resolved_spec(spec, kit_dir).to_json()
            h.attrs["model_fingerprint"] = weights_fingerprint(model)
            datasets: dict[str | int, h5py.Dataset] = {}
            progress = tqdm(total=n, desc=f"features {spec.name}", unit="img", mininterval=5)
            for i in range(0, n, batch):
                x = images_to_tensor(images[i : i + batch]).to(device)
                feats = run(x)
                if not datasets:
                    datasets = _create(h, feats, n)
                for key, ds in datasets.items():
                    ds[i : i + len(x)] = feats[key].float().cpu().numpy()
                progress.update(len(x))
            progress.close()
        log.info("cached %s features of %d images in %.1f s → %s", spec.name, n, time.time() - t0, out)
    return Path(out)


def _create(h: h5py.File, feats: dict[str | int, torch.Tensor], n: int) -> dict[str | int, h5py.Dataset]:
    datasets: dict[str | int, h5py.Dataset] = {}
    for key, value in feats.items():
        if key == "pooled":
            datasets[key] = h.create_dataset("pooled", (n, value.shape[1]), dtype=np.float32)
        else:
            shape = (n, *value.shape[1:])
            datasets[key] = h.create_dataset(f"tokens/{key}", shape, dtype=np.float16, chunks=(1, *shape[1:]))
    return datasets


class FeatureCache:
    """Read access to a feature cache: tokens and pooled embeddings of given nsd ids, in the order asked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BrainattError(f"{self.path}: feature cache missing: run the features rule")
        with h5py.File(self.path, "r") as f:
            self.layers = [int(v) for v in f.attrs["layers"]]
            self.grid = tuple(int(v) for v in f.attrs["grid"])
            self.backbone = str(f.attrs["backbone"])
            self.spec = ModelSpec.from_json(f.attrs["model_spec"]) if "model_spec" in f.attrs else None
            self.fingerprint = str(f.attrs.get("model_fingerprint", ""))

    def _read(self, name: str, nsd_ids: np.ndarray) -> np.ndarray:
        fix = "rerun the stimuli and features rules for these subjects"
        return read_by_nsd_id(self.path, name, nsd_ids, "the feature cache", fix)

    def tokens(self, layer: int, nsd_ids: np.ndarray) -> np.ndarray:
        """``(N, gh, gw, C) float16`` patch tokens of one cached layer."""
        if layer not in self.layers:
            raise BrainattError(f"{self.path}: layer {layer} not cached (cached: {self.layers}): rerun features")
        return self._read(f"tokens/{layer}", nsd_ids)

    def pooled(self, nsd_ids: np.ndarray) -> np.ndarray:
        return self._read("pooled", nsd_ids)
