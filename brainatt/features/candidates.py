"""BrainSCUBA's candidate embeddings (`brainatt.contracts.candidates`) from the source the config names.

- ``synth``: the fresh nsd-synth scenes ``synth-candidates`` rendered into an images.h5;
- ``images``: any HDF5 holding ``(N, H, W, 3) uint8`` images (``dataset``, default ``images``), e.g. COCO
  images no subject saw;
- ``folder``: every PNG/JPEG/… image under a folder (recursively, sorted); each is centre-cropped to a square and
  resized to the CLIP model's input size; files that cannot be read are skipped and counted;
- ``embeddings``: a precomputed HDF5 of raw CLIP image embeddings (``dataset``, default ``embeddings``, N × D),
  copied as it is.

Embeddings that are zero or not finite are dropped by the writer; both counts go to the log and to the file's
``rejected`` attribute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from brainatt.contracts.candidates import candidates_writer, embedding_file_batches, image_file_batches
from brainatt.images import images_to_tensor
from brainatt.io import BrainattError
from brainatt.models.loading import ClipModel, default_device, load_clip
from brainatt.models.spec import ModelSpec, resolved_spec

log = logging.getLogger(__name__)
SOURCES = ("synth", "images", "folder", "embeddings")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# (raw embeddings (B, D), their names, images in this batch that could not be read)
Batch = tuple[np.ndarray, list[str], int]


def image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (by suffix, any case), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BrainattError(f"{folder}: not a folder: set scuba.candidates.path to a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BrainattError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}): check scuba.candidates.path")
    return files


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """``(H, W, 3) uint8``: the image centre-cropped to a square and resized to ``size``; None when unreadable."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize(size[::-1], Image.Resampling.BICUBIC)
            return np.array(im, np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        log.warning("%s: unreadable image skipped (%s)", path, e)
        return None


def _embed(clip: ClipModel, images: np.ndarray, device: str) -> np.ndarray:
    with torch.no_grad():
        return clip.encode_image(images_to_tensor(images).to(device)).float().cpu().numpy()


def _folder_batches(folder: str | Path, clip: ClipModel, batch: int, device: str) -> Iterator[Batch]:
    root = Path(folder)
    files = image_files(root)
    for i in tqdm(range(0, len(files), batch), desc="candidate images", unit="batch", mininterval=5):
        loaded = [(f, read_image(f, clip.image_size)) for f in files[i : i + batch]]
        ok = [(str(f.relative_to(root)), im) for f, im in loaded if im is not None]
        if not ok:
            yield np.zeros((0, 0), np.float32), [], len(loaded)
            continue
        yield _embed(clip, np.stack([im for _, im in ok]), device), [n for n, _ in ok], len(loaded) - len(ok)


def _image_file_batches(path: str | Path, dataset: str, clip: ClipModel, batch: int, device: str) -> Iterator[Batch]:
    name = Path(path).name
    for start, images in tqdm(image_file_batches(path, dataset, batch), desc="candidate images", unit="batch",
                              mininterval=5):  # fmt: skip
        yield _embed(clip, images, device), [f"{name}:{start + i}" for i in range(len(images))], 0


def _embedding_batches(path: str | Path, dataset: str, batch: int) -> Iterator[Batch]:
    name = Path(path).name
    for start, emb in embedding_file_batches(path, dataset, batch):
        yield emb, [f"{name}:{start + i}" for i in range(len(emb))], 0


def write_candidate_embeddings(
    source: str,
    path: str | Path,
    out: str | Path,
    spec: ModelSpec | None = None,
    dataset: str | None = None,
    batch: int = 64,
    device: str | None = None,
    kit_dir: str | Path | None = None,
) -> Path:
    """Embed (or, for ``embeddings``, copy) the candidates of ``source`` at ``path`` into the candidate file
    ``out``; ``spec`` is the CLIP role's model (unused for ``embeddings``)."""
    if source not in SOURCES:
        raise BrainattError(f"scuba.candidates.source: unknown source '{source}': choose from {list(SOURCES)}")
    t0 = time.time()
    config = {"source": source, "path": str(path), "dataset": dataset}
    if source == "embeddings":
        batches, model_spec = _embedding_batches(path, dataset or "embeddings", max(batch, 4096)), ""
    else:
        if spec is None:
            raise BrainattError(f"candidates from {source}: the CLIP model to embed them with is missing (--model)")
        device = device or default_device()
        clip = load_clip(spec, device=device, kit_dir=kit_dir)
        model_spec = resolved_spec(spec, kit_dir).to_json()
        config["model"] = model_spec
        batches = (
            _folder_batches(path, clip, batch, device)
            if source == "folder"
            else _image_file_batches(path, dataset or "images", clip, batch, device)
        )
    unreadable, first = 0, None
    for b in batches:  # the first embedded batch fixes the dimension
        unreadable += b[2]
        if b[1]:
            first = b
            break
    if first is None:
        raise BrainattError(f"{path}: no image could be read or embedded ({unreadable} unreadable): check the source")
    with candidates_writer(out, config, first[0].shape[1], source, path, model_spec) as w:
        w.add(first[0], first[1])
        for emb, names, bad in batches:
            unreadable += bad
            if names:
                w.add(emb, names)
        w.unreadable(unreadable)
    log.info("candidate embeddings from %s %s in %.1f s → %s", source, path, time.time() - t0, out)
    return Path(out)
