"""Diffusion models in diffusers' on-disk format, the one sampling loop, partial kit retraining, full-size configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_latent_diffusion

from brainatt.io import BrainattError, file_hash
from brainatt.models.architectures import random_model
from brainatt.models.diffusion import from_model_space, sample
from brainatt.models.kit import MANIFEST, KitConfig, check_manifest, train_kit
from brainatt.models.loading import load_clip, load_diffusion
from brainatt.models.spec import ModelSpec


@pytest.fixture(scope="module")
def clip():
    return load_clip(ModelSpec(role="clip", name="kit:clip"))


@pytest.fixture(scope="module")
def tiny_latent_diffusion(tmp_path_factory: pytest.TempPathFactory, clip) -> Path:
    """A random-weight latent diffusion folder (unet/, vae/, scheduler/, brainatt.json) saved by diffusers."""
    dim = clip.model.text_projection.shape[1]
    root = write_tiny_latent_diffusion(tmp_path_factory.mktemp("tiny-diffusion"), cond_dim=dim)
    return root


def test_tiny_diffusers_folder_round_trips_through_the_loader(tiny_latent_diffusion: Path, clip) -> None:
    model = load_diffusion(ModelSpec(role="diffusion", name=str(tiny_latent_diffusion), source="diffusers"))
    assert model.conditioning == "clip" and model.vae is not None and model.text_encoder is None
    a = sample(model, ["a face", "a body"], clip, steps=3, seed=1, image_size=None)
    b = sample(model, ["a face", "a body"], clip, steps=3, seed=1, image_size=None)
    c = sample(model, ["a face", "a body"], clip, steps=3, seed=2, image_size=None)
    assert a.shape == (2, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded
    with pytest.raises(BrainattError, match="CLIP role"):
        sample(model, ["a face"], None, steps=1)


def test_guidance_hook_gets_pixel_gradients(tiny_latent_diffusion: Path, clip) -> None:
    """The BrainDiVE hook: the predicted image is differentiable w.r.t. the sample and its gradient steers it."""
    model = load_diffusion(ModelSpec(role="diffusion", name=str(tiny_latent_diffusion), source="diffusers"))
    seen = []

    def brighter(images: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(images.requires_grad)
        return images.mean(dim=(1, 2, 3))

    plain = sample(model, ["a face"], clip, steps=3, seed=0, image_size=24)
    guided = sample(model, ["a face"], clip, steps=3, seed=0, image_size=24, guide=brighter, guide_scale=200.0)
    assert seen == [True] * 3 and guided.shape == (1, 3, 24, 24)
    assert guided.mean() > plain.mean()
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    from_model_space(model, z, 24).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_shipped_kit_diffusion_loads_and_samples(clip) -> None:
    model = load_diffusion(ModelSpec(role="diffusion", name="kit:diffusion", source="diffusers"))
    assert model.conditioning == "clip" and model.vae is None
    images = sample(model, ["a face in the center on a plain background", "an empty scene of a street"], clip, steps=2)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    again = sample(model, ["a face in the center on a plain background", "an empty scene of a street"], clip, steps=2)
    assert torch.equal(images, again)


TINY = {
    "image_size": 32,
    "n_images": 48,
    "vocab_size": 300,
    "clip": {"steps": 1, "batch": 8, "vision_layers": 1, "text_layers": 1},
    "captioner": {"steps": 1, "batch": 4, "layers": 1},
    "diffusion": {"steps": 1, "batch": 4, "channels": [16, 32], "space_to_depth": 2},
}


def test_retraining_only_the_diffusion_keeps_the_other_parts(tmp_path: Path) -> None:
    kit = train_kit(KitConfig.from_config(TINY), tmp_path / "kit")
    clip_hash = file_hash(kit / "clip/open_clip_model.safetensors")
    unet = kit / "diffusion/unet/diffusion_pytorch_model.safetensors"
    unet_hash = file_hash(unet)
    changed = {**TINY, "clip": {**TINY["clip"], "steps": 5}, "diffusion": {**TINY["diffusion"], "lr": 1e-2}}
    train_kit(KitConfig.from_config(changed), kit, parts=("diffusion",))
    manifest = check_manifest(kit)
    assert file_hash(kit / "clip/open_clip_model.safetensors") == clip_hash and file_hash(unet) != unet_hash
    assert manifest["config"]["clip"]["steps"] == 1  # the kept part records the settings it was trained with
    assert manifest["config"]["diffusion"]["lr"] == 1e-2 and not (kit / "checkpoints").exists()
    with pytest.raises(BrainattError, match="n_images"):
        train_kit(KitConfig.from_config({**TINY, "n_images": 64}), kit, parts=("diffusion",))
    with pytest.raises(BrainattError, match="unknown kit parts"):
        train_kit(KitConfig.from_config(TINY), kit, parts=("vae",))
    assert json.loads((kit / MANIFEST).read_text())["config"]["diffusion"]["lr"] == 1e-2


@pytest.mark.parametrize(
    ("role", "arch", "millions"),
    [
        ("backbone", "ViT-B-16", 86.2),
        ("backbone", "dinov2-base", 86.6),
        ("captioner", "gpt2", 124.4),
    ],
)
def test_full_size_architectures_have_the_published_sizes(role: str, arch: str, millions: float) -> None:
    model = random_model(role, arch, device="meta")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)


def test_sd21_base_unet_and_vae_have_the_published_sizes() -> None:
    model = random_model("diffusion", "sd-2.1-base", device="meta")
    assert sum(p.numel() for p in model.unet.parameters()) / 1e6 == pytest.approx(865.9, abs=0.1)
    assert sum(p.numel() for p in model.vae.parameters()) / 1e6 == pytest.approx(83.65, abs=0.1)
    assert model.unet.config.cross_attention_dim == 1024 and model.scheduler.config.prediction_type == "epsilon"
    with pytest.raises(BrainattError, match="no random-weight architecture"):
        random_model("diffusion", "gpt2")
