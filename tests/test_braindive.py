"""Brain-guided diffusion: the ROI objective, the guided sampler (DDIM and DPM-Solver++, ε reuse), and one tiny
nsd-synth world where guided images are scored by the ground-truth brain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tiny_latent_diffusion
from torch import nn

from brainatt.braindive.objective import RoiObjective, roi_mask
from brainatt.braindive.pipeline import UNGUIDED, DiveConfig, generate, read_manifest
from brainatt.contracts.responses import Voxels
from brainatt.io import BrainattError
from brainatt.models.diffusion import from_model_space, sample
from brainatt.models.loading import load_diffusion
from brainatt.models.spec import ModelSpec

KIT_DIFFUSION = ModelSpec(role="diffusion", name="kit:diffusion", source="diffusers")


class PixelEncoder(nn.Module):
    """A tiny differentiable image → voxel model with the backbone's resize and normalisation inside."""

    def __init__(self, n_voxels: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 16, n_voxels)
        self.register_buffer("mean", torch.tensor([0.48, 0.46, 0.41]))
        self.register_buffer("std", torch.tensor([0.27, 0.26, 0.28]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(images, size=(12, 12), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        x = nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 4)
        return self.linear(x.flatten(1))


@pytest.fixture(scope="module")
def latent_model(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight latent diffusion model (UNet + VAE), unconditional sampling through zero CLIP vectors."""
    root = write_tiny_latent_diffusion(tmp_path_factory.mktemp("latent"), cond_dim=16)
    return load_diffusion(ModelSpec(role="diffusion", name=str(root), source="diffusers"))


def _voxels() -> Voxels:
    return Voxels(
        hemi=np.array(["lh", "lh", "rh", "rh", "lh", "rh"]),
        rois={"floc-faces": np.array([1, 2, 1, 0, 0, 0]), "floc-food": np.array([0, 0, 0, 1, 1, 0])},
        roi_names={"floc-faces": {1: "OFA", 2: "FFA-1"}, "floc-food": {1: "food"}},
        ncsnr=np.ones(6),
        nc_test=np.ones(6),
    )


def test_rois_resolve_by_atlas_region_and_hemisphere() -> None:
    v = _voxels()
    assert roi_mask(v, "faces").tolist() == [True, True, True, False, False, False]
    assert roi_mask(v, "faces", "rh").tolist() == [False, False, True, False, False, False]
    assert roi_mask(v, "FFA-1").tolist() == [False, True, False, False, False, False]
    assert roi_mask(v, "floc-food", "lh").tolist() == [False, False, False, False, True, False]
    with pytest.raises(BrainattError, match=r"no ROI 'PPA'.*faces"):
        roi_mask(v, "PPA")
    with pytest.raises(BrainattError, match="no voxels"):
        roi_mask(v, "FFA-1", "rh")


def test_objective_ignores_voxels_outside_the_roi() -> None:
    """Changing (or padding with) voxels outside the ROI leaves the objective unchanged."""
    images = torch.rand(3, 3, 20, 20)
    encoder = PixelEncoder(6)
    target = np.array([1, 1, 0, 0, 0, 0], bool)
    base = RoiObjective(encoder, target)(images)

    class Padded(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = encoder(x)
            return torch.cat([y[:, :2], 1e3 * torch.randn(len(x), 7)], dim=1)

    padded = RoiObjective(Padded(), np.r_[target[:2], np.zeros(7, bool)])(images)
    torch.testing.assert_close(base, padded)
    assert torch.allclose(base, encoder(images)[:, :2].mean(1))
    contrast = RoiObjective(encoder, target, ~target, contrast=0.5)(images)
    torch.testing.assert_close(contrast, base - 0.5 * encoder(images)[:, 2:].mean(1))


def test_guidance_gradient_matches_finite_differences_through_decode_resize_normalisation(latent_model) -> None:
    """∂S/∂z through the VAE decoder, the resize to the encoder's input and its normalisation, in float64."""
    vae = latent_model.vae.double()
    try:
        encoder = PixelEncoder(6).double()
        objective = RoiObjective(encoder, np.array([1, 0, 1, 0, 1, 0], bool))
        z = torch.randn(1, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

        def score(x: torch.Tensor) -> torch.Tensor:
            # no clamp at the boundary: stay inside (0, 1) by scaling the latent down
            return objective(from_model_space(latent_model, 0.3 * x, 24)).sum()

        x = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(x), x)
        direction = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        h = 1e-5
        with torch.no_grad():
            numeric = float((score(z + h * direction) - score(z - h * direction)) / (2 * h))
        analytic = float((grad * direction).sum())
        assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(analytic))
        assert analytic != 0
    finally:
        vae.float()


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++2m"])
def test_gamma_zero_reproduces_the_unguided_sampler_and_eps_reuse_matches_two_passes(latent_model, scheduler) -> None:
    objective = RoiObjective(PixelEncoder(6), np.array([1, 1, 1, 0, 0, 0], bool))
    kw = {"steps": 3, "seeds": [4, 9], "image_size": 16, "scheduler": scheduler}
    plain = sample(latent_model, None, **kw)
    reuse = sample(latent_model, None, guide=objective, guide_scale=0.0, reuse_eps=True, **kw)
    two_pass = sample(latent_model, None, guide=objective, guide_scale=0.0, reuse_eps=False, **kw)
    assert torch.equal(plain, reuse) and torch.equal(plain, two_pass)
    one = sample(latent_model, None, **(kw | {"seeds": [9]}))  # a seed's image does not depend on its batch
    torch.testing.assert_close(one[0], plain[1], atol=1e-5, rtol=0)
    guided = sample(latent_model, None, guide=objective, guide_scale=50.0, **kw)
    assert not torch.equal(guided, plain)
    assert (objective(guided) > objective(plain)).all()


def test_the_approximate_x0_gradient_skips_the_unet_and_still_raises_the_objective(latent_model) -> None:
    """``guide_grad="x0"``: γ = 0 gives the unguided images, γ > 0 raises the objective, and each step runs one
    gradient-free UNet forward (no UNet backward)."""
    objective = RoiObjective(PixelEncoder(6), np.array([1, 1, 1, 0, 0, 0], bool))
    kw = {"steps": 3, "seeds": [4, 9], "image_size": 16, "scheduler": "ddim", "guide_grad": "x0"}
    plain = sample(latent_model, None, **kw)
    assert torch.equal(plain, sample(latent_model, None, guide=objective, guide_scale=0.0, **kw))
    guided = sample(latent_model, None, guide=objective, guide_scale=50.0, **kw)
    assert (objective(guided) > objective(plain)).all()

    grad_enabled = []
    hook = latent_model.unet.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    try:
        sample(latent_model, None, guide=objective, guide_scale=50.0, **kw)
    finally:
        hook.remove()
    assert len(grad_enabled) == 3 and not any(grad_enabled)  # one gradient-free UNet forward per step
    with pytest.raises(BrainattError, match="x0"):
        sample(latent_model, None, guide=objective, guide_scale=1.0, **(kw | {"guide_grad": "none"}))


def test_the_guidance_window_guides_only_its_steps(latent_model) -> None:
    """An empty window gives the unguided images, the full window the default guided ones, and a window of the
    first two of four steps runs the gradient pass on those two steps only."""
    objective = RoiObjective(PixelEncoder(6), np.array([1, 1, 1, 0, 0, 0], bool))
    kw = {"steps": 4, "seeds": [4, 9], "image_size": 16, "scheduler": "dpm++2m", "guide": objective}
    plain = sample(latent_model, None, **(kw | {"guide": None}))
    assert torch.equal(plain, sample(latent_model, None, guide_scale=50.0, guide_window=(0.0, 0.0), **kw))
    full = sample(latent_model, None, guide_scale=50.0, **kw)
    assert torch.equal(full, sample(latent_model, None, guide_scale=50.0, guide_window=(0.0, 1.0), **kw))

    grad_enabled = []
    hook = latent_model.unet.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    try:
        early = sample(latent_model, None, guide_scale=50.0, guide_window=(0.0, 0.5), **kw)
    finally:
        hook.remove()
    assert grad_enabled == [True, True, False, False]
    assert not torch.equal(early, plain) and not torch.equal(early, full)
    with pytest.raises(BrainattError, match="guide_window"):
        sample(latent_model, None, guide_scale=1.0, guide_window=(0.6, 0.2), **kw)


def test_v_prediction_models_are_sampled_in_eps(latent_model) -> None:
    """A v-prediction UNet whose output is exactly the v of an ε-model's prediction gives the same images."""
    from diffusers import DDIMScheduler

    class AsV(nn.Module):
        def __init__(self, unet: nn.Module, alphas: torch.Tensor) -> None:
            super().__init__()
            self.unet, self.alphas, self.config = unet, alphas, unet.config

        def forward(self, x: torch.Tensor, t: torch.Tensor, **kw):
            eps = self.unet(x, t, **kw).sample
            a = self.alphas[int(t)]
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            return type("Out", (), {"sample": a.sqrt() * eps - (1 - a).sqrt() * x0})

    import dataclasses

    scheduler = DDIMScheduler.from_config(latent_model.scheduler.config, prediction_type="v_prediction")
    v_model = dataclasses.replace(
        latent_model, unet=AsV(latent_model.unet, latent_model.scheduler.alphas_cumprod), scheduler=scheduler
    )
    kw = {"steps": 3, "seeds": [1], "image_size": 16}
    torch.testing.assert_close(sample(v_model, None, **kw), sample(latent_model, None, **kw), atol=1e-4, rtol=0)


def test_unknown_scheduler_and_settings_are_refused(latent_model) -> None:
    with pytest.raises(BrainattError, match="dpm\\+\\+2m"):
        sample(latent_model, None, steps=1, seeds=[0], scheduler="euler")
    with pytest.raises(BrainattError, match="unknown settings"):
        DiveConfig.from_config({"gama": 3})
    with pytest.raises(BrainattError, match="guide_grad"):
        DiveConfig.from_config({"guide_grad": "jacobian"})


# ------------------------------------------------------------------------------------------- tiny world, truth
@pytest.fixture(scope="module")
def fitted(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """subj01's responses, the images and a ridge_pooled encoder on the kit CLIP's pooled embedding."""
    from brainatt.encoding.encoders import EncodingConfig
    from brainatt.encoding.fit import fit_encoder
    from brainatt.features.cache import extract_features
    from brainatt.nsd.layout import NSDLayout
    from brainatt.prep.responses import preprocess_subject
    from brainatt.prep.stimuli import write_stimuli

    d = tmp_path_factory.mktemp("dive")
    layout = NSDLayout(tiny_world)
    atlases = ["prf-visualrois", "floc-faces", "floc-places", "floc-food", "nsdgeneral"]
    responses = preprocess_subject(layout, "subj01", d / "responses.h5", ["nsdgeneral"], atlases)
    images = write_stimuli(layout, ["subj01"], d / "images.h5")
    features = extract_features(images, ModelSpec(role="backbone", name="kit:clip"), d / "features.h5", device="cpu")
    cfg = EncodingConfig(ridge={"folds": 3, "n_alphas": 9})
    encoder = fit_encoder(responses, features, "ridge_pooled", cfg, d / "encoding", device="cpu")
    return {"dir": d, "responses": responses, "images": images, "encoder": encoder}


@pytest.fixture(scope="module")
def dive(fitted: dict[str, Path], tiny_world: Path) -> dict:
    """Unguided and food-guided images of subj01, scored by the encoder and the ground-truth brain."""
    from brainatt.braindive.evaluate import read_manifests, score_subject, summarize
    from brainatt.truth.braindive import true_brains

    cfg = DiveConfig(rois=("faces", "places", "food"), n_seeds=5, batch=5, gamma=100.0, steps=8, keep=0.4)
    runs = [
        generate(fitted["encoder"], fitted["responses"], fitted["dir"] / t, "subj01", t, cfg, KIT_DIFFUSION)
        for t in (UNGUIDED, "food")
    ]
    truth = true_brains(tiny_world / "ground_truth")
    table = read_manifests(runs)["subj01"]
    scores = score_subject("subj01", table, fitted["responses"], fitted["images"], fitted["encoder"], cfg, None, truth)
    return {"cfg": cfg, "runs": runs, "scores": scores, "summary": summarize({"subj01": scores}, cfg)}


def test_guided_images_raise_the_true_response_of_the_target(dive: dict) -> None:
    """Scored by the ground-truth brain, images guided toward the food ROI drive it above the unguided images of
    the same seeds, and the run's manifest records what the issue asks for."""
    manifest = read_manifest(dive["runs"][1])
    assert len(manifest) == 10 and manifest["kept"].sum() == 4  # 2 of 5 per γ (γ/2 and γ)
    assert {"seed", "subject", "target", "gamma", "steps", "scheduler", "pred_faces", "pred_food"} <= set(manifest)
    summary = dive["summary"].set_index(["target", "set"])
    kept, base = summary.loc[("food", "kept")], summary.loc[("food", "unguided_same_seeds")]
    assert kept["pred_food"] > base["pred_food"]
    assert kept["true_food"] > base["true_food"]
    gains = pd.Series(summary.loc[("food", "guided"), "pred_food"])
    assert gains.is_monotonic_increasing


def test_galleries_open_in_a_browser_with_every_image(dive: dict, fitted: dict[str, Path], chromium) -> None:
    """Every gallery page opens from the file system in chromium with every image loaded (screenshots beside
    them), and holds its images itself, as the single-file report needs."""
    from browser import broken_images

    from brainatt.viz.braindive import write_galleries

    index = write_galleries(dive["scores"].images, dive["summary"], dive["cfg"], fitted["dir"] / "galleries")
    page = index.parent / "subj01" / "food" / "index.html"
    assert 'href="subj01/food/index.html"' in index.read_text() and (page.parent / "grid.png").exists()
    for html, least in ((index, 1), (page, 3)):  # the index: a grid per page; a page: its grid and kept images
        opened = chromium.open(html, html.with_name("screenshot.png"))
        print(f"gallery screenshot: {html.with_name('screenshot.png')}")
        assert len(opened["images"]) >= least and not broken_images(opened), html
        assert all(image["src"].startswith("data:image/png") for image in opened["images"]), html
