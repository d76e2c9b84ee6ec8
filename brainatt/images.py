"""Image arrays as models take them (the one conversion from stored ``uint8`` images to float tensors) and as
HTML pages embed them."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N,H,W,3) uint8`` → ``(N,3,H,W)`` float in [0,1], as every model and the true brain take it."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def png_data_uri(image: str | Path | np.ndarray) -> str:
    """A PNG file, or an ``(H,W,3) uint8`` array encoded as PNG, as a ``data:`` URI: HTML pages that embed their
    images open anywhere (from the file system, inside the single-file Snakemake report)."""
    if isinstance(image, np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = Path(image).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
