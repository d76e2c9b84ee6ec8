"""The nsd-synth world's category detector: the ventral stream of the ground-truth brain.

A small fully convolutional network maps an image to one map per category (face, body, place, word, food) at a
quarter of the image resolution, each cell the probability that the category covers it. It is trained once on
rendered scenes against their exact masks (``brainatt synth-detector``) and shipped as ``detector.safetensors``:
a fixed part of the world, like a real brain, so every image, generated ones included, gets a category map.

Half of the training images are degraded (`degrade`: pixel noise at several spatial scales, blur) with unchanged
masks, so that, like a brain's category judgement, the maps do not change category when an image is noisy or
soft: trained on clean renders only, the detector read pixel noise as text (a word in every image a small
diffusion model generates, and in natural scenes with noise of SD 0.15).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from brainatt.synth.scenes import CATEGORIES, render_many, sample_scene

log = logging.getLogger(__name__)

DETECTOR_PATH = Path(__file__).with_name("detector.safetensors")
STRIDE = 4


class CategoryDetector(nn.Module):
    """Image ``(B,3,H,W)`` in [0,1] → category logits ``(B,K,H/4,W/4)``; receptive field ≈ 60 px."""

    def __init__(self, width: int = 48, n_categories: int = len(CATEGORIES)) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation), nn.GELU()]

        self.net = nn.Sequential(
            *block(3, width // 2),
            *block(width // 2, width, stride=2),
            *block(width, width, stride=2),
            *block(width, width, dilation=2),
            *block(width, width, dilation=4),
            *block(width, width, dilation=8),
            nn.Conv2d(width, n_categories, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


def load_detector(path: Path = DETECTOR_PATH) -> CategoryDetector:
    """The shipped detector, frozen and in eval mode."""
    model = CategoryDetector()
    model.load_state_dict(load_file(str(path)))
    model.eval().requires_grad_(False)
    return model


def _batch(n: int, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = render_many([sample_scene(rng) for _ in range(n)], size, size // STRIDE)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(masks)


def degrade(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images ``(B,3,H,W)`` in [0,1], each independently: kept (p = 1/2) or given Gaussian pixel noise of SD up
    to 0.2, drawn at 1, 2 or 4 px grain and either grey or per colour, and a 3×3 blur (p = 1/4)."""
    b, _, h, w = x.shape
    out = x.clone()
    for i in range(b):
        u = torch.rand(5, generator=generator)
        if u[0] < 0.5:
            continue
        grain = (1, 2, 4)[int(u[1] * 3)]
        channels = 1 if u[2] < 0.5 else 3
        noise = torch.randn(1, channels, h // grain, w // grain, generator=generator)
        noise = F.interpolate(noise, size=(h, w), mode="nearest") if grain > 1 else noise
        img = out[i : i + 1] + 0.2 * u[3] * noise
        if u[4] < 0.25:
            img = F.avg_pool2d(img, 3, 1, 1, count_include_pad=False)
        out[i] = img[0].clamp(0, 1)
    return out


def train_detector(out: Path, size: int = 64, n_images: int = 12000, epochs: int = 12, seed: int = 0) -> dict:
    """Train the detector on freshly rendered scenes; returns held-out per-category IoU at threshold 0.5."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = _batch(n_images, rng, size)
    x_val, y_val = _batch(1000, np.random.default_rng(seed + 1), size)
    model = CategoryDetector()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (n_images // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    with tqdm(total=steps, desc="detector") as bar:
        for _ in range(epochs):
            order = torch.randperm(n_images)
            for i in range(n_images // 64):
                idx = order[i * 64 : (i + 1) * 64]
                xb = x[idx]
                if torch.rand(()) < 0.5:  # left-right flips: categories do not depend on the side
                    xb, yb = xb.flip(-1), y[idx].flip(-1)
                else:
                    yb = y[idx]
                loss = loss_fn(model(degrade(xb, generator)), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    scores = detector_iou(model, x_val, y_val)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return scores


@torch.no_grad()
def detector_iou(model: CategoryDetector, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Per-category intersection-over-union of thresholded maps against true masks (cells ≥ half covered)."""
    pred = torch.sigmoid(model(images)) > 0.5
    truth = masks > 0.5
    inter = (pred & truth).sum((0, 2, 3)).double()
    union = (pred | truth).sum((0, 2, 3)).double()
    return {c: float(inter[k] / union[k].clamp(min=1)) for k, c in enumerate(CATEGORIES)}
