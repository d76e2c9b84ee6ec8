"""Full-size architectures of the real configs, with random weights, from configs held in the repo.

GPU benchmarks need the real models' shapes and costs but no downloads: `random_model` builds ViT-B/16 (open_clip's
built-in config), DINOv2-base and GPT-2 small (transformers configs) and Stable-Diffusion-2.1-base's UNet, VAE and
scheduler (diffusers configs), from ``brainatt/models/configs/``. Build under ``device="meta"`` to count
parameters without allocating them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from brainatt.io import BrainattError
from brainatt.models.loading import DiffusionModel

CONFIGS = Path(__file__).resolve().parent / "configs"
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "clip": ("ViT-B-16",),
    "backbone": ("ViT-B-16", "dinov2-base"),
    "diffusion": ("sd-2.1-base",),
    "captioner": ("gpt2",),
}


def _config(*parts: str) -> dict:
    return json.loads((CONFIGS.joinpath(*parts)).read_text())


def random_model(role: str, arch: str, device: str | torch.device = "cpu") -> torch.nn.Module | DiffusionModel:
    """A randomly initialised full-size model for a role: ``clip``/``backbone`` ViT-B-16 (the open_clip model, or
    its visual tower), ``backbone`` dinov2-base (``Dinov2Model``), ``diffusion`` sd-2.1-base (`DiffusionModel`
    with UNet, VAE and DDIM scheduler; conditioning by 1024-d token states), ``captioner`` gpt2 (``GPT2LMHeadModel``).
    """
    if arch not in ARCHITECTURES.get(role, ()):
        raise BrainattError(f"no random-weight architecture {arch!r} for role {role!r}: choose from {ARCHITECTURES}")
    with torch.device(device):
        if arch == "ViT-B-16":
            import open_clip

            model = open_clip.create_model("ViT-B-16", pretrained=None, device=device)
            return model.visual if role == "backbone" else model
        if arch == "dinov2-base":
            from transformers import Dinov2Config, Dinov2Model

            return Dinov2Model(Dinov2Config(**_config("dinov2-base", "config.json")))
        if arch == "gpt2":
            from transformers import GPT2Config, GPT2LMHeadModel

            return GPT2LMHeadModel(GPT2Config(**_config("gpt2", "config.json")))
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        root = CONFIGS / "sd-2.1-base"
        return DiffusionModel(
            unet=UNet2DConditionModel.from_config(_config("sd-2.1-base", "unet", "config.json")),
            vae=AutoencoderKL.from_config(_config("sd-2.1-base", "vae", "config.json")),
            scheduler=DDIMScheduler.from_pretrained(root, subfolder="scheduler"),
            conditioning="embeddings",
            info={"architecture": "sd-2.1-base", "cross_attention_dim": 1024},
        )
