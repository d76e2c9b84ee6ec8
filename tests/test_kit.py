"""The shipped kit: current with the scene generator, intact, and loadable through the pipeline's loaders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brainatt.images import images_to_tensor
from brainatt.io import BrainattError
from brainatt.models import kit as kit_module
from brainatt.models.kit import MANIFEST, check_manifest, kit_fingerprint, kit_is_current
from brainatt.models.loading import load_backbone, load_captioner, load_clip
from brainatt.models.spec import SHIPPED_KIT, ModelSpec
from brainatt.synth import scenes
from brainatt.synth.scenes import caption, render, render_many, sample_scene


def test_shipped_kit_matches_the_scene_generator() -> None:
    """Fails when the generator's output changes without retraining the kit (`snakemake kit`) and shipping it."""
    manifest = check_manifest(SHIPPED_KIT)
    assert manifest["generator_fingerprint"] == kit_fingerprint(manifest["config"]["image_size"])
    assert kit_is_current(SHIPPED_KIT, manifest["config"]["image_size"])


def test_a_changed_generator_makes_the_kit_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    size = json.loads((SHIPPED_KIT / MANIFEST).read_text())["config"]["image_size"]
    monkeypatch.setattr(scenes, "GENERATOR_VERSION", scenes.GENERATOR_VERSION + 1)
    assert not kit_is_current(SHIPPED_KIT, size)
    monkeypatch.undo()
    assert not kit_is_current(SHIPPED_KIT, size // 2)  # another image size is another world


# Pixels and captions of 24 fixed-seed scenes at 64 px, as the shipped kit saw them.
RENDERED_64PX = "92c7c0d048f8ec2a"


def test_scene_rendering_is_pinned() -> None:
    """The kit's staleness check reads only the generator's version, so what rendering depends on is pinned here.

    Fails when the drawn scenes change: an edit of `brainatt.synth.scenes` (bump ``version`` in
    ``brainatt/synth/generator.json``, retrain the kit with `snakemake kit`, record the new hash) or a Pillow/FreeType
    update that draws text or anti-aliases differently (look at the scenes; record the new hash if they are the same
    world, or treat it as a generator change).
    """
    h = hashlib.sha256(b"64")
    rng = np.random.default_rng(20231)
    for _ in range(24):
        scene = sample_scene(rng)
        h.update(render(scene, 64, 16)[0].tobytes())
        h.update(caption(scene).encode())
    assert h.hexdigest()[:16] == RENDERED_64PX


def test_kit_stays_under_its_size_budget() -> None:
    total = sum(p.stat().st_size for p in SHIPPED_KIT.rglob("*") if p.is_file())
    assert total <= 25e6


def test_damaged_kit_is_an_error(tmp_path: Path) -> None:
    kit = Path(shutil.copytree(SHIPPED_KIT, tmp_path / "kit"))
    (kit / "clip/open_clip_config.json").write_text("{}")
    with pytest.raises(BrainattError, match="snakemake kit"):
        check_manifest(kit)


def test_kit_loads_through_the_pipeline_loaders() -> None:
    images, captions, _ = kit_module.kit_scenes(8, 5, 64)
    x = images_to_tensor(images)
    clip = load_clip(ModelSpec(role="clip", name="kit:clip"))
    with torch.no_grad():
        img = clip.encode_image(x, normalize=True)
        txt = clip.encode_text(captions, normalize=True)
    assert (img @ txt.T).argmax(1).eq(torch.arange(8)).float().mean() >= 0.5  # matched pairs mostly win
    backbone = load_backbone(ModelSpec(role="backbone", name="kit:clip", layers=(2, -1)))
    out = backbone(x.requires_grad_())
    assert out[2].shape == (8, *backbone.grid, 128) and out["pooled"].shape == (8, 128)
    out[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the pixels (brain-guided diffusion)
    captioner = load_captioner(ModelSpec(role="captioner", name="kit:captioner"))
    with torch.no_grad():
        text = captioner.generate(clip.encode_image(x[:2]), num_beams=2)
    assert all(isinstance(t, str) and t for t in text)


def test_zero_shot_beats_chance_on_fresh_scenes() -> None:
    from brainatt.models.kit_eval import PROMPTS

    rng = np.random.default_rng(4242)
    picked = [s for s in (sample_scene(rng) for _ in range(400)) if len(s.categories()) == 1][:60]
    images, _ = render_many(picked, 64, 16)
    clip = load_clip(ModelSpec(role="clip", name="kit:clip"))
    with torch.no_grad():
        classes = torch.stack([clip.encode_text(PROMPTS[c], normalize=True).mean(0) for c in scenes.CATEGORIES])
        pred = (clip.encode_image(images_to_tensor(images), normalize=True) @ classes.T).argmax(1)
    truth = torch.tensor([scenes.CATEGORIES.index(next(iter(s.categories()))) for s in picked])
    assert (pred == truth).float().mean() >= 0.85
