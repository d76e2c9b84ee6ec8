"""Image arrays as models take them: the one conversion from stored ``uint8`` images to float tensors."""

from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N,H,W,3) uint8`` → ``(N,3,H,W)`` float in [0,1], as every model and the true brain take it."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
